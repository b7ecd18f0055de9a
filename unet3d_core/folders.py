"""Output files and folders that appear whole or not at all, and what a folder a user names looks like."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import List, Optional

import numpy as np

from unet3d_core.errors import ConfigError

RUN_FILE = "run.json"  # a run folder's record (unet3d_core.model.run_folder)
MANIFEST_NAME = "manifest.json"  # a preprocessed data set's index (unet3d_core.data.records)
FOLD_FOLDER = re.compile(r"^fold-(\d+)$")  # one fold's run inside a --fold all folder
NIFTI_SUFFIXES = (".nii.gz", ".nii")  # also the raw layouts' (unet3d_core.data.layouts)


def fold_folders(path: str) -> List[int]:
    """The numbers of ``path``'s ``fold-N`` sub-folders, sorted; [] when ``path`` is not a folder."""
    if not os.path.isdir(path):
        return []
    return sorted(int(match.group(1)) for match in map(FOLD_FOLDER.match, os.listdir(path))
                  if match and os.path.isdir(os.path.join(path, match.group(0))))


def cross_validation_folds(path: str) -> List[int]:
    """The fold numbers of ``path``'s ``fold-N`` sub-folders that are runs (hold a run.json), sorted; [] for a
    folder that is not a cross-validation folder (or is itself a run)."""
    if os.path.isfile(os.path.join(path, RUN_FILE)):
        return []
    return [fold for fold in fold_folders(path)
            if os.path.isfile(os.path.join(path, "fold-{}".format(fold), RUN_FILE))]


def _holds_nifti(path: str, depth: int = 3, folders_read: int = 200) -> bool:
    """Whether ``path`` holds a NIfTI file up to ``depth`` folders down (BraTS: DATA/HGG/CASE/file), reading
    at most ``folders_read`` folders."""
    top = path.rstrip(os.sep).count(os.sep)
    for root, folders, files in os.walk(path):
        if any(name.endswith(NIFTI_SUFFIXES) for name in files):
            return True
        folders_read -= 1
        if folders_read <= 0:
            return False
        if root.count(os.sep) - top >= depth:
            folders[:] = []
    return False


def folder_kind(path: str) -> str:
    """What ``path`` looks like: 'missing', 'file', 'run' (a run.json), 'cross-validation' (fold-N runs),
    'records' (a manifest.json), 'raw' (NIfTI volumes), 'empty' or 'other'."""
    if not os.path.exists(path):
        return "missing"
    if not os.path.isdir(path):
        return "file"
    if os.path.isfile(os.path.join(path, RUN_FILE)):
        return "run"
    if cross_validation_folds(path):
        return "cross-validation"
    if os.path.isfile(os.path.join(path, MANIFEST_NAME)):
        return "records"
    if _holds_nifti(path):
        return "raw"
    return "empty" if not os.listdir(path) else "other"


KIND_DESCRIPTIONS = {
    "run": "a unet3d run folder (it holds run.json)",
    "cross-validation": "a cross-validation folder (fold-N runs from --fold all)",
    "records": "a preprocessed data set (it holds manifest.json)",
    "raw": "raw NIfTI data (not preprocessed)",
    "empty": "an empty folder",
    "other": "neither a run, a data set nor raw NIfTI data",
}


@contextlib.contextmanager
def published_folder(output_dir: str, prefix: str):
    """Yield a hidden staging folder beside ``output_dir``; on success it becomes ``output_dir`` in one
    rename (``output_dir`` may exist only as an empty folder, which the caller checks), on any error it is
    removed."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp's 0700 is too strict for a shared folder
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_text_file(path: str, *, newline: Optional[str] = None, suffix: str = ".partial",
                     mode: Optional[int] = None):
    """Yield a text handle on ``path + suffix``; when the block ends without an error that file is closed,
    given the permission bits ``mode`` (if any) and renamed over ``path`` in one step, so a reader never
    sees half a file. On an error ``path`` is left as it was and the temporary file removed. ``newline`` is
    :func:`open`'s."""
    temporary = path + suffix
    try:
        with open(temporary, "w", newline=newline) as handle:
            yield handle
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_json_atomic(path: str, content, *, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``content`` as JSON to ``path`` whole or not at all (:func:`atomic_text_file`)."""
    with atomic_text_file(path) as handle:
        json.dump(content, handle, indent=indent, sort_keys=sort_keys)


SHARED_FOLDER_PROBE = ".unet3d-shared-folder-check"


def check_shared_folder(strategy, folder: str) -> None:
    """Fail at once, on every rank, when some rank does not see the run folder the chief writes.

    Ranks on other servers restore checkpoints from ``folder`` (evaluation, resume); without a shared folder
    they would fail while the chief waits in a collective until HCCL's or Gloo's timeout (30 minutes on an
    Atlas 910). The chief writes a random token into ``folder``; two sums over the ranks tell every rank the
    token and which ranks read it back. Nothing to do for one process.

    Raises:
        ConfigError: the ranks that do not see it, on every rank.
    """
    if strategy.size <= 1:
        return
    probe = os.path.join(folder, SHARED_FOLDER_PROBE)
    token = 0
    if strategy.is_chief:
        token = int.from_bytes(os.urandom(3), "little") | 1  # exact in float32, which HCCL reduces, and not 0
        os.makedirs(folder, exist_ok=True)
        with atomic_text_file(probe) as handle:
            handle.write(str(token))
    token = int(strategy.allreduce_sum(np.array([token], np.float64))[0])
    try:
        with open(probe) as handle:
            seen = handle.read().strip() == str(token)
    except OSError:
        seen = False
    missing = np.zeros([strategy.size], np.float64)
    missing[strategy.rank] = 0.0 if seen else 1.0
    missing = strategy.allreduce_sum(missing)
    if strategy.is_chief:
        with contextlib.suppress(OSError):
            os.remove(probe)
    blind = [rank for rank, flag in enumerate(missing) if flag > 0.5]
    if blind:
        raise ConfigError("--model_dir {}: rank(s) {} of {} do not see the folder rank 0 writes (another server "
                          "without a shared file system?); every rank restores checkpoints from it, so put it on "
                          "storage all servers mount at the same path".format(
                              folder, ", ".join(map(str, blind)), strategy.size))
