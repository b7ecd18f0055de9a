"""Fake NPUDistributedOptimizer: gradients summed over ranks, divided by the rank size."""
import os

import tensorflow as tf

from npu_bridge import record
from npu_bridge.hccl import hccl_ops


class NPUDistributedOptimizer(tf.compat.v1.train.Optimizer):
    def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
        record("NPUDistributedOptimizer", optimizer=type(optimizer).__name__,
               is_weight_update_sharding=is_weight_update_sharding)
        self._optimizer = optimizer
        super(NPUDistributedOptimizer, self).__init__(use_locking=False,
                                                      name=name or "Distributed" + type(optimizer).__name__)

    def compute_gradients(self, *args, **kwargs):
        gradients = self._optimizer.compute_gradients(*args, **kwargs)
        size = int(os.environ.get("RANK_SIZE", "1"))
        if size == 1:
            return gradients
        averaged, previous = [], []
        for gradient, variable in gradients:
            if gradient is None:
                averaged.append((None, variable))
                continue
            # One fixed order on every rank (HCCL needs the same sequence everywhere).
            with tf.control_dependencies(previous):
                total = hccl_ops.allreduce(gradient, "sum", fusion=0)
            previous = [total]
            averaged.append((total / tf.cast(size, total.dtype), variable))
        return averaged

    def apply_gradients(self, *args, **kwargs):
        return self._optimizer.apply_gradients(*args, **kwargs)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
