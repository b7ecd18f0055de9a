"""The model's kernel sets (unet3d_core.model.KERNEL_SETS) compute the same network, forward and backward."""
import numpy as np
import pytest
import tensorflow as tf

from unet3d_core import model, native
from unet3d_core.config import ModelConfig
from unet3d_core.errors import ConfigError

tf1 = tf.compat.v1
# The input convolution has fewer input than output channels (4 -> 6), the others more or as
# many: both forms of the "eigen" kernel gradient run.
CONFIG = ModelConfig(base_filters=6, max_filters=8, depth=3)
SHAPE = (2, 16, 16, 8, 4)


def _outputs_and_gradients(monkeypatch, kernels, weights=None, static_batch=True, config=CONFIG, op_types=None):
    """Logits and the gradients of a loss w.r.t. every variable, for ``weights`` (name -> value) if given;
    the graph's op types are added to the set ``op_types`` if given."""
    monkeypatch.setenv(model.KERNELS_VARIABLE, kernels)
    images_value = np.random.RandomState(0).randn(*SHAPE).astype(np.float32) * 2 + 0.5
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, SHAPE if static_batch else (None, None, None, None, 4))
        logits = model.build_unet3d(images, config, training=True)
        variables = tf1.trainable_variables()
        # A loss that weighs every output voxel differently, so that a transposed
        # or shifted gradient cannot give the same numbers.
        weighting = np.random.RandomState(2).rand(*SHAPE[:4], config.num_classes).astype(np.float32)
        gradients = tf.gradients(tf.reduce_sum(tf.square(logits) * weighting), variables)
        if op_types is not None:
            op_types.update(op.type for op in graph.get_operations())
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            if weights is not None:
                for variable in variables:
                    variable.load(weights[variable.op.name], session)
            values = session.run([logits] + gradients, {images: images_value})
            current = {variable.op.name: value for variable, value in zip(variables, session.run(variables))}
    return values, current


def _relative_error(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("kernels", ["onednn", "eigen"])
@pytest.mark.parametrize("static_batch", [True, False])
@pytest.mark.parametrize("native_ops", ["1", "0"], ids=["fused-cpu-ops", "tensorflow-ops"])
def test_tuned_kernels_give_the_plain_outputs_and_gradients(monkeypatch, kernels, static_batch, native_ops):
    if native_ops == "1" and not native.enabled():
        pytest.skip("UNET3D_NATIVE_OPS=0")
    monkeypatch.setenv(native.NATIVE_OPS_VARIABLE, native_ops)
    reference, weights = _outputs_and_gradients(monkeypatch, "plain")
    tuned, _ = _outputs_and_gradients(monkeypatch, kernels, weights, static_batch)
    assert len(tuned) == len(reference)
    # Float32 rounding only: the statistics and gradients are summed in another order.
    assert _relative_error(tuned[0], reference[0]) < 1e-4
    errors = [_relative_error(a, b) for a, b in zip(tuned[1:], reference[1:])]
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize("kernels", ["onednn", "eigen"])
def test_kernel_gradients_by_our_op_are_the_plain_gradients(monkeypatch, kernels):
    """At 16 and 32 channels the tuned sets compute the kernel gradients of the convolutions (stride 1
    and 2) and of the transposed convolutions with the project's op, on an AVX-512 CPU."""
    if not native.enabled() or not native.has_avx512():
        pytest.skip("needs the op library and an AVX-512 CPU")
    wide = ModelConfig(base_filters=16, max_filters=32, depth=3)
    reference, weights = _outputs_and_gradients(monkeypatch, "plain", config=wide)
    op_types = set()
    tuned, _ = _outputs_and_gradients(monkeypatch, kernels, weights, config=wide, op_types=op_types)
    assert native.KERNEL_GRADIENT_OP in op_types
    errors = [_relative_error(a, b) for a, b in zip(tuned[1:], reference[1:])]
    assert max(errors) < 1e-3, errors


def _training_ops(monkeypatch, kernels):
    """The ops of the network and its gradients, built with ``kernels``."""
    monkeypatch.setenv(model.KERNELS_VARIABLE, kernels)
    graph = tf.Graph()
    with graph.as_default():
        logits = model.build_unet3d(tf1.placeholder(tf.float32, SHAPE), CONFIG, training=True)
        tf.gradients(tf.reduce_sum(logits), tf1.trainable_variables())
    return graph.get_operations()


def test_eigen_kernels_replace_the_backward_convolutions(monkeypatch):
    """The point of the "eigen" set: no stride-1 backward convolution op is left in the training graph."""
    def backward_ops(kernels):
        return [op for op in _training_ops(monkeypatch, kernels) if op.type.startswith("Conv3DBackprop")
                and op.get_attr("strides") == [1, 1, 1, 1, 1]]

    assert len(backward_ops("plain")) > 0
    assert backward_ops("eigen") == []


def test_onednn_up_blocks_concatenate_nothing(monkeypatch):
    """With "onednn" an up block convolves its upsampled and skip inputs separately: no volume is concatenated."""
    def volume_concatenations(kernels):
        return [op for op in _training_ops(monkeypatch, kernels) if op.type == "ConcatV2"
                and op.outputs[0].shape.as_list()[0] == SHAPE[0]]  # a batch of volumes, not a kernel

    assert len(volume_concatenations("plain")) == CONFIG.depth - 1
    assert volume_concatenations("onednn") == []


@pytest.mark.parametrize("kernels", ["onednn", "eigen"])
def test_the_smallest_volumes_are_convolved_by_matrix_products(monkeypatch, kernels):
    """SHAPE's lowest level, the bottleneck, is 4 x 4 x 2 voxels (<= 4^3): its two convolutions (the first
    strided) and their kernel gradients are products of patches; every convolution above stays one."""
    def spatial(op):
        return op.outputs[0].shape.as_list()[1:4]

    ops = _training_ops(monkeypatch, kernels)
    forward = [op for op in ops if op.type == "Conv3D" and not op.name.startswith("gradients/")]
    assert forward and all(np.prod(spatial(op)) > model.SMALL_VOLUME for op in forward)
    products = [op for op in ops if op.type == "MatMul"]
    patches = [op for op in ops if op.type == "ExtractVolumePatches"]
    # Per small convolution one patches op and two products (forward, kernel gradient).
    assert (len(patches), len(products)) == (2, 4)
    plain = _training_ops(monkeypatch, "plain")
    assert not [op for op in plain if op.type in ("MatMul", "ExtractVolumePatches")]


def test_every_kernel_set_creates_the_same_variables(monkeypatch):
    shapes = {}
    for kernels in model.KERNEL_SETS:
        _, weights = _outputs_and_gradients(monkeypatch, kernels)
        shapes[kernels] = {name: value.shape for name, value in weights.items()}
    assert shapes["onednn"] == shapes["plain"] == shapes["eigen"]


def test_the_default_follows_tensorflow_and_a_bad_choice_is_named(monkeypatch):
    monkeypatch.delenv(model.KERNELS_VARIABLE, raising=False)
    assert model.kernel_set() == ("onednn" if tf.__version__.startswith("2.") else "eigen")
    monkeypatch.setenv(model.KERNELS_VARIABLE, "fast")
    with pytest.raises(ConfigError, match="UNET3D_KERNELS='fast'"):
        model.kernel_set()
