"""GPU backend: one GPU per process, memory growth, optional XLA.

Available when TensorFlow was built with CUDA and sees at least one GPU.
Multi-GPU training (Horovod, NCCL) and AMP build on these hooks.
"""
from __future__ import annotations

from unet3d_core import BackendInfo, hookimpl
from unet3d_core.errors import BackendError


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
    import importlib.util

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
    group.add_argument("--xla", action="store_true", help="XLA JIT compilation of the graph (gpu backend)")


@hookimpl
def unet3d_prepare_environment(options):
    available, reason = _status()
    if not available:
        raise BackendError("gpu backend: {}".format(reason))


@hookimpl
def unet3d_session_config(config, options, strategy):
    import tensorflow as tf

    config.gpu_options.allow_growth = True
    config.gpu_options.visible_device_list = str(strategy.local_rank)
    if options.xla:
        config.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return config
