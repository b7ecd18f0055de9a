"""Small types passed between the core and backends.

These are the only core objects a backend needs besides the hook specs; they
import TensorFlow lazily so that listing backends stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class BackendInfo:
    """What a backend says about itself.

    Attributes:
        name: the value users pass to ``--backend``; must equal the entry-point name.
        summary: one line for ``cli.py backends``.
        available: whether the backend can run on this machine now.
        reason: why it is unavailable, and what to install (shown to the user).
    """

    name: str
    summary: str
    available: bool = True
    reason: str = ""


@dataclass(frozen=True)
class CoreSettings:
    """The core's values a backend may read, resolved for one run (the recipe and ``run.json`` applied).

    Handed to ``unet3d_backend_options`` and kept in what it returns; a backend never sees the parsed flags.

    Attributes:
        backend: the selected backend's name.
        exec_mode: ``train``, ``evaluate``, ``train_and_evaluate`` or ``predict``.
        model_dir: the run folder (one fold's, for ``--fold all``).
        max_steps: training steps of the whole job, shared out over the workers.
        batch_size: volumes per step and worker.
        benchmark: ``--benchmark``: time steps, write no checkpoint.
        warmup_steps: untimed steps before a benchmark's timing starts.
        seed: the run's seed.
        cache: ``--cache``: the training cases are read into memory before the first step.
    """

    backend: str
    exec_mode: str = "train"
    model_dir: str = ""
    max_steps: int = 0
    batch_size: int = 1
    benchmark: bool = False
    warmup_steps: int = 0
    seed: int = 0
    cache: bool = False

    @property
    def trains(self) -> bool:
        return self.exec_mode in ("train", "train_and_evaluate")


@dataclass(frozen=True)
class BackendOptions:
    """A backend's own flags, frozen, beside the core's settings: what ``unet3d_backend_options`` returns by default.

    Each flag the backend's ``unet3d_add_options`` added (and its shared option plugins') reads as an attribute,
    ``options.my_flag``; the core's values are ``options.core``. A backend may return its own frozen dataclass
    instead (the built-in ones do), with a ``core`` field the same way.
    """

    core: CoreSettings
    flags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))

    def __getattr__(self, name: str) -> Any:
        flags = self.__dict__.get("flags", {})
        if name in flags:
            return flags[name]
        raise AttributeError("backend '{}' has no flag {!r} (its flags: {})".format(
            self.__dict__.get("core", CoreSettings("?")).backend, name, ", ".join(sorted(flags)) or "none"))


def _no_step_metrics() -> Dict[str, Any]:
    return {}


@dataclass(frozen=True)
class WrappedOptimizer:
    """What ``unet3d_mixed_precision`` returns: the optimiser the training graph minimises with.

    Attributes:
        optimizer: a ``tf.compat.v1.train.Optimizer`` (the one given, or a wrapper: loss scaling, AMP).
        reduces_across_workers: the wrapper already sums gradients over the workers (the NPU's loss scaling
            around its distributed optimiser); the strategy then does not wrap it again.
        step_metrics: called once after ``minimize``; a dict of scalar tensors logged with each log line
            (e.g. the loss scale).
    """

    optimizer: Any
    reduces_across_workers: bool = False
    step_metrics: Callable[[], Dict[str, Any]] = field(default=_no_step_metrics)


@dataclass(frozen=True)
class StepRunner:
    """What ``unet3d_step_runner`` returns: the op each ``session.run`` runs and the training steps it performs.

    Attributes:
        op: the training op, or a device loop around it (the NPU's ``iterations_per_loop``).
        steps_per_run: training steps one run of ``op`` performs (at least 1).
    """

    op: Any
    steps_per_run: int = 1

    def __post_init__(self):
        if int(self.steps_per_run) < 1:
            raise ValueError("StepRunner.steps_per_run must be at least 1, got {}".format(self.steps_per_run))


class DistributedStrategy:
    """How training is spread over processes. The default is one process.

    Backends subclass this in their ``unet3d_distributed_strategy`` hook. The
    core calls the methods below at fixed points of a run:

    - ``rank``, ``size``, ``local_rank``, ``local_size``, ``is_chief``: read
      at start-up; only the chief writes checkpoints, logs and predictions;
      ``local_size`` (the workers on this host) lets a backend share the host's
      cores among them.
    - ``wrap_optimizer(optimizer)``: once, after mixed precision wrapping.
    - ``broadcast_initial_variables_op()``: once, after variables are
      initialised or restored; the op is run before the first step.
    - ``shard(items)``: input sharding, applied to the lists of training and
      evaluation cases.
    - ``allreduce_sum(values)``: reduces a float64 array across ranks (metric
      reduction); every rank receives the sum.
    - ``allreduce_sum_tensor(tensor)``: the same inside a graph: returns a
      tensor holding the sum over ranks of the float32 ``tensor``. The
      training graph uses it so that ranks agree to stop within the step's
      own ``session.run`` (called only when ``size`` > 1).
    - ``close()``: once, when the run ends (also on errors).
    """

    name = "single-process"

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def local_size(self) -> int:
        return 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def wrap_optimizer(self, optimizer):
        return optimizer

    def broadcast_initial_variables_op(self):
        return None

    def shard(self, items: Sequence[T]) -> List[T]:
        # Round-robin by rank: every item lands on exactly one rank.
        return list(items)[self.rank::self.size]

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def allreduce_sum_tensor(self, tensor):
        return tensor

    def close(self) -> None:
        """Release the communication library; called once at the end of the run."""

    def describe(self) -> str:
        return "{} (rank {} of {})".format(self.name, self.rank, self.size)


@dataclass(frozen=True)
class WorkerIdentity:
    """This process's place in the job: its rank among ``size`` workers, and among the ``local_size`` workers
    on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @classmethod
    def of(cls, strategy: "DistributedStrategy") -> "WorkerIdentity":
        """The identity the backend's strategy established (from its launcher)."""
        return cls(rank=int(strategy.rank), size=int(strategy.size), local_rank=int(strategy.local_rank),
                   local_size=int(strategy.local_size))


def optional_import(module_name: str) -> Optional[object]:
    """Import a module if it is installed, else return None."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None
