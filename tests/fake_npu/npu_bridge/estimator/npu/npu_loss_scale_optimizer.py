"""Fake NPULossScaleOptimizer: scale the loss, unscale gradients, skip non-finite steps."""
import os

import tensorflow as tf

from npu_bridge import record
from npu_bridge.hccl import hccl_ops


class NPULossScaleOptimizer(tf.compat.v1.train.Optimizer):
    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        record("NPULossScaleOptimizer", opt=type(opt).__name__, manager=type(loss_scale_manager).__name__,
               is_distributed=is_distributed)
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager
        self._is_distributed = is_distributed
        self._is_overall_finite = None
        super(NPULossScaleOptimizer, self).__init__(use_locking=False, name="NPULossScaleOptimizer")

    def compute_gradients(self, loss, var_list=None, **kwargs):
        scale = self._loss_scale_manager.get_loss_scale()
        scaled = self._opt.compute_gradients(loss * scale, var_list=var_list, **kwargs)
        return [(None if g is None else g / scale, v) for g, v in scaled]

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads_and_vars if g is not None])
        if self._is_distributed and int(os.environ.get("RANK_SIZE", "1")) > 1:
            # Every rank skips together when any rank overflowed.
            overflowed = hccl_ops.allreduce(tf.cast(tf.logical_not(finite), tf.float32), "sum", fusion=0)
            finite = tf.equal(overflowed, 0.0)
        self._is_overall_finite = finite
        update_scale = self._loss_scale_manager.update_loss_scale(finite)

        def apply():
            return self._opt.apply_gradients(grads_and_vars, global_step=global_step, name=name)

        applied = tf.cond(finite, lambda: tf.group(apply()), tf.no_op)
        return tf.group(applied, update_scale)

    def get_slot(self, *args, **kwargs):
        return self._opt.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._opt.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._opt.variables(*args, **kwargs)
