"""Fake npu_device.npu_device (tf_adapter_2.x/python/npu_device/npu_device.py).

* Importing it loads ``_npu_ops.so`` (the NPU ops), not the adapter's graph passes (line 49-50).
* ``enable_v1()`` (123-128): with an opened device, ``ASCEND_DEVICE_ID`` is set to its id; then
  ``tf.compat.v1.disable_v2_behavior()``; then ``compat/v1/_tf_adapter.so`` is loaded: only from then on do
  sessions with an NpuOptimizer go to the device (the fake's hooks, npu_device.compat.v1._tf_adapter).
* ``is_inf_nan_enabled()`` (67-69): the device's saturation mode is 1 (INF/NaN). The fake's mode is
  $FAKE_NPU_SAT_MODE (default 1, Atlas A2's), or what ``set_device_sat_mode`` set.
* ``gen_npu_ops`` (49-50, ``_npu_ops.so``): of its ops the fake has the two float-status ops the adapter's
  loss scaling uses (train/optimizer/npu_loss_scale_optimizer.py:33-49), as registered in
  tf_adapter/ops/aicore/npu_mixed_precesion_ops.cc: ``npu_get_float_status_v2()`` (51-57: no input, a
  stateful int32[8] output, nonzero after an overflow) and ``npu_clear_float_status_v2()`` (74-78: no input,
  no output, stateful). The device's overflow register is a process-wide array here. What sets it: the
  AI Core flags an op that overflowed; the fake, which runs on the CPU, counts the ops the status read is
  ordered after (its control dependencies, as the adapter always builds it) and flags a non-finite float
  output among them, the value the device would have saturated.
"""
import importlib
import os

import numpy as np
import tensorflow as tf

_device_instances = {}  # device id -> the eager device (never filled: open is not faked)
_sat_mode = [None]


_FLOAT_STATUS = np.zeros(8, np.int32)  # the device's overflow register


def _record(name, **arguments):
    importlib.import_module("npu_device.compat.v1").record(name, **arguments)


class _GenNpuOps(object):
    """Stand-in for the loaded _npu_ops.so: the float-status ops (see the module docstring)."""

    @staticmethod
    def npu_get_float_status_v2(name=None):
        graph = tf.compat.v1.get_default_graph()
        executed = [tensor for op in graph._current_control_dependencies() for tensor in op.outputs
                    if tensor.dtype.is_floating]
        _record("npu_get_float_status_v2", ordered_after=len(executed))

        def read(*values):
            if any(not np.all(np.isfinite(value)) for value in values):
                _FLOAT_STATUS[0] = 1
            return _FLOAT_STATUS.copy()

        status = tf.compat.v1.py_func(read, executed, tf.int32, stateful=True, name=name or "NpuGetFloatStatusV2")
        status.set_shape([8])
        return status

    @staticmethod
    def npu_clear_float_status_v2(name=None):
        _record("npu_clear_float_status_v2")

        def clear():
            _FLOAT_STATUS[:] = 0
            return np.int32(0)

        return tf.compat.v1.py_func(clear, [], tf.int32, stateful=True, name=name or "NpuClearFloatStatusV2").op


gen_npu_ops = _GenNpuOps()


def set_npu_loop_size(loop_size):
    raise NotImplementedError("fake npu_device: set_npu_loop_size drives the eager NPU device, not faked")


def set_device_sat_mode(mode):
    _sat_mode[0] = int(mode)


def is_inf_nan_enabled():
    mode = _sat_mode[0] if _sat_mode[0] is not None else int(os.environ.get("FAKE_NPU_SAT_MODE", "1"))
    return mode == 1


def open(device_id=None):  # noqa: A001  (the real name)
    raise NotImplementedError("fake npu_device: the eager NPU device (npu_device.open) is not faked; unet3d uses "
                              "npu_device.compat.v1")


def enable_v1():
    if len(_device_instances) > 0:
        os.environ["ASCEND_DEVICE_ID"] = str(list(_device_instances.keys())[0])
    tf.compat.v1.disable_v2_behavior()
    # tf.load_op_library(<npu_device>/compat/v1/_tf_adapter.so): the fake's library stand-in.
    importlib.import_module("npu_device.compat.v1._tf_adapter.session").load()
