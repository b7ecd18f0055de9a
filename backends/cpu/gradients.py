"""Gradients of the convolutions as the cpu backend's tuned layer ops compute them.

Registered with TensorFlow by name when this module is imported; a layer
selects one with ``gradient_override_map`` (backends/cpu/kernels.py decides
which layer gets which). Each returns what TensorFlow's own gradient returns,
computed by other kernels:

- ``FORWARD_GRADIENTS``: both gradients of a stride-1 convolution by forward
  convolutions (the "eigen" set: Eigen's backward kernels run 2-6x slower).
- ``NATIVE_KERNEL_GRADIENT`` and ``NATIVE_KERNEL_GRADIENT_FORWARD_IMAGES``: the
  kernel gradient by the project's AVX-512 op, the images' gradient by
  TensorFlow's backward kernel or (the second, at stride 1) by a forward
  convolution.
- ``NATIVE_TRANSPOSED_KERNEL_GRADIENT``: a 2x2x2 stride-2 transposed
  convolution's kernel gradient by that op.
"""
from __future__ import annotations

import tensorflow as tf

from backends.cpu import native

FORWARD_GRADIENTS = "Unet3dConv3DForwardGradients"
NATIVE_KERNEL_GRADIENT = "Unet3dConv3DNativeKernelGradient"
NATIVE_KERNEL_GRADIENT_FORWARD_IMAGES = "Unet3dConv3DNativeKernelGradientForwardImages"
NATIVE_TRANSPOSED_KERNEL_GRADIENT = "Unet3dConv3DTransposeNativeKernelGradient"


def mirrored(kernel):
    """``kernel`` mirrored in space with its channel axes swapped. For stride 1, SAME and an odd
    kernel, a convolution with it is the transposed convolution with ``kernel``, and vice versa."""
    return tf.transpose(tf.reverse(kernel, [0, 1, 2]), [0, 1, 2, 4, 3])


def same_output_size(size: int, stride: int) -> int:
    """The length of a SAME convolution's output along an axis of ``size``."""
    return -(-size // stride)


def same_padding_before(size: int, kernel: int, stride: int) -> int:
    """The padding SAME puts before an axis of ``size``."""
    return max((same_output_size(size, stride) - 1) * stride + kernel - size, 0) // 2


def images_gradient(images, kernel, output_gradient, strides, by_forward_convolution: bool):
    """A SAME Conv3D's gradient with respect to its input: with ``by_forward_convolution`` and stride 1 a
    forward convolution of the output gradient with the mirrored kernel, else TensorFlow's
    Conv3DBackpropInputV2."""
    if by_forward_convolution and strides[1] == 1:
        return tf.nn.conv3d(output_gradient, mirrored(kernel), strides=[1] * 5, padding="SAME")
    return tf.raw_ops.Conv3DBackpropInputV2(input_sizes=tf.shape(images), filter=kernel,
                                            out_backprop=output_gradient, strides=strides, padding="SAME")


@tf.RegisterGradient(FORWARD_GRADIENTS)
def _forward_convolution_gradients(op, output_gradient):
    """Gradients of a stride-1 SAME Conv3D with an odd kernel, both computed by forward Conv3D ops.

    - images: the convolution of the output gradient with the kernel mirrored
      in space and its channel axes swapped.
    - kernel: entry (a, b, c, i, o) is the sum over samples n and voxels v of
      input[n, v + (a, b, c), i] * gradient[n, v, o] (input zero-padded): a VALID
      convolution in which one of the two volumes, channels moved to the batch
      axis, is convolved with the other taken as a kernel as large as the
      volume (batch moved to its input channels). Eigen runs it fastest with
      the wider of the two as the kernel, so with more input than output
      channels the gradient is the kernel and the input the image, and the
      offsets come out mirrored.
    """
    images, kernel = op.inputs
    size = kernel.shape.as_list()[:3]
    in_channels, out_channels = kernel.shape.as_list()[3:]
    images_grad = images_gradient(images, kernel, output_gradient, [1] * 5, by_forward_convolution=True)
    padding = [[0, 0]] + [[(k - 1) // 2, k - 1 - (k - 1) // 2] for k in size] + [[0, 0]]
    if in_channels >= out_channels:
        padded = tf.transpose(tf.pad(output_gradient, padding), [4, 1, 2, 3, 0])  # [o, x, y, z, n]
        sums = tf.nn.conv3d(padded, tf.transpose(images, [1, 2, 3, 0, 4]), strides=[1] * 5, padding="VALID")
        # sums: [o, a, b, c, i], offsets mirrored
        kernel_gradient = tf.reverse(tf.transpose(sums, [1, 2, 3, 4, 0]), [0, 1, 2])
    else:
        padded = tf.transpose(tf.pad(images, padding), [4, 1, 2, 3, 0])  # [i, x, y, z, n]
        sums = tf.nn.conv3d(padded, tf.transpose(output_gradient, [1, 2, 3, 0, 4]), strides=[1] * 5,
                            padding="VALID")
        kernel_gradient = tf.transpose(sums, [1, 2, 3, 0, 4])  # sums: [i, a, b, c, o]
    kernel_gradient.set_shape(kernel.shape)
    return images_grad, kernel_gradient


def _gradients_with_native_kernel_gradient(op, output_gradient, by_forward_convolution: bool):
    """A SAME Conv3D's gradients: the images' by images_gradient, the kernel's by our op."""
    images, kernel = op.inputs
    strides = op.get_attr("strides")
    size = kernel.shape.as_list()[:3]
    images_grad = images_gradient(images, kernel, output_gradient, strides, by_forward_convolution)
    spatial = images.shape.as_list()[1:4]
    pad = [same_padding_before(n, k, strides[1]) for n, k in zip(spatial, size)]
    kernel_gradient = native.convolution_kernel_gradient(images, output_gradient, size, pad, strides[1])
    kernel_gradient.set_shape(kernel.shape)
    return images_grad, kernel_gradient


@tf.RegisterGradient(NATIVE_KERNEL_GRADIENT)
def _native_kernel_gradient(op, output_gradient):
    """The images' gradient by TensorFlow's Conv3DBackpropInputV2, the kernel's by our op (the "onednn" set)."""
    return _gradients_with_native_kernel_gradient(op, output_gradient, by_forward_convolution=False)


@tf.RegisterGradient(NATIVE_KERNEL_GRADIENT_FORWARD_IMAGES)
def _native_kernel_gradient_forward_images(op, output_gradient):
    """The images' gradient by a forward convolution at stride 1, the kernel's by our op (the "eigen" set)."""
    return _gradients_with_native_kernel_gradient(op, output_gradient, by_forward_convolution=True)


@tf.RegisterGradient(NATIVE_TRANSPOSED_KERNEL_GRADIENT)
def _native_kernel_gradient_transposed(op, output_gradient):
    """Gradients of a transposed convolution whose stride is its kernel size (each output voxel from one
    input voxel, no padding): the input's as TensorFlow computes it, the kernel's by our op."""
    _, kernel, images = op.inputs
    strides = op.get_attr("strides")
    images_grad = tf.nn.conv3d(output_gradient, kernel, strides=strides, padding="SAME")
    kernel_gradient = native.convolution_kernel_gradient(output_gradient, images, kernel.shape.as_list()[:3],
                                                         [0, 0, 0], strides[1])
    kernel_gradient.set_shape(kernel.shape)
    return None, kernel_gradient, images_grad
