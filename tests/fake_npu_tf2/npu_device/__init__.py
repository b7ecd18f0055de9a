"""Fake of the TF Adapter 2.x package ``npu_device`` (tf_adapter_2.x/python/npu_device/__init__.py).

The real package binds ``open``, ``npu_compat_function``, ``gen_npu_ops``, ``global_options``,
``set_npu_loop_size``, ``npu_run_context``, ``set_device_sat_mode`` and ``is_inf_nan_enabled`` from
``npu_device.npu_device``, two scopes, and the ``_api`` modules ``distribute``, ``train``, ``ops``, ``compat``
and ``configs``. The fake binds the subset unet3d's session-run path can reach (no name the real one lacks):
the eager device (``open``) is not faked, so calling it fails loudly.
"""
from npu_device._api import compat  # noqa: F401,E402
from npu_device.npu_device import (
    gen_npu_ops,  # noqa: F401
    is_inf_nan_enabled,  # noqa: F401
    open,  # noqa: F401
    set_device_sat_mode,  # noqa: F401
    set_npu_loop_size,  # noqa: F401
)
