"""GPU backend: one GPU per process, Horovod for several, AMP and XLA.

Available when TensorFlow was built with CUDA and the machine has an NVIDIA
GPU. ``--gpus N`` starts N workers with Horovod's launcher; started by the
user under ``horovodrun``/``mpirun`` (e.g. on several hosts), each process
joins that job and takes the GPU of its local rank. The network is built with
the core's textbook layer ops (no ``unet3d_layer_ops`` here): cuDNN runs them,
and the cpu backend's tuned sets were measured on CPUs only.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Optional

from backends import horovod
from unet3d_core import BackendInfo, WrappedOptimizer, hookimpl
from unet3d_core.errors import BackendError
from unet3d_core.types import CoreSettings

UNET3D_SHARED_OPTIONS = (horovod.OPTIONS,)  # --hosts


def _gpu_status():
    """(available, reason) without creating a session."""
    try:
        import tensorflow as tf
    except ImportError as error:
        return False, "TensorFlow is not importable: {}".format(error)
    if not tf.test.is_built_with_cuda():
        return False, "this TensorFlow has no CUDA support (install tensorflow, not tensorflow-cpu)"
    try:
        gpus = tf.config.list_physical_devices("GPU")
    except AttributeError:  # TensorFlow 1.15
        gpus = tf.config.experimental.list_physical_devices("GPU")
    if not gpus:
        return False, "no GPU visible to TensorFlow (check the driver and CUDA_VISIBLE_DEVICES)"
    return True, "{} GPU(s)".format(len(gpus))


_STATUS = []


def _status():
    if not _STATUS:  # probe once; importing TensorFlow is slow
        _STATUS.append(_gpu_status())
    return _STATUS[0]


def _quick_status():
    """(available, reason) from files and package metadata only: listing backends must not import TensorFlow."""
    import glob

    if importlib.util.find_spec("tensorflow") is None:
        return False, "TensorFlow is not installed"
    try:
        from importlib import metadata
    except ImportError:  # Python 3.7
        import importlib_metadata as metadata
    for name in ("tensorflow-cpu", "intel-tensorflow"):
        try:
            metadata.version(name)
            return False, "{} is installed, which has no CUDA support (install tensorflow)".format(name)
        except metadata.PackageNotFoundError:
            pass
    if not glob.glob("/dev/nvidia[0-9]*") and not glob.glob("/proc/driver/nvidia/gpus/*"):
        return False, "no NVIDIA GPU or driver found on this machine"
    return True, ""


@hookimpl
def unet3d_backend_info():
    available, reason = _quick_status()
    return BackendInfo(name="gpu", summary="NVIDIA GPUs (one per process)", available=available, reason=reason)


@hookimpl
def unet3d_add_options(group):
    group.add_argument("--gpus", type=int, default=1,
                       help="GPUs on this machine, one worker process each through Horovod (default 1)")
    group.add_argument("--amp", action="store_true",
                       help="automatic mixed precision: float16 graph rewrite with dynamic loss scaling (gpu)")
    group.add_argument("--xla", action="store_true", help="XLA JIT compilation of the graph (gpu)")


@dataclass(frozen=True)
class GpuOptions:
    """The gpu backend's flags (``unet3d_add_options``), checked, beside the core's settings."""

    core: CoreSettings
    gpus: int = 1
    amp: bool = False
    xla: bool = False
    hosts: Optional[str] = None  # Horovod's --hosts (backends/horovod.py)


@hookimpl
def unet3d_backend_options(flags, core):
    options = GpuOptions(core=core, **flags)
    horovod.validate_process_count("gpus", options.gpus, "Horovod is not installed (HOROVOD_WITH_TENSORFLOW=1 "
                                   "HOROVOD_GPU_OPERATIONS=NCCL pip install horovod)")
    return options


@hookimpl
def unet3d_launch(options, worker_command):
    return horovod.launch(options, worker_command, options.gpus)


@hookimpl
def unet3d_prepare_environment(options):
    available, reason = _status()
    if not available:
        raise BackendError("gpu backend: {}".format(reason))


@hookimpl
def unet3d_distributed_strategy(options):
    return horovod.distributed_strategy()  # None outside a Horovod job: one GPU, one process


@hookimpl
def unet3d_session_config(config, options, strategy):
    import tensorflow as tf

    config.gpu_options.allow_growth = True
    config.gpu_options.visible_device_list = str(strategy.local_rank)  # one GPU per process
    # Input-pipeline and host ops: a share of the cores per local process.
    config.intra_op_parallelism_threads = max(1, (os.cpu_count() or 1) // strategy.local_size)
    if options.xla:
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return config


@hookimpl
def unet3d_mixed_precision(optimizer, options, strategy):
    if not options.amp:
        return WrappedOptimizer(optimizer)
    import tensorflow as tf

    # The graph rewrite casts eligible ops to float16 and wraps the optimizer
    # with dynamic loss scaling; TF 1.15 and 2.x spell its module differently.
    rewrite = getattr(getattr(tf.compat.v1, "mixed_precision", None), "enable_mixed_precision_graph_rewrite", None)
    if rewrite is None:
        rewrite = tf.compat.v1.train.experimental.enable_mixed_precision_graph_rewrite
    return WrappedOptimizer(rewrite(optimizer, loss_scale="dynamic"))
