"""Fake npu_bridge.estimator.npu.npu_plugin: the two functions the fake's other modules use."""
from npu_bridge import record
from npu_bridge._tf_adapter import live


def is_inf_nan_enabled():
    """GetDeviceSatMode() == 1 (npu_plugin.py:238-240). The fake models the Atlas training series' default
    saturation mode, so overflow is detected through the float status, as NPULossScaleOptimizer does."""
    return False


def npu_close():
    """NpuClose at exit (npu_bridge/__init__.py:22 registers it with atexit)."""
    if live():
        record("npu_close")
