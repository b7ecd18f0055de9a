"""The cpu backend's layer ops (backends/cpu/kernels.py) compute the textbook network, forward and backward."""
import numpy as np
import pytest
import tensorflow as tf

from backends.cpu import kernels, native
from unet3d_core.errors import ConfigError
from unet3d_core.layers import LayerOps
from unet3d_core.model.config import ModelConfig
from unet3d_core.model.network import build_unet3d

tf1 = tf.compat.v1
# The input convolution has fewer input than output channels (4 -> 6), the others more or as
# many: both forms of the "eigen" kernel gradient run.
CONFIG = ModelConfig(base_filters=6, max_filters=8, depth=3)
SHAPE = (2, 16, 16, 8, 4)
BUILT = native.load() is not None


def _outputs_and_gradients(ops, weights=None, static_batch=True, config=CONFIG, op_types=None):
    """Logits and the gradients of a loss w.r.t. every variable, built with ``ops``, for ``weights``
    (name -> value) if given; the graph's op types are added to the set ``op_types`` if given."""
    images_value = np.random.RandomState(0).randn(*SHAPE).astype(np.float32) * 2 + 0.5
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, SHAPE if static_batch else (None, None, None, None, 4))
        logits = build_unet3d(images, config, training=True, ops=ops)
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


@pytest.mark.parametrize("name", kernels.TUNED_SETS)
@pytest.mark.parametrize("static_batch", [True, False])
@pytest.mark.parametrize("native_ops", [True, False], ids=["fused-cpu-ops", "tensorflow-ops"])
def test_tuned_ops_give_the_textbook_outputs_and_gradients(name, static_batch, native_ops):
    if native_ops and not BUILT:
        pytest.skip("the op library is not built (python -m backends.cpu.native build)")
    reference, weights = _outputs_and_gradients(LayerOps())
    tuned, _ = _outputs_and_gradients(kernels.layer_ops(name, native_ops), weights, static_batch)
    assert len(tuned) == len(reference)
    # Float32 rounding only: the statistics and gradients are summed in another order.
    assert _relative_error(tuned[0], reference[0]) < 1e-4
    errors = [_relative_error(a, b) for a, b in zip(tuned[1:], reference[1:])]
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize("name", kernels.TUNED_SETS)
def test_kernel_gradients_by_our_op_are_the_textbook_gradients(name):
    """At 16 and 32 channels the tuned sets compute the kernel gradients of the convolutions (stride 1
    and 2) and of the transposed convolutions with the project's op, on an AVX-512 CPU."""
    ops = kernels.layer_ops(name)
    if not ops.kernel_gradients_by_op:
        pytest.skip("needs the op library and an AVX-512 CPU")
    wide = ModelConfig(base_filters=16, max_filters=32, depth=3)
    reference, weights = _outputs_and_gradients(LayerOps(), config=wide)
    op_types = set()
    tuned, _ = _outputs_and_gradients(ops, weights, config=wide, op_types=op_types)
    assert native.KERNEL_GRADIENT_OP in op_types
    errors = [_relative_error(a, b) for a, b in zip(tuned[1:], reference[1:])]
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize("name", kernels.TUNED_SETS)
def test_tuned_ops_give_the_same_bits_every_run(name):
    first, weights = _outputs_and_gradients(kernels.layer_ops(name))
    second, _ = _outputs_and_gradients(kernels.layer_ops(name), weights)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)


def _training_ops(ops):
    """The ops of the network and its gradients, built with ``ops``."""
    graph = tf.Graph()
    with graph.as_default():
        logits = build_unet3d(tf1.placeholder(tf.float32, SHAPE), CONFIG, training=True, ops=ops)
        tf.gradients(tf.reduce_sum(logits), tf1.trainable_variables())
    return graph.get_operations()


def test_eigen_ops_replace_the_backward_convolutions():
    """The point of the "eigen" set: no stride-1 backward convolution op is left in the training graph."""
    def backward_ops(ops):
        return [op for op in _training_ops(ops) if op.type.startswith("Conv3DBackprop")
                and op.get_attr("strides") == [1, 1, 1, 1, 1]]

    assert len(backward_ops(LayerOps())) > 0
    assert backward_ops(kernels.EigenLayerOps()) == []
    assert backward_ops(kernels.EigenLayerOps(native_ops=False)) == []


def test_onednn_up_blocks_concatenate_nothing():
    """With "onednn" an up block convolves its upsampled and skip inputs separately: no volume is concatenated."""
    def volume_concatenations(ops):
        return [op for op in _training_ops(ops) if op.type == "ConcatV2"
                and op.outputs[0].shape.as_list()[0] == SHAPE[0]]  # a batch of volumes, not a kernel

    assert len(volume_concatenations(LayerOps())) == CONFIG.depth - 1
    assert volume_concatenations(kernels.OneDnnLayerOps()) == []


@pytest.mark.parametrize("name", kernels.TUNED_SETS)
def test_the_smallest_volumes_are_convolved_by_matrix_products(name):
    """SHAPE's lowest level, the bottleneck, is 4 x 4 x 2 voxels (<= 4^3): its two convolutions (the first
    strided) and their kernel gradients are products of patches; every convolution above stays one."""
    def spatial(op):
        return op.outputs[0].shape.as_list()[1:4]

    ops = _training_ops(kernels.layer_ops(name))
    forward = [op for op in ops if op.type == "Conv3D" and not op.name.startswith("gradients/")]
    assert forward and all(np.prod(spatial(op)) > kernels.SMALL_VOLUME for op in forward)
    products = [op for op in ops if op.type == "MatMul"]
    patches = [op for op in ops if op.type == "ExtractVolumePatches"]
    # Per small convolution one patches op and two products (forward, kernel gradient).
    assert (len(patches), len(products)) == (2, 4)
    textbook = _training_ops(LayerOps())
    assert not [op for op in textbook if op.type in ("MatMul", "ExtractVolumePatches")]


def test_every_op_set_creates_the_same_variables():
    """Checkpoints are portable between the op sets: the core makes the variables, the ops only use them."""
    shapes = {}
    for ops in (LayerOps(), kernels.OneDnnLayerOps(), kernels.EigenLayerOps(),
                kernels.OneDnnLayerOps(native_ops=False), kernels.EigenLayerOps(native_ops=False)):
        _, weights = _outputs_and_gradients(ops)
        shapes[ops.describe()] = {name: value.shape for name, value in weights.items()}
    reference = shapes[LayerOps().describe()]
    assert len(shapes) == 5 and all(value == reference for value in shapes.values())


def test_auto_follows_tensorflow_and_a_bad_name_is_refused():
    assert kernels.layer_ops("auto").name == ("onednn" if tf.__version__.startswith("2.") else "eigen")
    assert type(kernels.layer_ops("textbook")) is LayerOps
    assert kernels.layer_ops("eigen", native_ops=False).native is None
    with pytest.raises(ConfigError, match="--cpu_kernels 'fast'"):
        kernels.layer_ops("fast")


def test_each_set_says_what_it_uses():
    assert "onednn" in kernels.OneDnnLayerOps().describe()
    assert "--cpu_native_ops off" in kernels.EigenLayerOps(native_ops=False).describe()
    assert "textbook" in LayerOps().describe()
