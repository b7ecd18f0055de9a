"""CPU backend: thread settings, full precision, one process or several through Horovod (Gloo).

``--np N`` starts N worker processes with Horovod's launcher; under
``horovodrun``/``mpirun`` started by the user, each process joins that job.
The network's layers are computed by the CPU-tuned layer ops of
backends/cpu/kernels.py (``--cpu_kernels``), with the project's C++ ops of
backends/cpu/native where they are built (``--cpu_native_ops``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from typing import Optional

from backends import horovod
from unet3d_core import BackendInfo, hookimpl
from unet3d_core.errors import ConfigError
from unet3d_core.types import CoreSettings

KERNEL_CHOICES = ("auto", "onednn", "eigen", "textbook")
NATIVE_OPS_CHOICES = ("on", "off")
UNET3D_SHARED_OPTIONS = (horovod.OPTIONS,)  # --hosts


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
    group.add_argument("--np", type=int, default=1,
                       help="worker processes (Horovod with Gloo); 1 = train in this process (default 1)")
    group.add_argument("--cpu_threads", type=int, default=0,
                       help="threads per TensorFlow op (intra-op); 0 = this process's share of the cores (default 0)")
    group.add_argument("--cpu_inter_op_threads", type=int, default=1,
                       help="ops run in parallel (inter-op); 0 = TensorFlow's choice (default 1: one op at a "
                            "time, each on all the intra-op threads)")
    group.add_argument("--cpu_kernels", choices=KERNEL_CHOICES, default="auto",
                       help="how the network's layers are computed: onednn (fastest with TensorFlow 2), eigen "
                            "(fastest with TensorFlow 1.15), textbook (TensorFlow's own ops and gradients); auto = "
                            "this TensorFlow's fastest (default auto). Same variables and checkpoints with each")
    group.add_argument("--cpu_native_ops", choices=NATIVE_OPS_CHOICES, default="on",
                       help="the project's C++ CPU ops (fused instance norm, tap sum, kernel gradients) in the "
                            "onednn and eigen layer ops where they are built; off = TensorFlow's ops only "
                            "(default on)")


@dataclass(frozen=True)
class CpuOptions:
    """The cpu backend's flags (``unet3d_add_options``), checked, beside the core's settings."""

    core: CoreSettings
    np: int = 1
    hosts: Optional[str] = None  # Horovod's --hosts (backends/horovod.py)
    cpu_threads: int = 0
    cpu_inter_op_threads: int = 1
    cpu_kernels: str = "auto"
    cpu_native_ops: str = "on"


@hookimpl
def unet3d_backend_options(flags, core):
    options = CpuOptions(core=core, **flags)
    for flag in ("cpu_threads", "cpu_inter_op_threads"):
        if getattr(options, flag) < 0:
            raise ConfigError("--{} must be >= 0, got {}".format(flag, getattr(options, flag)))
    # argparse checks the command line; options built in code (benchmarks, tests) are checked here.
    for flag, choices in (("cpu_kernels", KERNEL_CHOICES), ("cpu_native_ops", NATIVE_OPS_CHOICES)):
        if getattr(options, flag) not in choices:
            raise ConfigError("--{} {!r}: expected one of {}".format(flag, getattr(options, flag), ", ".join(choices)))
    horovod.validate_process_count("np", options.np, "Horovod is not installed in this environment (run 'make "
                                   "venvs', or HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 pip install horovod)")
    return options


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the kernel.

    By default every buffer over 32 MB is a fresh mmap, unmapped when freed,
    and the heaps of TensorFlow's worker threads shrink after each op; the next
    step then faults every page in again. A training step allocates and frees
    the same sizes each time, so with one heap that is never trimmed and no
    mmap its memory is reused: TensorFlow 1.15's step at 2x64^3 went from about
    1,000,000 page faults and 2 s of system time to 60,000 and 0.2 s (TensorFlow
    2's oneDNN build faults little either way). The resident size stays at the
    step's peak. Returns False where the C library is not glibc.
    """
    if not _glibc():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # One arena first: only heaps made after this call follow it, so it runs
    # before TensorFlow starts its threads.
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1)))


@hookimpl
def unet3d_prepare_environment(options):
    keep_freed_memory()


@hookimpl
def unet3d_launch(options, worker_command):
    return horovod.launch(options, worker_command, options.np)


@hookimpl
def unet3d_distributed_strategy(options):
    return horovod.distributed_strategy()  # None outside a Horovod job: the core's single process


@hookimpl
def unet3d_layer_ops(options):
    from backends.cpu import kernels  # imports TensorFlow: only in a process that builds the network

    return kernels.layer_ops(options.cpu_kernels, native_ops=options.cpu_native_ops == "on")


@hookimpl
def unet3d_session_config(config, options, strategy):
    # Processes sharing a machine share its cores (the strategy knows how many run here).
    config.intra_op_parallelism_threads = options.cpu_threads or max(1, _cpu_count() // strategy.local_size)
    config.inter_op_parallelism_threads = options.cpu_inter_op_threads
    return config
