"""The GPU backend's hooks, checked on the CPU (no GPU is needed or used)."""

import os

import pytest
import tensorflow as tf
from strategies import FixedStrategy

from backends import horovod
from backends.gpu import plugin as gpu
from unet3d_core import plugins
from unet3d_core.errors import ConfigError
from unet3d_core.layers import LayerOps
from unet3d_core.types import CoreSettings


def _options(**flags):
    """The gpu backend's frozen options (not checked: launching 4 processes needs no Horovod in a test)."""
    return gpu.GpuOptions(core=CoreSettings("gpu", model_dir="/tmp/run"), **flags)


def test_each_process_sees_the_gpu_of_its_local_rank_with_memory_growth():
    config = gpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(), FixedStrategy(local_rank=3))
    assert config.gpu_options.visible_device_list == "3"
    assert config.gpu_options.allow_growth
    assert config.graph_options.optimizer_options.global_jit_level == 0
    # The host's cores are shared among the workers the launcher put on it (the strategy's local_size).
    crowded = FixedStrategy(local_rank=3, local_size=4 * (os.cpu_count() or 1))
    config = gpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(), crowded)
    assert config.intra_op_parallelism_threads == 1


def test_xla_turns_on_global_jit():
    config = gpu.unet3d_session_config(tf.compat.v1.ConfigProto(), _options(xla=True), FixedStrategy(local_rank=0))
    assert config.graph_options.optimizer_options.global_jit_level == tf.compat.v1.OptimizerOptions.ON_1


def test_amp_wraps_the_optimizer_with_dynamic_loss_scaling():
    graph = tf.Graph()
    with graph.as_default():
        adam = tf.compat.v1.train.AdamOptimizer(0.1)
        assert gpu.unet3d_mixed_precision(adam, _options(), None).optimizer is adam
        try:
            wrapped = gpu.unet3d_mixed_precision(adam, _options(amp=True), None).optimizer
        finally:
            disable = getattr(getattr(tf.compat.v1, "mixed_precision", None),
                              "disable_mixed_precision_graph_rewrite", None) or \
                tf.compat.v1.train.experimental.disable_mixed_precision_graph_rewrite
            disable()
    assert type(wrapped).__name__ == "MixedPrecisionLossScaleOptimizer"


def test_gpus_launches_one_horovod_process_per_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(horovod, "launch_with_horovodrun", lambda n, command, **kw: calls.append((n, command, kw)) or 0)
    for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert gpu.unet3d_launch(_options(gpus=1), ["python", "cli.py"]) is None
    assert gpu.unet3d_launch(_options(gpus=4, hosts="a:2,b:2"), ["python", "cli.py", "train"]) == 0
    assert calls == [(4, ["python", "cli.py", "train"], {"hosts": "a:2,b:2", "log_dir": "/tmp/run/logs"})]
    # Inside a job started by horovodrun or mpirun, the process trains instead of launching.
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert gpu.unet3d_launch(_options(gpus=4), ["python", "cli.py"]) is None


def test_bad_gpu_count_is_refused():
    with pytest.raises(ConfigError, match="--gpus must be at least 1"):
        gpu.unet3d_backend_options(flags=dict(gpus=0, amp=False, xla=False, hosts=None), core=CoreSettings("gpu"))


def test_unavailable_here_with_a_reason():
    info = gpu.unet3d_backend_info()
    if info.available:
        pytest.skip("this machine has a usable GPU")
    assert info.reason


def test_a_gpu_process_builds_the_textbook_model():
    """cuDNN runs TensorFlow's own ops; the cpu backend's rewrites were measured on CPUs only."""
    ops = plugins.load_backend(gpu, "gpu").layer_ops(_options())
    assert type(ops) is LayerOps
