"""The NPU backend against the fake adapter in tests/fake_npu (adapter loading, session config and its
typed options, loss scaling, optimizer chain, defaults, timeouts, rank tables, launcher environment,
sync_mode patch)."""
import argparse
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import ROOT
from strategies import FixedStrategy

from unet3d_core.errors import BackendError, ConfigError
from unet3d_core.types import CoreSettings, DistributedStrategy, StepRunner

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_npu")
tf1 = tf.compat.v1


@pytest.fixture
def npu(fake_npu):
    """The npu plugin with the fake npu_bridge importable (gone again after the test); the fake's call log emptied."""
    import npu_bridge

    from backends.npu import plugin

    del npu_bridge.calls[:]
    yield plugin


@pytest.fixture
def saved_environment():
    """os.environ as it was before the test, put back afterwards (the backend sets device variables)."""
    saved = dict(os.environ)
    for name in ("UNET3D_NPU_WORKER", "RANK_SIZE", "RANK_ID", "HCCL_CONNECT_TIMEOUT", "HCCL_EXEC_TIMEOUT"):
        os.environ.pop(name, None)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def _launched(environment, size=2, rank=0):
    """The variables the launcher gives a worker it starts (launcher.worker_environments)."""
    environment.update(UNET3D_NPU_WORKER="1", RANK_SIZE=str(size), RANK_ID=str(rank), ASCEND_DEVICE_ID="0",
                       JOB_ID="job-1")


# The core's resolved values the tests vary (CoreSettings fields), and their values when a test does not.
CORE_DEFAULTS = dict(backend="npu", max_steps=16, model_dir="/tmp/unused", exec_mode="train", benchmark=False,
                     warmup_steps=200, cache=False)


def _core(**values):
    return CoreSettings(**dict(CORE_DEFAULTS, **values))


def _options(**overrides):
    """The backend's frozen options for these flags and core values, as its unet3d_backend_options checks and
    returns them to the core (a bad flag raises here)."""
    from backends.npu import plugin

    flags = dict(npus=1, device_ids=None, rank_table=None, hccn_conf="/etc/hccn.conf",
                 server_id=None, job_id=None, hccl_connect_timeout=None, hccl_exec_timeout=None,
                 precision_mode=None, precision_mode_v2=None, iterations_per_loop=1, hcom_parallel=True,
                 enable_data_pre_proc=False, mix_compile_mode=False, npu_option=[], npu_loss_scale=1.0,
                 no_sync_mode_patch=True, npu_chip="auto", npu_profiling=None,
                 npu_profiling_options=None, npu_dump=None, npu_dump_step=None, npu_dump_mode="output",
                 npu_overflow_dump=None, npu_op_cache=None)
    core = {name: overrides.pop(name) for name in list(overrides) if name in CORE_DEFAULTS}
    flags.update(overrides)
    return plugin.unet3d_backend_options(flags=flags, core=_core(**core))


def _checked(parsed, **core):
    """The backend's options from its own parsed flags (what the core hands unet3d_backend_options)."""
    from backends.npu import plugin

    return plugin.unet3d_backend_options(flags=vars(parsed), core=_core(**core))


def _parameters(config, fields=False):
    """The NpuOptimizer parameter map as {key: value}, or {key: the AttrValue field set} with ``fields``."""
    (entry,) = [e for e in config.graph_options.rewrite_options.custom_optimizers if e.name == "NpuOptimizer"]
    values = {}
    for key, value in entry.parameter_map.items():
        values[key] = value.WhichOneof("value") if fields else getattr(value, value.WhichOneof("value"))
    return values


def _parse(plugin, *argv):
    parser = argparse.ArgumentParser()
    plugin.unet3d_add_options(parser)
    return parser.parse_args(list(argv))


def test_every_process_that_builds_a_graph_loads_the_adapter(npu, saved_environment, capsys):
    """Without npu_bridge.npu_init, _tf_adapter.so never loads and TensorFlow ignores the NpuOptimizer:
    one device without loss scaling, evaluate and predict ran on the host. Launched workers too."""
    for worker in (False, True):
        sys.modules.pop("npu_bridge.npu_init", None)
        saved_environment.pop("UNET3D_NPU_WORKER", None)
        if worker:
            _launched(saved_environment, size=1)
        for exec_mode in ("train", "evaluate", "predict"):
            sys.modules.pop("npu_bridge.npu_init", None)
            npu.unet3d_prepare_environment(_options(npu_loss_scale=0, exec_mode=exec_mode))
            assert "npu_bridge.npu_init" in sys.modules, (worker, exec_mode)
    out = capsys.readouterr().out
    assert out.count("[npu] adapter: npu_bridge ") == 6 and os.path.join("fake_npu", "npu_bridge") in out
    assert "[npu] precision_mode allow_fp32_to_fp16 (default" in out


def test_one_device_gets_its_logical_id_among_the_visible_devices(npu, saved_environment):
    """Defect 5 for one device: in a container holding davinci4-7, physical device 5 is ASCEND_DEVICE_ID 1."""
    saved_environment.pop("ASCEND_DEVICE_ID", None)
    saved_environment["ASCEND_VISIBLE_DEVICES"] = "4-7"
    npu.unet3d_prepare_environment(_options(device_ids="5"))
    assert os.environ["ASCEND_DEVICE_ID"] == "1"
    os.environ.pop("ASCEND_DEVICE_ID")
    with pytest.raises(ConfigError, match=r"--device_ids 2: device 2 is not visible here: this process sees "
                                          r"physical device\(s\) 4,5,6,7 \(ASCEND_VISIBLE_DEVICES=4-7\)"):
        _options(device_ids="2")
    assert "ASCEND_DEVICE_ID" not in os.environ


