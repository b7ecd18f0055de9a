"""Hook specifications: the whole contract between the core and a backend.

Every hook is called with keyword arguments. An implementation may accept
fewer arguments than the spec lists. Hooks marked *first result* stop at the
first implementation that returns something other than None; because pluggy
calls the last registered plugin first, a backend's implementation always
wins over the core's defaults (:mod:`unet3d_core.defaults`).

Lifecycle of ``cli.py train --backend X``:

1. ``unet3d_backend_info`` — for every installed backend, to list and select.
2. ``unet3d_add_options`` — for every installed backend, to build ``--help``.
3. ``unet3d_backend_options`` — selected backend, before anything runs: its
   own flags in, its frozen options out (checked there).
4. ``unet3d_launch`` — selected backend, in the process the user started; it
   may start one worker process per device and return their exit status.
5. In each training process: ``unet3d_prepare_environment``, then
   ``unet3d_distributed_strategy``, ``unet3d_session_config``,
   ``unet3d_layer_ops``; while the training graph is built,
   ``unet3d_mixed_precision``; once the session exists,
   ``unet3d_step_runner``. At the end the core calls the strategy's
   ``close()``.

Every parameter and return value is annotated. No hook sees the parsed
command line: ``options`` is what the backend's own
``unet3d_backend_options`` returned - a frozen object holding the
backend's flags and, as ``options.core``, the core's resolved
:class:`unet3d_core.types.CoreSettings` (by default a
:class:`unet3d_core.types.BackendOptions`; the built-in backends return
their own dataclasses). Values a backend derives from its flags (the NPU's
loop size...) are fields of that object. Hooks that hand an object back to
the core return the typed, frozen objects of :mod:`unet3d_core.types`
(``WrappedOptimizer``, ``StepRunner``), which the core checks.

``unet3d_add_commands`` lets a backend add its own top-level commands.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, List, Mapping, Optional

import pluggy

from unet3d_core import PROJECT_NAME

if TYPE_CHECKING:  # annotations only: importing TensorFlow here would slow down --help
    import tensorflow as tf

    from unet3d_core.layers import LayerOps
    from unet3d_core.types import BackendInfo, CoreSettings, DistributedStrategy, StepRunner, WrappedOptimizer

_hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@_hookspec(firstresult=True)
def unet3d_backend_info() -> BackendInfo:
    """Describe the backend. Required.

    Called once per installed backend when plugins are loaded (also for
    ``cli.py backends``), so it must be cheap and must not fail when the
    device's libraries are missing: report that through ``available`` and
    ``reason`` instead.

    Returns:
        :class:`unet3d_core.types.BackendInfo` whose ``name`` equals the
        entry-point name.
    """


@_hookspec
def unet3d_add_options(group: argparse._ArgumentGroup) -> None:
    """Add backend-specific flags to the ``train``/``evaluate``/``predict`` parsers.

    Called for every installed backend (available or not) so that ``--help``
    documents all of them. Flag names must not collide with the core's or
    another backend's.

    Args:
        group: an ``argparse`` argument group titled after the backend.
    """


@_hookspec
def unet3d_add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the backend's own top-level commands (e.g. ``cli.py npu unpatch``).

    Called for every installed backend when the command line is built.
    Each parser made with ``commands.add_parser(name, help=...)`` must call
    ``set_defaults(command_handler=function)``; the CLI then calls
    ``function(options)`` and exits with the int it returns. Raise
    :class:`unet3d_core.errors.UNet3DError` for a one-line error.

    Args:
        commands: the ``argparse`` sub-parsers action of ``cli.py``.
    """


@_hookspec(firstresult=True)
def unet3d_backend_options(flags: Mapping[str, Any], core: CoreSettings) -> Any:
    """Check the backend's own flags and return them as one frozen object. *First result.*

    Called for the selected backend before anything is launched or written
    (in the user's process and again in each worker, for each fold of
    ``--fold all``). Raise :class:`unet3d_core.errors.ConfigError` naming
    the flag on a bad value or combination. What it returns is the
    ``options`` every later hook receives.

    Args:
        flags: ``{dest: value}`` of exactly the flags this backend's
            ``unet3d_add_options`` added (and those of the option plugins it
            shares, e.g. ``hosts``), as parsed.
        core: the core's resolved values for the run.

    Returns:
        A frozen dataclass instance with a ``core`` field (the default is
        :class:`unet3d_core.types.BackendOptions` ``(core, flags)``); the core
        refuses anything else with a one-line error.
    """


@_hookspec(firstresult=True)
def unet3d_launch(options: Any, worker_command: List[str]) -> Optional[int]:
    """Start the worker processes of a multi-process run. *First result.*

    Called in the user's process after ``unet3d_backend_options``. A
    backend that needs one process per device starts them here (with
    argument lists, never shell strings), waits for all of them and returns
    the job's exit status. Return None to train in this process (the
    default). Workers run the same command, so the hook is called in them
    too: it must recognise a worker (e.g. by the launcher's environment
    variables) and return None there.

    Args:
        options: what the backend's ``unet3d_backend_options`` returned.
        worker_command: the full command each worker should run, starting
            with the Python interpreter (``[python, cli.py, train, ...]``).

    Returns:
        int exit status, or None.
    """


