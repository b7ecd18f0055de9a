"""The core's default hook implementations: one process, full precision.

Registered before the backend, so any hook the backend implements wins.
"""
from __future__ import annotations

from unet3d_core import hookimpl
from unet3d_core.types import BackendOptions, DistributedStrategy, StepRunner, WrappedOptimizer


@hookimpl
def unet3d_backend_options(flags, core):
    return BackendOptions(core, flags)


@hookimpl
def unet3d_launch(options, worker_command):
    return None


@hookimpl
def unet3d_distributed_strategy(options):
    return DistributedStrategy()


@hookimpl
def unet3d_session_config(config, options, strategy):
    return config


@hookimpl
def unet3d_layer_ops(options):
    from unet3d_core.layers import LayerOps  # imports TensorFlow: only when a graph is about to be built

    return LayerOps()


@hookimpl
def unet3d_mixed_precision(optimizer, options, strategy):
    return WrappedOptimizer(optimizer)


@hookimpl
def unet3d_step_runner(session, train_op, options):
    return StepRunner(train_op)