@pytest.mark.parametrize("version, allowed", [("1.15.5", True), ("1.15.0", True), ("2.15.1", False),
                                              ("1.14.0", False), ("2.6.5", False)])
def test_a_tensorflow_the_adapter_is_not_built_for_is_refused_before_anything_starts(
        npu, saved_environment, monkeypatch, version, allowed):
    """TF Adapter 1.x is built for TensorFlow 1.15 only (2.x for 2.6.5): another TensorFlow, e.g. PyPI's newest
    pulled in on an Ascend host, is a one-line error naming both and the install guide, before any launch."""
    monkeypatch.delenv("UNET3D_NPU_ANY_TENSORFLOW", raising=False)
    monkeypatch.setattr(tf, "__version__", version)
    if allowed:
        npu.unet3d_prepare_environment(_options())
        return
    with pytest.raises(BackendError) as refused:
        npu.unet3d_prepare_environment(_options())
    assert str(refused.value) == (
        "npu backend: TensorFlow {} with npu_bridge, which is built for TensorFlow 1.15 only; install "
        "TensorFlow 1.15 (docs/npu.md, 'Installing on an Ascend host'), or set UNET3D_NPU_ANY_TENSORFLOW=1 "
        "for an adapter built for {}".format(version, version))
    monkeypatch.setenv("UNET3D_NPU_ANY_TENSORFLOW", "1")
    npu.unet3d_prepare_environment(_options())


def test_the_tf2_adapter_needs_tensorflow_2_6(monkeypatch):
    from backends.npu import adapter

    monkeypatch.delenv("UNET3D_NPU_ANY_TENSORFLOW", raising=False)
    monkeypatch.setattr(adapter, "installed", lambda: adapter.TF2_ADAPTER)
    monkeypatch.setattr(tf, "__version__", "2.6.5")
    adapter.check_tensorflow()
    monkeypatch.setattr(tf, "__version__", "2.10.0")
    with pytest.raises(BackendError, match="TensorFlow 2.10.0 with npu_device, which is built for TensorFlow 2.6 "):
        adapter.check_tensorflow()


def test_an_adapter_that_fails_to_import_is_a_one_line_error(npu, saved_environment, monkeypatch):
    monkeypatch.setitem(sys.modules, "npu_bridge.npu_init", None)  # what `import` does with a broken module
    with pytest.raises(BackendError, match="importing npu_bridge.npu_init failed") as failure:
        npu.unet3d_prepare_environment(_options())
    assert "\n" not in str(failure.value) and "set_env.sh" in str(failure.value)


def test_session_config_has_the_npu_optimizer_and_adapter_rules(npu):
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    extra = ["op_debug_level=2", "enable_small_channel=1", "op_select_implmode=high_precision"]
    options = _options(iterations_per_loop=10, max_steps=20, hcom_parallel=True, npu_option=extra)
    config = npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training")
    parameters = _parameters(config)
    assert parameters["use_off_line"] is True
    assert parameters["precision_mode"] == b"allow_fp32_to_fp16"
    assert parameters["iterations_per_loop"] == 10
    assert parameters["enable_data_pre_proc"] is True  # required by the device loop
    assert parameters["hcom_parallel"] is True and parameters["mix_compile_mode"] is False
    assert parameters["op_debug_level"] == 2 and parameters["enable_small_channel"] == 1
    assert parameters["op_select_implmode"] == b"high_precision"
    assert config.graph_options.rewrite_options.remapping == RewriterConfig.OFF
    assert config.graph_options.rewrite_options.memory_optimization == RewriterConfig.OFF
    # Inference sessions (validation, evaluate, predict) run one step per run: no device loop.
    inference = _parameters(npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "evaluation"))
    assert inference["iterations_per_loop"] == 1 and inference["enable_data_pre_proc"] is False
    assert inference["precision_mode"] == b"allow_fp32_to_fp16" and inference["op_debug_level"] == 2
    # Applying twice keeps one NpuOptimizer entry.
    again = npu.unet3d_session_config(config, _options(precision_mode="force_fp32"), DistributedStrategy(), "training")
    assert _parameters(again)["precision_mode"] == b"force_fp32"


