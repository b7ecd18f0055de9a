"""Fake npu_bridge.estimator.npu_ops: NPUInit / NPUShutdown as graph ops (npu_ops.py:35-75).

Running ``initialize_system()`` starts GE as its NPUInit kernel does (tf_adapter/kernels/npu_sys_ctl_ops.cc:76,
GePlugin::Init: ge_plugin.py), which starts HCCL when the rank table is configured; ``shutdown_system()``
stops HCCL again. After that, hccl.manage.api answers (docs/zh/tfadapter_1/apiref/npu_ops/initialize_system.md:
run initialize_system in a session of its own before get_rank_id / get_rank_size / get_local_rank_id).
"""
import tensorflow as tf
from hccl.manage import _hcomm

from npu_bridge import record
from npu_bridge._tf_adapter import ge_plugin


def _initialize():
    ge_plugin.initialize("NPUInit")
    record("npu_init_ran", hccl_started=_hcomm.state["started"])
    return True


def _shutdown():
    _hcomm.stop()
    record("npu_shutdown_ran")
    return True


def initialize_system(name=None):
    """NPUInit (npu_ops.py:60-69); refused in eager mode (npu_ops.py:35-45)."""
    if tf.executing_eagerly():
        raise RuntimeError("tf.NPUInit() is not compatible with eager execution.")
    record("initialize_system")
    return tf.compat.v1.py_func(_initialize, [], tf.bool, stateful=True, name=name or "NPUInit").op


def shutdown_system(name=None):
    """NPUShutdown (npu_ops.py:72-75); refused in eager mode (npu_ops.py:47-56)."""
    if tf.executing_eagerly():
        raise RuntimeError("tf.NPUShutdown() is not compatible with eager execution.")
    record("shutdown_system")
    return tf.compat.v1.py_func(_shutdown, [], tf.bool, stateful=True, name=name or "NPUShutdown").op
