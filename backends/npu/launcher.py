"""One process per Ascend device, as the seed's shell loops did, with clean failure.

Each worker runs the same command with the adapter's environment:
``RANK_TABLE_FILE``, ``RANK_SIZE``, ``RANK_ID``, ``ASCEND_DEVICE_ID``,
``JOB_ID`` (and ``HCCL_CONNECT_TIMEOUT`` when given, plus any extra variables
the caller passes). Its output goes to ``<model_dir>/Device-<i>/train.log``
(``i`` the physical device); rank 0's is streamed. If any worker exits
non-zero, the others are stopped and the launcher returns non-zero after
printing that rank's last lines.

``ASCEND_DEVICE_ID`` is logical: the index of the device among those this
process sees, while the rank table's ``device_id`` is physical. In a
container holding davinci4-7, physical device 5 is ``ASCEND_DEVICE_ID=1``.
What a process sees: the physical devices mounted into the container
(``ASCEND_VISIBLE_DEVICES`` of the Ascend Docker Runtime, else the
``/dev/davinciN`` files, else all are assumed), narrowed by
``ASCEND_RT_VISIBLE_DEVICES``, whose entries are logical ids among those.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from backends.npu.host_cpus import CPUS_VARIABLE, format_cpu_list, parse_cpu_list
from backends.npu.rank_table import MAX_DEVICES_PER_SERVER
from unet3d_core.distributed import die_with_parent
from unet3d_core.errors import ConfigError

WORKER_VARIABLE = "UNET3D_NPU_WORKER"
# The rank-table-free (cluster manager) variables; HCCL refuses them next to RANK_*.
CLUSTER_MANAGER_PREFIX = "CM_"
# After a rank failed, the others may be stuck in a collective: stop them soon.
FAILURE_GRACE_SECONDS = 10
# On SIGINT/SIGTERM the ranks finish their step and save a checkpoint first.
INTERRUPT_GRACE_SECONDS = 120
# Ascend Docker Runtime: the physical devices mounted into the container, e.g. "0-3,5" or "Ascend910-4".
MOUNTED_DEVICES_VARIABLE = "ASCEND_VISIBLE_DEVICES"
# CANN runtime: the devices this process may use, as ascending logical ids among the mounted ones.
RUNTIME_DEVICES_VARIABLE = "ASCEND_RT_VISIBLE_DEVICES"
DEVICE_FOLDER = "/dev"
_DEVICE_FILE = re.compile(r"^davinci(\d+)$")
_MOUNTED_ENTRY = re.compile(r"^(?:(\d+)|(\d+)-(\d+)|[A-Za-z][A-Za-z0-9]*-(\d+))$")
# The variables every worker gets from the launcher; extra_environment may not set them.
_LAUNCHER_VARIABLES = ("RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID", "ASCEND_DEVICE_ID", "JOB_ID", WORKER_VARIABLE,
                       CPUS_VARIABLE)


@dataclass(frozen=True)
class LaunchedRank:
    """Who this process is in a job the launcher started: read once from the environment the launcher gave it
    (:func:`launched_rank`), then passed around as this object."""

    rank: int  # RANK_ID
    size: int  # RANK_SIZE
    device_id: int  # ASCEND_DEVICE_ID: logical, among the devices visible to the process
    job_id: str  # JOB_ID
    cpus: Tuple[int, ...] = ()  # UNET3D_NPU_CPUS: the host cores the launcher bound it to; () = not bound


def launched_rank(environment: Dict[str, str]) -> Optional[LaunchedRank]:
    """This process's rank when :func:`worker_environments`' launcher started it (``UNET3D_NPU_WORKER`` set),
    else None. A launched process whose variables are missing or not numbers is a ConfigError naming them."""
    if not environment.get(WORKER_VARIABLE):
        return None
    missing = [name for name in ("RANK_ID", "RANK_SIZE", "ASCEND_DEVICE_ID", "JOB_ID") if not environment.get(name)]
    if missing:
        raise ConfigError("{} is set without {}: start workers with 'cli.py train --backend npu --npus N', not "
                          "by hand".format(WORKER_VARIABLE, ", ".join(missing)))
    try:
        rank, size, device = (int(environment[name]) for name in ("RANK_ID", "RANK_SIZE", "ASCEND_DEVICE_ID"))
    except ValueError:
        raise ConfigError("RANK_ID={} RANK_SIZE={} ASCEND_DEVICE_ID={}: expected integers".format(
            environment["RANK_ID"], environment["RANK_SIZE"], environment["ASCEND_DEVICE_ID"])) from None
    if not 0 <= rank < size:
        raise ConfigError("RANK_ID={} is not a rank of RANK_SIZE={}".format(rank, size))
    cpus = tuple(parse_cpu_list(environment.get(CPUS_VARIABLE, ""), CPUS_VARIABLE))
    return LaunchedRank(rank, size, device, environment["JOB_ID"], cpus)


@dataclass
class Worker:
    rank: int
    device_id: int  # physical, as in the rank table
    environment: Dict[str, str]
    log_path: str
    process: Optional[subprocess.Popen] = None
    logical_device_id: Optional[int] = None  # its ASCEND_DEVICE_ID
    cpus: Tuple[int, ...] = ()  # the host cores it is bound to; () = not bound


@dataclass(frozen=True)
class Visibility:
    """The physical devices a process sees; a device's logical id is its position here."""
    physical: List[int]
    source: str  # where that came from, for messages
    assumed: bool = False  # nothing said which: all devices assumed, logical = physical


