"""The 3D U-Net of the reference (3D U-Net with the No New-Net changes).

Six resolutions at the default widths 32-64-128-256-320-320: an input block of
two 3x3x3 convolutions, down blocks that halve the resolution with a strided
convolution instead of pooling, a bottleneck, and up blocks of a 2x2x2
transposed convolution, concatenation with the skip connection and two
convolutions. About 31.2 M parameters at 4 input channels and 4 classes.

Variables are created with ``tf.compat.v1.get_variable`` so the same graph
builds in TensorFlow 1.15 and 2.x, and checkpoints are portable between them.
Tensors are NDHWC: [batch, x, y, z, channels].
"""
from __future__ import annotations

import tensorflow as tf

from unet3d_core.config import LEAKY_RELU_SLOPE, NORM_EPSILON, ModelConfig

tf1 = tf.compat.v1

def _conv_weights(name, shape):
    return tf1.get_variable(name, shape=shape, dtype=tf.float32,
                            initializer=tf1.glorot_uniform_initializer())


def _bias(name, size):
    return tf1.get_variable(name, shape=[size], dtype=tf.float32, initializer=tf1.zeros_initializer())


def _normalize(x, config: ModelConfig, training: bool):
    channels = x.shape[-1]
    channels = int(channels.value if hasattr(channels, "value") else channels)
    gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
    beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
    if config.norm == "instancenorm":
        mean, variance = tf.nn.moments(x, axes=[1, 2, 3], keepdims=True)
        x = (x - mean) * tf.math.rsqrt(variance + NORM_EPSILON)
    elif config.norm == "groupnorm":
        groups = min(config.groups, channels)
        while channels % groups:
            groups -= 1
        shape = tf.shape(x)
        grouped = tf.reshape(x, tf.concat([shape[:4], [groups, channels // groups]], axis=0))
        mean, variance = tf.nn.moments(grouped, axes=[1, 2, 3, 5], keepdims=True)
        grouped = (grouped - mean) * tf.math.rsqrt(variance + NORM_EPSILON)
        x = tf.reshape(grouped, shape)
    elif config.norm == "batchnorm":
        moving_mean = tf1.get_variable("moving_mean", [channels], initializer=tf1.zeros_initializer(),
                                       trainable=False)
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
        x = (x - mean) * tf.math.rsqrt(variance + NORM_EPSILON)
    return x * gamma + beta


def conv_unit(x, filters: int, config: ModelConfig, training: bool, stride: int = 1, name: str = "conv"):
    """3x3x3 convolution (no bias before a norm), normalisation, leaky ReLU."""
    in_channels = int(x.shape[-1])
    with tf1.variable_scope(name):
        use_bias = config.norm == "none"
        kernel = _conv_weights("kernel", [3, 3, 3, in_channels, filters])
        x = tf.nn.conv3d(x, kernel, strides=[1, stride, stride, stride, 1], padding="SAME")
        if use_bias:
            x = x + _bias("bias", filters)
        else:
            x = _normalize(x, config, training)
        return tf.nn.leaky_relu(x, alpha=LEAKY_RELU_SLOPE)


def _upsample(x, filters: int, name: str):
    """2x2x2 transposed convolution with stride 2, with bias, no norm or activation."""
    in_channels = int(x.shape[-1])
    with tf1.variable_scope(name):
        kernel = _conv_weights("kernel", [2, 2, 2, filters, in_channels])
        shape = tf.shape(x)
        output_shape = tf.stack([shape[0], shape[1] * 2, shape[2] * 2, shape[3] * 2, filters])
        y = tf.nn.conv3d_transpose(x, kernel, output_shape, strides=[1, 2, 2, 2, 1], padding="SAME")
        static = x.shape.as_list()
        y.set_shape([static[0]] + [None if size is None else size * 2 for size in static[1:4]] + [filters])
        return y + _bias("bias", filters)


def build_unet3d(images, config: ModelConfig, training: bool):
    """Build the network on ``images`` [batch, x, y, z, in_channels] and return logits.

    Spatial sizes must be multiples of ``config.divisor``. Call it inside a
    ``tf.compat.v1.variable_scope`` with ``reuse`` to share weights.
    """
    widths = config.widths
    skips = []
    with tf1.variable_scope("unet3d"):
        x = images
        with tf1.variable_scope("input_block"):
            x = conv_unit(x, widths[0], config, training, name="conv1")
            x = conv_unit(x, widths[0], config, training, name="conv2")
        for level in range(1, config.depth):
            skips.append(x)
            scope = "bottleneck" if level == config.depth - 1 else "down{}".format(level)
            with tf1.variable_scope(scope):
                x = conv_unit(x, widths[level], config, training, stride=2, name="conv1")
                x = conv_unit(x, widths[level], config, training, name="conv2")
        for level in reversed(range(config.depth - 1)):
            with tf1.variable_scope("up{}".format(level)):
                x = _upsample(x, widths[level], name="upsample")
                x = tf.concat([x, skips[level]], axis=-1)
                x = conv_unit(x, widths[level], config, training, name="conv1")
                x = conv_unit(x, widths[level], config, training, name="conv2")
        with tf1.variable_scope("output"):
            kernel = _conv_weights("kernel", [3, 3, 3, widths[0], config.num_classes])
            logits = tf.nn.conv3d(x, kernel, strides=[1, 1, 1, 1, 1], padding="SAME")
            logits = logits + _bias("bias", config.num_classes)
    return logits


def count_parameters(variables) -> int:
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape.as_list():
            count *= size
        total += count
    return total
