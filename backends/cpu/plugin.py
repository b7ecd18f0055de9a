"""CPU backend: thread settings, one process, full precision.

Always available. Multi-process CPU training (Horovod with Gloo) builds on
this backend's hooks.
"""
from __future__ import annotations

import os

from unet3d_core import BackendInfo, hookimpl
from unet3d_core.errors import ConfigError


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@hookimpl
def unet3d_backend_info():
    return BackendInfo(name="cpu", summary="CPU: CI and small jobs ({} cores here)".format(_cpu_count()),
                       available=True)


@hookimpl
def unet3d_add_options(group):
    group.add_argument("--cpu_threads", type=int, default=0,
                       help="threads per TensorFlow op (intra-op); 0 = one per core (default 0)")
    group.add_argument("--cpu_inter_op_threads", type=int, default=0,
                       help="ops run in parallel (inter-op); 0 = TensorFlow's choice (default 0)")


@hookimpl
def unet3d_validate_options(options):
    if options.backend != "cpu":
        return
    for flag in ("cpu_threads", "cpu_inter_op_threads"):
        if getattr(options, flag) < 0:
            raise ConfigError("--{} must be >= 0, got {}".format(flag, getattr(options, flag)))


@hookimpl
def unet3d_session_config(config, options, strategy):
    config.intra_op_parallelism_threads = options.cpu_threads or _cpu_count()
    config.inter_op_parallelism_threads = options.cpu_inter_op_threads
    return config
