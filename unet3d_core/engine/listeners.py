"""Step listeners: what happens around the training step, one small class each.

The loop (:mod:`unet3d_core.engine.loop`) calls, for every listener in order:
``begin(session, step)`` once, ``after_step(result)`` after each run, and
``end(session, step, stopped)`` once. Every run fetches the same values. A
listener raises :class:`~unet3d_core.errors.TrainingError` to end training.
"""
from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from unet3d_core.errors import TrainingError
from unet3d_core.model.checkpoints import prune_checkpoints, save_checkpoint


@dataclass
class StepResult:
    """What one training run did: the steps it took (``step_before`` -> ``step``) and its fetched values."""

    step_before: int
    step: int
    loss: float
    learning_rate: float
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)
    stopping: bool = False  # the ranks agreed to stop after this run
    skipped: int = 0  # steps the run was to perform but did not apply (a loss-scaling overflow skips the step)

    @property
    def steps(self) -> int:
        return self.step - self.step_before


class StepListener:
    """Base class: every callback does nothing."""

    def begin(self, session, step: int) -> None:
        pass

    def after_step(self, result: StepResult) -> None:
        pass

    def end(self, session, step: int, stopped: bool) -> None:
        pass


def crosses(step: int, next_step: int, every: int) -> bool:
    """Whether going from ``step`` to ``next_step`` passes a multiple of ``every``."""
    return next_step // every > step // every


class StepGuard(StepListener):
    """Stops on a non-finite loss, and when no run applies a step for ``max_stalled_runs`` runs in a row
    (every gradient overflowed and the loss-scaling optimizer skipped it)."""

    def __init__(self, max_stalled_runs: int = 1000):
        self.max_stalled_runs = max_stalled_runs
        self.last_saved = 0
        self._stalled = 0

    def begin(self, session, step: int) -> None:
        self.last_saved = step

    def after_step(self, result: StepResult) -> None:
        if not math.isfinite(result.loss):
            raise TrainingError("loss is {} at step {}; stopping without saving (the last checkpoint, step {}, is "
                                "intact). Try a lower --learning_rate".format(result.loss, result.step,
                                                                             self.last_saved))
        self._stalled = 0 if result.steps > 0 else self._stalled + 1
        if self._stalled >= self.max_stalled_runs:
            raise TrainingError("no training step was applied in {} runs in a row at step {} (every gradient "
                                "overflowed); check the loss scaling and the learning rate".format(
                                    self._stalled, result.step))


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressLog(StepListener):
    """Every ``log_every`` steps: a readable line (step of total, loss, learning rate, volumes/s, elapsed, ETA)
    and the same values as a log.json record."""

    def __init__(self, logger, *, total_steps: int, log_every: int, volumes_per_step: int):
        self.logger = logger
        self.total_steps = total_steps
        self.log_every = log_every
        self.volumes_per_step = volumes_per_step
        self._losses: List[float] = []
        self.skipped_steps = 0

    def begin(self, session, step: int) -> None:
        self._started = self._window_start = time.time()
        self._window_step = step

    def after_step(self, result: StepResult) -> None:
        self._losses.append(result.loss)
        self.skipped_steps += result.skipped
        if not (crosses(result.step_before, result.step, self.log_every) or result.step >= self.total_steps
                or result.stopping):
            return
        now = time.time()
        window_steps = result.step - self._window_step
        window_seconds = max(now - self._window_start, 1e-9)
        values = {"loss": float(np.mean(self._losses)), "learning_rate": result.learning_rate,
                  "volumes_per_second": window_steps * self.volumes_per_step / window_seconds}
        values.update(result.metrics)
        values["skipped_steps"] = self.skipped_steps
        self.logger.metrics(result.step, values, echo=False)
        remaining = (self.total_steps - result.step) * window_seconds / max(window_steps, 1)
        extra = "".join("  {} {:.4g}".format(name, value) for name, value in sorted(result.metrics.items()))
        if self.skipped_steps or result.metrics:  # skipped steps matter where a backend scales the loss
            extra += "  skipped_steps {}".format(self.skipped_steps)
        self.logger.message("step {}/{}  loss {:.4f}  lr {:.3g}  {:.2f} vol/s  elapsed {}  ETA {}{}".format(
            result.step, self.total_steps, values["loss"], result.learning_rate, values["volumes_per_second"],
            _clock(now - self._started), _clock(remaining), extra))
        self._losses, self._window_step, self._window_start = [], result.step, now


