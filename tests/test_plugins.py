"""Backends are plugins: discovery, selection by name, and clear errors on misuse."""
import importlib
import importlib.util
import inspect
import os
import re
import types

import pytest

from unet3d_core import BackendInfo, hookimpl, hookspecs, plugins
from unet3d_core.errors import BackendError
from unet3d_core.types import BackendOptions, CoreSettings, DistributedStrategy, StepRunner, WrappedOptimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plugin(name="toy", **hooks):
    """A backend module made on the fly, with unet3d_backend_info plus ``hooks``."""
    module = types.ModuleType("toy_backend_" + name)

    @hookimpl
    def unet3d_backend_info():
        return BackendInfo(name=name, summary="toy backend")

    module.unet3d_backend_info = unet3d_backend_info
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def test_builtin_backends_are_found_through_entry_points():
    registry = plugins.BackendRegistry.discover()
    assert {"cpu", "gpu", "npu"} <= set(registry.names)
    assert registry.backends["cpu"].distribution == "unet3d"
    assert registry.get("cpu").info.available


def test_unknown_backend_lists_what_is_installed():
    registry = plugins.BackendRegistry.discover()
    with pytest.raises(BackendError, match=r"backend 'tpu' is not available .* installed: .*cpu.*, gpu, npu"):
        registry.get("tpu")


def test_unavailable_backend_says_why(monkeypatch):
    from fake_npu_env import loaded_from_fake, under_fake

    # The fake adapter of tests/fake_npu, left behind by an earlier test, must not pass for a real one.
    assert loaded_from_fake() == [], "tests/fake_npu modules left in sys.modules"
    registry = plugins.BackendRegistry.discover()
    if registry.backends["npu"].info.available:
        assert not under_fake(importlib.util.find_spec("npu_bridge").origin), "tests/fake_npu left on sys.path"
        pytest.skip("a real npu_bridge is installed here")
    with pytest.raises(BackendError) as error:
        registry.get("npu")
    assert "neither npu_bridge nor npu_device importable" in str(error.value)
    assert "\n" not in str(error.value)


def test_filter_variable_restricts_loaded_backends(monkeypatch):
    monkeypatch.setenv(plugins.FILTER_VARIABLE, "cpu")
    assert plugins.BackendRegistry.discover().names == ["cpu"]


def test_backend_hooks_override_core_defaults():
    strategy = DistributedStrategy()

    def unet3d_session_config(config, options, strategy):
        config["touched"] = True
        return config

    backend = plugins.load_backend(_plugin(unet3d_session_config=unet3d_session_config), "toy")
    assert backend.session_config({}, options=None, strategy=strategy) == {"touched": True}
    # Hooks the plugin does not implement fall back to the core's defaults.
    assert backend.mixed_precision("optimizer", options=None, strategy=strategy) == WrappedOptimizer("optimizer")
    assert isinstance(backend.distributed_strategy(options=None), DistributedStrategy)
    assert backend.launch(options=None, worker_command=[]) is None
    assert backend.step_runner(None, "train_op", options=None) == StepRunner("train_op", steps_per_run=1)


def test_a_plugin_of_the_old_contract_gets_a_one_line_error_naming_the_change():
    """Hooks hand typed objects back (WrappedOptimizer, StepRunner); the old tuple hook and a bare optimiser
    are refused with what to write instead."""
    def unet3d_training_loop(session, train_op, options):
        return train_op, 1

    with pytest.raises(BackendError, match=r"^backend 'toy' \(local\): implements unet3d_training_loop, a hook of "
                                           r"the old contract: it is now unet3d_step_runner\(session, train_op, "
                                           r"options\) and returns unet3d_core.StepRunner\(op, steps_per_run\)"):
        plugins.load_backend(_plugin(unet3d_training_loop=unet3d_training_loop), "toy")

    def unet3d_mixed_precision(optimizer, options, strategy):
        return optimizer  # the old contract: the optimiser itself

    backend = plugins.load_backend(_plugin(unet3d_mixed_precision=unet3d_mixed_precision), "toy")
    with pytest.raises(BackendError) as refused:
        backend.mixed_precision("optimizer", options=None, strategy=DistributedStrategy())
    assert str(refused.value) == ("backend 'toy' (local): unet3d_mixed_precision must return "
                                  "unet3d_core.WrappedOptimizer, got str (see docs/writing-a-backend.md)")
    with pytest.raises(ValueError, match="steps_per_run must be at least 1"):
        StepRunner("op", steps_per_run=0)


