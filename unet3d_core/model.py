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
import zlib

import tensorflow as tf

from unet3d_core import KERNELS_VARIABLE, native
from unet3d_core.config import LEAKY_RELU_SLOPE, NORM_EPSILON, ModelConfig
from unet3d_core.errors import ConfigError

tf1 = tf.compat.v1

# Three ways of writing the same network: same variables, same maths, outputs and
# gradients equal to float rounding (tests/test_model_kernels.py). Which one runs
# fastest depends on the library that executes the graph:
#   "plain": the textbook ops and TensorFlow's own gradients: instance norm from
#     tf.nn.moments, every layer a Conv3D. For graphs another compiler takes over
#     (the npu and gpu backends choose it: their vendors' kernels were not timed here).
#   Both tuned sets below compute instance norm and leaky ReLU with the project's own
#   CPU op (unet3d_core/native: one kernel forward, one backward, the fewest passes over
#   memory: 30 -> 18 ms for a 2x64^3x32 tensor in TF 2.15, 145 -> 41 ms in TF 1.15) when
#   it is built for the running TensorFlow, else as below.
#   "onednn" (TensorFlow 2's CPU build, which runs convolutions and norms in oneDNN):
#     - instance norm as one FusedBatchNormV3 per sample (a single kernel forward and
#       backward: 0.13 -> 0.036 s for a 2x64^3x32 tensor, forward and backward);
#     - the 32 -> 4 channel output convolution through the transposed-convolution
#       kernel (Conv3DBackpropInputV2, kernel mirrored), whose weight gradient avoids
#       oneDNN's slow path for 4-channel gradients (0.067 -> 0.025 s at 2x64^3); with
#       the op library, its forward pass as a 3x3x1 convolution to 12 channels and our
#       tap-sum op instead (_convolution_by_taps: 38 -> 22 ms, same gradients);
#     - an up block's first convolution as one convolution per input (upsampled, skip),
#       summed, instead of one on their concatenation (about 1% of a training step).
#   Both tuned sets:
#     - with the op library on an AVX-512 CPU, the kernel gradients of the layers with
#       16-64 channels (the full-resolution convolutions, the first strided one, the
#       first transposed ones) by our op (_native_kernel_gradient: 80 -> 69 ms for the
#       64^3 32 -> 32 layers at batch 2);
#     - the convolutions of 4^3 voxels and fewer (the two lowest levels: 256-320
#       channels, an 11 MB kernel) as matrix products of patches (_convolution_by_patches).
#   "eigen" (TensorFlow 1.15's pip build, plain Eigen kernels, where the backward
#     convolutions run 2-6x slower than the forward one):
#     - the same fused instance norm (0.30 -> 0.20 s for that tensor);
#     - the gradients of every stride-1 convolution computed by forward
#       convolutions (_forward_convolution_gradients): 2.2 -> 0.4 s for the input
#       gradient and 1.9 -> 0.8 s for the kernel gradient of the 64 -> 32 channel
#       convolution at 2x64^3.
# Timings: README, Performance; benchmarks/profile_step.py shows them per op.
# UNET3D_KERNELS=onednn|eigen|plain overrides the choice; UNET3D_NATIVE_OPS=0 leaves out our ops.
KERNEL_SETS = ("onednn", "eigen", "plain")


def kernel_set() -> str:
    """The kernel set graphs are built with now: $UNET3D_KERNELS, else this TensorFlow's best."""
    chosen = os.environ.get(KERNELS_VARIABLE, "")
    if chosen:
        if chosen not in KERNEL_SETS:
            raise ConfigError("{}={!r}: expected one of {}".format(KERNELS_VARIABLE, chosen, ", ".join(KERNEL_SETS)))
        return chosen
    return "onednn" if int(tf.__version__.split(".")[0]) >= 2 else "eigen"