def refuse_mixed_environment(environment: Dict[str, str]) -> None:
    """Refuse the rank-table-free (cluster manager) launch: ``CM_*`` variables in the environment.

    HCCL takes them instead of RANK_TABLE_FILE/RANK_ID, never beside them (DESIGN.md, from HCCL's docs); the
    reference's performance scripts start one process per device that way. unet3d starts its ranks itself, so
    such a process would build a one-device graph and train alone, N copies into one folder.
    """
    names = sorted(name for name in environment if name.startswith(CLUSTER_MANAGER_PREFIX))
    if names:
        raise ConfigError("{} set in the environment: a rank-table-free launch, which unet3d does not take (each "
                          "process would train alone into the same folder); unset them and start 'cli.py train "
                          "--backend npu --npus N' once per server: it starts the ranks with a rank table".format(
                              ", ".join(names)))


def _mounted_devices(value: str) -> List[int]:
    devices = set()
    for entry in value.split(","):
        match = _MOUNTED_ENTRY.match(entry.strip())
        if not match:
            raise ConfigError("{}={}: '{}' is not a device id, range (0-3) or name (Ascend910-4)".format(
                MOUNTED_DEVICES_VARIABLE, value, entry.strip()))
        single, first, last, named = match.groups()
        if first is not None:
            devices.update(range(int(first), int(last) + 1))
        else:
            devices.add(int(single if single is not None else named))
    return sorted(devices)


def _device_files(device_folder: str) -> List[int]:
    try:
        names = os.listdir(device_folder)
    except OSError:
        return []
    return sorted(int(match.group(1)) for match in map(_DEVICE_FILE.match, names) if match)