def test_npu_options_are_typed_as_the_adapter_reads_each_key(npu, tmp_path):
    """npu_attrs.cc reads each key with one accessor; a value in another field reads as false, 0 or ""."""
    from backends.npu import config as npu_config

    extra = ["graph_memory_max_size=21474836480", "variable_memory_max_size=10737418240", "aoe_mode=2",
             "jit_compile=false", "enable_small_channel=1", "hcom_multi_mode=True", "stream_sync_timeout=-1",
             "HCCL_algorithm=level0:NA"]
    # enable_dump, dump_path, dump_step come from --npu_dump and --npu_dump_step.
    options = _options(npu_option=extra, npu_dump=str(tmp_path), npu_dump_step="0|5|10-20")
    config = npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training")
    fields, values = _parameters(config, fields=True), _parameters(config)
    assert {key: fields[key] for key in ("graph_memory_max_size", "variable_memory_max_size", "dump_step",
                                         "aoe_mode", "jit_compile", "enable_small_channel", "enable_dump",
                                         "hcom_multi_mode", "stream_sync_timeout", "HCCL_algorithm")} == {
        "graph_memory_max_size": "s", "variable_memory_max_size": "s", "dump_step": "s", "aoe_mode": "s",
        "jit_compile": "s", "enable_small_channel": "i", "enable_dump": "b", "hcom_multi_mode": "b",
        "stream_sync_timeout": "i", "HCCL_algorithm": "s"}
    assert values["graph_memory_max_size"] == b"21474836480" and values["aoe_mode"] == b"2"
    assert values["dump_step"] == b"0|5|10-20" and values["dump_path"] == str(tmp_path).encode()
    assert values["hcom_multi_mode"] is True and values["stream_sync_timeout"] == -1
    assert "f" not in fields.values()
    assert set(fields) <= set(npu_config.ADAPTER_KEYS)
    assert all(fields[key] == npu_config.ADAPTER_KEYS[key] for key in fields)
    with pytest.raises(TypeError, match="reads it with .i()"):
        npu_config.apply_session_config(tf1.ConfigProto(), {"enable_small_channel": True})
    with pytest.raises(TypeError, match="is a float"):
        npu_config.apply_session_config(tf1.ConfigProto(), {"some_key": 0.5})


@pytest.mark.parametrize("pairs, message", [
    (["enable_smal_channel=1"], "not a key the adapter reads (did you mean enable_small_channel?); known keys: "),
    (["precision_mode=force_fp16"], "set by this backend; use --precision_mode"),
    (["precision_mode_v2=fp16"], "use --precision_mode_v2"),
    (["iterations_per_loop=10"], "use --iterations_per_loop"),
    (["use_off_line=false"], "false runs the whole graph in the host"),
    (["enable_small_channel=true"], "reads enable_small_channel as an integer"),
    (["hcom_multi_mode=yes"], "reads hcom_multi_mode as a bool: true, false, 1 or 0"),
    ({"npu_dump": "/tmp", "npu_dump_step": "5-3"}, "--npu_dump_step 5-3: range 5-3: the first step must be below"),
    ({"npu_dump": "/tmp", "npu_dump_step": "1,2"}, "expected steps and ranges joined by '|'"),
    ({"npu_dump": "/tmp", "npu_dump_step": "|".join(str(step) for step in range(101))}, "at most 100 sets"),
    ({"npu_dump_step": "5"}, "--npu_dump_step needs --npu_dump DIR"),
    ({"npu_dump": "/no/such/a", "npu_overflow_dump": "/no/such/b"}, "the adapter has one dump_path"),
    ({"npu_profiling": "/tmp/p", "npu_profiling_options": "{aic"}, "--npu_profiling_options: not valid JSON"),
    ({"npu_profiling_options": "{}"}, "--npu_profiling_options needs --npu_profiling DIR"),
    (["dump_step=0"], "set by this backend; use --npu_dump_step"),
    (["aoe_mode=3"], "must be one of 1, 2, 4"),
    (["jit_compile=1"], "must be one of true, false, auto"),
    (["op_select_implmode=fast"], "must be one of high_precision, high_performance"),
    (["graph_run_mode=2"], "graph_run_mode=2: must be one of 0, 1"),
    (["local_device_list=0;1"], "expected e.g. 1,2,3"),
    (["work_path=/no/such/folder"], "must be an existing folder with read and write access"),
    (["modify_mixlist=/ops.json"], "modify_mixlist needs --precision_mode allow_mix_precision"),
    (["enable_dump=true"], "set by this backend; use --npu_dump"),
    (["in_out_pair=x"], "in_out_pair needs --mix_compile_mode"),
    (["input_shape=data:1,2"], "input_shape, dynamic_dims and dynamic_node_type go together"),
])
def test_npu_options_the_adapter_would_refuse_are_one_line_errors(npu, pairs, message):
    """``pairs``: --npu_option values, or other flags (a dict)."""
    with pytest.raises(ConfigError) as failure:
        _options(**pairs) if isinstance(pairs, dict) else _options(npu_option=pairs)
    assert message in str(failure.value) and "\n" not in str(failure.value)


def test_profiling_dump_and_op_cache_flags_reach_an_npu_session(npu, saved_environment, tmp_path, capsys):
    """--npu_profiling, --npu_overflow_dump and --npu_op_cache become the adapter's keys; the folders exist
    before the session (the adapter refuses a missing dump_path), and the strict fake takes the session."""
    import npu_bridge

    options = _checked(_parse(npu, "--iterations_per_loop", "1", "--npu_profiling", str(tmp_path / "prof"),
                              "--npu_profiling_options", '{"aic_metrics": "PipeUtilization"}',
                              "--npu_overflow_dump", str(tmp_path / "dump"), "--npu_op_cache",
                              str(tmp_path / "cache"), "--no_sync_mode_patch"))
    npu.unet3d_prepare_environment(options)
    assert all((tmp_path / name).is_dir() for name in ("prof", "dump", "cache"))
    assert "--npu_overflow_dump into {}".format(tmp_path / "dump") in capsys.readouterr().out
    config = npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training")
    values = _parameters(config)
    assert values["profiling_mode"] is True and values["enable_dump_debug"] is True
    assert json.loads(values["profiling_options"].decode()) == {
        "output": str(tmp_path / "prof"), "training_trace": "on", "task_trace": "on", "aicpu": "on",
        "fp_point": "", "bp_point": "", "aic_metrics": "PipeUtilization"}
    assert values["dump_path"] == str(tmp_path / "dump").encode() and values["dump_debug_mode"] == b"all"
    assert values["op_compiler_cache_mode"] == b"enable"
    assert values["op_compiler_cache_dir"] == str(tmp_path / "cache").encode()
    assert "enable_dump" not in values
    with tf.Graph().as_default():
        tf1.Session(config=config).close()
    (session,) = [call for call in npu_bridge.calls if call["call"] == "session"]
    assert session["parameters"]["dump_debug_mode"] == "all"


