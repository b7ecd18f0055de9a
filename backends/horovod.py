"""Horovod for the backends that use it: strategy, launcher and their shared hook bodies.

Horovod is the engine (no home-made collectives): :class:`HorovodStrategy`
implements the core's DistributedStrategy with Horovod's TensorFlow API, and
:func:`launch_with_horovodrun` starts the worker processes with Horovod's own
launcher (Gloo on one or more hosts). The core knows nothing of Horovod; the
cpu backend (``--np``) and the gpu backend (``--gpus``) use this module, and
so can a third-party backend whose devices Horovod drives. Each calls the
plain functions below from its own hooks, a line each::

    from backends import horovod

    UNET3D_SHARED_OPTIONS = (horovod.OPTIONS,)     # --hosts

    @hookimpl
    def unet3d_backend_options(flags, core):      # flags: {"mychip_procs": ..., "hosts": ...}
        options = BackendOptions(core, flags)
        horovod.validate_process_count("mychip_procs", options.mychip_procs, "Horovod is not installed")
        return options

    @hookimpl
    def unet3d_launch(options, worker_command):
        return horovod.launch(options, worker_command, options.mychip_procs)

    @hookimpl
    def unet3d_distributed_strategy(options):
        return horovod.distributed_strategy()

Why ``--hosts`` is an internal plugin shared by the backends, not a flag of
one backend: it means the same for every backend that launches with
horovodrun, so it belongs to Horovod, and argparse refuses a flag defined
twice. :data:`OPTIONS` is a tiny pluggy plugin whose only hook,
``unet3d_add_options``, adds ``--hosts`` to a group of its own titled
"multi-process (Horovod-based backends)". A backend names it in its
module's ``UNET3D_SHARED_OPTIONS``; the core's plugin registry
(:mod:`unet3d_core.plugins`) calls each shared plugin once, however many
loaded backends name it. So ``--help`` lists ``--hosts`` once, under a title
that says who reads it (not under "cpu backend", which would mislead gpu
users), and it is there whenever a loaded backend uses Horovod, also when
``UNET3D_BACKENDS`` loads the gpu backend alone.

How workers share the work (documented in docs/gpu-and-horovod.md and docs/training.md):

- ``--max_steps`` is divided among the N workers (ceil(max_steps / N) each),
  as the seed does, so the number of volumes seen stays that of one worker.
- Each worker reads its own shard of the training cases (round-robin by rank)
  with batch ``--batch_size``; gradients are averaged over workers.
- The learning rate is ``--learning_rate`` as given (the seed's 2e-4 is for
  batch 2 x 8 devices); ``--lr_scaling linear`` multiplies it by N.
"""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from typing import Dict, List, Optional

import numpy as np

from unet3d_core import hookimpl
from unet3d_core.distributed import die_with_parent
from unet3d_core.errors import BackendError, ConfigError
from unet3d_core.types import DistributedStrategy

OPTIONS_TITLE = "multi-process (Horovod-based backends)"


class _HorovodOptions:
    """The internal plugin behind ``--hosts`` (see the module's docstring)."""

    title = OPTIONS_TITLE

    @hookimpl
    def unet3d_add_options(self, group):
        group.add_argument("--hosts", default=None,
                           help="hosts and slots for Horovod's launcher, e.g. host1:4,host2:4 (default: this machine)")


# Named in UNET3D_SHARED_OPTIONS by every backend that launches with horovodrun.
OPTIONS = _HorovodOptions()


def validate_process_count(flag: str, count: int, not_installed: str) -> None:
    """Refuse fewer than one process, and several without Horovod installed.

    Args:
        flag: the backend's process-count flag, without dashes (``np``, ``gpus``).
        not_installed: what to say, after ``--FLAG N:``, when Horovod is missing.
    """
    if count < 1:
        raise ConfigError("--{} must be at least 1, got {}".format(flag, count))
    if count > 1 and importlib.util.find_spec("horovod") is None:
        raise ConfigError("--{} {}: {}".format(flag, count, not_installed))


