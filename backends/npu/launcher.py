"""One process per Ascend device, as the seed's shell loops did, with clean failure.

Each worker runs the same command with the adapter's environment:
``RANK_TABLE_FILE``, ``RANK_SIZE``, ``RANK_ID``, ``ASCEND_DEVICE_ID``,
``JOB_ID`` (and ``HCCL_CONNECT_TIMEOUT`` when given). Its output goes to
``<model_dir>/Device-<i>/train.log``; rank 0's is streamed. If any worker
exits non-zero, the others are stopped and the launcher returns non-zero
after printing that rank's last lines.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from unet3d_core.distributed import die_with_parent
from unet3d_core.errors import ConfigError

WORKER_VARIABLE = "UNET3D_NPU_WORKER"
# The rank-table-free (cluster manager) variables; HCCL refuses them next to RANK_*.
CLUSTER_MANAGER_PREFIX = "CM_"
# After a rank failed, the others may be stuck in a collective: stop them soon.
FAILURE_GRACE_SECONDS = 10
# On SIGINT/SIGTERM the ranks finish their step and save a checkpoint first.
INTERRUPT_GRACE_SECONDS = 120


@dataclass
class Worker:
    rank: int
    device_id: int
    environment: Dict[str, str]
    log_path: str
    process: Optional[subprocess.Popen] = None


def refuse_mixed_environment(environment: Dict[str, str]) -> None:
    names = sorted(name for name in environment if name.startswith(CLUSTER_MANAGER_PREFIX))
    if names:
        raise ConfigError("{} set in the environment: those configure HCCL without a rank table and cannot be "
                          "mixed with RANK_TABLE_FILE/RANK_ID; unset them".format(", ".join(names)))


def worker_environments(*, table, server_id: str, table_path: str, job_id: str, model_dir: str,
                        base: Dict[str, str], hccl_connect_timeout: Optional[int] = None) -> List[Worker]:
    """The workers this server starts: one per device of ``server_id`` in the rank table."""
    refuse_mixed_environment(base)
    workers = []
    for device in table.devices_of(server_id):
        environment = dict(base)
        environment.update({
            "RANK_TABLE_FILE": os.path.abspath(table_path),
            "RANK_SIZE": str(table.size),
            "RANK_ID": str(device.rank_id),
            "ASCEND_DEVICE_ID": str(device.device_id),
            "JOB_ID": job_id,
            WORKER_VARIABLE: "1",
        })
        if hccl_connect_timeout is not None:
            environment["HCCL_CONNECT_TIMEOUT"] = str(hccl_connect_timeout)
        log_path = os.path.join(model_dir, "Device-{}".format(device.device_id), "train.log")
        workers.append(Worker(device.rank_id, device.device_id, environment, log_path))
    return workers


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
                                                  preexec_fn=die_with_parent)
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