@pytest.mark.parametrize("mode", ["force_fp32", "allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype",
                                  "allow_mix_precision", "cube_fp16in_fp32out", "allow_mix_precision_fp16",
                                  "allow_mix_precision_bf16", "allow_fp32_to_bf16"])
def test_every_precision_mode_of_the_adapter_is_accepted(npu, mode):
    options = _checked(_parse(npu, "--precision_mode", mode, "--iterations_per_loop", "1"))
    config = npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training")
    assert _parameters(config)["precision_mode"] == mode.encode()


def test_precision_mode_v2_replaces_precision_mode_and_is_logged(npu, saved_environment, capsys):
    options = _checked(_parse(npu, "--precision_mode_v2", "mixed_bfloat16", "--iterations_per_loop", "1",
                              "--npu_option", "modify_mixlist=/ops.json", "--no_sync_mode_patch"))
    parameters = _parameters(npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training"))
    assert parameters["precision_mode_v2"] == b"mixed_bfloat16" and "precision_mode" not in parameters
    npu.unet3d_prepare_environment(options)
    assert "[npu] precision_mode_v2 mixed_bfloat16; iterations_per_loop 1; hcom_parallel on" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="the adapter takes one of them, not both"):
        _options(precision_mode="force_fp32", precision_mode_v2="fp16")
    with pytest.raises(SystemExit):
        _parse(npu, "--precision_mode_v2", "allow_fp32_to_fp16")


