"""The 3D U-Net of the reference (3D U-Net with the No New-Net changes): the architecture.

Six resolutions at the default widths 32-64-128-256-320-320: an input block of
two 3x3x3 convolutions, down blocks that halve the resolution with a strided
convolution instead of pooling, a bottleneck, and up blocks of a 2x2x2
transposed convolution, concatenation with the skip connection and two
convolutions. About 31.2 M parameters at 4 input channels and 4 classes.

This module creates the variables and wires the layers; the convolutions and
the instance norm are computed by a :class:`unet3d_core.layers.LayerOps`
object, the textbook one unless a backend supplies faster ones (the
``unet3d_layer_ops`` hook). The variables are the same whatever the ops, so
checkpoints are portable between them, as between TensorFlow 1.15 and 2.x
(variables are made with ``tf.compat.v1.get_variable``). Tensors are NDHWC:
[batch, x, y, z, channels].
"""
from __future__ import annotations

import zlib
from typing import List

import tensorflow as tf

from unet3d_core.layers import LEAKY_RELU_SLOPE, NORM_EPSILON, LayerOps
from unet3d_core.model.config import ModelConfig

tf1 = tf.compat.v1


def _conv_weights(name, shape):
    # The random draw is keyed by the graph's seed (--seed) and the variable's name,
    # not by how many ops the graph had when the variable was made (TensorFlow's
    # default), so the initial weights are the same whatever the batch size, the
    # layer ops or the number of workers.
    full_name = "{}/{}".format(tf1.get_variable_scope().name, name).lstrip("/")
    seed = zlib.crc32(full_name.encode("utf-8")) & 0x7FFFFFFF
    return tf1.get_variable(name, shape=shape, dtype=tf.float32,
                            initializer=tf1.glorot_uniform_initializer(seed=seed))


def _bias(name, size):
    # Added with tf.nn.bias_add rather than "+": the same sum, which TensorFlow's
    # remapper fuses into the convolution before it, and whose gradient is one
    # BiasAddGrad instead of a broadcasting reduction.
    return tf1.get_variable(name, shape=[size], dtype=tf.float32, initializer=tf1.zeros_initializer())


def _norm_parameters(x):
    channels = x.shape[-1]
    channels = int(channels.value if hasattr(channels, "value") else channels)
    gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
    beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
    return channels, gamma, beta


def _group_norm(x, channels: int, groups: int):
    """``(x - mean) / sqrt(variance + eps)`` with statistics per sample over groups of channels."""
    groups = min(groups, channels)
    while channels % groups:
        groups -= 1
    shape = tf.shape(x)
    grouped = tf.reshape(x, tf.concat([shape[:4], [groups, channels // groups]], axis=0))
    mean, variance = tf.nn.moments(grouped, axes=[1, 2, 3, 5], keepdims=True)
    grouped = (grouped - mean) * tf.math.rsqrt(variance + NORM_EPSILON)
    return tf.reshape(grouped, shape)


def _batch_norm(x, channels: int, training: bool):
    """``(x - mean) / sqrt(variance + eps)``: the batch's statistics in training (moving averages kept), else those."""
    moving_mean = tf1.get_variable("moving_mean", [channels], initializer=tf1.zeros_initializer(), trainable=False)
    moving_variance = tf1.get_variable("moving_variance", [channels], initializer=tf1.ones_initializer(),
                                       trainable=False)
    if training:
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2, 3])
        momentum = 0.99
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign_sub(
            moving_mean, (1 - momentum) * (moving_mean - mean)))
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, tf1.assign_sub(
            moving_variance, (1 - momentum) * (moving_variance - variance)))
    else:
        mean, variance = moving_mean, moving_variance
    return (x - mean) * tf.math.rsqrt(variance + NORM_EPSILON)


def _normalize_and_activate(x, config: ModelConfig, training: bool, ops: LayerOps):
    """``leaky_relu(norm(x) * gamma + beta)`` with the norm ``config.norm`` names; instance norm by ``ops``."""
    channels, gamma, beta = _norm_parameters(x)
    if config.norm == "instancenorm":
        return ops.instance_norm_leaky_relu(x, gamma, beta)
    if config.norm == "groupnorm":
        x = _group_norm(x, channels, config.groups)
    elif config.norm == "batchnorm":
        x = _batch_norm(x, channels, training)
    return tf.nn.leaky_relu(x * gamma + beta, alpha=LEAKY_RELU_SLOPE)