def launch(options, worker_command: List[str], num_processes: int) -> Optional[int]:
    """``unet3d_launch``'s body: start ``num_processes`` workers with horovodrun on ``--hosts``.

    ``options``: the backend's frozen options, with its ``hosts`` (the shared flag) and ``core``.

    Returns None (train in this process) for one process, or inside a job that
    horovodrun or mpirun started; otherwise the workers' exit status. Their
    output is kept in MODEL_DIR/logs/rank.<i>/.
    """
    if num_processes <= 1 or inside_horovod_job():
        return None
    return launch_with_horovodrun(num_processes, worker_command, hosts=options.hosts,
                                  log_dir=os.path.join(options.core.model_dir, "logs"))


def distributed_strategy() -> Optional[DistributedStrategy]:
    """``unet3d_distributed_strategy``'s body: Horovod inside a Horovod job, else None (the core's one process)."""
    if inside_horovod_job():
        return HorovodStrategy()
    return None


# Variables set by the launchers Horovod runs under (horovodrun/Gloo, Open MPI, MPICH/Intel MPI).
_LAUNCHER_VARIABLES = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def inside_horovod_job() -> bool:
    """True in a process started by horovodrun or mpirun."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


class HorovodStrategy(DistributedStrategy):
    """Horovod: averaged gradients, rank-0 broadcast, sum-reduced metrics."""

    name = "horovod"

    def __init__(self):
        try:
            import horovod.tensorflow as hvd
        except ImportError as error:
            raise BackendError("multi-process training needs Horovod built with TensorFlow support "
                               "(HOROVOD_WITH_TENSORFLOW=1 pip install horovod): {}".format(error)) from None
        hvd.init()
        self._hvd = hvd
        self._reducers = {}

    @property
    def rank(self) -> int:
        return int(self._hvd.rank())

    @property
    def size(self) -> int:
        return int(self._hvd.size())

    @property
    def local_rank(self) -> int:
        return int(self._hvd.local_rank())

    @property
    def local_size(self) -> int:
        return int(self._hvd.local_size())

    def wrap_optimizer(self, optimizer):
        return self._hvd.DistributedOptimizer(optimizer)

    def broadcast_initial_variables_op(self):
        return self._hvd.broadcast_global_variables(0)

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        values = np.asarray(values, dtype=np.float64)
        if values.shape not in self._reducers:  # one small graph per shape, reused (it runs every step)
            graph = tf.Graph()
            with graph.as_default(), tf.device("/cpu:0"):
                placeholder = tf.compat.v1.placeholder(tf.float64, values.shape)
                total = self._hvd.allreduce(placeholder, op=self._hvd.Sum,
                                            name="unet3d_sum_{}".format(len(self._reducers)))
            session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(device_count={"GPU": 0}))
            self._reducers[values.shape] = (session, placeholder, total)
        session, placeholder, total = self._reducers[values.shape]
        return session.run(total, {placeholder: values})

    def allreduce_sum_tensor(self, tensor):
        return self._hvd.allreduce(tensor, op=self._hvd.Sum, name="unet3d_stop_votes")

    def close(self) -> None:
        for session, _, _ in self._reducers.values():
            session.close()
        self._reducers = {}


def _horovodrun_executable() -> str:
    beside_python = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    found = beside_python if os.path.isfile(beside_python) else shutil.which("horovodrun")
    if not found:
        raise BackendError("horovodrun not found: install Horovod (HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 "
                           "pip install horovod) in the environment of {}".format(sys.executable))
    return found


_PREFIX = re.compile(r"^\[(\d+)\]<(stdout|stderr)>:(.*)$")
_FAILED_PROCESS = re.compile(r"Process name: (\d+)")
_EXIT_CODE = re.compile(r"Exit code: (-?\d+)")


# What a rank prints when it failed only because another rank failed first: Horovod shut
# down after that rank's exception, or Gloo lost the connection to a rank that was killed.
_STOPPED_BY_ANOTHER_RANK = ("Horovod has been shut down", "Connection reset by peer", "Connection closed by peer",
                            "Broken pipe")


def _rank_log_path(log_dir: str, rank: int, name: str) -> str:
    """Where horovodrun --output-filename keeps a rank's stdout or stderr."""
    return os.path.join(log_dir, "rank.{}".format(rank), name)


def _rank_log_tail(log_dir: str, rank: int, name: str, lines: int = 12) -> List[str]:
    path = _rank_log_path(log_dir, rank, name)
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as handle:
        return [line.rstrip("\n") for line in handle.readlines()[-lines:]]


