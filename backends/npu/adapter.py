"""Which CANN TensorFlow adapter this process uses, and its session-run (TF 1 style) API.

* ``npu_bridge`` (TF Adapter 1.x, for TensorFlow 1.15): ``import npu_bridge.npu_init`` loads
  ``_tf_adapter.so`` (``npu_bridge/helper/helper.py``), which registers the adapter's graph passes.
* ``npu_device`` (TF Adapter 2.x, for TensorFlow 2.6.5): ``npu_device.compat.v1`` is the 1.x tree with
  rewritten imports (``tf_adapter_2.x/compat_v1/upgrade_tf1_compat_tf2.py``); importing it loads no
  library. ``enable_v1()`` (``npu_device/npu_device.py:123-128``) disables TF 2 behaviour and loads
  ``compat/v1/_tf_adapter.so``: without that call TensorFlow ignores the NpuOptimizer and runs on the
  host. Its loss-scale managers and ``NPULossScaleOptimizer`` are removed by that rewrite, so loss
  scaling uses TensorFlow's own ``MixedPrecisionLossScaleOptimizer``.

``enable_v1`` is reached as ``npu_device.npu_device.enable_v1``: after ``import
npu_device.compat.v1.npu_init`` the attribute ``npu_device.compat`` may name the namespace package
``npu_device/compat/`` (it has no ``__init__.py``) instead of ``_api.compat``, which holds ``enable_v1``.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import weakref
from dataclasses import dataclass
from typing import Optional

from unet3d_core.errors import BackendError

TF1_ADAPTER, TF2_ADAPTER = "npu_bridge", "npu_device"
# The one TensorFlow each adapter is built for: TF Adapter 1.x and 2.x (up to 9.2.0) support only TensorFlow
# 1.15 and 2.6.5 (CANN's TF Adapter release notes and install guide; ../shared/DESIGN.md section 11).
SUPPORTED_TENSORFLOW = {TF1_ADAPTER: "1.15", TF2_ADAPTER: "2.6"}
# Set to 1 to run an adapter under another TensorFlow (an adapter built for it; unet3d's tests run the fakes so).
ANY_TENSORFLOW = "UNET3D_NPU_ANY_TENSORFLOW"
INSTALL_GUIDE = "docs/npu.md, 'Installing on an Ascend host'"
INSTALL_HINT = ("neither npu_bridge nor npu_device importable — install CANN's TensorFlow adapter (1.x for "
                "TensorFlow 1.15, 2.x for TensorFlow 2.6.5) and source its set_env.sh")


@dataclass(frozen=True)
class Adapter:
    name: str  # TF1_ADAPTER or TF2_ADAPTER
    package: object  # npu_bridge, or npu_device.compat.v1
    npu_init: object  # its npu_init module: NPUDistributedOptimizer, npu_ops, hccl_ops, get_rank_id, ...
    util: object  # its estimator.npu.util: set_iteration_per_loop
    origin: str  # folder it was imported from

    @property
    def has_loss_scale_optimizer(self) -> bool:
        """Whether npu_init has NPULossScaleOptimizer and the loss-scale managers (1.x only)."""
        return hasattr(self.npu_init, "NPULossScaleOptimizer")

    def describe(self) -> str:
        version = getattr(self.package, "__version__", None)
        return "{}{} from {}".format(self.name if self.name == TF1_ADAPTER else "npu_device.compat.v1 (TF 2 adapter)",
                                     " " + version if version else "", self.origin)


# The npu_device.npu_device modules whose enable_v1 ran in this process (it loads the library: once).
_enabled = weakref.WeakSet()


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed() -> Optional[str]:
    """The adapter this process would use, without importing it: the one built for this TensorFlow."""
    present = [name for name in (TF1_ADAPTER, TF2_ADAPTER) if _importable(name)]
    if len(present) < 2:
        return present[0] if present else None
    import tensorflow as tf

    return TF2_ADAPTER if tf.__version__.startswith("2.") else TF1_ADAPTER


def check_tensorflow() -> None:
    """Refuse, in one line, a TensorFlow the installed adapter is not built for (before anything starts: a
    mismatched ``_tf_adapter.so`` fails to load with undefined symbols, or a source-built TensorFlow is
    missing).

    Raises:
        BackendError: TensorFlow is missing, or not the version the adapter supports (unless ANY_TENSORFLOW).
    """
    name = installed()
    if name is None:
        return
    wanted = SUPPORTED_TENSORFLOW[name]
    try:
        import tensorflow as tf
    except ImportError as error:
        raise BackendError("npu backend: TensorFlow is not importable ({}); install the TensorFlow {} that {} is "
                           "built for ({})".format(" ".join(str(error).split()), wanted, name, INSTALL_GUIDE)) from None
    version = tf.__version__
    if not (version == wanted or version.startswith(wanted + ".")) and os.environ.get(ANY_TENSORFLOW) != "1":
        raise BackendError("npu backend: TensorFlow {} with {}, which is built for TensorFlow {} only; install "
                           "TensorFlow {} ({}), or set {}=1 for an adapter built for {}".format(
                               version, name, wanted, wanted, INSTALL_GUIDE, ANY_TENSORFLOW, version))


def _failure(name: str, error: Exception) -> BackendError:
    import tensorflow as tf

    return BackendError("npu backend: importing {} failed ({}: {}); without it nothing would run on the NPU. "
                        "Source CANN's set_env.sh and use the adapter built for TensorFlow {}".format(
                            name, type(error).__name__, " ".join(str(error).split()), tf.__version__))


def load() -> Adapter:
    """Import the adapter so that sessions created from now on go through it (again: cheap, and idempotent).

    Raises:
        BackendError: no adapter, or its import failed (one line, with the reason).
    """
    name = installed()
    if name is None:
        raise BackendError("npu backend: " + INSTALL_HINT)
    module = "npu_bridge.npu_init" if name == TF1_ADAPTER else "npu_device.compat.v1.npu_init"
    try:
        if name == TF1_ADAPTER:
            npu_init = importlib.import_module("npu_bridge.npu_init")
            package = importlib.import_module("npu_bridge")
        else:
            importlib.import_module("npu_device")
            npu_init = importlib.import_module("npu_device.compat.v1.npu_init")
            package = importlib.import_module("npu_device.compat.v1")
            device = importlib.import_module("npu_device.npu_device")
            if device not in _enabled:
                device.enable_v1()
                _enabled.add(device)
        util = importlib.import_module(package.__name__ + ".estimator.npu.util")
    except Exception as error:  # the adapter prints why its library failed, then raises
        raise _failure(module, error) from None
    return Adapter(name, package, npu_init, util, os.path.dirname(os.path.abspath(package.__file__)))
