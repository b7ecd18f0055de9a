"""The layer operations the 3D U-Net is written against, in their textbook form.

:mod:`unet3d_core.model.network` creates every variable and wires the network; the
computations a device may want to write differently go through a
:class:`LayerOps` object: convolutions, the transposed convolution, instance
norm with its activation, the output convolution. A backend supplies a
subclass through the ``unet3d_layer_ops`` hook (the cpu backend's tuned sets
live in ``backends/cpu/kernels.py``); the default is this class.

The contract for a subclass: take the tensors and variables passed in, return
what the textbook method returns (same shape, same numbers up to float
rounding, gradients included), and create no variables. The core makes the
variables, under the same names whatever the ops, so a checkpoint written
with one set of ops loads with any other.

Tensors are NDHWC: [batch, x, y, z, channels]; spatial sizes may be unknown
(None) at graph-building time, and so may the batch.
"""
from __future__ import annotations

import tensorflow as tf

# The numbers every implementation of the ops uses (the reference's leaky ReLU and instance norm).
LEAKY_RELU_SLOPE = 0.01
NORM_EPSILON = 1e-6


class LayerOps:
    """TensorFlow's own ops and gradients: what a device compiler (XLA, the NPU's) sees best."""

    name = "textbook"
    #: Added to the variance before the square root (the reference's 1e-6).
    epsilon = NORM_EPSILON
    #: The leaky ReLU's slope for negative inputs.
    leaky_relu_slope = LEAKY_RELU_SLOPE

    def describe(self) -> str:
        """One line for the run's log: which ops build the graph."""
        return "layer ops: {} (TensorFlow's own ops and gradients)".format(self.name)

    def convolution(self, x, kernel, stride: int):
        """A 3D convolution with SAME padding and no bias.

        Args:
            x: [batch, x, y, z, in_channels].
            kernel: [kx, ky, kz, in_channels, out_channels] (a variable; 3x3x3 in the network).
            stride: the same along the three spatial axes (1, or 2 in the down blocks).

        Returns:
            [batch, ceil(x / stride), ceil(y / stride), ceil(z / stride), out_channels].
        """
        return tf.nn.conv3d(x, kernel, strides=[1, stride, stride, stride, 1], padding="SAME")

    def convolution_of_parts(self, parts, kernel):
        """The stride-1 convolution of the channel-concatenation of ``parts`` (an up block's first one).

        Args:
            parts: a list of tensors [batch, x, y, z, channels_i] of one spatial size
                (the upsampled tensor, then the skip connection).
            kernel: [3, 3, 3, sum of channels_i, out_channels]; input channels in the order of ``parts``.

        Returns:
            [batch, x, y, z, out_channels]: ``convolution(concat(parts), kernel, 1)``.
        """
        return self.convolution(tf.concat(parts, axis=-1), kernel, 1)

    def transposed_convolution(self, x, kernel, output_shape, stride: int):
        """A 3D transposed convolution with SAME padding and no bias (the up blocks' upsampling).

        Args:
            x: [batch, x, y, z, in_channels].
            kernel: [kx, ky, kz, out_channels, in_channels] (2x2x2 in the network, with ``stride`` 2).
            output_shape: a 1-D int32 tensor [batch, x * stride, y * stride, z * stride, out_channels].
            stride: the same along the three spatial axes.

        Returns:
            A tensor of ``output_shape``; the caller sets its static shape.
        """
        return tf.nn.conv3d_transpose(x, kernel, output_shape, strides=[1, stride, stride, stride, 1],
                                      padding="SAME")

    def instance_norm_leaky_relu(self, x, gamma, beta):
        """``leaky_relu((x - mean) / sqrt(variance + epsilon) * gamma + beta)``, statistics per sample and channel.

        Args:
            x: [batch, x, y, z, channels], the output of a convolution.
            gamma, beta: [channels] variables (scale and offset).

        Returns:
            A tensor shaped like ``x``; ``epsilon`` and ``leaky_relu_slope`` are this object's attributes.
        """
        mean, variance = tf.nn.moments(x, axes=[1, 2, 3], keepdims=True)
        normalized = (x - mean) * tf.math.rsqrt(variance + self.epsilon)
        return tf.nn.leaky_relu(normalized * gamma + beta, alpha=self.leaky_relu_slope)

    def output_convolution(self, x, kernel):
        """The last layer's stride-1 convolution to the classes, no bias (the caller adds it).

        Args:
            x: [batch, x, y, z, base_filters].
            kernel: [3, 3, 3, base_filters, classes]: few output channels, which
                some libraries run slowly.

        Returns:
            [batch, x, y, z, classes]: ``convolution(x, kernel, 1)``.
        """
        return self.convolution(x, kernel, 1)
