"""Output folders that appear whole or not at all."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


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
