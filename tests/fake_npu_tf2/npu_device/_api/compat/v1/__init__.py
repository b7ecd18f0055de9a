"""Fake npu_device._api.compat.v1 (tf_adapter_2.x/python/npu_device/_api/compat/v1/__init__.py)."""
from npu_device.compat.utils import SessionConfigBuilder  # noqa: F401
