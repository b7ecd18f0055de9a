"""Fake npu_device.npu_device (tf_adapter_2.x/python/npu_device/npu_device.py).

* Importing it loads ``_npu_ops.so`` (the NPU ops), not the adapter's graph passes (line 49-50).
* ``enable_v1()`` (123-128): with an opened device, ``ASCEND_DEVICE_ID`` is set to its id; then
  ``tf.compat.v1.disable_v2_behavior()``; then ``compat/v1/_tf_adapter.so`` is loaded: only from then on do
  sessions with an NpuOptimizer go to the device (the fake's hooks, npu_device.compat.v1._tf_adapter).
* ``is_inf_nan_enabled()`` (67-69): the device's saturation mode is 1 (INF/NaN). The fake's mode is
  $FAKE_NPU_SAT_MODE (default 1, Atlas A2's), or what ``set_device_sat_mode`` set.
"""
import importlib
import os

import tensorflow as tf

_device_instances = {}  # device id -> the eager device (never filled: open is not faked)
_sat_mode = [None]


class _GenNpuOps(object):
    """Stand-in for the loaded _npu_ops.so; unet3d's session-run path uses none of its ops."""


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
