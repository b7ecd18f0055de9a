"""Data parallelism over HCCL and the adapter's loss-scaling optimizer.

Both are built only from names the adapter exports in ``npu_bridge.npu_init``.
"""
from __future__ import annotations

import numpy as np

from unet3d_core.types import DistributedStrategy


class HcclStrategy(DistributedStrategy):
    """Rank and size from HCCL; NPUDistributedOptimizer; broadcast and allreduce with hccl_ops.

    In session-run mode HCCL must be initialised in a session of its own
    (``npu_ops.initialize_system``) before its rank functions answer; that
    session lives until :meth:`close` shuts the system down.
    """

    name = "hccl"

    def __init__(self, session_config):
        import tensorflow as tf
        from npu_bridge import npu_init

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

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def local_rank(self) -> int:
        return self._local_rank

    def wrap_optimizer(self, optimizer):
        return self._npu.NPUDistributedOptimizer(optimizer)

    def broadcast_initial_variables_op(self):
        import tensorflow as tf

        tf1 = tf.compat.v1
        variables = tf1.global_variables()  # weights, optimizer slots and the global step
        received = self._npu.hccl_ops.broadcast(variables, 0)  # one collective for the whole list
        return tf.group(*[tf1.assign(variable, value) for variable, value in zip(variables, received)])

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
        return self._npu.hccl_ops.allreduce(tensor, "sum")

    def close(self) -> None:
        for session, _, _ in self._reducers.values():
            session.close()
        self._reducers = {}
        if self._session is not None:
            self._session.run(self._shutdown)
            self._session.close()
            self._session = None


class OverflowCountingOptimizer:
    """Wraps the adapter's NPULossScaleOptimizer: counts the steps it skipped on overflow.

    The adapter applies no update (and leaves the global step alone) when the
    scaled gradients overflow; its ``_is_overall_finite`` tensor says which
    happened. ``unet3d_step_metrics`` gives the core the loss scale and the
    count for its logs. Everything else is delegated.
    """

    def __init__(self, inner, loss_scale_manager, distributed: bool):
        self._inner = inner
        self._loss_scale_manager = loss_scale_manager
        self._overflows = None
        # With is_distributed=True the inner chain already reduces across ranks.
        self.unet3d_distributed = distributed

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def minimize(self, loss, global_step=None, var_list=None, name=None):
        import tensorflow as tf

        tf1 = tf.compat.v1
        train_op = self._inner.minimize(loss, global_step=global_step, var_list=var_list, name=name)
        self._overflows = tf1.get_variable("npu_overflow_steps", shape=[], dtype=tf.int64,
                                           initializer=tf1.zeros_initializer(), trainable=False)
        finite = getattr(self._inner, "_is_overall_finite", None)
        if finite is None:
            return train_op
        with tf.control_dependencies([train_op]):
            counted = tf.cond(finite, lambda: tf.identity(self._overflows),
                              lambda: tf1.assign_add(self._overflows, 1))
        return tf.group(train_op, counted)

    def unet3d_step_metrics(self):
        metrics = {"loss_scale": self._loss_scale_manager.get_loss_scale()}
        if self._overflows is not None:
            metrics["overflow_steps"] = self._overflows
        return metrics
