"""TF Adapter 2.x (``npu_device``): the rules of its session-run path, against the fake built the way the real
package is built (tests/fake_npu_tf2/build.py). Runs in the TensorFlow 2.6 environment (.venv-tf26), the
TensorFlow that adapter is made for; the subprocess tests of test_npu_training.py run there against it too.

Run in-process, last: ``enable_v1`` switches TensorFlow 2 behaviour off for the whole process, as it does
for a real user's process.
"""
import importlib

import numpy as np
import pytest
import tensorflow as tf
from fake_npu_env import FAKE as V1_FAKE
from fake_npu_env import adapter_fake, fake_npu_importable

if not tf.__version__.startswith("2.6."):
    pytest.skip("TF Adapter 2.x is built for TensorFlow 2.6 (.venv-tf26 runs these)", allow_module_level=True)

FAKE_TF2 = adapter_fake()
tf1 = tf.compat.v1


@pytest.fixture
def npu_device_fake():
    with fake_npu_importable([FAKE_TF2]):
        yield


def _npu_config():
    from backends.npu import config as npu_config

    return npu_config.apply_session_config(tf1.ConfigProto(), {"use_off_line": True, "iterations_per_loop": 1})


def _calls(name):
    v1 = importlib.import_module("npu_device.compat.v1")
    return [call for call in v1.calls + v1.load_log if call["call"] == name]


def test_without_enable_v1_an_npu_session_runs_on_the_host(npu_device_fake):
    """Importing npu_device and its compat.v1 loads no adapter library: the NpuOptimizer is ignored until
    enable_v1 (npu_device.py:123-128) loads compat/v1/_tf_adapter.so."""
    importlib.import_module("npu_device")
    importlib.import_module("npu_device.compat.v1.npu_init")
    with tf.Graph().as_default():
        with tf1.Session(config=_npu_config()) as session:
            session.run(tf.constant(1.0) + 1.0)
    assert not _calls("adapter_loaded") and not _calls("session") and not _calls("compile_graph")
    from backends.npu import adapter

    loaded = adapter.load()
    assert loaded.name == adapter.TF2_ADAPTER and "npu_device.compat.v1 (TF 2 adapter) v2.6.2" in loaded.describe()
    with tf.Graph().as_default():
        with tf1.Session(config=_npu_config()) as session:
            session.run(tf.constant(1.0) + 1.0)
    assert len(_calls("adapter_loaded")) == 1 and len(_calls("session")) == 1 and _calls("compile_graph")
    adapter.load()  # again, as each hook does: the library is loaded once
    assert len(_calls("adapter_loaded")) == 1


def test_compat_v1_has_no_loss_scale_optimizer(npu_device_fake):
    """upgrade_tf1_compat_tf2.py deletes the loss-scale modules and their imports from compat.v1."""
    import npu_device

    assert hasattr(npu_device.compat, "enable_v1")
    npu_init = importlib.import_module("npu_device.compat.v1.npu_init")
    for name in ("NPULossScaleOptimizer", "FixedLossScaleManager", "ExponentialUpdateLossScaleManager"):
        assert not hasattr(npu_init, name)
    with pytest.raises(ImportError):
        importlib.import_module("npu_device.compat.v1.estimator.npu.npu_loss_scale_optimizer")
    assert hasattr(npu_init, "NPUDistributedOptimizer") and hasattr(npu_init, "hccl_ops")
    from backends.npu import adapter

    assert not adapter.load().has_loss_scale_optimizer


def _loss_scaled_training(kind, scale):
    from backends.npu import adapter
    from backends.npu.strategy import loss_scaling_optimizer

    graph = tf.Graph()
    with graph.as_default():
        factor = tf1.placeholder(tf.float32, [])
        weight = tf1.get_variable("w", initializer=2.0)
        step = tf1.train.get_or_create_global_step()
        wrapped = loss_scaling_optimizer(adapter.load(), tf1.train.GradientDescentOptimizer(0.25), kind, scale,
                                         distributed=False)
        train = wrapped.optimizer.minimize(factor * weight * weight, global_step=step)
        metrics = wrapped.step_metrics()
        init = tf1.global_variables_initializer()
    session = tf1.Session(graph=graph, config=_npu_config())
    session.run(init)
    return session, train, factor, weight, step, metrics["loss_scale"]