@_hookspec
def unet3d_prepare_environment(options: Any) -> None:
    """Prepare this process for training, before TensorFlow builds a graph.

    Called in every training process. Use it for device checks, environment
    variables and installation workarounds. Raise
    :class:`unet3d_core.errors.BackendError` with a one-line reason on failure.

    Args:
        options: what the backend's ``unet3d_backend_options`` returned.
    """


@_hookspec(firstresult=True)
def unet3d_distributed_strategy(options: Any) -> Optional[DistributedStrategy]:
    """Return the process's :class:`unet3d_core.types.DistributedStrategy`. *First result.*

    Called once per training process, after ``unet3d_prepare_environment``
    (initialise the communication library here). The core default is a
    single process.

    Args:
        options: what the backend's ``unet3d_backend_options`` returned.
    """


@_hookspec(firstresult=True)
def unet3d_session_config(config: tf.compat.v1.ConfigProto, options: Any,
                          strategy: DistributedStrategy, phase: str) -> tf.compat.v1.ConfigProto:
    """Return the ``tf.compat.v1.ConfigProto`` for this process's sessions of one phase. *First result.*

    Called once per phase and process before any session is created:
    ``phase`` is ``"training"`` (the training session) or ``"evaluation"``
    (inference sessions: validation during training, evaluate, predict), so
    a device can configure them differently. ``config`` holds the core's
    settings (soft placement, seeds are set elsewhere); modify it and return
    it, or return a new one. An implementation may leave ``phase`` out of
    its parameters to configure both alike.

    Args:
        config: a ``tf.compat.v1.ConfigProto``.
        options: what the backend's ``unet3d_backend_options`` returned.
        strategy: the process's DistributedStrategy.
        phase: ``"training"`` or ``"evaluation"``.
    """


@_hookspec(firstresult=True)
def unet3d_layer_ops(options: Any) -> Optional[LayerOps]:
    """Return the :class:`unet3d_core.layers.LayerOps` the network is computed with. *First result.*

    Called once per process that builds a graph of the network (training,
    evaluation, prediction), after ``unet3d_prepare_environment`` and before
    the first graph. The core creates every variable and passes them to the
    object's methods, so the ops change how the layers are computed, never
    the checkpoint. Return an instance of a subclass with operations tuned
    for the device (the cpu backend's oneDNN and Eigen sets), or None for
    the textbook ops (the core default, what device compilers see best).

    Args:
        options: what the backend's ``unet3d_backend_options`` returned.
    """


@_hookspec(firstresult=True)
def unet3d_mixed_precision(optimizer: tf.compat.v1.train.Optimizer, options: Any,
                           strategy: DistributedStrategy) -> WrappedOptimizer:
    """Return the optimiser for mixed precision and loss scaling, as a WrappedOptimizer. *First result.*

    Called once while the training graph is built, before
    ``strategy.wrap_optimizer``. Return ``WrappedOptimizer(optimizer)`` for
    full precision (the default), or a wrapping optimiser (graph-rewrite AMP,
    loss scaling) in it. Set ``reduces_across_workers=True`` when the wrapper
    already sums the gradients over the workers, so that the strategy does
    not wrap it again; ``step_metrics`` returns a dict of scalar tensors
    (e.g. the loss scale) the core logs with each log line. Steps a
    loss-scaling optimiser skips (no update after an overflow) need no
    metric: the core counts them from the global step (``skipped_steps``).

    Args:
        optimizer: the core's ``tf.compat.v1.train.Optimizer``.
        options: what the backend's ``unet3d_backend_options`` returned.
        strategy: the process's DistributedStrategy.
    """


@_hookspec(firstresult=True)
def unet3d_step_runner(session: tf.compat.v1.Session, train_op: tf.Operation,
                       options: Any) -> StepRunner:
    """Return the StepRunner: the op each ``session.run`` runs and the training steps it performs. *First result.*

    Called once per training process after the session is created and the
    variables are initialised or restored, before the first step; the graph
    can still be changed. A device that runs several steps per
    ``session.run`` (the NPU's ``iterations_per_loop``) wraps ``train_op``
    here. Each run fetches the global step as it is after the returned op
    (a control dependency), with the loss and the step metrics, in the same
    ``session.run``, so progress, throughput, logging and checkpoints stay
    exact whatever one run does (including steps a loss-scaling optimiser
    skipped). The input iterator is already initialised. Default:
    ``StepRunner(train_op)`` (one step per run).

    Args:
        session: the training ``tf.compat.v1.Session``.
        train_op: the op that performs one training step.
        options: what the backend's ``unet3d_backend_options`` returned.
    """
