"""Fake npu_bridge.helper.helper: where the real package loads _tf_adapter.so (helper/helper.py:19-22).

``npu_bridge_handle`` is the fake's stand-in for the loaded library (npu_bridge._tf_adapter); loading it
installs the session hooks. ``version`` is the real module's (helper.py: version = 'v1.15.0').
"""
from npu_bridge._tf_adapter import session as _session

_session.load()

import npu_bridge._tf_adapter as npu_bridge_handle  # noqa: E402

version = "v1.15.0"


def get_gen_ops():
    return npu_bridge_handle