def test_defaults_follow_the_seeds_run_config(npu, saved_environment, capsys):
    """hcom_parallel on; iterations_per_loop 100 (10 with --benchmark), or the largest divisor of the steps
    per device below that, so that every run performs whole loops."""
    parsed = _parse(npu)
    assert parsed.hcom_parallel is True and parsed.iterations_per_loop is None
    assert _parse(npu, "--no_hcom_parallel").hcom_parallel is False
    assert _parse(npu, "--iterations_per_loop", "auto").iterations_per_loop is None
    with pytest.raises(SystemExit):
        _parse(npu, "--iterations_per_loop", "0")

    def resolved(**overrides):
        options = _options(iterations_per_loop=None, **overrides)
        assert options.iterations_per_loop is None  # the flag stays as given; the loop size is a field
        return options.loop.iterations

    assert resolved(max_steps=16000) == 100
    assert resolved(max_steps=250) == 50
    assert resolved(max_steps=7) == 7
    # 101 steps have no divisor from 10 to 100: not a loop of 1 (a host round trip every step) but 110 steps,
    # of which 55 is the largest divisor up to 100; the core trains what options.core says.
    rounded = _options(iterations_per_loop=None, max_steps=101)
    assert (rounded.loop.iterations, rounded.loop.steps_per_device, rounded.core.max_steps) == (55, 110, 110)
    assert "the 101 steps per device have no divisor from 10 to 100, so they are rounded up to 110" in \
        rounded.loop.reason
    assert _options(iterations_per_loop=None, max_steps=250).core.max_steps == 250  # nothing to round
    assert resolved(max_steps=16000, mix_compile_mode=True) == 1
    assert resolved(max_steps=16000, exec_mode="evaluate") == 1
    assert resolved(max_steps=1000, benchmark=True, warmup_steps=200) == 10
    assert resolved(max_steps=7, benchmark=True, warmup_steps=2) == 1  # no warm-up step in a timed run
    _launched(saved_environment, size=8)
    assert resolved(max_steps=16000) == 100  # 2000 per device
    assert resolved(max_steps=1000) == 25  # 125 per device
    on_eight = _options(iterations_per_loop=None, max_steps=8 * 103)  # 103 per device: 110 each, 880 in all
    assert (on_eight.loop.iterations, on_eight.core.max_steps) == (55, 880)
    options = _options(iterations_per_loop=None, max_steps=1000)
    parameters = _parameters(npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy(), "training"))
    assert parameters["iterations_per_loop"] == 25 and parameters["hcom_parallel"] is True
    assert parameters["enable_data_pre_proc"] is True
    npu.unet3d_prepare_environment(options)
    assert ("iterations_per_loop 25 (auto: the seed's 100, lowered to the largest divisor of the 125 steps per "
            "device; with a multiple of 100 there it would be 100)") in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    ({"hccl_connect_timeout": 60}, "--hccl_connect_timeout 60: HCCL_CONNECT_TIMEOUT must be within 120..7200"),
    ({"hccl_connect_timeout": 7201}, "HCCL_CONNECT_TIMEOUT must be within 120..7200"),
    ({"hccl_exec_timeout": 0}, "--hccl_exec_timeout 0: HCCL_EXEC_TIMEOUT must be within 1..17340"),
    ({"hccl_exec_timeout": 17341}, "HCCL_EXEC_TIMEOUT must be within 1..17340"),
])
def test_hccl_timeouts_outside_hccls_ranges_are_refused(npu, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _options(**overrides)


@pytest.mark.parametrize("chip, seconds", [("910b", 0), ("910b", 30000), ("910_93", 2147483647)])
def test_atlas_a2_and_a3_take_hccls_wider_exec_timeout_range(npu, chip, seconds):
    """HCCL_EXEC_TIMEOUT.md: Atlas A2 (HOST mode) and A3 (AI_CPU mode) take [0, 2147483647], 0 = never, and
    apply it as given (no 68 s steps)."""
    from backends.npu import config

    options = _options(npu_chip=chip, hccl_exec_timeout=seconds)
    assert config.hccl_timeouts(options, chip) == {"HCCL_EXEC_TIMEOUT": str(seconds)}
    assert config.applied_exec_timeout(seconds, chip) == seconds
    with pytest.raises(ConfigError, match="HCCL_EXEC_TIMEOUT must be within 1..17340 seconds on the Atlas training"):
        _options(npu_chip="910", hccl_exec_timeout=max(seconds, 17341))


def test_a_job_over_several_servers_waits_300_s_for_hccl_to_connect(npu, saved_environment):
    """The reference's 8-device script sets HCCL_CONNECT_TIMEOUT 300; HCCL's 120 s default is short for servers
    that start apart. Given values (flag or environment) are kept; one server keeps HCCL's default."""
    from backends.npu import config

    saved_environment.pop("HCCL_CONNECT_TIMEOUT", None)
    assert config.hccl_timeouts(_options(), "910", servers=2) == {"HCCL_CONNECT_TIMEOUT": "300"}
    assert config.hccl_timeouts(_options(), "910", servers=1) == {}
    assert config.hccl_timeouts(_options(hccl_connect_timeout=900), "910", servers=2) == {
        "HCCL_CONNECT_TIMEOUT": "900"}
    saved_environment["HCCL_CONNECT_TIMEOUT"] = "600"
    assert config.hccl_timeouts(_options(), "910", servers=2) == {}


def test_hccl_timeouts_reach_every_worker(npu, saved_environment, monkeypatch, tmp_path, capsys):
    from backends.npu import launcher

    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.100.101\naddress_1=192.168.101.101\n")
    started = []
    monkeypatch.setattr(launcher, "run_workers", lambda workers, command, stream: started.extend(workers) or 0)
    options = _options(npus=2, hccn_conf=str(conf), server_id="127.0.0.1", model_dir=str(tmp_path / "run"),
                       hccl_connect_timeout=300, hccl_exec_timeout=600)
    assert npu.unet3d_launch(options, ["python", "cli.py", "train"]) == 0
    assert [(w.environment["HCCL_CONNECT_TIMEOUT"], w.environment["HCCL_EXEC_TIMEOUT"]) for w in started] == [
        ("300", "600")] * 2
    assert "HCCL_EXEC_TIMEOUT 600 s (HCCL on the Atlas training series applies 544 s)" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    ({"mix_compile_mode": True, "iterations_per_loop": 4}, "--mix_compile_mode needs --iterations_per_loop 1"),
    ({"iterations_per_loop": 5}, "16 steps per device must be a multiple"),
    ({"npu_option": ["no_equals_sign"]}, "--npu_option no_equals_sign: expected KEY=VALUE"),
    ({"device_ids": "0,x"}, "--device_ids 0,x"),
    ({"npus": 2, "device_ids": "3"}, "1 device(s) listed for --npus 2"),
])
def test_bad_npu_flags_are_refused(npu, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _options(**overrides)


def test_loss_scale_flag_keeps_the_seed_meaning(npu):
    import npu_bridge

    graph = tf.Graph()
    with graph.as_default():
        adam = tf1.train.AdamOptimizer(0.1)
        assert npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=0), DistributedStrategy()).optimizer is adam
        dynamic = npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=1), DistributedStrategy())
        fixed = npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=1048576), DistributedStrategy())
    managers = [call for call in npu_bridge.calls if call["call"].endswith("LossScaleManager")]
    assert managers[0] == dict(managers[0], call="ExponentialUpdateLossScaleManager")
    assert managers[0]["args"] == {"init_loss_scale": 2.0 ** 32, "incr_every_n_steps": 1000,
                                   "decr_every_n_nan_or_inf": 2, "incr_ratio": 2.0, "decr_ratio": 0.5}
    assert managers[1]["call"] == "FixedLossScaleManager" and managers[1]["args"]["loss_scale"] == 1048576
    assert not dynamic.reduces_across_workers and not fixed.reduces_across_workers


def test_distributed_chain_is_loss_scaling_around_the_distributed_optimizer(npu):
    import npu_bridge

    with tf.Graph().as_default():
        chain = npu.unet3d_mixed_precision(tf1.train.AdamOptimizer(0.1), _options(npu_loss_scale=1), FixedStrategy(8))
    assert chain.reduces_across_workers  # the strategy must not wrap it again
    names = [(call["call"], call["args"]) for call in npu_bridge.calls if "Optimizer" in call["call"]]
    assert names[0] == ("NPUDistributedOptimizer", {"optimizer": "AdamOptimizer",
                                                    "is_weight_update_sharding": False})
    assert names[1][0] == "NPULossScaleOptimizer"
    assert names[1][1]["opt"] == "NPUDistributedOptimizer" and names[1][1]["is_distributed"] is True