def _rank_log_end(log_dir: str, rank: int, name: str, size: int = 256 * 1024) -> str:
    """The last ``size`` bytes of a rank's log: enough for the whole of a failed rank's traceback.

    TensorFlow 1.15 follows an op's error message with the traceback of where the op
    was created, so the message can sit 50 lines or more above the end.
    """
    path = _rank_log_path(log_dir, rank, name)
    if not os.path.isfile(path):
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - size))
        return handle.read().decode("utf-8", errors="replace")


def _originating_rank(log_dir: str, reported: int, num_processes: int) -> int:
    """The rank whose own failure ended the job.

    horovodrun names the first rank it sees exit. When that rank only failed
    because another one did (its log says Horovod shut down or the connection
    to a peer was lost; which of the two exits first is a race), the rank
    that failed on its own is named: one with an error of its own, or one
    killed by a signal ("Killed").
    """
    texts = {rank: _rank_log_end(log_dir, rank, "stderr") for rank in range(num_processes)}

    def stopped_by_another(rank: int) -> bool:
        return any(marker in texts[rank] for marker in _STOPPED_BY_ANOTHER_RANK)

    def failed_on_its_own(rank: int) -> bool:
        lines = [line for line in texts[rank].splitlines() if line.strip()]
        killed = bool(lines) and lines[-1].rstrip().endswith("Killed")
        return not stopped_by_another(rank) and ("error" in texts[rank].lower() or killed)

    if not stopped_by_another(reported):
        return reported
    for rank in range(num_processes):
        if rank != reported and failed_on_its_own(rank):
            return rank
    return reported


def launch_with_horovodrun(num_processes: int, worker_command: List[str], *, log_dir: str,
                           hosts: Optional[str] = None, start_timeout: int = 60,
                           environment: Optional[Dict[str, str]] = None, stream=None) -> int:
    """Run ``worker_command`` in ``num_processes`` Horovod processes and wait for all of them.

    Rank 0's output is streamed; every rank's output is kept in
    ``log_dir/rank.<i>/{stdout,stderr}``. When a rank fails, Horovod stops the
    others, and this returns non-zero after printing which rank failed and
    its last lines.

    Args:
        hosts: horovodrun's ``-H`` value (``host1:4,host2:4``); default this machine.
    """
    stream = stream or sys.stdout
    os.makedirs(log_dir, exist_ok=True)
    command = [_horovodrun_executable(), "-np", str(num_processes), "-H", hosts or "localhost:{}".format(
        num_processes), "--gloo", "--start-timeout", str(start_timeout), "--output-filename", log_dir]
    command += worker_command
    env = dict(os.environ)
    env.update(environment or {})
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               universal_newlines=True, bufsize=1, preexec_fn=die_with_parent)
    launcher_tail = collections.deque(maxlen=40)
    # SIGTERM to this launcher is passed on: horovodrun forwards it to every rank,
    # which then saves a checkpoint at the end of its step.
    previous = signal.signal(signal.SIGTERM, lambda number, frame: process.send_signal(signal.SIGTERM))
    try:
        for line in process.stdout:
            line = line.rstrip("\n")
            match = _PREFIX.match(line)
            if match is None:
                launcher_tail.append(line)
            elif match.group(1) == "0":
                stream.write(match.group(3) + "\n")
                stream.flush()
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code == 0:
        return 0
    launcher_text = "\n".join(launcher_tail)
    failed = _FAILED_PROCESS.search(launcher_text)
    exit_code = _EXIT_CODE.search(launcher_text)
    if failed is None:
        sys.stderr.write(launcher_text + "\n")
        sys.stderr.write("error: horovodrun exited with status {}\n".format(code))
        return code or 1
    rank = _originating_rank(log_dir, int(failed.group(1)), num_processes)
    tail = _rank_log_tail(log_dir, rank, "stderr") + _rank_log_tail(log_dir, rank, "stdout")
    sys.stderr.write("error: rank {} failed (exit code {}); the other ranks were stopped. Last lines of "
                     "{}:\n{}\n".format(rank, exit_code.group(1) if exit_code else "?",
                                        os.path.join(log_dir, "rank.{}".format(rank)),
                                        "\n".join("  | " + line for line in tail)))
    return code or 1