def test_a_plugin_that_still_validates_the_parsed_options_is_told_what_replaced_it():
    def unet3d_validate_options(options):
        return None

    with pytest.raises(BackendError, match=r"^backend 'toy' \(local\): implements unet3d_validate_options, a hook "
                                           r"of the old contract: it is now unet3d_backend_options\(flags, core\)"):
        plugins.load_backend(_plugin(unet3d_validate_options=unet3d_validate_options), "toy")


def test_a_backend_gets_only_its_own_flags_frozen_beside_the_cores_settings():
    """No hook sees the parsed command line: the backend's options hold exactly the flags its group (and its
    shared option plugins) added, cannot be written, and carry the core's values as ``core``."""
    import argparse
    import dataclasses

    registry = plugins.BackendRegistry.discover()
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir")
    registry.add_options(parser)
    parsed = parser.parse_args(["--data_dir", "records", "--cpu_threads", "3", "--hosts", "a:2", "--npus", "8"])
    core = CoreSettings("cpu", exec_mode="train", model_dir="/runs/a", max_steps=40)
    options = registry.backends["cpu"].backend_options(vars(parsed), core)
    assert type(options).__name__ == "CpuOptions" and options.core is core
    assert (options.cpu_threads, options.hosts, options.np) == (3, "a:2", 1)
    assert not hasattr(options, "npus") and not hasattr(options, "data_dir")  # another backend's, the core's
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.cpu_threads = 4
    assert registry.backends["gpu"].backend_options(vars(parsed), core).hosts == "a:2"  # the shared flag, for both
    # A backend without its own options type gets the core's frozen holder of its flags.
    toy = plugins.load_backend(_plugin(unet3d_add_options=lambda group: group.add_argument("--toy_level", type=int,
                                                                                           default=2)), "toy")
    toy_core = dataclasses.replace(core, backend="toy")
    held = toy.backend_options({"toy_level": 5, "data_dir": "x"}, toy_core)
    assert held == BackendOptions(toy_core, {"toy_level": 5}) and held.toy_level == 5
    assert held.core.model_dir == "/runs/a"
    with pytest.raises(AttributeError, match="backend 'toy' has no flag 'data_dir' \\(its flags: toy_level\\)"):
        _ = held.data_dir


@pytest.mark.parametrize("name, type_name", [("cpu", "CpuOptions"), ("gpu", "GpuOptions"), ("npu", "NpuOptions")])
def test_each_builtin_options_type_has_one_field_per_flag_of_its_backend(name, type_name):
    """The frozen types cannot drift from the parsers: a flag without a field (or a field without a flag)
    fails here, not on a user's run."""
    import dataclasses

    backend = plugins.BackendRegistry.discover().backends[name]
    options_type = getattr(importlib.import_module("backends.{}.{}".format(
        name, "options" if name == "npu" else "plugin")), type_name)
    fields = {field.name for field in dataclasses.fields(options_type)} - {"core", "loop", "launched"}
    assert fields == set(backend._flag_names())


def test_backend_options_that_are_not_a_frozen_dataclass_are_refused_in_one_line():

    def unet3d_backend_options(flags, core):
        return dict(flags)

    backend = plugins.load_backend(_plugin(unet3d_backend_options=unet3d_backend_options), "toy")
    with pytest.raises(BackendError) as refused:
        backend.backend_options({}, CoreSettings("toy"))
    assert str(refused.value) == (
        "backend 'toy' (local): unet3d_backend_options must return a frozen dataclass with a 'core' field (e.g. "
        "unet3d_core.types.BackendOptions), got dict (see docs/writing-a-backend.md)")


