"""Data parallelism over HCCL and loss scaling.

Both are built only from names the adapter exports in its ``npu_init`` (``npu_bridge.npu_init``, or
``npu_device.compat.v1.npu_init`` of the TF 2 adapter), or from TensorFlow itself.
"""
from __future__ import annotations

import importlib
from typing import Dict, List, Sequence

import numpy as np

from backends.npu import adapter as npu_adapter
from backends.npu import config as npu_config
from backends.npu import float_status
from unet3d_core.errors import BackendError
from unet3d_core.types import DistributedStrategy, WrappedOptimizer


def broadcast_groups(variables: Sequence) -> List[List]:
    """``variables`` grouped by data type, in first-seen order: one HcomBroadcast each. HCCL broadcasts one
    buffer of one ``HcclDataType`` per call (hicann/hccl docs/zh/api_ref/comm_op_interface/HcclBroadcast.md),
    so the float32 weights and slots go together and the int64 global step alone."""
    groups: Dict[str, List] = {}
    for variable in variables:
        groups.setdefault(variable.dtype.base_dtype.name, []).append(variable)
    return list(groups.values())


class HcclStrategy(DistributedStrategy):
    """Rank and size from HCCL; NPUDistributedOptimizer; broadcast and allreduce with hccl_ops.

    In session-run mode HCCL must be initialised in a session of its own
    (``npu_ops.initialize_system``) before its rank functions answer; that
    session lives until :meth:`close` shuts the system down. ``split``
    (``--npu_split_strategy``) is handed to HCCL right after it started.
    """

    name = "hccl"

    def __init__(self, session_config, split=None):
        import tensorflow as tf

        npu_init = npu_adapter.load().npu_init
        self._npu = npu_init
        self._session_config = session_config
        self._reducers = {}
        graph = tf.Graph()
        with graph.as_default():
            initialize = npu_init.npu_ops.initialize_system()
            self._shutdown = npu_init.npu_ops.shutdown_system()
        self._session = tf.compat.v1.Session(graph=graph, config=session_config)
        self._session.run(initialize)
        self._rank = int(npu_init.get_rank_id())
        self._size = int(npu_init.get_rank_size())
        self._local_rank = int(npu_init.get_local_rank_id())
        self._local_size = int(npu_init.get_local_rank_size())
        if split is not None:  # HCCL takes the split strategy once it started, before the first allreduce
            kind, values = split
            setter = getattr(npu_init, "set_split_strategy_by_" + kind)
            try:
                setter(list(values))
            except ValueError as error:
                raise BackendError("--npu_split_strategy {}:{}: HCCL refused it: {}".format(
                    kind, npu_config.split_values(values), error)) from None

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def local_size(self) -> int:
        return self._local_size

    def wrap_optimizer(self, optimizer):
        return self._npu.NPUDistributedOptimizer(optimizer)

    def broadcast_initial_variables_op(self):
        import tensorflow as tf

        tf1 = tf.compat.v1
        assignments, previous = [], []
        for group in broadcast_groups(tf1.global_variables()):
            with tf.control_dependencies(previous):  # the same order on every rank: no two wait on each other
                received = self._npu.hccl_ops.broadcast(group, 0)
            previous = received
            assignments += [tf1.assign(variable, value) for variable, value in zip(group, received)]
        return tf.group(*assignments)

    def allreduce_sum(self, values: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        values = np.asarray(values, dtype=np.float64)
        if values.shape not in self._reducers:  # one small graph per shape, reused (it runs every step)
            graph = tf.Graph()
            with graph.as_default():
                # HCCL on Ascend training cards reduces float32, not float64.
                placeholder = tf.compat.v1.placeholder(tf.float32, values.shape)
                total = self._npu.hccl_ops.allreduce(placeholder, "sum")
            self._reducers[values.shape] = (tf.compat.v1.Session(graph=graph, config=self._session_config),
                                            placeholder, total)
        session, placeholder, total = self._reducers[values.shape]
        return np.asarray(session.run(total, {placeholder: values.astype(np.float32)}), dtype=np.float64)

    def allreduce_sum_tensor(self, tensor):
        # fusion=0: a collective of its own. With the default (1) HCCL may fuse it into the gradients'
        # segments (by the split strategy), as the adapter avoids for its own float-status allreduce.
        return self._npu.hccl_ops.allreduce(tensor, "sum", fusion=0)

    def close(self) -> None:
        for session, _, _ in self._reducers.values():
            session.close()
        self._reducers = {}
        if self._session is not None:
            self._session.run(self._shutdown)
            self._session.close()
            self._session = None


def loss_scaling_optimizer(adapter, optimizer, kind: str, scale: float, distributed: bool):
    """``optimizer`` with loss scaling ("fixed" at ``scale`` or "dynamic" from it), the reduction inside, as a
    :class:`unet3d_core.WrappedOptimizer`.

    With the 1.x adapter: its NPULossScaleOptimizer and loss-scale managers (is_distributed reduces the
    overflow flag across ranks). The 2.x adapter's compat.v1 has neither (removed by
    upgrade_tf1_compat_tf2.py). In the device's INF/NaN mode (the Atlas A2 default) TensorFlow's
    MixedPrecisionLossScaleOptimizer is used: it sees an overflow as an inf/NaN gradient; the gradients it
    checks are already reduced, so all ranks skip the same steps. In saturation mode (Atlas 910), where an
    overflow gives no inf/NaN, the device's float status is read instead, as the 2.x adapter's own optimiser
    does (:mod:`backends.npu.float_status`).
    """
    npu_init = adapter.npu_init
    inner = npu_init.NPUDistributedOptimizer(optimizer) if distributed else optimizer
    if adapter.has_loss_scale_optimizer:
        if kind == "fixed":
            manager = npu_init.FixedLossScaleManager(loss_scale=scale)
        else:
            manager = npu_init.ExponentialUpdateLossScaleManager(
                init_loss_scale=scale, incr_every_n_steps=npu_config.DYNAMIC_GROWTH_STEPS,
                decr_every_n_nan_or_inf=npu_config.DYNAMIC_SHRINK_AFTER_OVERFLOWS,
                incr_ratio=npu_config.DYNAMIC_GROWTH_RATIO, decr_ratio=npu_config.DYNAMIC_SHRINK_RATIO)
        # The adapter's order: loss scaling outside, the distributed reduction inside.
        wrapped = npu_init.NPULossScaleOptimizer(inner, manager, is_distributed=distributed)
        return _reporting_loss_scale(wrapped, manager.get_loss_scale, distributed)
    if not _inf_nan_mode():
        return float_status.float_status_loss_scaling(importlib.import_module("npu_device").gen_npu_ops,
                                                      npu_init.hccl_ops.allreduce, inner, kind, scale, distributed)
    import tensorflow as tf

    tf1 = tf.compat.v1
    if kind == "fixed":  # TensorFlow's FixedLossScale applies overflowing steps; a multiplier of 1 skips them
        loss_scale = tf1.mixed_precision.DynamicLossScale(initial_loss_scale=scale, increment_period=2 ** 31 - 1,
                                                         multiplier=1.0)
    else:  # TensorFlow halves the scale after every overflow (the adapter's manager after 2)
        loss_scale = tf1.mixed_precision.DynamicLossScale(initial_loss_scale=scale,
                                                         increment_period=npu_config.DYNAMIC_GROWTH_STEPS,
                                                         multiplier=npu_config.DYNAMIC_GROWTH_RATIO)
    wrapped = tf1.train.experimental.MixedPrecisionLossScaleOptimizer(inner, loss_scale)
    return _reporting_loss_scale(wrapped, loss_scale, distributed)


def _reporting_loss_scale(optimizer, loss_scale, distributed: bool) -> WrappedOptimizer:
    """A loss-scaling optimiser that reports its loss scale as a step metric.

    The adapter applies no update, and leaves the global step alone, when the scaled gradients overflow; it
    exposes no flag saying so (its ``is_overall_finite`` is a local of ``apply_gradients``). The core counts
    those skipped steps from the global step itself, so only the loss scale is reported. With
    ``distributed`` the chain already reduces across ranks (``is_distributed=True``).
    """
    return WrappedOptimizer(optimizer, reduces_across_workers=distributed,
                            step_metrics=lambda: {"loss_scale": loss_scale()})


def _inf_nan_mode() -> bool:
    """Whether the device gives inf/NaN on overflow (``npu_device.is_inf_nan_enabled()``); false on Atlas 910,
    which saturates."""
    return bool(importlib.import_module("npu_device").is_inf_nan_enabled())
