"""Fake npu_device._api.compat (tf_adapter_2.x/python/npu_device/_api/compat/__init__.py):
``enable_v1`` and the ``v1`` module of the public API."""
from npu_device.npu_device import enable_v1  # noqa: F401

from . import v1  # noqa: F401,E402