def test_loss_scaling_with_the_tf2_adapter_skips_overflowing_steps(npu_device_fake):
    """TensorFlow's MixedPrecisionLossScaleOptimizer: a step with an inf gradient changes nothing and leaves the
    global step (the core counts it as skipped), with a fixed scale too, as the 1.x adapter's optimizer does; a
    finite step applies the unscaled gradient."""
    session, train, factor, weight, step, loss_scale = _loss_scaled_training("fixed", 1048576.0)
    with session:
        session.run(train, {factor: np.inf})
        assert session.run([weight, step]) == [2.0, 0]
        session.run(train, {factor: 1.0})
        assert session.run(weight) == pytest.approx(2.0 - 0.25 * 4.0)  # d(w^2)/dw = 4 at w = 2
        assert session.run(step) == 1 and session.run(loss_scale) == 1048576.0
    session, train, factor, weight, step, loss_scale = _loss_scaled_training("dynamic", 2.0 ** 32)
    with session:
        session.run(train, {factor: np.inf})
        assert session.run(step) == 0 and session.run(loss_scale) == 2.0 ** 31  # halved after the overflow
    assert _calls("session")  # on the device


def test_in_saturation_mode_loss_scaling_reads_the_device_float_status(npu_device_fake, monkeypatch):
    """On Atlas 910 (saturation mode) an overflow gives no inf, so TensorFlow's check would never see one: the
    overflow flag is the device's float status, read after the gradients and cleared for the next step, as the
    adapter's own NpuLossScaleOptimizer does. An overflowing step changes nothing, the global step included;
    a finite one applies the unscaled gradient; the dynamic scale shrinks after two overflows in a row, as
    the 1.x adapter's manager does."""
    from backends.npu import config as npu_config

    monkeypatch.setenv("FAKE_NPU_SAT_MODE", "0")
    session, train, factor, weight, step, loss_scale = _loss_scaled_training("fixed", 1024.0)
    with session:
        session.run(train, {factor: np.inf})
        assert session.run([weight, step]) == [2.0, 0]
        session.run(train, {factor: 1.0})  # the register was cleared: this step is applied
        assert session.run(weight) == pytest.approx(2.0 - 0.25 * 4.0)
        assert session.run(step) == 1 and session.run(loss_scale) == 1024.0
    (read,) = _calls("npu_get_float_status_v2")
    assert read["ordered_after"] > 0  # after the gradients, not before them
    assert len(_calls("npu_clear_float_status_v2")) == 1
    session, train, factor, weight, step, loss_scale = _loss_scaled_training("dynamic", 2.0 ** 32)
    with session:
        session.run(train, {factor: np.inf})
        assert session.run([step, loss_scale]) == [0, 2.0 ** 32]  # one overflow: counted
        session.run(train, {factor: np.inf})
        assert session.run([step, loss_scale]) == [0, 2.0 ** 32 * npu_config.DYNAMIC_SHRINK_RATIO]
        session.run(train, {factor: 1.0})
        assert session.run(step) == 1 and session.run(weight) == pytest.approx(1.0)


def test_the_backend_uses_the_adapter_built_for_this_tensorflow():
    """With both packages importable, TensorFlow 2.x means npu_device (npu_bridge is for 1.15)."""
    from backends.npu import adapter

    with fake_npu_importable([FAKE_TF2, V1_FAKE]):
        assert adapter.installed() == adapter.TF2_ADAPTER
    with fake_npu_importable([V1_FAKE]):
        assert adapter.installed() == adapter.TF1_ADAPTER
    with fake_npu_importable([]):
        assert adapter.installed() is None
