"""Fake of CANN's npu_bridge for unet3d's tests (see tests/fake_npu/README.md)."""
import json
import os

calls = []


def record(name, **arguments):
    """Remember a call of the fake API (and append it to $FAKE_NPU_CALLS)."""
    entry = {"call": name, "pid": os.getpid(), "rank": os.environ.get("RANK_ID"), "args": arguments}
    calls.append(entry)
    path = os.environ.get("FAKE_NPU_CALLS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