def test_unknown_hook_fails_at_load_naming_plugin_and_hook():
    def unet3d_make_coffee(options):
        return None

    with pytest.raises(BackendError, match=r"backend 'toy'.*unet3d_make_coffee"):
        plugins.load_backend(_plugin(unet3d_make_coffee=unet3d_make_coffee), "toy")


def test_wrong_signature_fails_at_load():
    def unet3d_session_config(config, options, strategy, colour):
        return config

    with pytest.raises(BackendError, match=r"backend 'toy'.*unet3d_session_config"):
        plugins.load_backend(_plugin(unet3d_session_config=unet3d_session_config), "toy")


def test_missing_info_hook_and_wrong_name_are_refused():
    empty = types.ModuleType("empty_backend")
    with pytest.raises(BackendError, match="unet3d_backend_info"):
        plugins.load_backend(empty, "empty")
    with pytest.raises(BackendError, match="calls itself 'toy'"):
        plugins.load_backend(_plugin("toy"), "other")


def test_hook_that_raises_is_named_in_the_error():
    def unet3d_prepare_environment(options):
        raise RuntimeError("driver missing")

    backend = plugins.load_backend(_plugin(unet3d_prepare_environment=unet3d_prepare_environment), "toy")
    with pytest.raises(BackendError, match=r"backend 'toy' .* unet3d_prepare_environment: RuntimeError: driver"):
        backend.prepare_environment(options=None)


def test_two_plugins_with_one_name_are_refused():
    registry = plugins.BackendRegistry()
    registry.add(plugins.load_backend(_plugin("toy"), "toy", distribution="first-dist"))
    with pytest.raises(BackendError, match="first-dist and second-dist"):
        registry.add(plugins.load_backend(_plugin("toy"), "toy", distribution="second-dist"))


def test_every_hook_spec_is_documented_and_prefixed():
    specs = [name for name, value in inspect.getmembers(hookspecs, inspect.isfunction)]
    assert len(specs) >= 8
    for name in specs:
        assert name.startswith("unet3d_")
        assert len((getattr(hookspecs, name).__doc__ or "").strip()) > 40, name


def test_core_never_imports_a_backend():
    core = os.path.join(ROOT, "unet3d_core")
    checked = 0
    for folder, _, file_names in os.walk(core):
        for file_name in file_names:
            if file_name.endswith(".py"):
                path = os.path.join(folder, file_name)
                with open(path) as handle:
                    source = handle.read()
                assert not re.search(r"^\s*(from|import)\s+backends\b", source, re.M), path
                checked += 1
    assert checked > 40  # every room's modules, not only the top level


def test_core_holds_no_device_specific_kernels():
    """Tuned kernels and their C++ live in backends (the cpu one supplies them through unet3d_layer_ops)."""
    core = os.path.join(ROOT, "unet3d_core")
    for folder, _, file_names in os.walk(core):
        for file_name in file_names:
            path = os.path.join(folder, file_name)
            assert not file_name.endswith((".cc", ".cpp", ".h", ".so")), path
            if file_name.endswith(".py"):
                with open(path, encoding="utf-8") as handle:
                    source = handle.read().lower()
                for word in ("avx", "cpuinfo", "unet3d_kernels"):
                    assert word not in source, (path, word)


def test_builtin_backends_use_only_public_core_names():
    allowed = {"unet3d_core", "unet3d_core.errors", "unet3d_core.types", "unet3d_core.distributed",
               "unet3d_core.layers", "unet3d_core.folders"}
    paths = [os.path.join(ROOT, "backends", "horovod.py")]  # shared by the cpu and gpu backends
    for backend in ("cpu", "gpu", "npu"):
        folder = os.path.join(ROOT, "backends", backend)
        paths += [os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".py")]
    for path in paths:
        with open(path) as handle:
            imported = set(re.findall(r"^\s*from\s+(unet3d_core[\w.]*)\s+import", handle.read(), re.M))
        assert imported <= allowed, (os.path.relpath(path, ROOT), imported - allowed)


