"""unet3d core: the device-agnostic 3D U-Net trainer and its plugin interface.

Writing a backend (the quick start)
-----------------------------------
A backend is a Python module registered under the ``unet3d.backends``
entry-point group, e.g. in its ``setup.py``::

    entry_points={"unet3d.backends": ["mychip = mychip_unet3d.plugin"]}

The module implements hooks from :mod:`unet3d_core.hookspecs`, decorated with
:data:`hookimpl`::

    from unet3d_core import hookimpl, BackendInfo

    @hookimpl
    def unet3d_backend_info():
        return BackendInfo(name="mychip", summary="My accelerator", available=True)

    @hookimpl
    def unet3d_session_config(config, options):
        config.intra_op_parallelism_threads = 4
        return config

Each hook's ``options`` is what ``unet3d_backend_options`` returned: by default a frozen
:class:`BackendOptions` holding the backend's own flags (``options.my_flag``) and the core's
resolved :class:`CoreSettings` (``options.core.model_dir``); never the parsed command line.

Only ``unet3d_backend_info`` is required; every other hook has a core default.
Then ``python cli.py train --backend mychip`` uses it. A backend with faster
layers for its device returns a subclass of :class:`unet3d_core.layers.LayerOps`
from ``unet3d_layer_ops`` (the cpu backend's tuned sets are examples); the
default is the textbook ops.
"""
import pluggy

from unet3d_core.types import (
                              BackendInfo,
                              BackendOptions,
                              CoreSettings,
                              DistributedStrategy,
                              StepRunner,
                              WrappedOptimizer,
)

__version__ = "0.1.0"

PROJECT_NAME = "unet3d"
ENTRY_POINT_GROUP = "unet3d.backends"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["hookimpl", "BackendInfo", "BackendOptions", "CoreSettings",
           "DistributedStrategy", "StepRunner", "WrappedOptimizer", "PROJECT_NAME",
           "ENTRY_POINT_GROUP", "__version__"]
