"""Loss scaling that reads the device's overflow flag, for the TF 2 adapter on a device that saturates.

On Atlas 910 the AI Core saturates on overflow instead of producing inf/NaN
(``npu_device.is_inf_nan_enabled()`` is false), so TensorFlow's loss scaling,
which looks for non-finite gradients, never sees an overflow. The TF 2
adapter's own Keras optimiser (tf_adapter_2.x/python/npu_device/train/
optimizer/npu_loss_scale_optimizer.py:33-49, ``_npu_finite_status_after_executed``)
reads the device's float-status register instead; this is the same for the
``compat.v1`` graph unet3d builds:

1. the loss is multiplied by the scale and the gradients divided by it again,
   so the clipping and weight decay inside see unscaled gradients;
2. after the gradients (and their allreduce) ran, ``npu_get_float_status_v2``
   reads the register (int32[8], nonzero after an overflow), then
   ``npu_clear_float_status_v2`` clears it for the next step;
3. with several ranks the status is summed over them (``fusion=0``: it must
   not join the gradients' fused allreduce), so every rank skips the same step;
4. a step is applied only when the status is all zeros; otherwise nothing
   changes, the global step included (as the 1.x adapter's NPULossScaleOptimizer).

The scale follows the 1.x adapter's managers (npu_loss_scale_manager.py):
"fixed" keeps it; "dynamic" grows it by ``DYNAMIC_GROWTH_RATIO`` after
``DYNAMIC_GROWTH_STEPS`` finite steps (below 3.4e38 / ratio) and shrinks it by
``DYNAMIC_SHRINK_RATIO``, to no less than 1, after
``DYNAMIC_SHRINK_AFTER_OVERFLOWS`` overflows in a row.
"""
from __future__ import annotations

from backends.npu import config as npu_config
from unet3d_core.types import WrappedOptimizer

# The largest float32 the scale may grow to (npu_loss_scale_manager.py, 3.4e38 / incr_ratio).
FLOAT32_LIMIT = 3.4e38


def float_status_loss_scaling(gen_npu_ops, allreduce, optimizer, kind: str, scale: float,
                              distributed: bool) -> WrappedOptimizer:
    """``optimizer`` (the distributed one when ``distributed``) with loss scaling driven by the float status.

    ``gen_npu_ops``: the adapter's loaded op library (``npu_device.gen_npu_ops``); ``allreduce``: its
    ``hccl_ops.allreduce`` (used only when ``distributed``).
    """
    wrapped = _optimizer_class()(optimizer, gen_npu_ops, allreduce, kind=kind, scale=scale,
                                 distributed=distributed)
    return WrappedOptimizer(wrapped, reduces_across_workers=distributed,
                            step_metrics=lambda: {"loss_scale": wrapped.loss_scale.read_value()})


def dynamic_scale_update(finite, scale, good_steps, bad_steps):
    """The op updating the dynamic loss scale after a step whose ``finite`` flag is given, as the 1.x adapter's
    ExponentialUpdateLossScaleManager does (npu_loss_scale_manager.py; see the module docstring)."""
    import tensorflow as tf

    tf1 = tf.compat.v1

    def reset():
        return [tf1.assign(good_steps, 0.0), tf1.assign(bad_steps, 0.0)]

    def after_finite():
        def grow():
            grown = tf.where(scale < FLOAT32_LIMIT / npu_config.DYNAMIC_GROWTH_RATIO,
                             scale * npu_config.DYNAMIC_GROWTH_RATIO, scale)
            return tf.group(tf1.assign(scale, grown), *reset())

        return tf.cond(good_steps + 1 >= npu_config.DYNAMIC_GROWTH_STEPS, grow,
                       lambda: tf.group(tf1.assign_add(good_steps, 1.0), tf1.assign(bad_steps, 0.0)))

    def after_overflow():
        def shrink():
            return tf.group(tf1.assign(scale, tf.maximum(1.0, scale * npu_config.DYNAMIC_SHRINK_RATIO)), *reset())

        return tf.cond(bad_steps + 1 >= npu_config.DYNAMIC_SHRINK_AFTER_OVERFLOWS, shrink,
                       lambda: tf.group(tf1.assign_add(bad_steps, 1.0), tf1.assign(good_steps, 0.0)))

    return tf.cond(finite, after_finite, after_overflow)


def _optimizer_class():
    """The optimiser class, defined on first use (it subclasses TensorFlow's, which is imported lazily)."""
    import tensorflow as tf

    tf1 = tf.compat.v1

    class FloatStatusLossScaleOptimizer(tf1.train.Optimizer):
        """Loss scaling whose overflow flag is the device's float status (see the module docstring)."""

        def __init__(self, inner, gen_npu_ops, allreduce, *, kind: str, scale: float, distributed: bool):
            super().__init__(use_locking=False, name="FloatStatusLossScaleOptimizer")
            self._inner = inner
            self._ops = gen_npu_ops
            self._allreduce = allreduce
            self._dynamic = kind == "dynamic"
            self._distributed = distributed
            with tf1.variable_scope("loss_scale"):
                self._scale = tf1.get_variable("scale", initializer=float(scale), trainable=False)
                self._good_steps = tf1.get_variable("good_steps", initializer=0.0, trainable=False)
                self._bad_steps = tf1.get_variable("bad_steps", initializer=0.0, trainable=False)

        @property
        def loss_scale(self):
            return self._scale

        def compute_gradients(self, loss, var_list=None, **kwargs):
            scale = tf.identity(self._scale)
            pairs = self._inner.compute_gradients(loss * scale, var_list=var_list, **kwargs)
            return [(None if gradient is None else gradient / scale, variable) for gradient, variable in pairs]

        def apply_gradients(self, grads_and_vars, global_step=None, name=None):
            grads_and_vars = list(grads_and_vars)
            finite = self._finite([gradient for gradient, _ in grads_and_vars if gradient is not None])
            apply = tf.cond(finite,
                            lambda: tf.group(self._inner.apply_gradients(grads_and_vars, global_step, name)),
                            tf.no_op)
            return tf.group(apply, self._update_scale(finite))

        def _finite(self, gradients):
            """True when the device's float status after ``gradients`` is all zeros (on every rank)."""
            with tf.control_dependencies(gradients):
                status = self._ops.npu_get_float_status_v2()
            with tf.control_dependencies([status]):
                cleared = self._ops.npu_clear_float_status_v2()
            if self._distributed:
                status = self._allreduce(status, "sum", fusion=0)
            with tf.control_dependencies([cleared]):
                return tf.reduce_all(tf.equal(status, 0), name="float_status_finite")

        def _update_scale(self, finite):
            if not self._dynamic:
                return tf.no_op()
            return dynamic_scale_update(finite, self._scale, self._good_steps, self._bad_steps)

        # The optimiser itself creates no slots: everything else is the inner optimiser's.
        def get_slot(self, *args, **kwargs):
            return self._inner.get_slot(*args, **kwargs)

        def get_slot_names(self, *args, **kwargs):
            return self._inner.get_slot_names(*args, **kwargs)

        def variables(self):
            return self._inner.variables() + [self._scale, self._good_steps, self._bad_steps]

    return FloatStatusLossScaleOptimizer
