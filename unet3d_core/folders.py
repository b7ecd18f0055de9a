"""Output files and folders that appear whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Optional


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
