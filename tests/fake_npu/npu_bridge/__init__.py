"""Fake of CANN's npu_bridge for unet3d's tests (see tests/fake_npu/README.md).

``import npu_bridge`` loads the adapter, as the real package does (tf_adapter/python/npu_bridge/__init__.py:13-22:
helper.helper loads _tf_adapter.so, then npu_estimator, hccl_ops and npu_plugin, and atexit runs npu_close):
the fake's session hooks go in, and ``{"call": "adapter_loaded"}`` is logged (with ``host_sessions`` when
sessions existed already) in ``load_log`` and $FAKE_NPU_CALLS. ``calls``, ``load_log``, ``record`` and
``record_load`` are the fake's own: its call log (``calls`` starts empty at each import).
"""
import atexit
import json
import os

calls = []     # the calls of the fake's API since this import
load_log = []  # what this import itself did: adapter_loaded, host_sessions


def _write(entry):
    path = os.environ.get("FAKE_NPU_CALLS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")


def _entry(name, arguments):
    entry = dict(arguments)
    entry.update(call=name, pid=os.getpid(), rank=os.environ.get("RANK_ID"), args=arguments)
    return entry


def record(name, **arguments):
    """Remember a call of the fake API (and append it to $FAKE_NPU_CALLS, one JSON object a line).

    An entry is ``{"call": name, "pid": ..., "rank": $RANK_ID, "args": {...}}``; the arguments are also
    repeated at its top level, so ``entry["session"]`` and ``entry["args"]["session"]`` are the same.
    """
    entry = _entry(name, arguments)
    calls.append(entry)
    _write(entry)


def record_load(name, **arguments):
    """Like :func:`record`, for what the import itself does: kept in ``load_log``, so ``calls`` starts empty."""
    entry = _entry(name, arguments)
    load_log.append(entry)
    _write(entry)


# isort: off
# The real package's order (__init__.py:14-19): the library first, then hccl_ops and npu_plugin.
from npu_bridge.helper.helper import npu_bridge_handle  # noqa: E402,F401  (loads the adapter)
from npu_bridge.helper.helper import version as __version__  # noqa: E402,F401
from npu_bridge.helper import helper  # noqa: E402,F401
from npu_bridge.hccl import hccl_ops  # noqa: E402,F401
from npu_bridge.estimator.npu.npu_plugin import npu_close  # noqa: E402
# isort: on

atexit.register(npu_close)