def _option_strings(parser):
    return [option for action in parser._actions for option in action.option_strings]


def test_a_shared_option_plugin_adds_its_group_once_however_many_backends_name_it():
    import argparse

    from backends import horovod
    from backends.cpu import plugin as cpu
    from backends.gpu import plugin as gpu

    for modules in ((cpu, gpu), (gpu,)):
        registry = plugins.BackendRegistry()
        for module in modules:
            registry.add(plugins.load_backend(module, module.unet3d_backend_info().name))
        parser = argparse.ArgumentParser()
        registry.add_options(parser)
        assert _option_strings(parser).count("--hosts") == 1
        group = next(group for group in parser._action_groups if group.title == horovod.OPTIONS_TITLE)
        assert [action.dest for action in group._group_actions] == ["hosts"]
        assert parser.parse_args([]).hosts is None
    # A backend that names no shared plugin brings none.
    registry = plugins.BackendRegistry()
    registry.add(plugins.load_backend(_plugin("toy"), "toy"))
    parser = argparse.ArgumentParser()
    registry.add_options(parser)
    assert "--hosts" not in _option_strings(parser)


def test_an_invalid_shared_option_plugin_is_a_one_line_error():
    import argparse

    class Shared:
        title = "shared"

        @hookimpl
        def unet3d_add_options(self, group, unknown_argument):
            pass

    module = _plugin("toy")
    module.UNET3D_SHARED_OPTIONS = (Shared(),)
    registry = plugins.BackendRegistry()
    registry.add(plugins.load_backend(module, "toy"))
    with pytest.raises(BackendError, match="shared options 'shared': invalid plugin"):
        registry.add_options(argparse.ArgumentParser())


def test_the_runtime_asks_the_backend_once_per_phase_and_binds_the_run_bound_hooks_to_each_run():
    from unet3d_core.runtime import runtime_for

    asked = []

    class Recording(DistributedStrategy):
        closed = 0

        def close(self):
            Recording.closed += 1

    def unet3d_distributed_strategy(options):
        return Recording()

    def unet3d_session_config(config, options, strategy, phase):
        asked.append(phase)
        return {"phase": phase}

    def unet3d_step_runner(session, train_op, options):
        return StepRunner(train_op, steps_per_run=options.loop)

    backend = plugins.load_backend(_plugin(unet3d_distributed_strategy=unet3d_distributed_strategy,
                                           unet3d_session_config=unet3d_session_config,
                                           unet3d_step_runner=unet3d_step_runner), "toy")
    runtime = runtime_for(backend, types.SimpleNamespace(loop=2))
    assert asked == ["training", "evaluation"]
    assert (runtime.training_session, runtime.evaluation_session) == ({"phase": "training"}, {"phase": "evaluation"})
    assert runtime.worker.is_chief and (runtime.worker.rank, runtime.worker.size) == (0, 1)
    assert runtime.layer_ops.describe().startswith("layer ops: textbook")  # the core's default
    assert runtime.step_runner(None, "op").steps_per_run == 2
    assert runtime.for_run(types.SimpleNamespace(loop=5)).step_runner(None, "op").steps_per_run == 5
    assert runtime.wrap_optimizer("adam") == WrappedOptimizer("adam")

    def unet3d_layer_ops(options):
        raise RuntimeError("no kernels for this chip")

    broken = plugins.load_backend(_plugin(unet3d_distributed_strategy=unet3d_distributed_strategy,
                                          unet3d_layer_ops=unet3d_layer_ops), "toy")
    with pytest.raises(BackendError, match="unet3d_layer_ops: RuntimeError: no kernels"):
        runtime_for(broken, types.SimpleNamespace())
    assert Recording.closed == 1  # the strategy started for it is closed again