def _conv_weights(name, shape):
    # The random draw is keyed by the graph's seed (--seed) and the variable's name,
    # not by how many ops the graph had when the variable was made (TensorFlow's
    # default), so the initial weights are the same whatever the batch size, the
    # kernel set or the number of workers.
    full_name = "{}/{}".format(tf1.get_variable_scope().name, name).lstrip("/")
    seed = zlib.crc32(full_name.encode("utf-8")) & 0x7FFFFFFF
    return tf1.get_variable(name, shape=shape, dtype=tf.float32,
                            initializer=tf1.glorot_uniform_initializer(seed=seed))


def _bias(name, size):
    # Added with tf.nn.bias_add rather than "+": the same sum, which TensorFlow's
    # remapper fuses into the convolution before it, and whose gradient is one
    # BiasAddGrad instead of a broadcasting reduction.
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
    instance statistics. The samples of a static batch go one by one (a
    batch of one needs no copy); a batch of unknown size is moved next to the
    channels instead, [1, x*y, z, batch*channels] (two transposes, which cost
    3x the split and stack in a training step).
    """
    channels = int(x.shape[-1])
    batch = x.shape.as_list()[0]
    shape = tf.shape(x)

    def normalize_one(sample):
        flat = tf.reshape(sample, tf.stack([1, shape[1] * shape[2], shape[3], channels]))
        return tf.reshape(_batch_norm_kernel(flat, gamma, beta), tf.shape(sample))

    if batch == 1:
        y = normalize_one(x)
    elif batch is not None:
        y = tf.stack([normalize_one(sample) for sample in tf.unstack(x, axis=0)])
    else:
        moved = tf.transpose(x, [1, 2, 3, 0, 4])
        flat = tf.reshape(moved, tf.stack([1, shape[1] * shape[2], shape[3], shape[0] * channels]))
        y = _batch_norm_kernel(flat, tf.tile(gamma, shape[:1]), tf.tile(beta, shape[:1]))
        y = tf.transpose(tf.reshape(y, tf.stack([shape[1], shape[2], shape[3], shape[0], channels])), [3, 0, 1, 2, 4])
    y.set_shape(x.shape)
    return y


def _norm_parameters(x):
    channels = x.shape[-1]
    channels = int(channels.value if hasattr(channels, "value") else channels)
    gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer())
    beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
    return channels, gamma, beta


def _normalize_and_activate(x, config: ModelConfig, training: bool):
    """``leaky_relu(norm(x) * gamma + beta)``; instance norm in one kernel of our own where it is built."""
    if config.norm == "instancenorm" and kernel_set() != "plain" and native.load() is not None:
        _, gamma, beta = _norm_parameters(x)
        return native.instance_norm_leaky_relu(x, gamma, beta, NORM_EPSILON, LEAKY_RELU_SLOPE)
    return tf.nn.leaky_relu(_normalize(x, config, training), alpha=LEAKY_RELU_SLOPE)


def _normalize(x, config: ModelConfig, training: bool):
    """``norm(x) * gamma + beta`` with the norm ``config.norm`` names."""
    channels, gamma, beta = _norm_parameters(x)
    if config.norm == "instancenorm":
        if kernel_set() != "plain":
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
    """3x3x3 convolution (no bias before a norm), normalisation, leaky ReLU.

    ``x`` may be a list of tensors: the convolution of their concatenation
    along the channels (an up block's upsampled and skip tensors).
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    in_channels = sum(int(part.shape[-1]) for part in parts)
    with tf1.variable_scope(name):
        use_bias = config.norm == "none"
        kernel = _conv_weights("kernel", [3, 3, 3, in_channels, filters])
        if len(parts) > 1 and kernel_set() == "onednn":
            # One convolution per part, each with its slice of the kernel's input
            # channels, summed: the same sums without copying both parts into a
            # concatenation forward and slicing its gradient apart backward.
            slices = tf.split(kernel, [int(part.shape[-1]) for part in parts], axis=3)
            x = tf.add_n([_convolution(part, piece, stride) for part, piece in zip(parts, slices)])
        else:
            x = _convolution(tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0], kernel, stride)
        if use_bias:
            return tf.nn.leaky_relu(tf.nn.bias_add(x, _bias("bias", filters)), alpha=LEAKY_RELU_SLOPE)
        return _normalize_and_activate(x, config, training)


