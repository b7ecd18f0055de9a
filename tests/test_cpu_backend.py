"""The CPU backend's thread and memory settings and its choice of layer ops."""
import argparse
import dataclasses
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from strategies import FixedStrategy

from backends.cpu import plugin as cpu
from unet3d_core import plugins
from unet3d_core.errors import ConfigError
from unet3d_core.layers import LayerOps
from unet3d_core.types import CoreSettings, DistributedStrategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(*argv):
    parser = argparse.ArgumentParser()
    cpu.unet3d_add_options(parser)
    return vars(parser.parse_args(list(argv)))


def _options(*argv):
    """The cpu backend's frozen options for these flags, as its unet3d_backend_options returns them."""
    return cpu.unet3d_backend_options(flags=_flags(*argv), core=CoreSettings("cpu"))


def test_each_op_gets_every_core_and_ops_run_one_at_a_time():
    config = cpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(), DistributedStrategy())
    assert config.intra_op_parallelism_threads == cpu._cpu_count()
    assert config.inter_op_parallelism_threads == 1


def test_thread_flags_and_local_workers_are_followed(monkeypatch):
    # The workers on this host come from the strategy (Horovod's local_size), not from the environment.
    monkeypatch.setenv("HOROVOD_LOCAL_SIZE", "1")
    crowded = FixedStrategy(local_size=2 * cpu._cpu_count())
    config = cpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(), crowded)
    assert config.intra_op_parallelism_threads == 1
    if cpu._cpu_count() >= 2:
        config = cpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(), FixedStrategy(local_size=2))
        assert config.intra_op_parallelism_threads == cpu._cpu_count() // 2
    config = cpu.unet3d_session_config(tf.compat.v1.ConfigProto(),
                                       _options("--cpu_threads", "3", "--cpu_inter_op_threads", "0"),
                                       crowded)
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (3, 0)


# Allocates and frees a 256 MB buffer twice, prints the page faults of the second time.
_REALLOCATION = """
import resource, sys
sys.path.insert(0, {root!r})
if sys.argv[1] == "keep":
    from backends.cpu.plugin import keep_freed_memory
    assert keep_freed_memory()
import numpy as np
size = 256 * 2 ** 20
np.ones(size, np.uint8).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(size, np.uint8).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not cpu._glibc(), reason="glibc only")
def test_freed_memory_is_reused_without_faulting_it_in_again():
    def faults(mode):
        script = _REALLOCATION.format(root=ROOT)
        return int(subprocess.run([sys.executable, "-c", script, mode], check=True, capture_output=True,
                                  text=True).stdout)

    # By default glibc maps the buffer afresh, and every page (4 kB, or 2 MB where
    # numpy asks for huge pages) faults in again.
    default = faults("default")
    assert default >= 256 * 2 ** 20 // (2 * 2 ** 20)
    assert faults("keep") * 10 < default


def test_the_network_gets_this_tensorflows_tuned_ops_unless_told_otherwise():
    backend = plugins.load_backend(cpu, "cpu")
    tuned = backend.layer_ops(_options())
    assert tuned.name == ("onednn" if tf.__version__.startswith("2.") else "eigen")
    assert type(backend.layer_ops(_options("--cpu_kernels", "textbook"))) is LayerOps
    assert backend.layer_ops(_options("--cpu_kernels", "eigen", "--cpu_native_ops", "off")).native is None


def test_a_bad_kernels_choice_is_refused_by_the_cli_and_in_code():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--cpu_kernels", "fast"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "--cpu_kernels: invalid choice: 'fast'" in result.stderr
    with pytest.raises(ConfigError, match="--cpu_native_ops 'maybe': expected one of on, off"):
        cpu.unet3d_backend_options(flags=dict(_flags(), cpu_native_ops="maybe"), core=CoreSettings("cpu"))
    with pytest.raises(ConfigError, match="--cpu_threads must be >= 0, got -1"):
        _options("--cpu_threads", "-1")
    with pytest.raises(dataclasses.FrozenInstanceError):  # what the hooks receive cannot be written
        _options().cpu_threads = 2
