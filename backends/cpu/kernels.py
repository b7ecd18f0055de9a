"""The cpu backend's layer ops: the network's layers written the way TensorFlow's CPU libraries run fastest.

Two tuned sets, both :class:`unet3d_core.layers.LayerOps` subclasses: the
same variables, the same maths, outputs and gradients equal to the textbook
ops' to float rounding (tests/test_cpu_kernels.py). Which one runs fastest
depends on the library that executes the graph (``--cpu_kernels auto`` picks
by TensorFlow version):

- Both compute instance norm and leaky ReLU with the project's own CPU op
  (backends/cpu/native: one kernel forward, one backward, the fewest passes
  over memory: 30 -> 18 ms for a 2x64^3x32 tensor in TF 2.15, 145 -> 41 ms in
  TF 1.15) when it is built for the running TensorFlow and
  ``--cpu_native_ops`` is on; else as one FusedBatchNormV3 per sample (a
  single kernel forward and backward: 0.13 -> 0.036 s for that tensor,
  forward and backward, in TF 2.15; 0.30 -> 0.20 s in TF 1.15) and a LeakyRelu.
- Both, with the op library on an AVX-512 CPU, compute the kernel gradients
  of the layers with 16-64 channels (the full-resolution convolutions, the
  first strided one, the first transposed ones) by our op (80 -> 69 ms for
  the 64^3 32 -> 32 layers at batch 2).
- Both compute the convolutions of 4^3 voxels and fewer (the two lowest
  levels: 256-320 channels, an 11 MB kernel) as matrix products of patches.
- "onednn" (TensorFlow 2's CPU build, which runs convolutions and norms in oneDNN):
  the 32 -> 4 channel output convolution through the transposed-convolution
  kernel (Conv3DBackpropInputV2, kernel mirrored), whose weight gradient
  avoids oneDNN's slow path for 4-channel gradients (0.067 -> 0.025 s at
  2x64^3); with the op library, its forward pass as a 3x3x1 convolution to
  12 channels and our tap-sum op instead (38 -> 22 ms, same gradients). An
  up block's first convolution as one convolution per input (upsampled,
  skip), summed, instead of one on their concatenation (about 1% of a step).
- "eigen" (TensorFlow 1.15's pip build, plain Eigen kernels, where the
  backward convolutions run 2-6x slower than the forward one): the
  gradients of every stride-1 convolution computed by forward convolutions
  (backends/cpu/gradients.py): 2.2 -> 0.4 s for the input gradient and 1.9 ->
  0.8 s for the kernel gradient of the 64 -> 32 channel convolution at 2x64^3.

Timings: docs/performance.md (history: docs/cpu-tuning-history.md); benchmarks/profile_step.py shows them per op.
"""
from __future__ import annotations

import tensorflow as tf

from backends.cpu import gradients, native
from unet3d_core.errors import ConfigError
from unet3d_core.layers import LayerOps

tf1 = tf.compat.v1

TUNED_SETS = ("onednn", "eigen")
SMALL_VOLUME = 4 ** 3  # output voxels per sample at and below which a convolution is a matrix product


def default_kernels() -> str:
    """The tuned set for this TensorFlow: "onednn" for 2.x, "eigen" for 1.15."""
    return "onednn" if int(tf.__version__.split(".")[0]) >= 2 else "eigen"


def layer_ops(kernels: str = "auto", native_ops: bool = True) -> LayerOps:
    """The layer ops ``--cpu_kernels`` and ``--cpu_native_ops`` name ("auto": this TensorFlow's set)."""
    if kernels == "auto":
        kernels = default_kernels()
    if kernels == "textbook":
        return LayerOps()
    if kernels not in TUNED_SETS:
        raise ConfigError("--cpu_kernels {!r}: expected auto, textbook or one of {}".format(
            kernels, ", ".join(TUNED_SETS)))
    return (OneDnnLayerOps if kernels == "onednn" else EigenLayerOps)(native_ops=native_ops)


def _voxels(spatial, stride: int) -> int:
    """Output voxels per sample of a SAME convolution of ``spatial`` with ``stride``."""
    count = 1
    for size in spatial:
        count *= gradients.same_output_size(size, stride)
    return count


def _batch_norm_kernel(x4d, scale, offset, epsilon: float):
    """Training-mode FusedBatchNormV3 on [1, a, b, channels]: per-channel statistics of one instance.

    Called directly rather than through ``tf.nn.fused_batch_norm``, which
    raises epsilon to cuDNN's old minimum of 1.001e-5; ours is smaller.
    """
    empty = tf.constant([], tf.float32)
    return tf.raw_ops.FusedBatchNormV3(x=x4d, scale=scale, offset=offset, mean=empty, variance=empty,
                                       epsilon=epsilon, data_format="NHWC", is_training=True)[0]


