"""The Runtime: what the selected backend gives the engine, asked once per process.

:func:`runtime_for` calls the backend's process-wide hooks once (environment, strategy, the session
configuration of each phase, layer ops) and hands the engine one frozen object. Training, evaluation and
prediction take ``runtime`` instead of loose pieces; the two hooks that act on one run's graph (mixed
precision, the step runner) are bound to that run's backend options by :meth:`Runtime.for_run`. The hooks
receive the backend's own frozen options (``Backend.backend_options``), never the parsed flags.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from unet3d_core.types import DistributedStrategy, StepRunner, WorkerIdentity, WrappedOptimizer

if TYPE_CHECKING:  # annotations only
    from unet3d_core.layers import LayerOps
    from unet3d_core.plugins import Backend

TRAINING = "training"
EVALUATION = "evaluation"
PHASES = (TRAINING, EVALUATION)


def base_session_config():
    """The core's session settings before the backend's: soft placement."""
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(allow_soft_placement=True)


@dataclass(frozen=True)
class Runtime:
    """The backend's answers for this process.

    Attributes:
        backend: the selected backend (its hooks, for the run-bound ones below).
        options: the backend's frozen options (``unet3d_backend_options``) the hooks receive; the run-bound
            ones get each run's (see :meth:`for_run`).
        strategy: how the work is spread over processes.
        worker: this process's place in the job.
        training_session: the ``ConfigProto`` of the training session.
        evaluation_session: the ``ConfigProto`` of inference sessions (validation, evaluation, prediction).
        layer_ops: how the network's layers are computed.
    """

    backend: "Backend"
    options: Any
    strategy: DistributedStrategy
    worker: WorkerIdentity
    training_session: Any
    evaluation_session: Any
    layer_ops: "LayerOps"

    def for_run(self, options: Any) -> "Runtime":
        """This runtime with the run-bound hooks answering for one run's backend ``options``."""
        return replace(self, options=options)

    def wrap_optimizer(self, optimizer) -> WrappedOptimizer:
        """The backend's mixed precision and loss scaling around ``optimizer`` (``unet3d_mixed_precision``)."""
        return self.backend.mixed_precision(optimizer, self.options, self.strategy)

    def step_runner(self, session, train_op) -> StepRunner:
        """What each training ``session.run`` runs (``unet3d_step_runner``)."""
        return self.backend.step_runner(session, train_op, self.options)

    def describe(self) -> str:
        return self.strategy.describe()


def runtime_for(backend: "Backend", options: Any) -> Runtime:
    """Ask ``backend`` once for this process's runtime, with its frozen ``options`` (``backend.backend_options``);
    the caller closes ``runtime.strategy``."""
    backend.prepare_environment(options)
    strategy = backend.distributed_strategy(options)
    try:
        sessions = {phase: backend.session_config(base_session_config(), options, strategy, phase)
                    for phase in PHASES}
        layer_ops = backend.layer_ops(options)  # the core's textbook ops unless the backend has its own
    except BaseException:
        strategy.close()
        raise
    return Runtime(backend=backend, options=options, strategy=strategy, worker=WorkerIdentity.of(strategy),
                   training_session=sessions[TRAINING], evaluation_session=sessions[EVALUATION],
                   layer_ops=layer_ops)