def conv_unit(x, filters: int, config: ModelConfig, training: bool, stride: int = 1, name: str = "conv",
              ops: LayerOps = None):
    """3x3x3 convolution (no bias before a norm), normalisation, leaky ReLU.

    ``x`` may be a list of tensors: the stride-1 convolution of their
    concatenation along the channels (an up block's upsampled and skip tensors).
    """
    ops = ops or LayerOps()
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    in_channels = sum(int(part.shape[-1]) for part in parts)
    with tf1.variable_scope(name):
        kernel = _conv_weights("kernel", [3, 3, 3, in_channels, filters])
        if len(parts) > 1:
            x = ops.convolution_of_parts(parts, kernel)
        else:
            x = ops.convolution(parts[0], kernel, stride)
        if config.norm == "none":
            return tf.nn.leaky_relu(tf.nn.bias_add(x, _bias("bias", filters)), alpha=LEAKY_RELU_SLOPE)
        return _normalize_and_activate(x, config, training, ops)


def upsample(x, filters: int, name: str, ops: LayerOps = None):
    """2x2x2 transposed convolution with stride 2, with bias, no norm or activation."""
    ops = ops or LayerOps()
    in_channels = int(x.shape[-1])
    with tf1.variable_scope(name):
        kernel = _conv_weights("kernel", [2, 2, 2, filters, in_channels])
        shape = tf.shape(x)
        output_shape = tf.stack([shape[0], shape[1] * 2, shape[2] * 2, shape[3] * 2, filters])
        y = ops.transposed_convolution(x, kernel, output_shape, 2)
        static = x.shape.as_list()
        y.set_shape([static[0]] + [None if size is None else size * 2 for size in static[1:4]] + [filters])
        return tf.nn.bias_add(y, _bias("bias", filters))


def build_unet3d(images, config: ModelConfig, training: bool, ops: LayerOps = None, auxiliary: bool = False):
    """Build the network on ``images`` [batch, x, y, z, in_channels] and return logits.

    ``auxiliary`` (training with ``--deep_supervision``): also return the
    logits of 1x1x1 heads on the decoder's lower resolutions, half, quarter
    ... down to the lowest decoder level, as ``(logits, [auxiliary])``. The
    heads exist only in that graph, so the inference graph and its parameters
    are the same with or without deep supervision.

    Spatial sizes must be multiples of ``config.divisor``. Call it inside a
    ``tf.compat.v1.variable_scope`` with ``reuse`` to share weights. ``ops``
    computes the layers (a backend's, from ``Backend.layer_ops``); None means
    the textbook :class:`unet3d_core.layers.LayerOps`.
    """
    ops = ops or LayerOps()
    widths = config.widths
    skips = []
    with tf1.variable_scope("unet3d"):
        x = images
        with tf1.variable_scope("input_block"):
            x = conv_unit(x, widths[0], config, training, name="conv1", ops=ops)
            x = conv_unit(x, widths[0], config, training, name="conv2", ops=ops)
        for level in range(1, config.depth):
            skips.append(x)
            scope = "bottleneck" if level == config.depth - 1 else "down{}".format(level)
            with tf1.variable_scope(scope):
                x = conv_unit(x, widths[level], config, training, stride=2, name="conv1", ops=ops)
                x = conv_unit(x, widths[level], config, training, name="conv2", ops=ops)
        heads = []
        for level in reversed(range(config.depth - 1)):
            with tf1.variable_scope("up{}".format(level)):
                x = upsample(x, widths[level], name="upsample", ops=ops)
                x = conv_unit([x, skips[level]], widths[level], config, training, name="conv1", ops=ops)
                x = conv_unit(x, widths[level], config, training, name="conv2", ops=ops)
            if auxiliary and level > 0:
                with tf1.variable_scope("deep_supervision/level{}".format(level)):
                    kernel = _conv_weights("kernel", [widths[level], config.outputs])
                    heads.append(tf.nn.bias_add(tf.tensordot(x, kernel, axes=[[4], [0]]),
                                                _bias("bias", config.outputs)))
        with tf1.variable_scope("output"):
            kernel = _conv_weights("kernel", [3, 3, 3, widths[0], config.outputs])
            logits = tf.nn.bias_add(ops.output_convolution(x, kernel), _bias("bias", config.outputs))
    if auxiliary:
        return logits, list(reversed(heads))  # level 1 (half resolution) first
    return logits


def deep_supervision_weights(levels: int) -> List[float]:
    """Loss weights of the full-resolution output and ``levels - 1`` lower ones: halving per level, summing
    to 1 (nnU-Net's scheme)."""
    raw = [0.5 ** level for level in range(levels)]
    return [weight / sum(raw) for weight in raw]


def count_parameters(variables) -> int:
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape.as_list():
            count *= size
        total += count
    return total
