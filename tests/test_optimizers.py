"""The optimiser and schedule of the recipes against numpy: SGD with Nesterov momentum, weight decay,
gradient-norm clipping, poly decay; and that the seed's Adam graph is untouched."""
import numpy as np
import pytest
import tensorflow as tf

from unet3d_core.engine.optimizers import build_optimizer
from unet3d_core.engine.training_graph import learning_rate_at

tf1 = tf.compat.v1


def _steps(optimizer_kwargs, gradients, start):
    """Apply the given gradients (one list per step) to a variable starting at ``start``; return its values."""
    graph = tf.Graph()
    with graph.as_default():
        variable = tf1.get_variable("w", initializer=tf.constant(start, tf.float32))
        feed = tf1.placeholder(tf.float32, start.shape)
        optimizer = build_optimizer(**optimizer_kwargs)
        step = optimizer.apply_gradients([(feed, variable)])
        values = []
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            for gradient in gradients:
                session.run(step, {feed: gradient})
                values.append(session.run(variable))
    return values


def test_sgd_is_nesterov_momentum_with_coupled_weight_decay_and_norm_clipping():
    rate, momentum, decay, clip = 0.01, 0.99, 3e-5, 12.0
    start = np.array([1.0, -2.0, 0.5], np.float32)
    gradients = [np.array([30.0, 40.0, 0.0], np.float32), np.array([0.3, -0.1, 0.2], np.float32),
                 np.array([-5.0, 0.0, 12.0], np.float32)]
    values = _steps(dict(name="sgd", learning_rate=rate, momentum=momentum, weight_decay=decay, grad_clip=clip),
                    gradients, start)
    weights, velocity = start.astype(np.float64), np.zeros(3)
    for gradient, value in zip(gradients, values):
        gradient = gradient.astype(np.float64)
        norm = np.linalg.norm(gradient)
        if norm > clip:  # clipped first (norm 50 -> 12), then the decay is added, as torch's SGD does
            gradient = gradient * clip / norm
        gradient = gradient + decay * weights
        velocity = momentum * velocity + gradient
        weights = weights - rate * (gradient + momentum * velocity)  # Nesterov
        np.testing.assert_allclose(value, weights, rtol=1e-5, atol=1e-7)


def test_adam_without_clip_or_decay_is_the_plain_optimizer():
    optimizer = build_optimizer(name="adam", learning_rate=2e-4)
    assert type(optimizer) is tf1.train.AdamOptimizer


@pytest.mark.parametrize("schedule,expected", [
    ("poly", [0.01 * (1 - min(step, 100) / 100.0) ** 0.9 for step in (0, 10, 50, 99, 100, 150)]),
    ("constant", [0.01] * 6),
    ("cosine", [0.01 * 0.5 * (1 + np.cos(np.pi * min(step, 100) / 100.0)) for step in (0, 10, 50, 99, 100, 150)]),
])
def test_learning_rate_schedules(schedule, expected):
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.placeholder(tf.int64, [])
        rate = learning_rate_at(step, base=0.01, warmup_steps=0, total_steps=100, schedule=schedule)
        with tf1.Session(graph=graph) as session:
            got = [session.run(rate, {step: value}) for value in (0, 10, 50, 99, 100, 150)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def _first_update_norm(wrap):
    """||w1 - w0|| after one SGD step (rate 0.01, momentum 0.99, clip 1) on a loss whose gradient norm is 50,
    with the optimiser wrapped by ``wrap`` (a loss-scaling optimiser at scale 1024)."""
    graph = tf.Graph()
    with graph.as_default():
        weights = tf1.get_variable("w", initializer=tf.constant([1.0, 2.0], tf.float32))
        loss = tf.reduce_sum(weights * tf.constant([30.0, 40.0]))  # gradient (30, 40): norm 50
        optimizer = wrap(build_optimizer(name="sgd", learning_rate=0.01, momentum=0.99, grad_clip=1.0))
        step = optimizer.minimize(loss)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            before = session.run(weights)
            session.run(step)
            return float(np.linalg.norm(session.run(weights) - before))


def test_clipping_sees_the_unscaled_gradients_under_tensorflows_loss_scaling():
    def wrap(optimizer):
        home = getattr(tf1, "mixed_precision", None) or tf1.train.experimental  # TF 1.15 keeps it in the latter
        scale = home.FixedLossScale(1024.0)
        return tf1.train.experimental.MixedPrecisionLossScaleOptimizer(optimizer, scale)

    # Nesterov's first step moves by rate x (1 + momentum) x the clipped gradient: 0.01 x 1.99 x 1.
    assert _first_update_norm(wrap) == pytest.approx(0.0199, rel=1e-4)
    assert _first_update_norm(lambda optimizer: optimizer) == pytest.approx(0.0199, rel=1e-4)


def test_clipping_sees_the_unscaled_gradients_under_the_npu_adapters_loss_scaling(fake_npu):
    import importlib

    try:
        npu_init = importlib.import_module("npu_bridge.npu_init")
    except ImportError:
        pytest.skip("TF Adapter 2.x has no NPULossScaleOptimizer (TensorFlow's loss scaling is tested above)")

    def wrap(optimizer):
        manager = npu_init.FixedLossScaleManager(loss_scale=1024)
        return npu_init.NPULossScaleOptimizer(optimizer, manager)

    assert _first_update_norm(wrap) == pytest.approx(0.0199, rel=1e-4)
