"""Make the fake CANN adapter in tests/fake_npu importable for a while, then take every trace of it away.

A test that imports the fake ``npu_bridge`` in-process leaves it in ``sys.modules``; after that
``importlib.util.find_spec("npu_bridge")`` answers from ``sys.modules`` even without the folder on
``sys.path``, so every later test sees "an adapter is installed". :func:`fake_npu_importable`
takes the folder off ``sys.path`` again and removes each module the fake brought (``npu_bridge*``, ``hccl*`` and any
other module loaded from the folder); modules of those names that were loaded before (a real
adapter) are put back.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_npu")


def _packages_in(folder):
    return {name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name, "__init__.py"))}


# The fake's top-level packages: npu_bridge and hccl.
TOP_LEVEL = tuple(sorted(_packages_in(FAKE)))


def under_fake(path) -> bool:
    """Whether ``path`` (a module's ``__file__``, a spec's ``origin``) lies in tests/fake_npu."""
    return bool(path) and os.path.realpath(path).startswith(os.path.realpath(FAKE) + os.sep)


def loaded_from_fake():
    """Names in ``sys.modules`` of modules loaded from tests/fake_npu: empty unless the fake leaked."""
    return sorted(name for name, module in list(sys.modules.items()) if under_fake(getattr(module, "__file__", None)))


def _drop(names):
    for name in names:
        sys.modules.pop(name, None)


@contextlib.contextmanager
def fake_npu_importable(folders=None):
    """The fake adapter imports from ``folders`` (default: tests/fake_npu, whose path the block gets) inside the
    block, and as before after it; ``[]``: no adapter importable inside. Modules of the fakes' packages
    (those of tests/fake_npu and of ``folders``) are dropped on the way in and out."""
    folders = [FAKE] if folders is None else list(folders)
    packages = set(TOP_LEVEL).union(*(_packages_in(folder) for folder in folders))
    already_on_path = {folder: sys.path.count(folder) for folder in folders}
    saved_modules = {name: sys.modules[name] for name in _modules_of(packages)}
    _drop(saved_modules)  # each use imports the fake afresh (its call log empty)
    sys.path[:0] = folders
    importlib.invalidate_caches()
    try:
        yield folders[0] if folders else None
    finally:
        for folder in folders:
            while sys.path.count(folder) > already_on_path[folder]:  # only the entry put there (others' stay)
                sys.path.remove(folder)
            sys.path_importer_cache.pop(folder, None)
        _drop(_modules_of(packages))
        sys.modules.update(saved_modules)
        importlib.invalidate_caches()


def _modules_of(packages):
    """Names in ``sys.modules`` loaded from tests/fake_npu or in one of ``packages``."""
    return sorted(set(loaded_from_fake()) | {name for name in list(sys.modules) if name.split(".")[0] in packages})


def adapter_fake() -> str:
    """The fake adapter folder for this TensorFlow: tests/fake_npu (``npu_bridge``, TF Adapter 1.x), or under
    TensorFlow 2.6 (what TF Adapter 2.x is built for) the ``npu_device`` fake built from it
    (tests/fake_npu_tf2/build.py). Either holds ``hccl`` and ``bin`` (npu-smi, hccn_tool) too."""
    import tensorflow as tf

    if not tf.__version__.startswith("2.6."):
        return FAKE
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_npu_tf2_build", os.path.join(
        os.path.dirname(FAKE), "fake_npu_tf2", "build.py"))
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return builder.build()
