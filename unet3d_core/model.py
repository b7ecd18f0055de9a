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

import os

import tensorflow as tf

from unet3d_core.config import LEAKY_RELU_SLOPE, NORM_EPSILON, ModelConfig

tf1 = tf.compat.v1

INSTANCE_NORM_KERNELS = ("fused", "moments")


def _default_instance_norm_kernel() -> str:
    """Which instance-norm implementation this TensorFlow runs fastest (same maths either way).

    TensorFlow 2 runs FusedBatchNormV3 and its gradient as single kernels
    (oneDNN on the CPU): 3.7x faster than the moments formulation for
    forward + backward of a 2x64^3x32 tensor on our 2-core CPU. TensorFlow
    1.15's pip build has no such kernel on the CPU (the fused op is no faster
    there), and its graph is what the NPU adapter compiles, so it keeps the
    plain moments ops. ``UNET3D_INSTANCE_NORM=fused|moments`` overrides the
    choice (benchmarks compare the two).
    """
    chosen = os.environ.get("UNET3D_INSTANCE_NORM", "")
    if chosen in INSTANCE_NORM_KERNELS:
        return chosen
    return "fused" if int(tf.__version__.split(".")[0]) >= 2 else "moments"


INSTANCE_NORM_KERNEL = _default_instance_norm_kernel()

def _conv_weights(name, shape):
    return tf1.get_variable(name, shape=shape, dtype=tf.float32,
                            initializer=tf1.glorot_uniform_initializer())


def _bias(name, size):
    return tf1.get_variable(name, shape=[size], dtype=tf.float32, initializer=tf1.zeros_initializer())


def _batch_norm_kernel(x4d, scale, offset):
    """Training-mode FusedBatchNormV3 on [1, a, b, channels]: per-channel statistics of one instance.

    Called directly rather than through ``tf.nn.fused_batch_norm``, which
    raises epsilon to cuDNN's old minimum of 1.001e-5; ours is NORM_EPSILON.
    """
    empty = tf.constant([], tf.float32)
    return tf.raw_ops.FusedBatchNormV3(x=x4d, scale=scale, offset=offset, mean=empty, variance=empty,
                                       epsilon=NORM_EPSILON, data_format="NHWC", is_training=True)[0]


def _fused_instance_norm(x, gamma, beta):
    """Instance norm ((x - mean) / sqrt(variance + eps) per sample and channel, then gamma, beta) in one kernel.

    A batch-norm kernel normalises each channel over [n, a, b]; given one
    sample reshaped to [1, x*y, z, channels] it computes exactly the
    instance statistics. Samples of a known batch size go one by one
    (batch 1, as in inference, needs no copy); an unknown batch size is moved
    next to the channels instead, [1, x*y, z, batch*channels].
    """
    channels = int(x.shape[-1])
    batch = x.shape.as_list()[0]
    shape = tf.shape(x)
    if batch is not None:
        samples = [x] if batch == 1 else tf.unstack(x, axis=0)
        outputs = []
        for sample in samples:
            flat = tf.reshape(sample, tf.stack([1, shape[1] * shape[2], shape[3], channels]))
            outputs.append(tf.reshape(_batch_norm_kernel(flat, gamma, beta), shape[1:] if batch > 1 else shape))
        y = outputs[0] if batch == 1 else tf.stack(outputs)
    else:
        moved = tf.transpose(x, [1, 2, 3, 0, 4])  # free when the batch is 1 (a singleton axis moves)
        flat = tf.reshape(moved, tf.stack([1, shape[1] * shape[2], shape[3], shape[0] * channels]))
        y = _batch_norm_kernel(flat, tf.tile(gamma, shape[:1]), tf.tile(beta, shape[:1]))
        y = tf.transpose(tf.reshape(y, tf.stack([shape[1], shape[2], shape[3], shape[0], channels])), [3, 0, 1, 2, 4])
    y.set_shape(x.shape)
    return y


def _normalize(x, config: ModelConfig, training: bool):
    channels = x.shape[-1]
    channels = int(channels.value if hasattr(channels, "value") else channels)
    gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
    beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
    if config.norm == "instancenorm":
        if INSTANCE_NORM_KERNEL == "fused":
            return _fused_instance_norm(x, gamma, beta)
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