def _upsample(x, filters: int, name: str):
    """2x2x2 transposed convolution with stride 2, with bias, no norm or activation."""
    in_channels = int(x.shape[-1])
    with tf1.variable_scope(name):
        kernel = _conv_weights("kernel", [2, 2, 2, filters, in_channels])
        shape = tf.shape(x)
        output_shape = tf.stack([shape[0], shape[1] * 2, shape[2] * 2, shape[3] * 2, filters])
        override = ({"Conv3DBackpropInputV2": NATIVE_TRANSPOSED_KERNEL_GRADIENT}
                    if _native_kernel_gradient(filters, in_channels, transposed=True) else {})
        with tf1.get_default_graph().gradient_override_map(override):
            y = tf.nn.conv3d_transpose(x, kernel, output_shape, strides=[1, 2, 2, 2, 1], padding="SAME")
        static = x.shape.as_list()
        y.set_shape([static[0]] + [None if size is None else size * 2 for size in static[1:4]] + [filters])
        return tf.nn.bias_add(y, _bias("bias", filters))


FORWARD_GRADIENTS = "Unet3dConv3DForwardGradients"


def _mirrored(kernel):
    """``kernel`` mirrored in space with its channel axes swapped. For stride 1, SAME and an odd
    kernel, a convolution with it is the transposed convolution with ``kernel``, and vice versa."""
    return tf.transpose(tf.reverse(kernel, [0, 1, 2]), [0, 1, 2, 4, 3])


def _images_gradient(images, kernel, output_gradient, strides):
    """A SAME Conv3D's gradient with respect to its input: with the "eigen" kernels and stride 1 a forward
    convolution of the output gradient with the mirrored kernel, else TensorFlow's Conv3DBackpropInputV2."""
    if strides[1] == 1 and kernel_set() == "eigen":
        return tf.nn.conv3d(output_gradient, _mirrored(kernel), strides=[1] * 5, padding="SAME")
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
    images_gradient = tf.nn.conv3d(output_gradient, _mirrored(kernel), strides=[1] * 5, padding="SAME")
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
    return images_gradient, kernel_gradient


NATIVE_KERNEL_GRADIENT = "Unet3dConv3DNativeKernelGradient"
NATIVE_TRANSPOSED_KERNEL_GRADIENT = "Unet3dConv3DTransposeNativeKernelGradient"


def _native_kernel_gradient(a_channels: int, b_channels: int, transposed: bool) -> bool:
    """Whether our kernel-gradient op computes this layer's kernel gradient (tuned sets, op library, AVX-512).

    ``a`` is the convolution's input (the transposed convolution's output
    gradient), ``b`` its output gradient (the transposed convolution's input).
    The op keeps a tile of up to 12 x 32 sums in registers; with many channels
    its partial sums no longer stay in cache and the libraries' kernels are
    faster. Measured against TF 2.15's oneDNN on the Xeon, 2 cores, batch 2,
    alone: 64^3 32 -> 32 69 ms against 80, stride 2 64^3 32 -> 64 19 against
    26, transposed 32^3 64 -> 32 6.3 against 10.7 and 16^3 128 -> 64 3.9
    against 5.0; slower at 4 input channels (12.4 against 11.0) and from 64
    channels on (32^3 64 -> 64 36 against 34).
    """
    if kernel_set() == "plain" or b_channels % 16 or native.load() is None or not native.has_avx512():
        return False
    if transposed:
        return a_channels <= 64 and b_channels <= 128
    return 16 <= a_channels <= 32 and b_channels <= 64