def fused_instance_norm(x, gamma, beta, epsilon: float):
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
        return tf.reshape(_batch_norm_kernel(flat, gamma, beta, epsilon), tf.shape(sample))

    if batch == 1:
        y = normalize_one(x)
    elif batch is not None:
        y = tf.stack([normalize_one(sample) for sample in tf.unstack(x, axis=0)])
    else:
        moved = tf.transpose(x, [1, 2, 3, 0, 4])
        flat = tf.reshape(moved, tf.stack([1, shape[1] * shape[2], shape[3], shape[0] * channels]))
        y = _batch_norm_kernel(flat, tf.tile(gamma, shape[:1]), tf.tile(beta, shape[:1]), epsilon)
        y = tf.transpose(tf.reshape(y, tf.stack([shape[1], shape[2], shape[3], shape[0], channels])), [3, 0, 1, 2, 4])
    y.set_shape(x.shape)
    return y


def convolution_as_transposed(x, kernel):
    """``conv3d(x, kernel)``, stride 1, SAME, for an odd kernel, computed as the transposed convolution
    of the kernel mirrored in space with its channel axes swapped: the same sums."""
    out_channels = int(kernel.shape[-1])
    sizes = tf.concat([tf.shape(x)[:4], [out_channels]], 0)
    y = tf.raw_ops.Conv3DBackpropInputV2(input_sizes=sizes, filter=gradients.mirrored(kernel), out_backprop=x,
                                         strides=[1] * 5, padding="SAME")
    y.set_shape(x.shape.as_list()[:4] + [out_channels])
    return y


def convolution_by_taps(x, kernel):
    """``conv3d(x, kernel)``, stride 1, SAME, for a 3x3x3 kernel with few output channels, by our tap-sum op.

    The convolution runs as a 3x3x1 one to ``taps x out`` channels (kernel
    entry (a, b, t, i, k) moved to (a, b, 0, i, t * out + k)), whose groups the
    tap-sum op adds along the last axis, each shifted by its tap: 4 output
    channels fill a quarter of a 16-wide vector unit, 12 three quarters
    (forward 38 -> 22 ms at 2 x 64^3 x 32 -> 4, the tap sum included). The
    gradients are those of the transposed form (convolution_as_transposed),
    the fastest here: the images' as a convolution of the output gradient
    with the mirrored kernel, the kernel's as the kernel gradient of that
    convolution, mirrored back. Needs the op library.
    """
    size = kernel.shape.as_list()
    taps, in_channels, out_channels = size[2], size[3], size[4]

    @tf.custom_gradient
    def convolve(images, weights):
        grouped = tf.reshape(tf.transpose(weights, [0, 1, 3, 2, 4]),
                             [size[0], size[1], 1, in_channels, taps * out_channels])
        sums = tf.nn.conv3d(images, grouped, strides=[1] * 5, padding="SAME")

        def gradient(output_gradient):
            images_grad = gradients.images_gradient(images, weights, output_gradient, [1] * 5,
                                                    by_forward_convolution=True)
            mirrored_gradient = tf.raw_ops.Conv3DBackpropFilterV2(
                input=output_gradient, filter_sizes=[size[0], size[1], size[2], out_channels, in_channels],
                out_backprop=images, strides=[1] * 5, padding="SAME")
            return images_grad, gradients.mirrored(mirrored_gradient)

        return native.tap_sum(sums, taps), gradient

    y = convolve(x, tf.convert_to_tensor(kernel))
    y.set_shape(x.shape.as_list()[:4] + [out_channels])
    return y


