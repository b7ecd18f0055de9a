"""The cpu backend's own ops (backends/cpu/native): built, exact, deterministic, and optional."""
import os

import numpy as np
import pytest
import tensorflow as tf

from backends.cpu import gradients, kernels, native
from unet3d_core.layers import LEAKY_RELU_SLOPE, NORM_EPSILON
from unet3d_core.model.config import ModelConfig
from unet3d_core.model.network import build_unet3d

tf1 = tf.compat.v1
BUILT = native.load() is not None


def test_the_op_is_built_for_this_tensorflow():
    """tools/make_venv.sh builds it; without it every tuned graph falls back to the slower ops."""
    assert os.path.exists(native.library_path()), "run: python -m backends.cpu.native build"
    assert native.load() is not None


needs_op = pytest.mark.skipif(not BUILT, reason="the op library is not built (python -m backends.cpu.native build)")


def _reference(x, gamma, beta, alpha=LEAKY_RELU_SLOPE, epsilon=NORM_EPSILON):
    """Float64 numpy: leaky_relu((x - mean) / sqrt(var + eps) * gamma + beta), statistics per sample and channel."""
    x = x.astype(np.float64)
    axes = tuple(range(1, x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=axes, keepdims=True) + epsilon)
    z = (x - mean) * rstd * gamma + beta
    return np.where(z > 0, z, alpha * z), mean.reshape(x.shape[0], -1), rstd.reshape(x.shape[0], -1)


def _inputs(shape, offset=0.0, seed=0):
    rng = np.random.RandomState(seed)
    channels = shape[-1]
    # Each channel its own mean and spread, so a mix-up of axes shows.
    x = (rng.randn(*shape) * rng.uniform(0.5, 3.0, channels) + rng.uniform(-2, 2, channels) + offset)
    gamma = rng.uniform(0.5, 1.5, channels)
    beta = rng.uniform(-0.5, 0.5, channels)
    return x.astype(np.float32), gamma.astype(np.float32), beta.astype(np.float32)


def _run(fetches, feeds=None, threads=2):
    config = tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    with tf1.Session(config=config) as session:
        return session.run(fetches, feeds)


@needs_op
@pytest.mark.parametrize("shape,offset", [((2, 9, 7, 5, 6), 0.0), ((1, 40, 30, 20, 17), 0.0),
                                          ((3, 6, 6, 6, 320), 0.0), ((2, 8, 8, 8, 4), 1000.0),
                                          ((2, 5, 3), 0.0)])
def test_forward_matches_a_float64_reference(shape, offset):
    x, gamma, beta = _inputs(shape, offset)
    expected_y, expected_mean, expected_rstd = _reference(x, gamma, beta)
    with tf.Graph().as_default():
        module = native.load()
        y, mean, rstd = _run(module.unet3d_instance_norm_leaky_relu(x, gamma, beta, epsilon=NORM_EPSILON,
                                                                     alpha=LEAKY_RELU_SLOPE))
    # A large common offset (1000) must not cost the variance its precision: what is left
    # is float32's own spacing at 1000 (6e-5), which x and the stored mean are rounded to.
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=2e-5 + 1e-7 * offset)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-5)


@needs_op
@pytest.mark.parametrize("shape", [(2, 9, 7, 5, 6), (1, 12, 10, 8, 33)])
def test_gradients_match_tensorflow_ops_in_float64(shape):
    """dx, dgamma, dbeta against TensorFlow's own gradient of the textbook formula, in float64."""
    x, gamma, beta = _inputs(shape, seed=1)
    upstream = np.random.RandomState(2).randn(*shape).astype(np.float32)
    axes = list(range(1, len(shape) - 1))
    with tf.Graph().as_default():
        inputs = [tf.constant(value.astype(np.float64)) for value in (x, gamma, beta)]
        mean, variance = tf.nn.moments(inputs[0], axes=axes, keepdims=True)
        z = (inputs[0] - mean) * tf.math.rsqrt(variance + NORM_EPSILON) * inputs[1] + inputs[2]
        reference = _run(tf.gradients(tf.nn.leaky_relu(z, alpha=LEAKY_RELU_SLOPE), inputs,
                                      upstream.astype(np.float64)))
    with tf.Graph().as_default():
        inputs = [tf.constant(value) for value in (x, gamma, beta)]
        y = native.instance_norm_leaky_relu(*inputs, epsilon=NORM_EPSILON, alpha=LEAKY_RELU_SLOPE)
        fused = _run(tf.gradients(y, inputs, upstream))
    for name, ours, theirs in zip(("dx", "dgamma", "dbeta"), fused, reference):
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5 * scale, err_msg=name)