def _same_output_size(size: int, stride: int) -> int:
    """The length of a SAME convolution's output along an axis of ``size``."""
    return -(-size // stride)


def _voxels(spatial, stride: int) -> int:
    """Output voxels per sample of a SAME convolution of ``spatial`` with ``stride``."""
    count = 1
    for size in spatial:
        count *= _same_output_size(size, stride)
    return count


def _same_padding_before(size: int, kernel: int, stride: int) -> int:
    """The padding SAME puts before an axis of ``size``."""
    return max((_same_output_size(size, stride) - 1) * stride + kernel - size, 0) // 2


@tf.RegisterGradient(NATIVE_KERNEL_GRADIENT)
def _native_kernel_gradient_conv(op, output_gradient):
    """A SAME Conv3D's gradients: the images' as TensorFlow computes them (the "eigen" set: by a forward
    convolution for stride 1), the kernel's by our op."""
    images, kernel = op.inputs
    strides = op.get_attr("strides")
    size = kernel.shape.as_list()[:3]
    images_gradient = _images_gradient(images, kernel, output_gradient, strides)
    spatial = images.shape.as_list()[1:4]
    pad = [_same_padding_before(n, k, strides[1]) for n, k in zip(spatial, size)]
    kernel_gradient = native.convolution_kernel_gradient(images, output_gradient, size, pad, strides[1])
    kernel_gradient.set_shape(kernel.shape)
    return images_gradient, kernel_gradient


@tf.RegisterGradient(NATIVE_TRANSPOSED_KERNEL_GRADIENT)
def _native_kernel_gradient_transposed(op, output_gradient):
    """Gradients of a transposed convolution whose stride is its kernel size (each output voxel from one
    input voxel, no padding): the input's as TensorFlow computes it, the kernel's by our op."""
    _, kernel, images = op.inputs
    strides = op.get_attr("strides")
    images_gradient = tf.nn.conv3d(output_gradient, kernel, strides=strides, padding="SAME")
    kernel_gradient = native.convolution_kernel_gradient(output_gradient, images, kernel.shape.as_list()[:3],
                                                         [0, 0, 0], strides[1])
    kernel_gradient.set_shape(kernel.shape)
    return None, kernel_gradient, images_gradient


SMALL_VOLUME = 4 ** 3  # output voxels per sample at and below which a convolution is a matrix product


def _convolution_by_patches(x, kernel, stride: int):
    """``conv3d(x, kernel)``, SAME, on a small volume: one matrix product of the input's patches (the
    windows the convolution sees, zero-padded), [voxels, kernel volume x in], with the kernel.

    At 2^3 and 4^3 voxels with 256-320 channels the kernel is 11 MB and the
    volume a few hundred voxels: the convolution libraries' kernels ran at
    10-200 GFLOP/s there (the bottleneck's kernel gradient: 8 ms for 88 MFLOP).
    The kernel's gradient is the product of the same patches with the output
    gradient; the images' is TensorFlow's (the "eigen" set: a forward
    convolution with the mirrored kernel for stride 1).
    """
    size = kernel.shape.as_list()
    window = size[0] * size[1] * size[2] * size[3]
    out_spatial = [_same_output_size(n, stride) for n in x.shape.as_list()[1:4]]
    strides = [1, stride, stride, stride, 1]

    @tf.custom_gradient
    def convolve(images, weights):
        patches = tf.reshape(tf.extract_volume_patches(images, ksizes=[1] + size[:3] + [1], strides=strides,
                                                       padding="SAME"), [-1, window])
        y = tf.reshape(tf.matmul(patches, tf.reshape(weights, [window, size[4]])), [-1] + out_spatial + [size[4]])

        def gradient(output_gradient):
            images_gradient = _images_gradient(images, weights, output_gradient, strides)
            kernel_gradient = tf.matmul(patches, tf.reshape(output_gradient, [-1, size[4]]), transpose_a=True)
            return images_gradient, tf.reshape(kernel_gradient, size)

        return y, gradient

    y = convolve(x, tf.convert_to_tensor(kernel))
    y.set_shape([x.shape[0]] + out_spatial + [size[4]])
    return y


def _convolution(x, kernel, stride: int):
    """``conv3d(x, kernel)``, SAME. In the tuned sets: on small volumes by patches; elsewhere the kernel
    gradient by our op where _native_kernel_gradient says so; with the "eigen" kernels, stride 1 has
    forward-convolution gradients."""
    in_channels, out_channels = kernel.shape.as_list()[3:]
    spatial = x.shape.as_list()[1:4]
    spatial_known = all(size is not None for size in spatial)
    if spatial_known and kernel_set() != "plain" and _voxels(spatial, stride) <= SMALL_VOLUME:
        return _convolution_by_patches(x, kernel, stride)
    override = {}
    if spatial_known and _native_kernel_gradient(in_channels, out_channels, transposed=False):
        override = {"Conv3D": NATIVE_KERNEL_GRADIENT}
    elif stride == 1 and kernel_set() == "eigen":
        override = {"Conv3D": FORWARD_GRADIENTS}
    with tf1.get_default_graph().gradient_override_map(override):
        return tf.nn.conv3d(x, kernel, strides=[1, stride, stride, stride, 1], padding="SAME")


def _convolution_as_transposed(x, kernel):
    """``conv3d(x, kernel)``, stride 1, SAME, for an odd kernel, computed as the transposed convolution
    of the kernel mirrored in space with its channel axes swapped: the same sums."""
    out_channels = int(kernel.shape[-1])
    sizes = tf.concat([tf.shape(x)[:4], [out_channels]], 0)
    y = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=sizes, filter=_mirrored(kernel), out_backprop=x,
                                         strides=[1] * 5, padding="SAME")
    y.set_shape(x.shape.as_list()[:4] + [out_channels])
    return y


