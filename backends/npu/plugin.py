"""NPU backend: Huawei Ascend through CANN's TensorFlow 1.15 adapter (``npu_bridge``).

``python cli.py train --backend npu --npus 8`` builds (or checks) the rank
table, applies the sync_mode workaround once, starts one process per device
with the adapter's environment, and each process trains with the
NpuOptimizer session config, loss scaling and HCCL data parallelism.
Available when ``npu_bridge`` is importable (it ships with CANN, not PyPI).
The network is built with the core's textbook layer ops (no
``unet3d_layer_ops`` here): the adapter compiles the graph for the device.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time

from backends.npu import config as npu_config
from backends.npu import launcher, rank_table, sync_mode
from unet3d_core import BackendInfo, hookimpl
from unet3d_core.distributed import steps_per_worker
from unet3d_core.errors import BackendError, ConfigError

INSTALL_HINT = "npu_bridge not importable — install CANN's TensorFlow adapter and source its set_env.sh"
DEFAULT_HCCN_CONF = "/etc/hccn.conf"


def _adapter_present() -> bool:
    try:
        return importlib.util.find_spec("npu_bridge") is not None
    except (ImportError, ValueError):
        return False


def _device_ids(options):
    if options.device_ids is None:
        return list(range(options.npus))
    try:
        ids = [int(part) for part in options.device_ids.split(",") if part.strip()]
    except ValueError:
        raise ConfigError("--device_ids {}: expected comma-separated integers like 0,1,2,3".format(
            options.device_ids)) from None
    if len(ids) != options.npus:
        raise ConfigError("--device_ids {}: {} device(s) listed for --npus {}".format(
            options.device_ids, len(ids), options.npus))
    if len(set(ids)) != len(ids) or any(not 0 <= device < rank_table.MAX_DEVICES_PER_SERVER for device in ids):
        raise ConfigError("--device_ids {}: ids must be distinct and within 0..{}".format(
            options.device_ids, rank_table.MAX_DEVICES_PER_SERVER - 1))
    return ids


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _launches_workers(options) -> bool:
    return not os.environ.get(launcher.WORKER_VARIABLE) and (options.npus > 1 or options.rank_table is not None)


def _say(text: str) -> None:
    print("[npu] " + text, flush=True)


def _apply_sync_mode_patch(options) -> None:
    if options.no_sync_mode_patch:
        return
    path = sync_mode.find_cce_build()
    if path is None:
        _say("sync_mode workaround: no te/platform/cce_build.py in this installation, nothing to patch")
        return
    _say("sync_mode workaround: {}: {}".format(path, sync_mode.patch(path)))


@hookimpl
def unet3d_backend_info():
    available = _adapter_present()
    return BackendInfo(name="npu", summary="Huawei Ascend NPU (CANN TensorFlow adapter)", available=available,
                       reason="" if available else INSTALL_HINT)


@hookimpl
def unet3d_add_options(group):
    group.add_argument("--npus", type=int, default=1, help="Ascend devices on this server, one process each "
                                                           "(default 1)")
    group.add_argument("--device_ids", default=None, help="devices to use, e.g. 0,1,2,3 (default 0..npus-1)")
    group.add_argument("--rank_table", default=None, metavar="FILE",
                       help="HCCL rank table (versions 1.0, 1.2); default: built from --hccn_conf")
    group.add_argument("--hccn_conf", default=DEFAULT_HCCN_CONF,
                       help="device NIC addresses for the built rank table (default /etc/hccn.conf)")
    group.add_argument("--server_id", default=None,
                       help="this server's id in the rank table (default: the host's address / the only server)")
    group.add_argument("--job_id", default=None, help="JOB_ID for HCCL (default: generated)")
    group.add_argument("--hccl_connect_timeout", type=int, default=None, help="HCCL_CONNECT_TIMEOUT in seconds")
    group.add_argument("--precision_mode", choices=npu_config.PRECISION_MODES,
                       default=npu_config.DEFAULT_PRECISION_MODE,
                       help="NpuOptimizer precision_mode (default allow_fp32_to_fp16, as on the 910)")
    group.add_argument("--iterations_per_loop", type=int, default=1,
                       help="training steps per session.run on the device (default 1)")
    group.add_argument("--hcom_parallel", action="store_true", help="overlap gradient allreduce with compute")
    group.add_argument("--enable_data_pre_proc", action="store_true",
                       help="run the input pipeline's GetNext on the device (implied by --iterations_per_loop > 1)")
    group.add_argument("--mix_compile_mode", action="store_true",
                       help="let unsupported ops fall back to the host (needs --iterations_per_loop 1)")
    group.add_argument("--npu_option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other NpuOptimizer parameter, repeatable (true/false, numbers, strings)")
    group.add_argument("--npu_loss_scale", type=float, default=1.0,
                       help="< 1: none; 1: dynamic (from 2^32, x2 after 1000 good steps, x0.5 after 2 overflows); "
                            "> 1: fixed at that value (default 1)")
    group.add_argument("--no_sync_mode_patch", action="store_true",
                       help="do not apply the sync_mode=0 workaround to te/platform/cce_build.py")


@hookimpl
def unet3d_add_commands(commands):
    npu = commands.add_parser("npu", help="NPU tools: the sync_mode workaround and rank tables",
                              description="NPU tools: the sync_mode workaround and rank tables.")
    tools = npu.add_subparsers(dest="npu_command", metavar="TOOL")
    tools.required = True
    for name, handler, text in (("patch", _command_patch, "apply the sync_mode=0 workaround now"),
                                ("unpatch", _command_unpatch, "restore te/platform/cce_build.py from its backup")):
        tool = tools.add_parser(name, help=text, description=text)
        tool.add_argument("--path", default=None, help="cce_build.py to use (default: found in this installation)")
        tool.set_defaults(command_handler=handler)
    table = tools.add_parser("rank-table", help="build a version 1.0 rank table, or check one",
                             description="Print a version 1.0 rank table built from hccn.conf, or check a file.")
    table.add_argument("--check", default=None, metavar="FILE", help="validate this rank table instead")
    table.add_argument("--npus", type=int, default=8, help="devices (default 8)")
    table.add_argument("--device_ids", default=None, help="devices to use (default 0..npus-1)")
    table.add_argument("--hccn_conf", default=DEFAULT_HCCN_CONF, help="device addresses (default /etc/hccn.conf)")
    table.add_argument("--server_id", default=None, help="this server's address (default: the host's)")
    table.set_defaults(command_handler=_command_rank_table)


def _command_patch(options) -> int:
    path = options.path or sync_mode.find_cce_build()
    if path is None:
        raise BackendError("no te/platform/cce_build.py found in this installation (pass --path)")
    print("{}: {}".format(path, sync_mode.patch(path)))
    return 0


def _command_unpatch(options) -> int:
    path = options.path or sync_mode.find_cce_build()
    if path is None:
        raise BackendError("no te/platform/cce_build.py found in this installation (pass --path)")
    print("{}: {}".format(path, sync_mode.unpatch(path)))
    return 0


def _command_rank_table(options) -> int:
    import json

    if options.check:
        table = rank_table.load_rank_table(options.check)
        print("{}: valid version {} rank table, {} rank(s) on {} server(s)".format(
            options.check, table.version, table.size, len(table.server_ids)))
        return 0
    built = rank_table.build_rank_table(options.server_id or _host_address(), _device_ids(options),
                                        rank_table.read_hccn_conf(options.hccn_conf), options.hccn_conf)
    print(json.dumps(built, indent=2))
    return 0


def _table_for(options):
    """(validated table, path) for this run; a built table is written into the run folder."""
    if options.rank_table is not None:
        return rank_table.load_rank_table(options.rank_table), os.path.abspath(options.rank_table)
    built = rank_table.build_rank_table(options.server_id or _host_address(), _device_ids(options),
                                        rank_table.read_hccn_conf(options.hccn_conf), options.hccn_conf)
    return rank_table.validate_rank_table(built, "built rank table"), None


@hookimpl
def unet3d_validate_options(options):
    if options.backend != "npu":
        return
    if options.npus < 1:
        raise ConfigError("--npus must be at least 1, got {}".format(options.npus))
    _device_ids(options)
    ranks = options.npus
    if _launches_workers(options):
        launcher.refuse_mixed_environment(dict(os.environ))
        table, _ = _table_for(options)
        server = rank_table.this_server(table, options.server_id if options.rank_table else None)
        here = len(table.devices_of(server))
        if here != options.npus:
            raise ConfigError("--npus {}: the rank table has {} device(s) on server {}".format(
                options.npus, here, server))
        ranks = table.size
    elif os.environ.get(launcher.WORKER_VARIABLE):
        ranks = int(os.environ.get("RANK_SIZE", "1"))
    npu_config.validate(options, steps_per_worker(options.max_steps, ranks))


@hookimpl
def unet3d_launch(options, worker_command):
    if not _launches_workers(options):
        return None
    if not _adapter_present():
        raise BackendError("npu backend: " + INSTALL_HINT)
    _apply_sync_mode_patch(options)  # once, before any rank starts
    table, table_path = _table_for(options)
    if table_path is None:
        table_path = os.path.join(os.path.abspath(options.model_dir), "rank_table.json")
        rank_table.write_rank_table(rank_table.build_rank_table(
            table.devices[0].server_id, [device.device_id for device in table.devices],
            {device.device_id: device.device_ip for device in table.devices}), table_path)
    server = rank_table.this_server(table, options.server_id if options.rank_table else None)
    job_id = options.job_id or "unet3d-{}-{}".format(os.getpid(), int(time.time()))
    workers = launcher.worker_environments(table=table, server_id=server, table_path=table_path, job_id=job_id,
                                           model_dir=os.path.abspath(options.model_dir), base=dict(os.environ),
                                           hccl_connect_timeout=options.hccl_connect_timeout)
    _say("starting {} rank(s) on server {} (devices {}), {} rank(s) in all; rank table {}; logs in {}".format(
        len(workers), server, ",".join(str(worker.device_id) for worker in workers), table.size, table_path,
        os.path.join(options.model_dir, "Device-<id>", "train.log")))
    return launcher.run_workers(workers, worker_command, stream=sys.stdout)


@hookimpl
def unet3d_prepare_environment(options):
    if not _adapter_present():
        raise BackendError("npu backend: " + INSTALL_HINT)
    if os.environ.get(launcher.WORKER_VARIABLE):
        return  # the launcher prepared the environment and applied the patch
    # One device in this process: the variables the launcher would have set.
    os.environ.setdefault("ASCEND_DEVICE_ID", str(_device_ids(options)[0]))
    os.environ.setdefault("JOB_ID", options.job_id or "unet3d-{}".format(os.getpid()))
    _apply_sync_mode_patch(options)


def _session_config(options):
    import tensorflow as tf

    return npu_config.apply_session_config(tf.compat.v1.ConfigProto(allow_soft_placement=True),
                                           npu_config.npu_parameters(options))


@hookimpl
def unet3d_distributed_strategy(options):
    if int(os.environ.get("RANK_SIZE", "1")) > 1:
        from backends.npu.strategy import HcclStrategy

        return HcclStrategy(_session_config(options))
    return None  # one device


@hookimpl
def unet3d_session_config(config, options, strategy):
    return npu_config.apply_session_config(config, npu_config.npu_parameters(options))


@hookimpl
def unet3d_mixed_precision(optimizer, options, strategy):
    kind, scale = npu_config.loss_scale_choice(options.npu_loss_scale)
    if kind == "none":
        return optimizer
    from npu_bridge import npu_init

    from backends.npu.strategy import OverflowCountingOptimizer

    if kind == "fixed":
        manager = npu_init.FixedLossScaleManager(loss_scale=scale)
    else:
        manager = npu_init.ExponentialUpdateLossScaleManager(
            init_loss_scale=scale, incr_every_n_steps=npu_config.DYNAMIC_GROWTH_STEPS,
            decr_every_n_nan_or_inf=npu_config.DYNAMIC_SHRINK_AFTER_OVERFLOWS,
            incr_ratio=npu_config.DYNAMIC_GROWTH_RATIO, decr_ratio=npu_config.DYNAMIC_SHRINK_RATIO)
    distributed = strategy.size > 1
    # The adapter's order: loss scaling outside, the distributed reduction inside.
    inner = npu_init.NPUDistributedOptimizer(optimizer) if distributed else optimizer
    return OverflowCountingOptimizer(npu_init.NPULossScaleOptimizer(inner, manager, is_distributed=distributed),
                                     manager, distributed)


@hookimpl
def unet3d_training_loop(session, train_op, options):
    if options.iterations_per_loop <= 1:
        return train_op, 1
    from npu_bridge.estimator.npu import util

    return util.set_iteration_per_loop(session, train_op, options.iterations_per_loop), options.iterations_per_loop
