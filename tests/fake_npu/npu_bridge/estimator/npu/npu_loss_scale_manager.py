"""Fake loss-scale managers: npu_loss_scale_manager.py on top of TensorFlow's contrib managers.

The real classes derive from tensorflow/contrib/mixed_precision/python/loss_scale_manager.py (gone in TF 2);
the fake carries those base classes itself (_Fixed, _ExponentialUpdate) with the same attributes and rules.
"""
import tensorflow as tf

from npu_bridge import record

tf1 = tf.compat.v1


class _Fixed(object):
    """contrib FixedLossScaleManager: a constant scale, never updated."""

    def __init__(self, loss_scale):
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32)

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        del finite_grads
        return tf.no_op()


class _ExponentialUpdate(object):
    """contrib ExponentialUpdateLossScaleManager: variables loss_scale, good_steps, bad_steps."""

    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2, incr_ratio=2,
                 decr_ratio=0.8):
        self._incr_every_n_steps = incr_every_n_steps
        self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        self._incr_ratio = incr_ratio
        self._decr_ratio = decr_ratio
        self._loss_scale = tf1.Variable(tf.convert_to_tensor(init_loss_scale, tf.float32), name="loss_scale",
                                        dtype=tf.float32, trainable=False)
        self._num_good_steps = tf1.Variable(0, name="good_steps", dtype=tf.int32, trainable=False)
        self._num_bad_steps = tf1.Variable(0, name="bad_steps", dtype=tf.int32, trainable=False)

    def _reset_stats(self):
        return tf.group(tf1.assign(self._num_good_steps, 0), tf1.assign(self._num_bad_steps, 0))

    def get_loss_scale(self):
        return self._loss_scale


class FixedLossScaleManager(_Fixed):
    """npu_loss_scale_manager.py:27-41."""

    def __init__(self, loss_scale, enable_overflow_check=True):
        record("FixedLossScaleManager", loss_scale=loss_scale, enable_overflow_check=enable_overflow_check)
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32, name="loss_scale")
        self._enable_overflow_check = enable_overflow_check
        super(FixedLossScaleManager, self).__init__(loss_scale=loss_scale)

    def get_enable_overflow_check(self):
        return self._enable_overflow_check


class ExponentialUpdateLossScaleManager(_ExponentialUpdate):
    """npu_loss_scale_manager.py:44-92: grows only below 3.4e38 / incr_ratio, shrinks to no less than 1."""

    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2, incr_ratio=2,
                 decr_ratio=0.8):
        record("ExponentialUpdateLossScaleManager", init_loss_scale=init_loss_scale,
               incr_every_n_steps=incr_every_n_steps, decr_every_n_nan_or_inf=decr_every_n_nan_or_inf,
               incr_ratio=incr_ratio, decr_ratio=decr_ratio)
        super(ExponentialUpdateLossScaleManager, self).__init__(
            init_loss_scale=init_loss_scale, incr_every_n_steps=incr_every_n_steps,
            decr_every_n_nan_or_inf=decr_every_n_nan_or_inf, incr_ratio=incr_ratio, decr_ratio=decr_ratio)

    def update_loss_scale(self, finite_grads):
        def if_finite():
            def grow():
                below_limit = tf.less(self._loss_scale, 3.4e38 / self._incr_ratio)
                scale = tf.cond(below_limit, lambda: self._loss_scale * self._incr_ratio,
                                lambda: tf.identity(self._loss_scale))
                return tf.group(tf1.assign(self._loss_scale, scale), self._reset_stats())

            return tf.cond(self._num_good_steps + 1 >= self._incr_every_n_steps, grow,
                           lambda: tf.group(tf1.assign_add(self._num_good_steps, 1)))

        def if_overflow():
            def shrink():
                scale = tf.maximum(1.0, self._loss_scale * self._decr_ratio)
                return tf.group(tf1.assign(self._loss_scale, scale), self._reset_stats())

            def count():
                return tf.group(tf1.assign_add(self._num_bad_steps, 1), tf1.assign(self._num_good_steps, 0))

            return tf.cond(self._num_bad_steps + 1 >= self._decr_every_n_nan_or_inf, shrink, count)

        return tf.cond(finite_grads, if_finite, if_overflow)