def _convolution_by_taps(x, kernel):
    """``conv3d(x, kernel)``, stride 1, SAME, for a 3x3x3 kernel with few output channels, by our tap-sum op.

    The convolution runs as a 3x3x1 one to ``taps x out`` channels (kernel
    entry (a, b, t, i, k) moved to (a, b, 0, i, t * out + k)), whose groups the
    tap-sum op adds along the last axis, each shifted by its tap: 4 output
    channels fill a quarter of a 16-wide vector unit, 12 three quarters
    (forward 38 -> 22 ms at 2 x 64^3 x 32 -> 4, the tap sum included). The
    gradients are those of the transposed form (_convolution_as_transposed),
    the fastest here: the images' as a convolution of the output gradient
    with the mirrored kernel, the kernel's as the kernel gradient of that
    convolution, mirrored back.
    """
    size = kernel.shape.as_list()
    taps, in_channels, out_channels = size[2], size[3], size[4]

    @tf.custom_gradient
    def convolve(images, weights):
        grouped = tf.reshape(tf.transpose(weights, [0, 1, 3, 2, 4]),
                             [size[0], size[1], 1, in_channels, taps * out_channels])
        sums = tf.nn.conv3d(images, grouped, strides=[1] * 5, padding="SAME")

        def gradient(output_gradient):
            images_gradient = tf.nn.conv3d(output_gradient, _mirrored(weights), strides=[1] * 5, padding="SAME")
            mirrored_gradient = tf.raw_ops.Conv3DBackpropFilterV2(
                input=output_gradient, filter_sizes=[size[0], size[1], size[2], out_channels, in_channels],
                out_backprop=images, strides=[1] * 5, padding="SAME")
            return images_gradient, _mirrored(mirrored_gradient)

        return native.tap_sum(sums, taps), gradient

    y = convolve(x, tf.convert_to_tensor(kernel))
    y.set_shape(x.shape.as_list()[:4] + [out_channels])
    return y


def _output_convolution(x, kernel):
    """The 32 -> classes output convolution: by taps with our op, else as a transposed convolution (onednn set)."""
    if native.load() is not None:
        return _convolution_by_taps(x, kernel)
    return _convolution_as_transposed(x, kernel)


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
                x = conv_unit([x, skips[level]], widths[level], config, training, name="conv1")
                x = conv_unit(x, widths[level], config, training, name="conv2")
        with tf1.variable_scope("output"):
            kernel = _conv_weights("kernel", [3, 3, 3, widths[0], config.num_classes])
            if kernel_set() == "onednn":
                logits = _output_convolution(x, kernel)
            else:
                logits = _convolution(x, kernel, 1)
            logits = tf.nn.bias_add(logits, _bias("bias", config.num_classes))
    return logits


def count_parameters(variables) -> int:
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape.as_list():
            count *= size
        total += count
    return total
