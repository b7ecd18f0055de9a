"""Fake loss-scale managers with the adapter's constructor signatures and update rules."""
import tensorflow as tf

from npu_bridge import record

tf1 = tf.compat.v1


class FixedLossScaleManager(object):
    def __init__(self, loss_scale, enable_overflow_check=True):
        record("FixedLossScaleManager", loss_scale=loss_scale, enable_overflow_check=enable_overflow_check)
        if loss_scale < 1:
            raise ValueError("loss scale must be at least 1.")
        self._loss_scale = tf.convert_to_tensor(loss_scale, dtype=tf.float32)
        self._enable_overflow_check = enable_overflow_check

    def get_enable_overflow_check(self):
        return self._enable_overflow_check

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        return tf.no_op()


class ExponentialUpdateLossScaleManager(object):
    def __init__(self, init_loss_scale, incr_every_n_steps, decr_every_n_nan_or_inf=2, incr_ratio=2,
                 decr_ratio=0.8):
        record("ExponentialUpdateLossScaleManager", init_loss_scale=init_loss_scale,
               incr_every_n_steps=incr_every_n_steps, decr_every_n_nan_or_inf=decr_every_n_nan_or_inf,
               incr_ratio=incr_ratio, decr_ratio=decr_ratio)
        self._incr_every_n_steps = incr_every_n_steps
        self._decr_every_n_nan_or_inf = decr_every_n_nan_or_inf
        self._incr_ratio = incr_ratio
        self._decr_ratio = decr_ratio
        self._loss_scale = tf1.get_variable("loss_scale", initializer=float(init_loss_scale), dtype=tf.float32,
                                            trainable=False)
        self._good_steps = tf1.get_variable("good_steps", initializer=0, dtype=tf.int32, trainable=False)
        self._bad_steps = tf1.get_variable("bad_steps", initializer=0, dtype=tf.int32, trainable=False)

    def get_enable_overflow_check(self):
        return True

    def get_loss_scale(self):
        return self._loss_scale

    def update_loss_scale(self, finite_grads):
        def on_finite():
            grow = self._good_steps + 1 >= self._incr_every_n_steps
            new_scale = tf.where(grow, self._loss_scale * self._incr_ratio, self._loss_scale)
            return tf.group(tf1.assign(self._loss_scale, new_scale),
                            tf1.assign(self._good_steps, tf.where(grow, 0, self._good_steps + 1)),
                            tf1.assign(self._bad_steps, 0))

        def on_overflow():
            shrink = self._bad_steps + 1 >= self._decr_every_n_nan_or_inf
            new_scale = tf.where(shrink, tf.maximum(self._loss_scale * self._decr_ratio, 1.0), self._loss_scale)
            return tf.group(tf1.assign(self._loss_scale, new_scale),
                            tf1.assign(self._bad_steps, tf.where(shrink, 0, self._bad_steps + 1)),
                            tf1.assign(self._good_steps, 0))

        return tf.cond(finite_grads, on_finite, on_overflow)
