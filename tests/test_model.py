import numpy as np
import pytest
import tensorflow as tf

from backends.cpu import kernels as cpu_kernels
from unet3d_core.model.config import ModelConfig
from unet3d_core.model.losses import segmentation_loss
from unet3d_core.model.network import build_unet3d, count_parameters

tf1 = tf.compat.v1


def _build(config, shape, training=True):
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [1] + list(shape) + [4])
        logits = build_unet3d(images, config, training=training)
        variables = tf1.trainable_variables()
    return graph, images, logits, variables


def test_default_model_has_the_reference_widths_and_size():
    config = ModelConfig()
    assert config.widths == [32, 64, 128, 256, 320, 320]
    graph, _, logits, variables = _build(config, (128, 128, 128))
    assert logits.shape.as_list() == [1, 128, 128, 128, 4]
    assert count_parameters(variables) == pytest.approx(31.2e6, rel=0.005)
    kernels = {v.name: v.shape.as_list() for v in variables if v.name.endswith("kernel:0")}
    assert kernels["unet3d/input_block/conv1/kernel:0"] == [3, 3, 3, 4, 32]
    assert kernels["unet3d/bottleneck/conv1/kernel:0"] == [3, 3, 3, 320, 320]
    assert kernels["unet3d/up4/upsample/kernel:0"] == [2, 2, 2, 320, 320]
    assert kernels["unet3d/up0/conv1/kernel:0"] == [3, 3, 3, 64, 32]
    assert kernels["unet3d/output/kernel:0"] == [3, 3, 3, 32, 4]


@pytest.mark.parametrize("norm", ["instancenorm", "groupnorm", "batchnorm", "none"])
def test_tiny_model_runs_with_every_norm(norm):
    config = ModelConfig(base_filters=4, max_filters=8, depth=3, norm=norm, groups=2)
    graph, images, logits, _ = _build(config, (16, 16, 8))
    with tf1.Session(graph=graph) as session:
        session.run(tf1.variables_initializer(graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)))
        out = session.run(logits, {images: np.random.RandomState(0).rand(1, 16, 16, 8, 4)})
    assert out.shape == (1, 16, 16, 8, 4)
    assert np.all(np.isfinite(out))


def test_inference_accepts_any_multiple_of_the_divisor():
    config = ModelConfig(base_filters=4, max_filters=8, depth=3)
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [1, None, None, None, 4])
        logits = build_unet3d(images, config, training=False)
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        assert session.run(logits, {images: np.zeros((1, 8, 12, 20, 4))}).shape == (1, 8, 12, 20, 4)


def _loss_value(kind, logits, labels):
    graph = tf.Graph()
    with graph.as_default():
        loss = segmentation_loss(tf.constant(logits, tf.float32), tf.constant(labels, tf.int32), 4, kind)
    with tf1.Session(graph=graph) as session:
        return session.run(loss)


def test_confident_correct_prediction_has_near_zero_loss():
    labels = np.random.RandomState(1).randint(0, 4, size=(1, 4, 4, 4))
    logits = 50.0 * np.eye(4)[labels]
    assert _loss_value("dice+ce", logits, labels) < 1e-3


def test_dice_plus_cross_entropy_matches_numpy():
    rng = np.random.RandomState(3)
    logits = 3.0 * rng.randn(2, 4, 3, 5, 4)
    labels = rng.randint(0, 4, size=(2, 4, 3, 5))
    labels[1] = np.where(labels[1] == 3, 0, labels[1])  # class 3 absent from the second sample
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cross_entropy = -np.mean(np.take_along_axis(log_softmax, labels[..., None], -1))
    probabilities, one_hot = np.exp(log_softmax), np.eye(4)[labels]
    intersection = (probabilities * one_hot).sum(axis=(1, 2, 3))
    total = probabilities.sum(axis=(1, 2, 3)) + one_hot.sum(axis=(1, 2, 3))
    dice = 1.0 - np.mean(((2 * intersection + 1) / (total + 1))[:, 1:])
    assert _loss_value("dice", logits, labels) == pytest.approx(dice, rel=1e-5)
    assert _loss_value("dice+ce", logits, labels) == pytest.approx(dice + cross_entropy, rel=1e-5)


def test_dice_plus_cross_entropy_gradient_is_the_sum_of_the_two_losses_gradients():
    rng = np.random.RandomState(4)
    logits_value = 2.0 * rng.randn(2, 4, 4, 4, 4)
    graph = tf.Graph()
    with graph.as_default():
        logits = tf.constant(logits_value, tf.float32)
        labels = tf.constant(rng.randint(0, 4, size=(2, 4, 4, 4)), tf.int32)
        combined = tf.gradients(segmentation_loss(logits, labels, 4, "dice+ce"), logits)[0]
        separate = tf.gradients(segmentation_loss(logits, labels, 4, "dice") +
                                segmentation_loss(logits, labels, 4, "ce"), logits)[0]
    with tf1.Session(graph=graph) as session:
        combined, separate = session.run([combined, separate])
    assert np.abs(separate).max() > 1e-4
    np.testing.assert_allclose(combined, separate, rtol=1e-4, atol=1e-7)


def test_cross_entropy_matches_numpy():
    rng = np.random.RandomState(2)
    logits = rng.randn(1, 3, 3, 3, 4)
    labels = rng.randint(0, 4, size=(1, 3, 3, 3))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_softmax, labels[..., None], -1))
    assert _loss_value("ce", logits, labels) == pytest.approx(expected, rel=1e-5)


def test_dice_loss_ignores_the_background_channel():
    labels = np.zeros((1, 4, 4, 4), int)  # background only
    wrong_background = np.zeros((1, 4, 4, 4, 4))
    wrong_background[..., 0] = -50.0  # background never predicted ...
    wrong_background[..., 1] = 0.0  # ... spread over the foreground classes
    right = 50.0 * np.eye(4)[labels]
    # Foreground predicted where there is none: Dice loss punishes it; a correct
    # background prediction leaves only the smoothing term.
    assert _loss_value("dice", right, labels) < 1e-3
    assert _loss_value("dice", wrong_background, labels) > 0.9


def _initial_weights(seed, batch, kernels):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        build_unet3d(tf.zeros([batch, 16, 16, 8, 4]), ModelConfig(base_filters=4, max_filters=8, depth=3), True,
                     ops=cpu_kernels.layer_ops(kernels))
        variables = tf.compat.v1.trainable_variables()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return dict(zip([v.op.name for v in variables], session.run(variables)))


def test_seed_alone_fixes_the_initial_weights():
    """Same --seed, same start: whatever the batch size (per worker) or layer ops; another seed, another start."""
    reference = _initial_weights(7, 2, "textbook")
    for batch, kernels in ((1, "textbook"), (2, "onednn"), (1, "eigen")):
        other = _initial_weights(7, batch, kernels)
        assert sorted(other) == sorted(reference)
        for name, value in reference.items():
            np.testing.assert_array_equal(other[name], value, err_msg=name)
    reseeded = _initial_weights(8, 2, "textbook")
    assert not np.allclose(reseeded["unet3d/input_block/conv1/kernel"], reference["unet3d/input_block/conv1/kernel"])