def test_overflow_steps_are_skipped_and_only_the_loss_scale_is_reported(npu):
    """The real NPULossScaleOptimizer has no _is_overall_finite: the core counts skipped steps from the
    global step, which the adapter leaves alone on overflow; the backend reports the loss scale only."""
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        # Gradients of 2e30..4e30 times the initial scale 2^32 overflow float32.
        weight = tf1.get_variable("w", initializer=[1e30, 2e30])
        wrapped = npu.unet3d_mixed_precision(tf1.train.GradientDescentOptimizer(0.1),
                                             _options(npu_loss_scale=1), DistributedStrategy())
        overflowing = wrapped.optimizer.minimize(tf.reduce_sum(weight * weight), global_step=step)
        metrics = wrapped.step_metrics()
        init = tf1.global_variables_initializer()
        assert sorted(metrics) == ["loss_scale"]
        assert not [v for v in tf1.global_variables() if "overflow" in v.op.name]
    with tf1.Session(graph=graph) as session:
        session.run(init)
        session.run(overflowing)
        session.run(overflowing)
        values = session.run({"step": step, "weight": weight, **metrics})
    assert values["step"] == 0  # skipped steps do not count: what the core's count relies on
    assert values["weight"].tolist() == pytest.approx([1e30, 2e30])
    assert values["loss_scale"] == 2.0 ** 31  # halved after two overflows


def test_iterations_per_loop_goes_through_the_adapter_loop(npu):
    import npu_bridge

    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.assign_add(step, 1).op
    with tf1.Session(graph=graph) as session:
        assert npu.unet3d_step_runner(session, train_op, _options()) == StepRunner(train_op, 1)
        runner = npu.unet3d_step_runner(session, train_op, _options(iterations_per_loop=4))
    assert runner.steps_per_run == 4 and runner.op.name == "IterationOp"
    assert [c["args"] for c in npu_bridge.calls if c["call"] == "set_iteration_per_loop"] == [
        {"iterations_per_loop": 4}]


def test_backends_lists_npu_as_usable_with_the_adapter_and_says_why_not_without():
    with_fake = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "backends"], universal_newlines=True,
                               stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=FAKE), cwd=ROOT)
    line = [line for line in with_fake.stdout.splitlines() if line.startswith("npu ")][0]
    assert line.split()[1] == "yes" and "npu_bridge, TF 1.15" in line  # which adapter it would use
    without = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "backends"], universal_newlines=True,
                             stdout=subprocess.PIPE, cwd=ROOT)
    line = [line for line in without.stdout.splitlines() if line.startswith("npu ")][0]
    assert " no " in line and "neither npu_bridge nor npu_device importable" in line


def test_without_the_adapter_preparing_the_environment_fails_clearly(monkeypatch):
    from backends.npu import plugin

    monkeypatch.setattr(plugin, "_adapter_present", lambda: False)
    with pytest.raises(BackendError, match="neither npu_bridge nor npu_device importable"):
        plugin.unet3d_prepare_environment(_options())


def test_an_npu_process_builds_the_textbook_model(npu):
    """The adapter compiles the graph for the device: TensorFlow's own ops, none of the CPU rewrites."""
    from unet3d_core import plugins
    from unet3d_core.layers import LayerOps

    assert type(plugins.load_backend(npu, "npu").layer_ops(_options())) is LayerOps


def test_built_rank_table_is_written_with_the_workers_environment(npu, tmp_path):
    from backends.npu import launcher, rank_table

    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.100.101\nnetmask_0=255.255.255.0\naddress_1=192.168.101.101\n"
                    "address_2=192.168.102.101\naddress_3=192.168.103.101\n")
    addresses = rank_table.read_hccn_conf(str(conf))
    built = rank_table.build_rank_table("10.0.0.5", [2, 3], addresses)
    assert built == {"version": "1.0", "status": "completed", "server_count": "1", "server_list": [
        {"server_id": "10.0.0.5", "device": [
            {"device_id": "2", "device_ip": "192.168.102.101", "rank_id": "0"},
            {"device_id": "3", "device_ip": "192.168.103.101", "rank_id": "1"}]}]}
    table = rank_table.validate_rank_table(built)
    workers = launcher.worker_environments(table=table, server_id="10.0.0.5", table_path="/run/table.json",
                                           job_id="job-7", model_dir="/run", base={"PATH": "/bin"},
                                           hccl_connect_timeout=600)
    assert [(w.rank, w.device_id, w.log_path) for w in workers] == [
        (0, 2, "/run/Device-2/train.log"), (1, 3, "/run/Device-3/train.log")]
    assert {key: workers[1].environment[key] for key in ("RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID",
                                                          "ASCEND_DEVICE_ID", "JOB_ID", "HCCL_CONNECT_TIMEOUT",
                                                          "PATH")} == {
        "RANK_TABLE_FILE": "/run/table.json", "RANK_SIZE": "2", "RANK_ID": "1", "ASCEND_DEVICE_ID": "3",
        "JOB_ID": "job-7", "HCCL_CONNECT_TIMEOUT": "600", "PATH": "/bin"}
    with pytest.raises(ConfigError, match="CM_CHIEF_IP set in the environment"):
        launcher.worker_environments(table=table, server_id="10.0.0.5", table_path="t", job_id="j", model_dir="/r",
                                     base={"CM_CHIEF_IP": "10.0.0.1"})
    with pytest.raises(ConfigError, match="no address for device"):
        rank_table.build_rank_table("10.0.0.5", [7], addresses)


