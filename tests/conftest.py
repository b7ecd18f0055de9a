"""Shared fixtures: a tiny synthetic BraTS tree, its records, and a CLI runner.

Everything runs at toy sizes (32x32x24 volumes, 16^3 crops, 4 base filters,
depth 3) so each TensorFlow environment gets through the suite in minutes.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The fakes of CANN's adapters run under each environment's TensorFlow (2.15 too), which the real ones are not
# built for; tests/test_npu_backend.py checks the refusal with this unset.
os.environ.setdefault("UNET3D_NPU_ANY_TENSORFLOW", "1")

TINY_SHAPE = (32, 32, 24)
TINY_MODEL = ["--input_shape", "16", "16", "16", "--base_filters", "4", "--max_filters", "16", "--depth", "3",
              "--eval_crop", "224", "224", "155"]


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory):
    from unet3d_core.data.synth import write_synthetic_dataset

    folder = str(tmp_path_factory.mktemp("raw") / "brats")
    write_synthetic_dataset(folder, cases=10, shape=TINY_SHAPE, seed=3)
    return folder


@pytest.fixture(scope="session")
def records(raw_dataset, tmp_path_factory):
    from unet3d_core.data.preprocess import preprocess

    folder = str(tmp_path_factory.mktemp("records") / "data")
    preprocess(raw_dataset, folder, folds=5, seed=0, show_progress=False)
    return folder


@pytest.fixture
def fake_npu():
    """tests/fake_npu's npu_bridge and hccl importable in this process for one test; its path, on sys.path
    until the test ends. Afterwards sys.path and sys.modules hold nothing of the fake (see fake_npu_env)."""
    from fake_npu_env import fake_npu_importable

    with fake_npu_importable() as folder:
        yield folder


def run_cli(args, check=True):
    """Run ``cli.main`` in this process; return its exit code."""
    import cli

    code = cli.main([str(arg) for arg in args])
    if check:
        assert code == 0, "cli.py {} exited {}".format(" ".join(map(str, args)), code)
    return code


def cli_subprocess(args, timeout=300, env=None, **kwargs):
    """Run ``python cli.py ARGS`` as a separate process; returns CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "cli.py")] + [str(arg) for arg in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          timeout=timeout, env=full_env, cwd=ROOT, **kwargs)


def record_intensity(record_files):
    """The intensity storage of the data set holding ``record_files`` (its manifest's)."""
    from unet3d_core.data.records import Manifest

    return Manifest(os.path.dirname(record_files[0])).intensity_format


def train_args(records_dir, model_dir, *extra):
    return ["train", "--data_dir", records_dir, "--model_dir", model_dir, "--batch_size", "2",
            "--log_every", "1", "--seed", "1", "--max_steps", "2"] + TINY_MODEL + list(extra)


def pid_with(variable, marker):
    """PID of a running cli.py whose environment holds ``variable`` (e.g. "RANK_ID=1") and whose
    command line contains ``marker`` (e.g. the run's model_dir), or None."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/{}/environ".format(pid), "rb") as handle:
                environ = handle.read().split(b"\0")
            with open("/proc/{}/cmdline".format(pid), "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if variable.encode() in environ and marker.encode() in cmdline and b"cli.py" in cmdline:
            return int(pid)
    return None
