"""NPU backend: Huawei Ascend through CANN's TensorFlow adapter, ``npu_bridge`` (TF Adapter 1.x, for
TensorFlow 1.15) or ``npu_device`` (TF Adapter 2.x, for TensorFlow 2.6.5, through its ``compat.v1``).

``python cli.py train --backend npu --npus 8`` builds (or checks) the rank
table, applies the sync_mode workaround once, starts one process per device
with the adapter's environment, and each process loads the adapter
(:mod:`backends.npu.adapter`; without it TensorFlow
ignores the NpuOptimizer and runs everything on the host) and trains with the
NpuOptimizer session config, loss scaling and HCCL data parallelism, with
the seed's run config by default (``iterations_per_loop`` 100, 10 with
``--benchmark``; ``hcom_parallel`` on). Available when either adapter is
importable (they ship with CANN, not PyPI).
The network is built with the core's textbook layer ops (no
``unet3d_layer_ops`` here): the adapter compiles the graph for the device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from backends.npu import adapter as npu_adapter
from backends.npu import check, devices, diagnostics, host_cpus, launcher, rank_table, run_devices, sync_mode
from backends.npu import config as npu_config
from backends.npu.options import LoopSize, NpuOptions
from backends.npu.strategy import HcclStrategy, loss_scaling_optimizer
from unet3d_core import BackendInfo, StepRunner, WrappedOptimizer, hookimpl
from unet3d_core.distributed import steps_per_worker
from unet3d_core.errors import BackendError, ConfigError

INSTALL_HINT = npu_adapter.INSTALL_HINT
# --cache on several ranks: the first step waits for the whole share; the others wait for the slowest in HCCL.
CACHE_NOTE = ("note: --cache: each rank reads and decodes its whole share of the training cases (about 80 MB each "
              "with uint16 storage) before its first step; ranks that finish first wait in the first gradient "
              "allreduce, which fails after HCCL_EXEC_TIMEOUT (1836 s by default on Atlas 910): raise "
              "--hccl_exec_timeout for a large data set, or train without --cache, which bound host cores feed fast "
              "enough (docs/npu.md)")
DEFAULT_HCCN_CONF = "/etc/hccn.conf"


def _adapter_present() -> bool:
    return npu_adapter.installed() is not None


def _single_device(options) -> int:
    """ASCEND_DEVICE_ID for a one-device run: the logical id of the physical device --device_ids names.

    Raises:
        ConfigError: that device is not visible to this process.
    """
    physical = run_devices.device_ids(options)[0]
    try:
        return launcher.logical_device_id(physical, launcher.visible_devices(dict(os.environ)))
    except ConfigError as error:
        raise ConfigError("--device_ids {}: {}".format(physical, error)) from None


def _launches_workers(options) -> bool:
    return options.launched is None and (options.npus > 1 or options.rank_table is not None)


def _say(text: str) -> None:
    print("[npu] " + text, flush=True)


def _iterations_per_loop_flag(text: str):
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive integer or auto, got {!r}".format(text))
    return value


def _split_strategy_flag(text: str):
    try:
        return npu_config.split_strategy(text)
    except ConfigError as error:  # argparse names the flag and the value itself
        raise argparse.ArgumentTypeError(str(error)) from None


def _load_adapter() -> None:
    """Load the adapter in this process: without it TensorFlow ignores the NpuOptimizer entry of the session
    config and runs the whole graph on the host, silently."""
    _say("adapter: " + npu_adapter.load().describe())


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
    name = npu_adapter.installed()
    summary = "Huawei Ascend NPU (CANN TensorFlow adapter{})".format(
        "" if name is None else ": " + ("npu_bridge, TF 1.15" if name == npu_adapter.TF1_ADAPTER
                                         else "npu_device.compat.v1, TF 2.6"))
    return BackendInfo(name="npu", summary=summary, available=name is not None,
                       reason="" if name is not None else INSTALL_HINT)


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
    group.add_argument("--hccl_connect_timeout", type=int, default=None, metavar="SECONDS",
                       help="HCCL_CONNECT_TIMEOUT for the ranks, {}..{} (HCCL's default 120; 300 for a job "
                            "over several servers)".format(
                           *npu_config.HCCL_CONNECT_TIMEOUT_RANGE))
    group.add_argument("--hccl_exec_timeout", type=int, default=None, metavar="SECONDS",
                       help="HCCL_EXEC_TIMEOUT for the ranks: how long a collective may wait, {}..{} on the Atlas "
                            "training series, applied in multiples of 68; 0..2147483647 on Atlas A2/A3, 0 = never "
                            "(HCCL's default 1836)".format(*npu_config.HCCL_EXEC_TIMEOUT_RANGE))
    group.add_argument("--precision_mode", choices=npu_config.PRECISION_MODES, default=None,
                       help="NpuOptimizer precision_mode (default {}, the Atlas training series' own, as in the "
                            "seed)".format(npu_config.DEFAULT_PRECISION_MODE))
    group.add_argument("--precision_mode_v2", choices=npu_config.PRECISION_MODES_V2, default=None,
                       help="NpuOptimizer precision_mode_v2 instead of --precision_mode (the adapter takes one)")
    group.add_argument("--iterations_per_loop", type=_iterations_per_loop_flag, default=None, metavar="N|auto",
                       help="training steps per session.run on the device. Default auto: the seed's 100 (10 with "
                            "--benchmark), or the largest divisor of the steps per device below that (with "
                            "--benchmark also of --warmup_steps), 1 with --mix_compile_mode; the log says which. "
                            "With hcom_parallel on, this is the seed's run config, so --benchmark compares like "
                            "with like against its 2.28 / 18.27 volumes/s")
    group.add_argument("--no_hcom_parallel", dest="hcom_parallel", action="store_false", default=True,
                       help="do not overlap the gradient allreduce with the backward pass (default: overlap, "
                            "hcom_parallel=true, as the seed)")
    group.add_argument("--hcom_parallel", dest="hcom_parallel", action="store_true", default=True,
                       help=argparse.SUPPRESS)  # the default now; kept for older command lines
    group.add_argument("--enable_data_pre_proc", action="store_true",
                       help="run the input pipeline's GetNext on the device (implied by --iterations_per_loop > 1)")
    group.add_argument("--mix_compile_mode", action="store_true",
                       help="let unsupported ops fall back to the host (needs --iterations_per_loop 1)")
    group.add_argument("--npu_option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other NpuOptimizer parameter the adapter reads, repeatable; typed as the adapter "
                            "reads the key (bools true/false/1/0, integers, strings as given) and checked as it "
                            "checks it")
    group.add_argument("--npu_loss_scale", type=float, default=1.0,
                       help="< 1: none; 1: dynamic (from 2^32, x2 after 1000 good steps, x0.5 after 2 overflows); "
                            "> 1: fixed at that value (default 1)")
    group.add_argument("--npu_cpu_binding", choices=host_cpus.BINDING_CHOICES, default="auto",
                       help="host cores of the ranks this server starts: auto (default) binds each rank to its own "
                            "share of the cores, NUMA node by node, as the reference's taskset lines did; off leaves "
                            "them unbound (their thread pools are then capped at the cores / ranks)")
    group.add_argument("--npu_split_strategy", type=_split_strategy_flag, default=None,
                       metavar="idx:I1,I2,...|size:P1,P2,...",
                       help="how HCCL splits the gradient allreduce into segments (set after HCCL starts): by the "
                            "last gradient index of each segment (the reference port sets idx:1,90,99 for its "
                            "network) or by percent of the gradient bytes (summing to 100); at most 8 segments "
                            "(default: HCCL's, by size 96.54/3.46)")
    group.add_argument("--no_sync_mode_patch", action="store_true",
                       help="do not apply the sync_mode=0 workaround to te/platform/cce_build.py")
    _add_chip_argument(group)
    diagnostics.add_options(group)


@hookimpl
def unet3d_add_commands(commands):
    npu = commands.add_parser("npu", help="NPU tools: the server check, rank tables, the sync_mode workaround",
                              description="NPU tools: the server check, rank tables, the sync_mode workaround.")
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
    _add_table_arguments(table)
    table.set_defaults(command_handler=_command_rank_table)
    checker = tools.add_parser("check", help="check this server for a run: adapter, CANN, devices, rank table, "
                                             "addresses, timeouts, sync_mode",
                               description="One table of what a run on this server depends on; exits 1 if a run "
                                           "would fail.")
    _add_table_arguments(checker)
    checker.add_argument("--rank_table", default=None, metavar="FILE",
                         help="the rank table the run will use (default: built from --hccn_conf)")
    checker.set_defaults(command_handler=check.command)


def _add_chip_argument(parser) -> None:
    parser.add_argument("--npu_chip", choices=("auto",) + rank_table.CHIPS, default="auto",
                        help="device family, for HCCL's placement rules: 910 (Atlas training series: 1, 2, 4 or 8 "
                             "devices per server, 2 or 4 within 0-3 or 4-7), 910b (Atlas A2), 910_93 (Atlas A3); "
                             "default auto: from npu-smi, else 910")


def _add_table_arguments(parser) -> None:
    """The devices of a run, for the npu tools (train has its own --npus, default 1)."""
    parser.add_argument("--npus", type=int, default=8, help="devices (default 8)")
    parser.add_argument("--device_ids", default=None, help="devices to use (default 0..npus-1)")
    parser.add_argument("--hccn_conf", default=DEFAULT_HCCN_CONF, help="device addresses (default /etc/hccn.conf)")
    parser.add_argument("--server_id", default=None, help="this server's address (default: the host's)")
    _add_chip_argument(parser)


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
        table = rank_table.load_rank_table(options.check, devices.resolve_chip(options.npu_chip))
        print("{}: valid version {} rank table, {} rank(s) on {} server(s)".format(
            options.check, table.version, table.size, len(table.server_ids)))
        return 0
    print(json.dumps(run_devices.built_table(options), indent=2))
    return 0


@hookimpl
def unet3d_backend_options(flags, core):
    options = NpuOptions(core=core, launched=launcher.launched_rank(dict(os.environ)), **flags)
    if options.npus < 1:
        raise ConfigError("--npus must be at least 1, got {}".format(options.npus))
    run_devices.device_ids(options)
    if options.launched is None:  # (the launcher starts its workers without CM_*)
        launcher.refuse_mixed_environment(dict(os.environ))
    if _launches_workers(options):
        table, _ = run_devices.table_for(options)
        server = rank_table.this_server(table, options.server_id if options.rank_table else None)
        here = len(table.devices_of(server))
        if here != options.npus:
            raise ConfigError("--npus {}: the rank table has {} device(s) on server {}".format(
                options.npus, here, server))
    elif options.launched is None and "ASCEND_DEVICE_ID" not in os.environ:
        _single_device(options)  # the device must be visible before anything is built
    # The adapter's flag rules and --iterations_per_loop, checked before anything starts; the loop size is a
    # field of the options from here on. Where auto rounds the steps per device up, the job's --max_steps
    # becomes that many on every rank (the core trains what options.core says).
    ranks = _rank_count(options)
    loop = _loop_size(options, ranks)
    core = options.core
    if loop.steps_per_device > steps_per_worker(core.max_steps, ranks):
        core = replace(core, max_steps=loop.steps_per_device * ranks)
    return replace(options, loop=loop, core=core)


def _rank_count(options: NpuOptions) -> int:
    """The ranks of the job: the rank table's in the launching process, the launcher's in a worker, else 1."""
    if _launches_workers(options):
        return run_devices.table_for(options)[0].size
    return options.launched.size if options.launched is not None else 1


def _loop_size(options: NpuOptions, ranks: int) -> LoopSize:
    steps = steps_per_worker(options.core.max_steps, ranks)
    return LoopSize(*npu_config.validate(options, steps, devices.resolve_chip(options.npu_chip)))


def _resolved(options: NpuOptions) -> NpuOptions:
    """``options`` whose ``iterations_per_loop`` is the resolved loop size."""
    return replace(options, iterations_per_loop=options.loop.iterations)


@hookimpl
def unet3d_launch(options, worker_command):
    if not _launches_workers(options):
        return None
    if not _adapter_present():
        raise BackendError("npu backend: " + INSTALL_HINT)
    npu_adapter.check_tensorflow()
    _apply_sync_mode_patch(options)  # once, before any rank starts
    table, table_path = run_devices.table_for(options)
    if table_path is None:
        table_path = os.path.join(os.path.abspath(options.core.model_dir), "rank_table.json")
        rank_table.write_rank_table(rank_table.build_rank_table(
            table.devices[0].server_id, [device.device_id for device in table.devices],
            {device.device_id: device.device_ip for device in table.devices}), table_path)
    server = rank_table.this_server(table, options.server_id if options.rank_table else None)
    job_id = options.job_id or "unet3d-{}-{}".format(os.getpid(), int(time.time()))
    cpu_sets = host_cpus.binding_for(options.npu_cpu_binding, len(table.devices_of(server)))
    workers = launcher.worker_environments(table=table, server_id=server, table_path=table_path, job_id=job_id,
                                           model_dir=os.path.abspath(options.core.model_dir), base=dict(os.environ),
                                           extra_environment=_hccl_timeouts(options, len(table.server_ids)),
                                           cpu_sets=cpu_sets)
    _say(_describe_binding(options, workers))
    _say("starting {} rank(s) on server {} (devices {}), {} rank(s) in all; rank table {}; logs in {}".format(
        len(workers), server, ",".join(str(worker.device_id) for worker in workers), table.size, table_path,
        os.path.join(options.core.model_dir, "Device-<id>", "train.log")))
    return launcher.run_workers(workers, worker_command, stream=sys.stdout)


def _hccl_timeouts(options, servers: int = 1):
    chip = devices.resolve_chip(options.npu_chip)
    variables = npu_config.hccl_timeouts(options, chip, servers)
    if "HCCL_EXEC_TIMEOUT" in variables:
        given = int(variables["HCCL_EXEC_TIMEOUT"])
        applied = npu_config.applied_exec_timeout(given, chip)
        _say("HCCL_EXEC_TIMEOUT {} s{}".format(given, "" if applied == given else
                                                " (HCCL on the Atlas training series applies {} s)".format(applied)))
    if servers > 1 and options.hccl_connect_timeout is None and "HCCL_CONNECT_TIMEOUT" in variables:
        _say("HCCL_CONNECT_TIMEOUT {} s for {} servers (HCCL's default 120 s is short for servers that start "
             "apart; --hccl_connect_timeout sets it)".format(variables["HCCL_CONNECT_TIMEOUT"], servers))
    return variables


def _describe_binding(options, workers) -> str:
    if options.npu_cpu_binding == "off":
        return "host cores: not bound (--npu_cpu_binding off); each rank's thread pools take the cores / ranks"
    if not any(worker.cpus for worker in workers):
        return "host cores: not bound ({})".format(
            "one rank" if len(workers) < 2 else "fewer cores than ranks")
    return "host cores: " + ", ".join("rank {} on {}".format(worker.rank, host_cpus.format_cpu_list(worker.cpus))
                                      for worker in workers)


def _describe_settings(options) -> str:
    parts = [npu_config.describe_precision(options)]
    if options.core.trains:
        loop = options.loop
        parts.append("iterations_per_loop {}{}".format(loop.iterations,
                                                         "" if loop.reason == "given" else " ({})".format(loop.reason)))
        parts.append("hcom_parallel {}".format("on" if options.hcom_parallel else "off (--no_hcom_parallel)"))
        parts.append(npu_config.describe_split(options.npu_split_strategy))
    parts.extend("{} into {}".format(flag, path) for flag, path in diagnostics.folders(options).items())
    return "; ".join(parts)


@hookimpl
def unet3d_prepare_environment(options):
    if not _adapter_present():
        raise BackendError("npu backend: " + INSTALL_HINT)
    npu_adapter.check_tensorflow()
    if options.launched is None:  # a launched worker has all of this from the launcher
        # One device in this process: the variables the launcher would have set.
        os.environ.setdefault("ASCEND_DEVICE_ID", str(_single_device(options)))
        os.environ.setdefault("JOB_ID", options.job_id or "unet3d-{}".format(os.getpid()))
        os.environ.update(_hccl_timeouts(options))
        _apply_sync_mode_patch(options)
    diagnostics.create_folders(options)  # the adapter refuses a dump_path that does not exist
    _load_adapter()  # in every process that builds a graph, worker or not
    _say(_describe_settings(options))
    if options.core.cache and options.core.trains and options.launched is not None and options.launched.size > 1:
        _say(CACHE_NOTE)


def _session_config(options):
    import tensorflow as tf

    return unet3d_session_config(tf.compat.v1.ConfigProto(allow_soft_placement=True), options, None, "training")


@hookimpl
def unet3d_distributed_strategy(options):
    if options.launched is not None and options.launched.size > 1:
        return HcclStrategy(_session_config(options), split=options.npu_split_strategy)
    return None  # one device


@hookimpl
def unet3d_session_config(config, options, strategy, phase):
    # The host side of a rank (input pipeline, host ops): its bound cores, else its share of the host's.
    bound = options.launched.cpus if options.launched is not None else ()
    threads = host_cpus.session_threads(bound, strategy.local_size if strategy is not None else 1)
    config.intra_op_parallelism_threads = threads
    if phase == "training":
        resolved = _resolved(options)
    else:  # inference sessions have no device loop (no IterationOp): one step per run
        resolved = replace(options, iterations_per_loop=1)
    return npu_config.apply_session_config(config, npu_config.npu_parameters(resolved))


@hookimpl
def unet3d_mixed_precision(optimizer, options, strategy):
    kind, scale = npu_config.loss_scale_choice(options.npu_loss_scale)
    if kind == "none":
        return WrappedOptimizer(optimizer)
    return loss_scaling_optimizer(npu_adapter.load(), optimizer, kind, scale, distributed=strategy.size > 1)


@hookimpl
def unet3d_step_runner(session, train_op, options):
    iterations = options.loop.iterations
    if iterations <= 1:
        return StepRunner(train_op)
    util = npu_adapter.load().util
    return StepRunner(util.set_iteration_per_loop(session, train_op, iterations), steps_per_run=iterations)