def _table(devices=2, **server_fields):
    return {"version": "1.0", "status": "completed", "server_count": "1", "server_list": [dict({
        "server_id": "10.0.0.5", "device": [{"device_id": str(i), "device_ip": "192.168.10{}.101".format(i),
                                             "rank_id": str(i)} for i in range(devices)]}, **server_fields)]}


def _broken(change):
    table = _table(3)
    change(table)
    return table


@pytest.mark.parametrize("table, message", [
    (_broken(lambda t: t.pop("status")), "missing field 'status'"),
    (_broken(lambda t: t["server_list"][0]["device"][1].pop("device_ip")),
     r"server_list\[0\].device\[1\]: missing field 'device_ip'"),
    (_broken(lambda t: t["server_list"][0]["device"][2].update(rank_id="1")), "rank_id 1 used by more than one"),
    (_broken(lambda t: t["server_list"][0]["device"][2].update(rank_id="5")), "without gaps; missing 2"),
    (_broken(lambda t: t["server_list"][0]["device"][0].update(rank_id=0)),
     r"device\[0\].rank_id: must be a string .* got 0"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_ip="192.168.1.300")),
     "'192.168.1.300' is not an IP address"),
    (_broken(lambda t: t.update(server_count="2")), "server_count is 2 but server_list has 1"),
    (_broken(lambda t: t.update(version="2.0")), "version '2.0' is not supported"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_id="0")), "device 0 appears twice"),
])
def test_broken_rank_tables_are_refused_naming_the_field(table, message):
    from backends.npu.rank_table import validate_rank_table

    with pytest.raises(ConfigError, match=message):
        validate_rank_table(table, "table.json")


def test_version_1_2_tables_with_super_pods_are_accepted():
    from backends.npu.rank_table import validate_rank_table

    table = _table(2)
    table["version"] = "1.2"
    for device in table["server_list"][0]["device"]:
        device["super_device_id"] = str(100 + int(device["device_id"]))
    table["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.5"}]}]
    assert validate_rank_table(table).size == 2
    table["super_pod_list"][0]["server_list"][0]["server_id"] = "10.9.9.9"
    with pytest.raises(ConfigError, match="'10.9.9.9' is not in the table's server_list"):
        validate_rank_table(table)


def test_rank_table_file_with_wrong_device_count_stops_before_launch(npu, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_table(4)))
    with pytest.raises(ConfigError, match="--npus 8: the rank table has 4 device"):
        _options(npus=8, rank_table=str(path))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        _options(npus=8, rank_table=str(path))


def _cce_build(tmp_path, text="def build(sync_mode=2):\n    return sync_mode\n"):
    folder = tmp_path / "site" / "te" / "platform"
    folder.mkdir(parents=True)
    path = folder / "cce_build.py"
    path.write_text(text)
    return str(path)


def test_sync_mode_patch_is_idempotent_keeps_a_backup_and_unpatches(tmp_path):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    assert sync_mode.find_cce_build([str(tmp_path / "elsewhere"), str(tmp_path / "site")]) == path
    assert sync_mode.patch(path) == sync_mode.PATCHED.format(path + sync_mode.BACKUP_SUFFIX)
    assert "sync_mode=0" in open(path).read() and "sync_mode=2" not in open(path).read()
    assert sync_mode.patch(path) == sync_mode.ALREADY_PATCHED
    assert "sync_mode=2" in open(path + sync_mode.BACKUP_SUFFIX).read()
    assert sync_mode.unpatch(path) == "restored"
    assert "sync_mode=2" in open(path).read()
    assert sync_mode.unpatch(path) == "no backup"
    other = _cce_build(tmp_path / "clean", "SYNC = 0\n")
    assert sync_mode.patch(other) == sync_mode.NOT_AFFECTED


def test_eight_processes_patching_at_once_patch_once(tmp_path):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    script = "import sys; sys.path.insert(0, {!r}); from backends.npu import sync_mode; " \
             "print(sync_mode.patch({!r}))".format(ROOT, path)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, universal_newlines=True)
                 for _ in range(8)]
    results = sorted(process.communicate()[0].strip() for process in processes)
    assert results == [sync_mode.ALREADY_PATCHED] * 7 + [sync_mode.PATCHED.format(path + sync_mode.BACKUP_SUFFIX)]
    assert open(path).read().count("sync_mode=0") == 1
    assert "sync_mode=2" in open(path + sync_mode.BACKUP_SUFFIX).read()


def test_unwritable_cce_build_is_a_clear_error(tmp_path, monkeypatch):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    monkeypatch.setattr(sync_mode.os, "access", lambda *args: False)  # root can write anything: pretend
    with pytest.raises(BackendError, match="is not writable; .* --no_sync_mode_patch"):
        sync_mode.patch(path)


def test_npu_unpatch_command(tmp_path):
    path = _cce_build(tmp_path)
    for tool, expected in (("patch", "patched (backup at {}.unet3d-orig)".format(path)), ("unpatch", "restored")):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "npu", tool, "--path", path],
                                stdout=subprocess.PIPE, universal_newlines=True, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip().endswith(expected)


