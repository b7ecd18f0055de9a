"""NPU backend: Huawei Ascend through CANN's TensorFlow adapter (``npu_bridge``).

Available when ``npu_bridge`` is importable (it ships with CANN, not PyPI).
"""
from __future__ import annotations

import importlib.util

from unet3d_core import BackendInfo, hookimpl
from unet3d_core.errors import BackendError

INSTALL_HINT = "npu_bridge not importable — install CANN's TensorFlow adapter and source its set_env.sh"


def _adapter_present() -> bool:
    try:
        return importlib.util.find_spec("npu_bridge") is not None
    except (ImportError, ValueError):
        return False


@hookimpl
def unet3d_backend_info():
    available = _adapter_present()
    return BackendInfo(name="npu", summary="Huawei Ascend NPU (CANN TensorFlow adapter)", available=available,
                       reason="" if available else INSTALL_HINT)


@hookimpl
def unet3d_prepare_environment(options):
    if not _adapter_present():
        raise BackendError("npu backend: " + INSTALL_HINT)