class TensorBoardWriter(StepListener):
    """Loss, learning rate and the backend's step metrics (e.g. the loss scale) as TensorBoard scalars at each
    log interval, in the run folder; written on the host from the values every run fetches anyway."""

    def __init__(self, model_dir: str, graph, log_every: int):
        import tensorflow as tf

        self.summary = tf.compat.v1.Summary
        self.writer = tf.compat.v1.summary.FileWriter(model_dir, graph)
        self.log_every = log_every

    def after_step(self, result: StepResult) -> None:
        if crosses(result.step_before, result.step, self.log_every):
            scalars = dict(result.metrics, loss=result.loss, learning_rate=result.learning_rate)
            self.writer.add_summary(self.summary(value=[self.summary.Value(tag=name, simple_value=float(value))
                                                        for name, value in sorted(scalars.items())]), result.step)

    def end(self, session, step: int, stopped: bool) -> None:
        self.writer.close()


class CheckpointSaver(StepListener):
    """Every ``every`` steps, at the last step and when stopping: a checkpoint, the newest ``keep`` kept."""

    def __init__(self, saver, model_dir: str, *, every: int, keep: int, total_steps: int, guard: StepGuard):
        self.saver, self.model_dir = saver, model_dir
        self.every, self.total_steps = every, total_steps
        # The saver (max_to_keep=keep) learns the checkpoints of earlier processes, oldest first.
        saver.recover_last_checkpoints(list(reversed(prune_checkpoints(model_dir, keep))))
        self.guard = guard  # told the last saved step, for its messages
        self._session = None

    def begin(self, session, step: int) -> None:
        self._session = session

    def after_step(self, result: StepResult) -> None:
        if crosses(self.guard.last_saved, result.step, self.every) or result.step >= self.total_steps \
                or result.stopping:
            save_checkpoint(self.saver, self._session, self.model_dir, result.step, self.guard.last_saved)
            self.guard.last_saved = result.step


class BenchmarkTimer(StepListener):
    """Seconds per step; a run of k steps counts as k steps of a k-th of its time."""

    def __init__(self):
        self.step_times: List[float] = []

    def after_step(self, result: StepResult) -> None:
        if result.steps > 0:
            self.step_times.extend([result.seconds / result.steps] * result.steps)


def weights_fingerprint(values: List[np.ndarray]) -> np.ndarray:
    """Per array, the sum and the sum of squares of its values, computed in float64 on the host.

    On the host, not in the graph: an AI Core has no float64 (a float64 op there falls back to the AI CPU and
    its own graph), and float32 sums on the device may round differently between ranks."""
    return np.array([total for value in values for total in (
        np.sum(value, dtype=np.float64), np.sum(np.square(value, dtype=np.float64)))], dtype=np.float64)


class RankAgreement(StepListener):
    """At the end of a finished multi-process run: every rank's own weights are compared by fingerprint;
    diverged replicas are a bug, not a result."""

    def __init__(self, strategy, variables, logger):
        self.strategy, self.variables, self.logger = strategy, list(variables), logger

    def end(self, session, step: int, stopped: bool) -> None:
        if stopped:
            return
        own = weights_fingerprint(session.run(self.variables))
        table = np.zeros((self.strategy.size, own.size))
        table[self.strategy.rank] = own
        table = self.strategy.allreduce_sum(table)
        difference = float(np.max(np.abs(table - table[0])))
        if difference > 0:
            raise TrainingError("the {} ranks ended training with different weights (largest fingerprint "
                                "difference {:.3g}); the distributed optimizer is not averaging".format(
                                    self.strategy.size, difference))
        self.logger.message("Weights identical on all {} ranks ({} fingerprint values compared)".format(
            self.strategy.size, own.size))