def visible_devices(environment: Dict[str, str], device_folder: str = DEVICE_FOLDER) -> Visibility:
    """The physical devices a process started with ``environment`` sees, in logical order.

    Raises:
        ConfigError: ``ASCEND_VISIBLE_DEVICES`` or ``ASCEND_RT_VISIBLE_DEVICES`` is malformed.
    """
    mounted_value = environment.get(MOUNTED_DEVICES_VARIABLE, "").strip()
    if mounted_value and mounted_value != "void":
        visibility = Visibility(_mounted_devices(mounted_value), "{}={}".format(MOUNTED_DEVICES_VARIABLE,
                                                                                 mounted_value))
    elif mounted_value == "void":  # the runtime's "no device"
        visibility = Visibility([], "{}=void".format(MOUNTED_DEVICES_VARIABLE))
    else:
        files = _device_files(device_folder)
        if files:
            visibility = Visibility(files, "{}/davinci*".format(device_folder.rstrip("/")))
        else:
            visibility = Visibility(list(range(MAX_DEVICES_PER_SERVER)), "no {} and no {}/davinciN".format(
                MOUNTED_DEVICES_VARIABLE, device_folder.rstrip("/")), assumed=True)
    runtime_value = environment.get(RUNTIME_DEVICES_VARIABLE)
    if runtime_value is None:
        return visibility
    where = "{}={}".format(RUNTIME_DEVICES_VARIABLE, runtime_value)
    entries = runtime_value.split(",")
    if not all(entry.isdigit() for entry in entries):
        raise ConfigError("{}: expected ascending logical device ids separated by commas, without spaces, "
                          "e.g. 0,1,2,3".format(where))
    logical = [int(entry) for entry in entries]
    if logical != sorted(set(logical)):
        raise ConfigError("{}: CANN takes these ids in ascending order only, each once".format(where))
    if logical[-1] >= len(visibility.physical):
        raise ConfigError("{}: logical id {} does not exist; this process sees {} device(s) ({})".format(
            where, logical[-1], len(visibility.physical), visibility.source))
    return Visibility([visibility.physical[index] for index in logical], "{} of {}".format(where, visibility.source),
                      visibility.assumed)


def logical_device_id(physical_device: int, visibility: Visibility) -> int:
    """``ASCEND_DEVICE_ID`` for a physical device: its position among the visible ones.

    Raises:
        ConfigError: the device is not visible to the process.
    """
    if physical_device not in visibility.physical:
        raise ConfigError("device {} is not visible here: this process sees physical device(s) {} ({}); use "
                          "those in --device_ids / the rank table, or give the container that device".format(
                              physical_device, ",".join(map(str, visibility.physical)) or "none",
                              visibility.source))
    return visibility.physical.index(physical_device)


def worker_environments(*, table, server_id: str, table_path: str, job_id: str, model_dir: str,
                        base: Dict[str, str], hccl_connect_timeout: Optional[int] = None,
                        extra_environment: Optional[Dict[str, str]] = None,
                        device_folder: str = DEVICE_FOLDER,
                        cpu_sets: Optional[Sequence[Sequence[int]]] = None) -> List[Worker]:
    """The workers this server starts: one per device of ``server_id`` in the rank table.

    Args:
        base: the environment the workers inherit (also what decides which devices they see).
        extra_environment: more variables for every worker, e.g. ``HCCL_EXEC_TIMEOUT``; not the
            launcher's own (``RANK_ID``, ``ASCEND_DEVICE_ID``, ...).
        cpu_sets: the host cores of each of this server's workers, in rank order
            (:func:`backends.npu.host_cpus.binding_for`); None: not bound.
    Raises:
        ConfigError: ``CM_*`` variables are set, an extra variable is one the launcher sets, or a
            device of this server is not visible to the processes.
    """
    extra = {name: str(value) for name, value in (extra_environment or {}).items()}
    owned = list(_LAUNCHER_VARIABLES) + (["HCCL_CONNECT_TIMEOUT"] if hccl_connect_timeout is not None else [])
    clashes = sorted(name for name in extra if name in owned)
    if clashes:
        raise ConfigError("extra worker environment: {} is set by the launcher itself".format(", ".join(clashes)))
    inherited = dict(base)
    inherited.update(extra)
    refuse_mixed_environment(inherited)
    visibility = visible_devices(inherited, device_folder)
    devices = table.devices_of(server_id)
    logical = {}
    for device in devices:
        try:
            logical[device.device_id] = logical_device_id(device.device_id, visibility)
        except ConfigError as error:
            raise ConfigError("rank {} on server {}: {}".format(device.rank_id, server_id, error)) from None
    if visibility.assumed:
        sys.stderr.write("[npu] note: {}; assuming every device is visible, so ASCEND_DEVICE_ID is the rank "
                         "table's device_id\n".format(visibility.source))
    if cpu_sets is not None and len(cpu_sets) != len(devices):
        raise ConfigError("{} CPU sets for the {} ranks of server {}".format(len(cpu_sets), len(devices), server_id))
    workers = []
    for index, device in enumerate(devices):
        cpus = tuple(cpu_sets[index]) if cpu_sets is not None else ()
        environment = dict(inherited)
        environment.pop(CPUS_VARIABLE, None)
        if cpus:
            environment[CPUS_VARIABLE] = format_cpu_list(cpus)
        environment.update({
            "RANK_TABLE_FILE": os.path.abspath(table_path),
            "RANK_SIZE": str(table.size),
            "RANK_ID": str(device.rank_id),
            "ASCEND_DEVICE_ID": str(logical[device.device_id]),
            "JOB_ID": job_id,
            WORKER_VARIABLE: "1",
        })
        if hccl_connect_timeout is not None:
            environment["HCCL_CONNECT_TIMEOUT"] = str(hccl_connect_timeout)
        log_path = os.path.join(model_dir, "Device-{}".format(device.device_id), "train.log")
        workers.append(Worker(device.rank_id, device.device_id, environment, log_path,
                              logical_device_id=logical[device.device_id], cpus=cpus))
    return workers