@needs_op
def test_results_do_not_depend_on_the_thread_count():
    """Sums go block by block in a fixed order: 1 and 2 threads give the same bits."""
    x, gamma, beta = _inputs((2, 32, 32, 16, 32), seed=3)
    upstream = np.random.RandomState(4).randn(*x.shape).astype(np.float32)
    results = []
    for threads in (1, 2, 2):
        with tf.Graph().as_default():
            inputs = [tf.constant(value) for value in (x, gamma, beta)]
            y = native.instance_norm_leaky_relu(*inputs, epsilon=NORM_EPSILON, alpha=LEAKY_RELU_SLOPE)
            results.append(_run([y] + tf.gradients(y, inputs, upstream), threads=threads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@needs_op
def test_an_unknown_batch_size_works():
    x, gamma, beta = _inputs((3, 6, 5, 4, 8), seed=5)
    with tf.Graph().as_default():
        images = tf1.placeholder(tf.float32, (None, None, None, None, 8))
        y = native.instance_norm_leaky_relu(images, gamma, beta, epsilon=NORM_EPSILON, alpha=LEAKY_RELU_SLOPE)
        assert y.shape.as_list() == [None, None, None, None, 8]
        value = _run(y, {images: x})
    np.testing.assert_allclose(value, _reference(x, gamma, beta)[0], rtol=1e-4, atol=2e-5)


@needs_op
@pytest.mark.parametrize("x_shape,channels,message", [((4, 8), 8, "x must be \\[batch, spatial..., channels\\]"),
                                                     ((2, 4, 4, 4, 8), 6, "gamma and beta must be \\[8\\]")])
def test_bad_shapes_are_named(x_shape, channels, message):
    with tf.Graph().as_default():
        module = native.load()
        y = module.unet3d_instance_norm_leaky_relu(
            tf1.placeholder_with_default(np.zeros(x_shape, np.float32), None), np.ones(channels, np.float32),
            np.zeros(channels, np.float32), epsilon=NORM_EPSILON, alpha=LEAKY_RELU_SLOPE)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            _run(y)


def _network_op_types(ops):
    graph = tf.Graph()
    with graph.as_default():
        config = ModelConfig(base_filters=4, max_filters=8, depth=3)
        logits = build_unet3d(tf1.placeholder(tf.float32, (2, 8, 8, 8, 4)), config, training=True, ops=ops)
        tf.gradients(tf.reduce_sum(logits), tf1.trainable_variables())
    # Stacks of volumes (the per-sample norm's), not of the few integers of a shape.
    return {op.type for op in graph.get_operations() if op.type != "Pack" or op.outputs[0].shape.ndims == 5}


@needs_op
@pytest.mark.parametrize("name", kernels.TUNED_SETS)
def test_the_tuned_network_uses_the_ops_and_can_do_without_them(name):
    fused = _network_op_types(kernels.layer_ops(name, native_ops=True))
    assert {native.OP_NAME, native.OP_NAME + "Grad"} <= fused
    assert (native.TAP_SUM_OP in fused) == (name == "onednn")  # the output convolution by taps
    assert not fused & {"FusedBatchNormV3", "LeakyRelu", "Pack"}
    fallback = _network_op_types(kernels.layer_ops(name, native_ops=False))
    assert not fallback & {native.OP_NAME, native.TAP_SUM_OP, native.KERNEL_GRADIENT_OP}
    assert {"FusedBatchNormV3", "LeakyRelu", "Pack"} <= fallback


def test_the_textbook_network_holds_only_tensorflows_ops():
    """What the gpu and npu backends build: no op of ours, none of the CPU rewrites."""
    textbook = _network_op_types(kernels.layer_ops("textbook"))
    assert not textbook & {native.OP_NAME, native.TAP_SUM_OP, native.KERNEL_GRADIENT_OP, "FusedBatchNormV3"}


def test_a_failed_build_says_so_and_leaves_no_library(monkeypatch, tmp_path):
    monkeypatch.setenv(native.DIRECTORY_VARIABLE, str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails at once
    with pytest.raises(native.NativeBuildError, match="compiling .*kernel_gradient.cc failed"):
        native.build(quiet=True)
    assert os.listdir(str(tmp_path)) == []


def test_a_missing_library_means_the_fallback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(native.DIRECTORY_VARIABLE, str(tmp_path))
    assert native.load() is None
    assert "python -m backends.cpu.native build" in capsys.readouterr().err
    ops = kernels.layer_ops("auto", native_ops=True)
    assert ops.native is None and "not built" in ops.describe()
    fallback = _network_op_types(ops)
    assert native.OP_NAME not in fallback and "FusedBatchNormV3" in fallback


def _tap_sum_reference(p, taps):
    channels = p.shape[-1] // taps
    centre = (taps - 1) // 2
    out = np.zeros(p.shape[:-1] + (channels,), np.float64)
    length = p.shape[-2]
    for t in range(taps):
        for z in range(length):
            source = z + t - centre
            if 0 <= source < length:
                out[..., z, :] += p[..., source, t * channels:(t + 1) * channels]
    return out


@needs_op
@pytest.mark.parametrize("shape,taps", [((2, 5, 4, 7, 12), 3), ((1, 3, 3, 6, 20), 5), ((2, 4, 3, 5), 1),
                                        ((1, 2, 2, 1, 9), 3)])
def test_tap_sum_matches_numpy_and_its_gradient_is_the_adjoint(shape, taps):
    rng = np.random.RandomState(6)
    p = rng.randn(*shape).astype(np.float32)
    weights = rng.randn(*(shape[:-1] + (shape[-1] // taps,))).astype(np.float32)
    with tf.Graph().as_default():
        source = tf.constant(p)
        out = native.tap_sum(source, taps)
        assert out.shape.as_list() == list(shape[:-1]) + [shape[-1] // taps]
        value, gradient = _run([out, tf.gradients(out, source, weights)[0]])
    np.testing.assert_allclose(value, _tap_sum_reference(p, taps), rtol=1e-5, atol=1e-5)
    # <tap_sum(p), w> = <p, tap_sum'(w)> for every p and w: the gradient is the op's adjoint.
    np.testing.assert_allclose(np.sum(value * weights), np.sum(p * gradient), rtol=1e-4)


@needs_op
def test_tap_sum_names_a_bad_channel_count():
    with tf.Graph().as_default():
        out = native.load().unet3d_tap_sum(tf1.placeholder_with_default(np.zeros((1, 2, 2, 2, 10), np.float32), None),
                                           taps=3)
        with pytest.raises(tf.errors.InvalidArgumentError, match="not a multiple of taps"):
            _run(out)


@needs_op
def test_the_output_convolution_by_taps_is_conv3d_forward_and_backward():
    rng = np.random.RandomState(7)
    x = rng.randn(2, 6, 5, 7, 8).astype(np.float32)
    kernel = rng.randn(3, 3, 3, 8, 4).astype(np.float32) * 0.2
    upstream = rng.randn(2, 6, 5, 7, 4).astype(np.float32)
    results = []
    for convolve in (lambda a, b: tf.nn.conv3d(a, b, strides=[1] * 5, padding="SAME"), kernels.convolution_by_taps):
        with tf.Graph().as_default():
            inputs = [tf.constant(x), tf.constant(kernel)]
            y = convolve(*inputs)
            results.append(_run([y] + tf.gradients(y, inputs, upstream)))
    for name, ours, theirs in zip(("y", "dx", "dkernel"), results[1], results[0]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max(), err_msg=name)


needs_avx512 = pytest.mark.skipif(not BUILT or not native.has_avx512(), reason="needs the op library and AVX-512")


def _kernel_gradient_reference(a, b, kernel, pad, stride):
    """Float64 numpy: dw[k, i, j] = sum over n, p of a[n, stride * p + k - pad, i] * b[n, p, j], a zero outside."""
    margin = max(kernel) + stride
    padded = np.pad(a.astype(np.float64), [(0, 0)] + [(margin, margin)] * 3 + [(0, 0)])
    result = np.zeros(tuple(kernel) + (a.shape[-1], b.shape[-1]))
    for offsets in np.ndindex(*kernel):
        rows = [stride * np.arange(size) + k - p + margin for size, k, p in zip(b.shape[1:4], offsets, pad)]
        shifted = padded[:, rows[0]][:, :, rows[1]][:, :, :, rows[2]]
        result[offsets] = np.einsum("ndhwi,ndhwj->ij", shifted, b.astype(np.float64))
    return result


@needs_avx512
@pytest.mark.parametrize("a_shape,b_shape,kernel,pad,stride", [
    ((2, 9, 7, 5, 20), (2, 9, 7, 5, 48), (3, 3, 3), (1, 1, 1), 1),   # SAME, stride 1, odd sizes, 12 + 8 rows
    ((1, 6, 5, 4, 4), (1, 6, 5, 4, 16), (3, 3, 3), (1, 1, 1), 1),    # few input channels
    ((2, 8, 6, 10, 12), (2, 4, 3, 5, 32), (3, 3, 3), (0, 0, 0), 2),  # SAME, stride 2, even sizes
    ((1, 7, 9, 5, 16), (1, 4, 5, 3, 16), (3, 3, 3), (1, 1, 1), 2),   # SAME, stride 2, odd sizes
    ((2, 8, 6, 4, 24), (2, 4, 3, 2, 64), (2, 2, 2), (0, 0, 0), 2),   # a 2x2x2 transposed convolution's
])
def test_kernel_gradient_matches_a_float64_reference(a_shape, b_shape, kernel, pad, stride):
    rng = np.random.RandomState(3)
    a = rng.randn(*a_shape).astype(np.float32)
    b = rng.randn(*b_shape).astype(np.float32)
    with tf.Graph().as_default():
        result = _run(native.convolution_kernel_gradient(a, b, kernel, pad, stride))
    expected = _kernel_gradient_reference(a, b, kernel, pad, stride)
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@needs_avx512
def test_kernel_gradient_is_tensorflows_for_a_convolution_and_a_transposed_one():
    rng = np.random.RandomState(4)
    x = rng.randn(2, 10, 8, 6, 16).astype(np.float32)
    with tf.Graph().as_default():
        kernel = tf.constant(rng.randn(3, 3, 3, 16, 32).astype(np.float32))
        fetches = {}
        for stride in (1, 2):
            y = tf.nn.conv3d(x, kernel, strides=[1, stride, stride, stride, 1], padding="SAME")
            dy = tf.constant(rng.randn(*y.shape.as_list()).astype(np.float32))
            pad = [gradients.same_padding_before(n, 3, stride) for n in x.shape[1:4]]
            fetches[stride] = (tf.gradients(y, kernel, grad_ys=dy)[0],
                               native.convolution_kernel_gradient(x, dy, [3, 3, 3], pad, stride))
        up = tf.constant(rng.randn(2, 2, 2, 32, 16).astype(np.float32))  # [d, h, w, out, in]
        z = tf.nn.conv3d_transpose(x, up, [2, 20, 16, 12, 32], strides=[1, 2, 2, 2, 1], padding="SAME")
        dz = tf.constant(rng.randn(2, 20, 16, 12, 32).astype(np.float32))
        fetches["transposed"] = (tf.gradients(z, up, grad_ys=dz)[0],
                                 native.convolution_kernel_gradient(dz, x, [2, 2, 2], [0, 0, 0], 2))
        values = _run(fetches)
    for name, (expected, ours) in values.items():
        np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=str(name))


@needs_avx512
def test_kernel_gradient_does_not_depend_on_the_thread_count():
    rng = np.random.RandomState(5)
    a = rng.randn(2, 12, 10, 8, 32).astype(np.float32)
    b = rng.randn(2, 12, 10, 8, 32).astype(np.float32)
    with tf.Graph().as_default():
        dw = native.convolution_kernel_gradient(a, b, [3, 3, 3], [1, 1, 1], 1)
        one, two = _run(dw, threads=1), _run(dw, threads=2)
    assert np.array_equal(one, two)


@needs_avx512
def test_kernel_gradient_names_a_bad_channel_count():
    with tf.Graph().as_default():
        dw = native.convolution_kernel_gradient(np.zeros((1, 4, 4, 4, 8), np.float32),
                                                np.zeros((1, 4, 4, 4, 12), np.float32), [3, 3, 3], [1, 1, 1], 1)
        with pytest.raises(tf.errors.InvalidArgumentError, match="b's channels must be a multiple of 16, got 12"):
            _run(dw)
