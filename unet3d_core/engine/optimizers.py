"""The optimiser a run trains with: Adam (the seed's) or SGD with Nesterov momentum (nnU-Net's), with optional
gradient-norm clipping and weight decay.

Clipping and weight decay live in the innermost optimiser's ``apply_gradients``,
so they see the gradients after every wrapper a backend adds has done its
work: averaged over workers (Horovod, the NPU's distributed optimiser) and
unscaled (loss scaling), and only applied when the loss scaler found them
finite. That is the order nnU-Net's loop has (unscale, clip at 12, step with
weight decay), and it makes the clip threshold independent of the loss scale
and of the number of workers.
"""
from __future__ import annotations

from unet3d_core.errors import ConfigError


def _transforming_optimizer_class():
    """tf.compat.v1.train.Optimizer subclass applying clip + weight decay around another optimiser."""
    import tensorflow as tf

    tf1 = tf.compat.v1

    class GradientTransformOptimizer(tf1.train.Optimizer):
        """Delegates to ``inner``; clips the global norm, then adds ``weight_decay x variable``."""

        def __init__(self, inner, *, grad_clip: float, weight_decay: float, name: str = "GradientTransform"):
            super().__init__(use_locking=False, name=name)
            self._inner = inner
            self._grad_clip = float(grad_clip)
            self._weight_decay = float(weight_decay)

        def compute_gradients(self, *args, **kwargs):
            return self._inner.compute_gradients(*args, **kwargs)

        def apply_gradients(self, grads_and_vars, global_step=None, name=None):
            pairs = [(gradient, variable) for gradient, variable in grads_and_vars if gradient is not None]
            gradients = [gradient for gradient, _ in pairs]
            variables = [variable for _, variable in pairs]
            if self._grad_clip > 0:
                # float32 norm: gradients of a float16 graph summed in float32 do not overflow here.
                norm = tf1.global_norm([tf.cast(gradient, tf.float32) for gradient in gradients])
                gradients, _ = tf.clip_by_global_norm(gradients, self._grad_clip, use_norm=norm)
            if self._weight_decay > 0:
                # Coupled L2 (added to the gradient before momentum), as torch's SGD weight_decay does.
                gradients = [gradient + self._weight_decay * tf.cast(variable, gradient.dtype)
                             for gradient, variable in zip(gradients, variables)]
            return self._inner.apply_gradients(list(zip(gradients, variables)), global_step=global_step, name=name)

        def get_slot(self, *args, **kwargs):
            return self._inner.get_slot(*args, **kwargs)

        def get_slot_names(self, *args, **kwargs):
            return self._inner.get_slot_names(*args, **kwargs)

        def variables(self):
            return self._inner.variables()

    return GradientTransformOptimizer


def build_optimizer(*, name: str, learning_rate, momentum: float = 0.99, weight_decay: float = 0.0,
                    grad_clip: float = 0.0):
    """The base optimiser (before any backend wraps it).

    Args:
        name: ``adam`` (tf.train.AdamOptimizer, the seed's) or ``sgd`` (momentum with Nesterov's update).
        learning_rate: float or tensor.
        momentum: SGD's momentum.
        weight_decay: L2 coefficient added to each gradient; 0 = none.
        grad_clip: cap on the global gradient norm; 0 = none.
    Returns:
        a ``tf.compat.v1.train.Optimizer``; with clipping or weight decay, one that applies them
        before delegating to the base optimiser.
    """
    import tensorflow as tf

    tf1 = tf.compat.v1
    if name == "adam":
        inner = tf1.train.AdamOptimizer(learning_rate)
    elif name == "sgd":
        inner = tf1.train.MomentumOptimizer(learning_rate, momentum=momentum, use_nesterov=True)
    else:
        raise ConfigError("--optimizer {}: expected sgd or adam".format(name))
    if grad_clip <= 0 and weight_decay <= 0:
        return inner  # exactly the seed's graph when neither is asked for
    return _transforming_optimizer_class()(inner, grad_clip=grad_clip, weight_decay=weight_decay)

