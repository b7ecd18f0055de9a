"""The two instance-norm kernels of the model compute the same network: outputs and gradients agree."""
import numpy as np
import pytest
import tensorflow as tf

from unet3d_core import model
from unet3d_core.config import ModelConfig

tf1 = tf.compat.v1
CONFIG = ModelConfig(base_filters=4, max_filters=8, depth=3)
SHAPE = (2, 16, 16, 8, 4)


def _outputs_and_gradients(monkeypatch, kernel, weights=None, static_batch=True):
    """Logits and the gradients of a loss w.r.t. every variable, for ``weights`` (name -> value) if given."""
    monkeypatch.setattr(model, "INSTANCE_NORM_KERNEL", kernel)
    images_value = np.random.RandomState(0).randn(*SHAPE).astype(np.float32) * 2 + 0.5
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, SHAPE if static_batch else (None, None, None, None, 4))
        logits = model.build_unet3d(images, CONFIG, training=True)
        variables = tf1.trainable_variables()
        gradients = tf.gradients(tf.reduce_mean(tf.square(logits)), variables)
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


@pytest.mark.parametrize("static_batch", [True, False])
def test_fused_instance_norm_matches_the_moments_formulation(monkeypatch, static_batch):
    reference, weights = _outputs_and_gradients(monkeypatch, "moments")
    fused, _ = _outputs_and_gradients(monkeypatch, "fused", weights, static_batch)
    assert len(fused) == len(reference)
    # Float32 rounding only: the statistics are summed in another order.
    assert _relative_error(fused[0], reference[0]) < 1e-4
    assert max(_relative_error(a, b) for a, b in zip(fused[1:], reference[1:])) < 1e-3


def test_both_kernels_create_the_same_variables(monkeypatch):
    names = {}
    for kernel in model.INSTANCE_NORM_KERNELS:
        _, weights = _outputs_and_gradients(monkeypatch, kernel)
        names[kernel] = {name: value.shape for name, value in weights.items()}
    assert names["fused"] == names["moments"]
