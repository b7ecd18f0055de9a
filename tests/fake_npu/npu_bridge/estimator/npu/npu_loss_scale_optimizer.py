"""Fake NPULossScaleOptimizer (npu_loss_scale_optimizer.py), with the TensorFlow base class it derives from.

``_LossScaleOptimizer`` is tensorflow/contrib/mixed_precision/python/loss_scale_optimizer.py's
LossScaleOptimizer (not in TF 2): its ``__init__`` sets only ``_opt`` and ``_loss_scale_manager`` and never
calls ``Optimizer.__init__``; compute_gradients scales the loss and down-scales the gradients.

NPULossScaleOptimizer (npu_loss_scale_optimizer.py:33-93) sets ``_opt``, ``_loss_scale_manager``,
``_float_status``, ``_is_distributed`` and ``_name`` ("NPULossScaleOptimizermodule": it formats the type of the
*module* ``optimizer``), and forwards every other attribute to the wrapped optimizer (``__getattr__``, :45-46).
The finite flag of a step is a local variable of apply_gradients (``is_overall_finite``); no attribute holds
it, so ``opt._is_overall_finite`` is the wrapped optimizer's AttributeError. The flag's op is named
``overflow_status_reduce_all``. On overflow neither the update nor the global-step increment (inside the
wrapped apply_gradients) runs.
"""
import tensorflow as tf

from npu_bridge import record
from npu_bridge.estimator.npu import npu_plugin
from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
from npu_bridge.hccl import hccl_ops

tf1 = tf.compat.v1


class _LossScaleOptimizer(tf1.train.Optimizer):
    def __init__(self, opt, loss_scale_manager):
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager

    def compute_gradients(self, loss, var_list=None, gate_gradients=tf1.train.Optimizer.GATE_OP,
                          aggregation_method=None, colocate_gradients_with_ops=False, grad_loss=None):
        loss_scale = self._loss_scale_manager.get_loss_scale()
        value = loss() if callable(loss) else loss
        scaled_loss = value * tf.cast(loss_scale, value.dtype.base_dtype)
        grads_and_vars = self._opt.compute_gradients(
            scaled_loss, var_list=var_list, gate_gradients=gate_gradients, aggregation_method=aggregation_method,
            colocate_gradients_with_ops=colocate_gradients_with_ops, grad_loss=grad_loss)
        return self._down_scale(grads_and_vars, loss_scale)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads_and_vars])
        update = tf.cond(finite, lambda: tf.group(self._opt.apply_gradients(grads_and_vars, global_step, name)),
                         tf.no_op)
        return tf.group(update, self._loss_scale_manager.update_loss_scale(finite))

    def _down_scale(self, grads_vars, loss_scale):
        inverse = tf.math.reciprocal(loss_scale)
        return [(g * tf.cast(inverse, g.dtype.base_dtype), v) if g is not None else (g, v) for g, v in grads_vars]


def _float_status(grads):
    """Stands in for npu_get_float_status_v2: nonzero when an op of the step overflowed; here, when a
    gradient is not finite (the overflow a scaled float16/float32 backward pass shows)."""
    flags = [tf.reduce_any(tf.logical_not(tf.math.is_finite(g))) for g in grads]
    overflowed = tf.reduce_any(flags) if flags else tf.constant(False)
    return tf.reshape(tf.cast(overflowed, tf.float32), [1], name="NpuGetFloatStatusV2")


class NPULossScaleOptimizer(_LossScaleOptimizer):
    def __init__(self, opt, loss_scale_manager, is_distributed=False):
        record("NPULossScaleOptimizer", opt=type(opt).__name__, manager=type(loss_scale_manager).__name__,
               is_distributed=is_distributed)
        self._opt = opt
        self._loss_scale_manager = loss_scale_manager
        self._float_status = tf.constant([0.0], dtype=tf.float32)
        self._is_distributed = is_distributed
        # "...module": the real one formats the type of its imported module `optimizer`
        self._name = "NPULossScaleOptimizer{}".format(type(npu_plugin).__name__)
        super(NPULossScaleOptimizer, self).__init__(opt=opt, loss_scale_manager=loss_scale_manager)

    def __getattr__(self, attr):
        return getattr(self._opt, attr)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        if npu_plugin.is_inf_nan_enabled():
            return super(NPULossScaleOptimizer, self).apply_gradients(grads_and_vars, global_step, name)
        if self._enable_overflow_check():
            with tf.name_scope(self._name):
                grads = [g for g, _ in grads_and_vars if g is not None]
                with tf1.get_default_graph().control_dependencies(grads):
                    local_float_status = _float_status(grads)
                with tf1.get_default_graph().control_dependencies([local_float_status]):
                    cleared_float_status = tf.no_op(name="NpuClearFloatStatusV2")
            if self._is_distributed:
                aggregated = hccl_ops.allreduce([local_float_status], "sum", fusion=0)
                with tf1.get_default_graph().control_dependencies([cleared_float_status]):
                    is_overall_finite = tf.reduce_all(tf.equal(aggregated, 0), name="overflow_status_reduce_all")
            else:
                with tf1.get_default_graph().control_dependencies([cleared_float_status]):
                    finite = tf.equal(0.0, local_float_status)
                is_overall_finite = tf.reduce_all(finite, name="overflow_status_reduce_all")
        else:
            is_overall_finite = tf.constant(True, dtype=tf.bool)

        def true_apply_grads_fn():
            return tf.group(self._opt.apply_gradients(grads_and_vars, global_step, name))

        update_variables = tf.cond(is_overall_finite, true_apply_grads_fn, tf.no_op)
        return tf.group(update_variables, self._loss_scale_manager.update_loss_scale(is_overall_finite))

    def _enable_overflow_check(self):
        if isinstance(self._loss_scale_manager, FixedLossScaleManager):
            return self._loss_scale_manager.get_enable_overflow_check()
        return True
