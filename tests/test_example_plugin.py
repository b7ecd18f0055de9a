"""Third-party backends: the example plugin installs with pip and trains; misbehaving plugins are named.

The example (``examples/unet3d-cpu-xla``) is installed for real into the
environment running the tests, from a temporary copy so that no ``build/``
or ``*.egg-info`` lands in the repository, and uninstalled afterwards. The
misuse tests lay out small distributions the way pip does (a module plus a
``NAME-VERSION.dist-info`` folder holding ``entry_points.txt``) in a temporary
folder put on ``PYTHONPATH``, so discovery goes through real entry points
without touching the environment.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types

import pytest
from conftest import ROOT, cli_subprocess, train_args

from unet3d_core import CoreSettings, DistributedStrategy, hookspecs, plugins
from unet3d_core.errors import ConfigError

EXAMPLE = os.path.join(ROOT, "examples", "unet3d-cpu-xla")
EXAMPLE_DISTRIBUTION = "unet3d-cpu-xla"
EXAMPLE_BACKEND = "cpu-xla"
EXAMPLE_HOOKS = {"unet3d_backend_info", "unet3d_add_options", "unet3d_backend_options",
                 "unet3d_prepare_environment", "unet3d_session_config", "unet3d_mixed_precision"}
GUIDE = os.path.join(ROOT, "docs", "writing-a-backend.md")
# Each subprocess sees every installed backend, whatever a caller's environment restricts.
ALL_BACKENDS = {"UNET3D_BACKENDS": ""}


def _pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)


def _write_distribution(site, distribution, module_name, source, backend_name):
    """Install a one-module distribution into ``site`` as pip lays one out, registering ``backend_name``."""
    with open(os.path.join(site, module_name + ".py"), "w") as handle:
        handle.write(source)
    info = os.path.join(site, "{}-1.0.dist-info".format(distribution.replace("-", "_")))
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as handle:
        handle.write("Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n".format(distribution))
    with open(os.path.join(info, "entry_points.txt"), "w") as handle:
        handle.write("[unet3d.backends]\n{} = {}\n".format(backend_name, module_name))


def _plugin_source(backend_name, extra=""):
    """Source of a backend module named ``backend_name``, plus the hooks in ``extra``."""
    return textwrap.dedent("""
        from unet3d_core import BackendInfo, hookimpl


        @hookimpl
        def unet3d_backend_info():
            return BackendInfo(name="{}", summary="a test plugin")
        """).format(backend_name) + textwrap.dedent(extra)


def _cli_with_site(site, args):
    return cli_subprocess(args, timeout=120, env=dict(ALL_BACKENDS, PYTHONPATH=site))


def _train_with_example(records, model_dir, *flags):
    """Train two tiny steps with the example backend; return the finished process and its ``cpu-xla:`` line."""
    # Level 0 lets TensorFlow's own log say that XLA compiled and that the bfloat16 rewrite ran.
    trained = cli_subprocess(train_args(records, model_dir, "--backend", EXAMPLE_BACKEND, *flags), timeout=600,
                             env=dict(ALL_BACKENDS, TF_CPP_MIN_LOG_LEVEL="0"))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-4000:]
    assert os.path.exists(os.path.join(model_dir, "model.ckpt-2.index"))
    assert "on backend 'cpu-xla'" in trained.stdout
    plan = next(line for line in trained.stdout.splitlines() if line.startswith("cpu-xla: "))
    return trained, plan


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example backend, pip-installed (not editable) for this module's tests, then uninstalled."""
    build = str(tmp_path_factory.mktemp("example") / "unet3d-cpu-xla")
    shutil.copytree(EXAMPLE, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    installed = _pip("install", "--no-deps", "--no-build-isolation", "--no-cache-dir", build)
    assert installed.returncode == 0, "pip install {} failed:\n{}".format(build, installed.stdout)
    try:
        yield EXAMPLE_DISTRIBUTION
    finally:
        removed = _pip("uninstall", "--yes", EXAMPLE_DISTRIBUTION)
        assert removed.returncode == 0, removed.stdout


@pytest.mark.slow
def test_pip_installed_backend_is_listed_and_trains(installed_example, records, tmp_path):
    listing = cli_subprocess(["backends"], timeout=120, env=ALL_BACKENDS)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    index = next(number for number, line in enumerate(lines) if line.split()[:1] == [EXAMPLE_BACKEND])
    assert lines[index].split()[1:4] == ["yes", EXAMPLE_DISTRIBUTION, "0.1.0"], listing.stdout
    hooks = lines[index + 1].split("hooks:")[1]
    assert {name.strip() for name in hooks.split(",")} == EXAMPLE_HOOKS, listing.stdout

    help_text = cli_subprocess(["train", "--help"], timeout=120, env=ALL_BACKENDS).stdout
    assert "--cpu_xla_jit" in help_text and "--cpu_xla_precision" in help_text

    trained, plan = _train_with_example(records, str(tmp_path / "run"))
    # What the backend chose, and why, is one line; TensorFlow's own log confirms it.
    if "XLA JIT on" in plan:
        assert "Compiled cluster using XLA" in trained.stderr
    else:
        assert "XLA JIT off: TensorFlow 1." in plan, plan
    if "precision bfloat16" in plan:
        assert "Running auto_mixed_precision_onednn_bfloat16 graph optimizer" in trained.stderr
    else:
        assert "precision float32: bfloat16 unavailable: " in plan, plan


@pytest.mark.slow
def test_example_backend_compiles_every_op_with_xla_on_request(installed_example, records, tmp_path):
    trained, plan = _train_with_example(records, str(tmp_path / "run"), "--cpu_xla_jit", "all")
    assert "XLA JIT on (all supported ops" in plan
    assert "Compiled cluster using XLA" in trained.stderr


@pytest.mark.slow
def test_a_second_distribution_claiming_an_installed_name_is_refused(installed_example, tmp_path):
    site = str(tmp_path)
    _write_distribution(site, "unet3d-cpu-xla-fork", "cpu_xla_fork", _plugin_source(EXAMPLE_BACKEND),
                        EXAMPLE_BACKEND)
    result = _cli_with_site(site, ["backends"])
    assert result.returncode == 1
    message = result.stderr.strip()
    assert "backend name 'cpu-xla' is claimed by two installed distributions" in message
    assert "unet3d-cpu-xla (unet3d_cpu_xla.plugin)" in message
    assert "unet3d-cpu-xla-fork (cpu_xla_fork)" in message
    assert "\n" not in message


def test_two_distributions_claiming_one_name_are_both_named(tmp_path):
    site = str(tmp_path)
    _write_distribution(site, "alpha-accel", "alpha_accel", _plugin_source("accel"), "accel")
    _write_distribution(site, "beta-accel", "beta_accel", _plugin_source("accel"), "accel")
    result = _cli_with_site(site, ["backends"])
    assert result.returncode == 1
    assert "backend name 'accel' is claimed by two installed distributions" in result.stderr
    assert "alpha-accel (alpha_accel)" in result.stderr and "beta-accel (beta_accel)" in result.stderr


def test_installed_plugin_with_unknown_hook_fails_at_load_naming_plugin_and_hook(tmp_path):
    site = str(tmp_path)
    _write_distribution(site, "coffee-accel", "coffee_accel", _plugin_source("coffee", """
        @hookimpl
        def unet3d_make_coffee(options):
            return None
        """), "coffee")
    result = _cli_with_site(site, ["backends"])
    assert result.returncode == 1
    assert "backend 'coffee' (coffee-accel)" in result.stderr
    assert "unet3d_make_coffee" in result.stderr


def test_installed_plugin_with_wrong_signature_fails_at_load_naming_plugin_and_hook(tmp_path):
    site = str(tmp_path)
    _write_distribution(site, "colour-accel", "colour_accel", _plugin_source("colour", """
        @hookimpl
        def unet3d_session_config(config, options, strategy, colour):
            return config
        """), "colour")
    result = _cli_with_site(site, ["backends"])
    assert result.returncode == 1
    assert "backend 'colour' (colour-accel)" in result.stderr
    assert "unet3d_session_config" in result.stderr


def test_installed_plugin_that_raises_in_a_hook_is_named(records, tmp_path):
    site = str(tmp_path)
    _write_distribution(site, "flaky-accel", "flaky_accel", _plugin_source("flaky", """
        @hookimpl
        def unet3d_backend_options(flags, core):
            raise RuntimeError("device firmware too old")
        """), "flaky")
    result = _cli_with_site(site, ["train", "--data_dir", records, "--model_dir",
                                   str(tmp_path / "run"), "--backend", "flaky"])
    assert result.returncode == 1
    assert ("backend 'flaky' (flaky-accel) failed in hook unet3d_backend_options: "
            "RuntimeError: device firmware too old") in result.stderr
    assert not os.path.exists(str(tmp_path / "run"))



def _guide_text():
    with open(GUIDE, encoding="utf-8") as handle:
        return handle.read()


def test_guide_documents_every_hook():
    headings = set(re.findall(r"^### (unet3d_\w+)$", _guide_text(), re.M))
    specs = {name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("unet3d_")}
    assert specs - headings == set(), "hooks without a section in docs/writing-a-backend.md"
    assert headings - specs == set(), "sections for hooks that no longer exist"


def test_guide_minimal_backend_is_a_valid_backend():
    blocks = re.findall(r"```python\n(.*?)```", _guide_text(), re.S)
    source = next(block for block in blocks if "def unet3d_backend_info" in block)
    module = types.ModuleType("mychip_unet3d_plugin")
    exec(compile(source, GUIDE, "exec"), module.__dict__)
    backend = plugins.load_backend(module, "mychip", distribution="mychip-unet3d")
    parser = argparse.ArgumentParser()
    backend.add_options(parser)
    core = CoreSettings("mychip", model_dir="/tmp/run")
    options = backend.backend_options(vars(parser.parse_args(["--mychip_threads", "3"])), core)
    assert options.core is core
    config = backend.session_config(_Config(), options, DistributedStrategy())
    assert config.intra_op_parallelism_threads == 3
    with pytest.raises(ConfigError, match="--mychip_threads"):
        backend.backend_options(vars(parser.parse_args(["--mychip_threads", "0"])), core)


class _Config:
    """Stands in for tf.compat.v1.ConfigProto: the guide's hook only sets one field."""

    intra_op_parallelism_threads = 0
