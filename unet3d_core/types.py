"""Small types passed between the core and backends.

These are the only core objects a backend needs besides the hook specs; they
import TensorFlow lazily so that listing backends stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

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

    - ``rank``, ``size``, ``local_rank``, ``is_chief``: read at start-up; only
      the chief writes checkpoints, logs and predictions.
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
    """This process's place in the job: its rank among ``size`` workers and on its host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    @classmethod
    def of(cls, strategy: "DistributedStrategy") -> "WorkerIdentity":
        """The identity the backend's strategy established (from its launcher)."""
        return cls(rank=int(strategy.rank), size=int(strategy.size), local_rank=int(strategy.local_rank))


def optional_import(module_name: str) -> Optional[object]:
    """Import a module if it is installed, else return None."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError:
        return None
