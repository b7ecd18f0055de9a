"""Fake npu_device._api (tf_adapter_2.x/python/npu_device/_api/__init__.py)."""