def _starter(cpus: Sequence[int]):
    """``preexec_fn`` of a worker: it dies with the launcher, and runs on ``cpus`` when given."""
    def start() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return start


def _tail(path: str, lines: int = 15) -> List[str]:
    try:
        with open(path, errors="replace") as handle:
            return [line.rstrip("\n") for line in handle.readlines()[-lines:]]
    except OSError:
        return []


def _signal_running(workers: List[Worker], number: int = signal.SIGTERM) -> None:
    for worker in workers:
        if worker.process and worker.process.poll() is None:
            worker.process.send_signal(number)


def _stop(workers: List[Worker], grace_seconds: float = FAILURE_GRACE_SECONDS) -> None:
    running = [worker for worker in workers if worker.process and worker.process.poll() is None]
    _signal_running(running)
    deadline = time.time() + grace_seconds
    for worker in running:
        try:
            worker.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def run_workers(workers: List[Worker], command: List[str], stream=None, poll_seconds: float = 0.2) -> int:
    """Start every worker, stream the lowest rank's log, wait; stop all when one fails."""
    stream = stream or sys.stdout
    streamed = min(workers, key=lambda worker: worker.rank)
    # SIGTERM to the launcher (a scheduler's stop) reaches every rank, which
    # saves a checkpoint after its step and exits 0; the launcher keeps waiting.
    previous = signal.signal(signal.SIGTERM, lambda number, frame: _signal_running(workers))
    try:
        for worker in workers:
            os.makedirs(os.path.dirname(worker.log_path), exist_ok=True)
            with open(worker.log_path, "w") as log:
                worker.process = subprocess.Popen(command, env=worker.environment, stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                  preexec_fn=_starter(worker.cpus))
        position = 0
        while True:
            position = _stream_new(streamed.log_path, position, stream)
            failed = [worker for worker in workers if worker.process.poll() not in (None, 0)]
            if failed:
                first = min(failed, key=lambda worker: worker.rank)
                _stop(workers)
                _stream_new(streamed.log_path, position, stream)
                sys.stderr.write("error: rank {} (device {}) exited with status {}; stopped the other ranks. "
                                 "Last lines of {}:\n{}\n".format(
                                     first.rank, first.device_id, first.process.returncode, first.log_path,
                                     "\n".join("  | " + line for line in _tail(first.log_path))))
                return first.process.returncode if first.process.returncode > 0 else 1
            if all(worker.process.poll() == 0 for worker in workers):
                _stream_new(streamed.log_path, position, stream)
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop(workers, INTERRUPT_GRACE_SECONDS)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stream_new(path: str, position: int, stream) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(position)
            data = handle.read()
    except OSError:
        return position
    if data:
        stream.write(data.decode("utf-8", errors="replace"))
        stream.flush()
    return position + len(data)