class TunedLayerOps(LayerOps):
    """What both tuned sets share: the fused instance norm, small volumes by patches, kernel gradients by our op.

    Args:
        native_ops: use the project's op library where it is built (``--cpu_native_ops on``);
            False computes the same with TensorFlow's ops only.
    """

    #: Gradients of stride-1 convolutions by forward convolutions (for Eigen's slow backward kernels).
    forward_convolution_gradients = False

    def __init__(self, native_ops: bool = True):
        self.native_ops = native_ops
        #: The loaded op module, or None (turned off, or not built for this TensorFlow).
        self.native = native.load() if native_ops else None
        self.kernel_gradients_by_op = self.native is not None and native.has_avx512()

    def describe(self) -> str:
        if self.native is not None:
            ours = "the project's fused CPU ops" + (", kernel gradients by its AVX-512 op"
                                                    if self.kernel_gradients_by_op else "")
        elif self.native_ops:
            ours = "TensorFlow's ops only: the fused CPU ops are not built (python -m backends.cpu.native build)"
        else:
            ours = "TensorFlow's ops only (--cpu_native_ops off)"
        return "layer ops: {} (cpu backend; {})".format(self.name, ours)

    def _kernel_gradient_by_op(self, a_channels: int, b_channels: int, transposed: bool) -> bool:
        """Whether our kernel-gradient op computes this layer's kernel gradient (op library, AVX-512).

        ``a`` is the convolution's input (the transposed convolution's output
        gradient), ``b`` its output gradient (the transposed convolution's
        input). The op keeps a tile of up to 12 x 32 sums in registers; with
        many channels its partial sums no longer stay in cache and the
        libraries' kernels are faster. Measured against TF 2.15's oneDNN on the
        Xeon, 2 cores, batch 2, alone: 64^3 32 -> 32 69 ms against 80, stride 2
        64^3 32 -> 64 19 against 26, transposed 32^3 64 -> 32 6.3 against 10.7
        and 16^3 128 -> 64 3.9 against 5.0; slower at 4 input channels (12.4
        against 11.0) and from 64 channels on (32^3 64 -> 64 36 against 34).
        """
        if not self.kernel_gradients_by_op or b_channels % 16:
            return False
        if transposed:
            return a_channels <= 64 and b_channels <= 128
        return 16 <= a_channels <= 32 and b_channels <= 64

    def convolution(self, x, kernel, stride: int):
        in_channels, out_channels = kernel.shape.as_list()[3:]
        spatial = x.shape.as_list()[1:4]
        spatial_known = all(size is not None for size in spatial)
        if spatial_known and _voxels(spatial, stride) <= SMALL_VOLUME:
            return self._convolution_by_patches(x, kernel, stride)
        override = {}
        if spatial_known and self._kernel_gradient_by_op(in_channels, out_channels, transposed=False):
            override = {"Conv3D": gradients.NATIVE_KERNEL_GRADIENT_FORWARD_IMAGES
                        if self.forward_convolution_gradients else gradients.NATIVE_KERNEL_GRADIENT}
        elif stride == 1 and self.forward_convolution_gradients:
            override = {"Conv3D": gradients.FORWARD_GRADIENTS}
        with tf1.get_default_graph().gradient_override_map(override):
            return super().convolution(x, kernel, stride)

    def transposed_convolution(self, x, kernel, output_shape, stride: int):
        size = kernel.shape.as_list()
        # Our op's gradient covers a stride equal to the kernel's size (the up blocks' 2x2x2, stride 2).
        by_op = size[:3] == [stride] * 3 and self._kernel_gradient_by_op(size[3], size[4], transposed=True)
        override = {"Conv3DBackpropInputV2": gradients.NATIVE_TRANSPOSED_KERNEL_GRADIENT} if by_op else {}
        with tf1.get_default_graph().gradient_override_map(override):
            return super().transposed_convolution(x, kernel, output_shape, stride)

    def instance_norm_leaky_relu(self, x, gamma, beta):
        if self.native is not None:
            return native.instance_norm_leaky_relu(x, gamma, beta, self.epsilon, self.leaky_relu_slope)
        return tf.nn.leaky_relu(fused_instance_norm(x, gamma, beta, self.epsilon), alpha=self.leaky_relu_slope)

    def _convolution_by_patches(self, x, kernel, stride: int):
        """``conv3d(x, kernel)``, SAME, on a small volume: one matrix product of the input's patches (the
        windows the convolution sees, zero-padded), [voxels, kernel volume x in], with the kernel.

        At 2^3 and 4^3 voxels with 256-320 channels the kernel is 11 MB and the
        volume a few hundred voxels: the convolution libraries' kernels ran at
        10-200 GFLOP/s there (the bottleneck's kernel gradient: 8 ms for 88
        MFLOP). The kernel's gradient is the product of the same patches with
        the output gradient; the images' is TensorFlow's (a forward convolution
        with the mirrored kernel for stride 1 where the set says so).
        """
        size = kernel.shape.as_list()
        window = size[0] * size[1] * size[2] * size[3]
        out_spatial = [gradients.same_output_size(n, stride) for n in x.shape.as_list()[1:4]]
        strides = [1, stride, stride, stride, 1]

        @tf.custom_gradient
        def convolve(images, weights):
            patches = tf.reshape(tf.extract_volume_patches(images, ksizes=[1] + size[:3] + [1], strides=strides,
                                                           padding="SAME"), [-1, window])
            y = tf.reshape(tf.matmul(patches, tf.reshape(weights, [window, size[4]])),
                           [-1] + out_spatial + [size[4]])

            def gradient(output_gradient):
                images_grad = gradients.images_gradient(images, weights, output_gradient, strides,
                                                        self.forward_convolution_gradients)
                kernel_gradient = tf.matmul(patches, tf.reshape(output_gradient, [-1, size[4]]), transpose_a=True)
                return images_grad, tf.reshape(kernel_gradient, size)

            return y, gradient

        y = convolve(x, tf.convert_to_tensor(kernel))
        y.set_shape([x.shape[0]] + out_spatial + [size[4]])
        return y


class OneDnnLayerOps(TunedLayerOps):
    """For TensorFlow 2's CPU build (oneDNN): up blocks without a concatenation, the output convolution by taps."""

    name = "onednn"

    def convolution_of_parts(self, parts, kernel):
        # One convolution per part, each with its slice of the kernel's input
        # channels, summed: the same sums without copying both parts into a
        # concatenation forward and slicing its gradient apart backward.
        slices = tf.split(kernel, [int(part.shape[-1]) for part in parts], axis=3)
        return tf.add_n([self.convolution(part, piece, 1) for part, piece in zip(parts, slices)])

    def output_convolution(self, x, kernel):
        if self.native is not None:
            return convolution_by_taps(x, kernel)
        return convolution_as_transposed(x, kernel)


class EigenLayerOps(TunedLayerOps):
    """For TensorFlow 1.15's pip build (Eigen): stride-1 convolutions' gradients by forward convolutions."""

    name = "eigen"
    forward_convolution_gradients = True
