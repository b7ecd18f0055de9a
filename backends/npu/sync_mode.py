"""The sync_mode workaround of affected CANN versions, applied safely instead of by ``sed``.

On those versions ``te/platform/cce_build.py`` in the Python installation
must say ``sync_mode=0`` where it ships ``sync_mode=2``. :func:`patch`
makes that one change, keeps the original beside it
(``cce_build.py.unet3d-orig``), is idempotent, and holds a file lock so
that eight ranks starting together patch once. :func:`unpatch` restores the
original (``python cli.py npu unpatch``).
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import sys
from contextlib import contextmanager
from typing import Iterable, Optional

from unet3d_core.errors import BackendError

RELATIVE_PATH = os.path.join("te", "platform", "cce_build.py")
BACKUP_SUFFIX = ".unet3d-orig"
_AFFECTED = re.compile(r"sync_mode\s*=\s*2\b")


def find_cce_build(search_paths: Optional[Iterable[str]] = None) -> Optional[str]:
    """Path of ``te/platform/cce_build.py`` in the active installation, or None."""
    if search_paths is None:
        try:
            spec = importlib.util.find_spec("te")  # locates the package without importing it
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidate = os.path.join(os.path.dirname(location), RELATIVE_PATH)
                if os.path.isfile(candidate):
                    return candidate
        search_paths = sys.path
    for folder in search_paths:
        candidate = os.path.join(folder or ".", RELATIVE_PATH)
        if os.path.isfile(candidate):
            return candidate
    return None


@contextmanager
def _locked(path: str):
    lock_path = path + ".unet3d-lock"
    try:
        handle = open(lock_path, "a")
    except OSError as error:
        raise BackendError("sync_mode patch: cannot write next to {} ({}); run once as the installation's "
                           "owner, or pass --no_sync_mode_patch".format(path, error.strerror)) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def patch(path: str) -> str:
    """Replace ``sync_mode=2`` with ``sync_mode=0`` in ``path`` once.

    Returns:
        "patched" (changed now), "already patched" (an earlier run did it) or
        "not affected" (nothing to change).
    Raises:
        BackendError: the file or its folder is not writable.
    """
    with _locked(path):
        with open(path) as handle:
            source = handle.read()
        if not _AFFECTED.search(source):
            return "already patched" if os.path.exists(path + BACKUP_SUFFIX) else "not affected"
        if not os.access(path, os.W_OK):
            raise BackendError("sync_mode patch: {} is not writable; run once as its owner, or pass "
                               "--no_sync_mode_patch".format(path))
        backup = path + BACKUP_SUFFIX
        if not os.path.exists(backup):
            _write_atomically(backup, source)
        _write_atomically(path, _AFFECTED.sub("sync_mode=0", source))
    return "patched"


def unpatch(path: str) -> str:
    """Restore the original kept by :func:`patch`. Returns "restored" or "no backup"."""
    backup = path + BACKUP_SUFFIX
    with _locked(path):
        if not os.path.exists(backup):
            return "no backup"
        with open(backup) as handle:
            original = handle.read()
        _write_atomically(path, original)
        os.remove(backup)
    return "restored"


def _write_atomically(path: str, content: str) -> None:
    temporary = path + ".unet3d-partial"
    try:
        with open(temporary, "w") as handle:
            handle.write(content)
        if os.path.exists(path):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        os.replace(temporary, path)
    except OSError as error:
        raise BackendError("sync_mode patch: cannot write {} ({})".format(path, error.strerror)) from None
