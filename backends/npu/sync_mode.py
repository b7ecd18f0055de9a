"""The sync_mode workaround of early CANN releases, applied safely instead of by ``sed``.

Only early CANN releases need it: their ``te/platform/cce_build.py`` ships
``sync_mode=2`` where training needs ``sync_mode=0``; later ones (CANN 5 on)
no longer contain that text, and then :func:`patch` only reads the file.
When the text is there, :func:`patch` makes that one change, keeps the
original beside it (``cce_build.py.unet3d-orig``) and, while writing, holds a
file lock (removed afterwards) so that eight ranks starting together patch
once. A read-only installation that needs the patch is a one-line error
giving the command to run as root. :func:`unpatch` restores the original
(``python cli.py npu unpatch``).
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shlex
import sys
from contextlib import contextmanager
from typing import Iterable, Optional

from unet3d_core.errors import BackendError
from unet3d_core.folders import atomic_text_file

RELATIVE_PATH = os.path.join("te", "platform", "cce_build.py")
BACKUP_SUFFIX = ".unet3d-orig"
LOCK_SUFFIX = ".unet3d-lock"
_AFFECTED = re.compile(r"sync_mode\s*=\s*2\b")
_PATCHED = re.compile(r"sync_mode\s*=\s*0\b")
# What patch() found, as reported to the user.
PATCHED = "needs the patch: patched (backup at {})"
ALREADY_PATCHED = "already patched (sync_mode=0 present)"
NOT_AFFECTED = "not affected (this CANN has no sync_mode=2 in cce_build.py)"
NOT_FOUND = "no cce_build.py found"
RESTORED = "restored"
NO_BACKUP = "no backup"
# cli.py sits beside the backends package, in a source tree and once installed.
_CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "cli.py")


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


def _read(path: str) -> Optional[str]:
    """The file's text, or None when there is no such file."""
    try:
        with open(path) as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise BackendError("sync_mode patch: cannot read {} ({})".format(path, error.strerror)) from None


def _verdict(source: str) -> Optional[str]:
    """What to report for this text of cce_build.py, or None when it needs the patch."""
    if _AFFECTED.search(source):
        return None
    return ALREADY_PATCHED if _PATCHED.search(source) else NOT_AFFECTED


def _require_writable(path: str, tool: str, reason: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if os.access(folder, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK)):
        return
    command = "sudo {} {} npu {} --path {}".format(shlex.quote(sys.executable), shlex.quote(_CLI), tool,
                                                     shlex.quote(path))
    skip = " (or pass --no_sync_mode_patch to skip it)" if tool == "patch" else ""
    raise BackendError("sync_mode {}: {} is not writable; {}: run once as root: {}{}".format(
        tool, path, reason, command, skip))


@contextmanager
def _locked(path: str):
    """Hold ``<path>.unet3d-lock`` while writing; the file is removed again afterwards."""
    lock_path = path + LOCK_SUFFIX
    while True:
        try:
            handle = open(lock_path, "a")
        except OSError as error:
            raise BackendError("sync_mode patch: cannot create {} ({})".format(lock_path, error.strerror)) from None
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            current = os.path.samestat(os.fstat(handle.fileno()), os.stat(lock_path))
        except OSError:
            current = False
        if current:
            break
        # The previous holder removed this lock file on its way out: lock the new one.
        handle.close()
    try:
        yield
    finally:
        try:
            os.remove(lock_path)  # still locked: a process arriving now creates, and waits on, a new file
        except OSError:
            pass
        handle.close()


def inspect(path: Optional[str]) -> "tuple[bool, str]":
    """What :func:`patch` would find, without writing: (whether a run could go ahead, what was found)."""
    if path is None:
        return True, "no te/platform/cce_build.py in this installation, nothing to patch"
    source = _read(path)
    verdict = NOT_FOUND if source is None else _verdict(source)
    if verdict is not None:
        return True, "{}: {}".format(path, verdict)
    try:
        _require_writable(path, "patch", "this CANN needs the patch (its cce_build.py says sync_mode=2)")
    except BackendError as error:
        return False, str(error)
    return True, "{}: needs the patch (sync_mode=2); the first run applies it".format(path)


def patch(path: str) -> str:
    """Replace ``sync_mode=2`` with ``sync_mode=0`` in ``path``, if it says so; read-only otherwise.

    Returns:
        What was found: :data:`PATCHED` (with the backup's path), :data:`ALREADY_PATCHED`,
        :data:`NOT_AFFECTED` or :data:`NOT_FOUND`.
    Raises:
        BackendError: the file needs the patch but this user cannot write it (the
            message gives the command to run as root).
    """
    source = _read(path)
    if source is None:
        return NOT_FOUND
    verdict = _verdict(source)
    if verdict is not None:
        return verdict
    _require_writable(path, "patch", "this CANN needs the patch (its cce_build.py says sync_mode=2)")
    backup = path + BACKUP_SUFFIX
    with _locked(path):
        source = _read(path)  # another rank may have patched it while this one waited
        verdict = NOT_FOUND if source is None else _verdict(source)
        if verdict is not None:
            return verdict
        if not os.path.exists(backup):
            _write_atomically(backup, source)
        _write_atomically(path, _AFFECTED.sub("sync_mode=0", source))
    return PATCHED.format(backup)


def unpatch(path: str) -> str:
    """Restore the original kept by :func:`patch`. Returns :data:`RESTORED` or :data:`NO_BACKUP`."""
    backup = path + BACKUP_SUFFIX
    if not os.path.exists(backup):
        return NO_BACKUP
    _require_writable(path, "unpatch", "restoring the original needs write access")
    with _locked(path):
        original = _read(backup)
        if original is None:  # another process restored it meanwhile
            return NO_BACKUP
        _write_atomically(path, original)
        os.remove(backup)
    return RESTORED


def _write_atomically(path: str, content: str) -> None:
    try:
        mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else None
        with atomic_text_file(path, suffix=".unet3d-partial", mode=mode) as handle:
            handle.write(content)
    except OSError as error:
        raise BackendError("sync_mode patch: cannot write {} ({})".format(path, error.strerror)) from None