def test_a_rank_table_free_launch_is_refused_not_run_as_independent_copies(npu, saved_environment):
    """The reference's performance scripts start one process per device with CM_CHIEF_IP/CM_WORKER_SIZE and
    no rank table. With --npus 1 each such process built a one-device graph: N trainings into one folder."""
    saved_environment.update(CM_CHIEF_IP="10.0.0.1", CM_CHIEF_PORT="29688", CM_CHIEF_DEVICE="0",
                             CM_WORKER_SIZE="8", CM_WORKER_IP="10.0.0.1")
    with pytest.raises(ConfigError, match=r"^CM_CHIEF_DEVICE, CM_CHIEF_IP, CM_CHIEF_PORT, CM_WORKER_IP, "
                                          r"CM_WORKER_SIZE set in the environment: a rank-table-free launch"):
        _options()
    _launched(saved_environment)  # a rank unet3d started never has them; nothing to refuse there
    for name in ("CM_CHIEF_IP", "CM_CHIEF_PORT", "CM_CHIEF_DEVICE", "CM_WORKER_SIZE", "CM_WORKER_IP"):
        saved_environment.pop(name)
    assert _options().npus == 1


def test_the_stop_vote_is_an_allreduce_of_its_own(npu):
    """fusion=0: the per-step stop vote must not join the gradients' fused segments (the adapter's own
    float-status allreduce does the same)."""
    import npu_bridge

    from backends.npu import adapter
    from backends.npu.strategy import HcclStrategy

    strategy = object.__new__(HcclStrategy)  # the reduction alone: no HCCL system to start for it
    strategy._npu = adapter.load().npu_init
    with tf.Graph().as_default():
        strategy.allreduce_sum_tensor(tf1.placeholder_with_default(tf.constant(0.0), []))
    (vote,) = [call for call in npu_bridge.calls if call["call"] == "allreduce"]
    assert vote["fusion"] == 0


def test_the_gradient_split_strategy_is_checked_when_parsed(npu, records, tmp_path, capsys):
    """--npu_split_strategy: by index or size, HCCL's rules checked before any device starts, one line each."""
    from conftest import run_cli

    assert _parse(npu).npu_split_strategy is None
    assert _parse(npu, "--npu_split_strategy", "idx:1,90,99").npu_split_strategy == ("idx", (1, 90, 99))
    assert _parse(npu, "--npu_split_strategy", "size:80,20").npu_split_strategy == ("size", (80, 20))
    assert _parse(npu, "--npu_split_strategy", "size:62.5,37.5").npu_split_strategy == ("size", (62.5, 37.5))
    for value, message in [("idx:90,1", "the indices must be ascending integers from 0"),
                           ("idx:1,1", "the indices must be ascending"), ("idx:1.5", "every value must be an integer"),
                           ("size:60,30", "the sizes must be non-negative percentages summing to 100"),
                           ("size:120,-20", "the sizes must be non-negative percentages"),
                           ("size:" + ",".join(["10"] * 10), "HCCL splits the gradients into at most 8 segments"),
                           ("bytes:1,2", "expected idx:I1,I2,... (last gradient index of each segment) or size")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run_cli(["train", "--backend", "npu", "--data_dir", records, "--model_dir", str(tmp_path / "run"),
                     "--npu_split_strategy", value], check=False)
        err = capsys.readouterr().err.strip()
        assert exited.value.code == 2 and "\n" not in err, err
        assert "argument --npu_split_strategy: " + message in err, err


def test_a_launched_rank_is_read_once_from_the_launchers_variables(saved_environment):
    """The worker's identity is one typed object, read where the options are made; a launcher variable that is
    missing or not a number is named in one line."""
    from backends.npu.launcher import LaunchedRank

    assert _options().launched is None
    _launched(saved_environment, size=8, rank=3)
    assert _options().launched == LaunchedRank(rank=3, size=8, device_id=0, job_id="job-1")
    del saved_environment["JOB_ID"]
    with pytest.raises(ConfigError, match="^UNET3D_NPU_WORKER is set without JOB_ID: start workers with"):
        _options()
    _launched(saved_environment, size=2, rank=2)
    with pytest.raises(ConfigError, match="^RANK_ID=2 is not a rank of RANK_SIZE=2"):
        _options()
    saved_environment["RANK_SIZE"] = "two"
    with pytest.raises(ConfigError, match="expected integers"):
        _options()


def test_cache_on_several_ranks_says_the_first_step_waits_for_the_whole_share(npu, saved_environment, capsys):
    """--cache reads a rank's whole share before its first step; the others wait in the first allreduce, up to
    HCCL_EXEC_TIMEOUT: the log says so where it matters (several ranks), and only there."""
    _launched(saved_environment, size=8)
    npu.unet3d_prepare_environment(_options(cache=True, no_sync_mode_patch=True))
    out = capsys.readouterr().out
    assert "note: --cache: each rank reads and decodes its whole share of the training cases" in out
    assert "HCCL_EXEC_TIMEOUT (1836 s by default on Atlas 910): raise --hccl_exec_timeout" in out
    npu.unet3d_prepare_environment(_options(cache=False, no_sync_mode_patch=True))
    assert "--cache" not in capsys.readouterr().out


def test_a_ranks_session_pools_fit_its_bound_cores(npu, saved_environment):
    """A bound rank's session pools take its own cores; an unbound one shares the host's among the local ranks."""
    _launched(saved_environment, size=2)
    saved_environment["UNET3D_NPU_CPUS"] = "0"
    config = npu.unet3d_session_config(tf1.ConfigProto(), _options(), FixedStrategy(local_size=2), "training")
    assert config.intra_op_parallelism_threads == 1
    del saved_environment["UNET3D_NPU_CPUS"]
    config = npu.unet3d_session_config(tf1.ConfigProto(), _options(), FixedStrategy(local_size=10 ** 6), "evaluation")
    assert config.intra_op_parallelism_threads == 1
