"""Helpers for multi-process training that do not depend on how the processes talk.

The strategy interface itself is :class:`unet3d_core.types.DistributedStrategy`;
a backend brings the communication library (the cpu and gpu backends share
backends/horovod.py, the npu backend has its own). This module keeps what the
core and any backend's launcher need whatever that library is.
"""
from __future__ import annotations

import math
import signal


def steps_per_worker(max_steps: int, workers: int) -> int:
    """The seed's rule: ``--max_steps`` is shared out over the workers (16,000 / 8 = 2,000 each)."""
    return int(math.ceil(max_steps / float(workers)))


def die_with_parent() -> None:
    """``preexec_fn`` for launched workers: SIGTERM them if the launcher dies (Linux), so no rank
    trains on alone and every rank gets the chance to stop at a step boundary."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
