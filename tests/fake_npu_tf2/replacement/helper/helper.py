"""Fake of tf_adapter_2.x/compat_v1/replacement/helper/helper.py, which replaces npu_bridge's helper in the
built ``npu_device.compat.v1``: no library is loaded here (``enable_v1`` loads it); ops come from
``npu_device.gen_npu_ops``; the version is 'v2.6.2'."""
from npu_device.npu_device import gen_npu_ops

npu_bridge_handle = None


def get_gen_ops():
    return gen_npu_ops


version = "v2.6.2"
