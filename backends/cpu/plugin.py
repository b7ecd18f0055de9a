"""CPU backend: thread settings, full precision, one process or several through Horovod (Gloo).

``--np N`` starts N worker processes with Horovod's launcher; under
``horovodrun``/``mpirun`` started by the user, each process joins that job.
"""
from __future__ import annotations

import importlib.util
import os

from unet3d_core import BackendInfo, hookimpl
from unet3d_core.distributed import HorovodStrategy, inside_horovod_job, launch_with_horovodrun
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
    group.add_argument("--np", type=int, default=1,
                       help="worker processes (Horovod with Gloo); 1 = train in this process (default 1)")
    group.add_argument("--cpu_threads", type=int, default=0,
                       help="threads per TensorFlow op (intra-op); 0 = this process's share of the cores (default 0)")
    group.add_argument("--cpu_inter_op_threads", type=int, default=0,
                       help="ops run in parallel (inter-op); 0 = TensorFlow's choice (default 0)")


@hookimpl
def unet3d_validate_options(options):
    if options.backend != "cpu":
        return
    for flag in ("cpu_threads", "cpu_inter_op_threads"):
        if getattr(options, flag) < 0:
            raise ConfigError("--{} must be >= 0, got {}".format(flag, getattr(options, flag)))
    if options.np < 1:
        raise ConfigError("--np must be at least 1, got {}".format(options.np))
    if options.np > 1 and importlib.util.find_spec("horovod") is None:
        raise ConfigError("--np {}: Horovod is not installed in this environment (run 'make venvs', or "
                          "HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 pip install horovod)".format(options.np))


@hookimpl
def unet3d_launch(options, worker_command):
    if options.np <= 1 or inside_horovod_job():
        return None
    return launch_with_horovodrun(options.np, worker_command, hosts=options.hosts,
                                  log_dir=os.path.join(options.model_dir, "logs"))


@hookimpl
def unet3d_distributed_strategy(options):
    if inside_horovod_job():
        return HorovodStrategy()
    return None  # the core's single process


@hookimpl
def unet3d_session_config(config, options, strategy):
    # Processes sharing a machine share its cores.
    local_processes = int(os.environ.get("HOROVOD_LOCAL_SIZE", "1"))
    config.intra_op_parallelism_threads = options.cpu_threads or max(1, _cpu_count() // local_processes)
    config.inter_op_parallelism_threads = options.cpu_inter_op_threads
    return config
