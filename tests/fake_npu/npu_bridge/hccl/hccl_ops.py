"""Fake hccl_ops: allreduce and broadcast between the processes of one job, through files.

Each collective call is identified by the op's name and how many times this
process has run it, so every rank meets the same partner call. A rank that
never arrives makes the others fail after HCCL_CONNECT_TIMEOUT seconds
(default 120), like HCCL's own time-out.
"""
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from npu_bridge import record

_runs = {}
_REDUCTIONS = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}


def _folder():
    folder = os.environ.get("FAKE_HCCL_DIR") or os.path.join(
        tempfile.gettempdir(), "fake-hccl-{}".format(os.environ.get("JOB_ID", "nojob")))
    os.makedirs(folder, exist_ok=True)
    return folder


def _exchange(key, value):
    """Every rank's value of this call, in rank order."""
    size = int(os.environ.get("RANK_SIZE", "1"))
    if size == 1:
        return [value]
    count = _runs.get(key, 0)
    _runs[key] = count + 1
    rank = int(os.environ.get("RANK_ID", "0"))
    stem = os.path.join(_folder(), "{}.{}".format(key.replace("/", "_"), count))
    temporary = "{}.rank{}.tmp.npy".format(stem, rank)
    np.save(temporary, value)
    os.replace(temporary, "{}.rank{}.npy".format(stem, rank))
    deadline = time.time() + float(os.environ.get("HCCL_CONNECT_TIMEOUT", "120"))
    paths = ["{}.rank{}.npy".format(stem, other) for other in range(size)]
    while not all(os.path.exists(path) for path in paths):
        if time.time() > deadline:
            raise RuntimeError("HCCL timeout: not every rank reached {}".format(key))
        time.sleep(0.002)
    return [np.load(path) for path in paths]


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
    if reduction not in _REDUCTIONS:
        raise ValueError("reduction must be one of {}".format(sorted(_REDUCTIONS)))
    record("allreduce", reduction=reduction, fusion=fusion, fusion_id=fusion_id, group=group)
    tensor = tf.convert_to_tensor(tensor)
    key = tf.compat.v1.get_default_graph().unique_name("HcomAllReduce", mark_as_used=True)

    def reduce(value):
        values = _exchange(key, value)
        return _REDUCTIONS[reduction](np.stack(values), axis=0).astype(value.dtype)

    result = tf.compat.v1.py_func(reduce, [tensor], tensor.dtype, stateful=True, name=key)
    result.set_shape(tensor.shape)
    return result


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
    record("broadcast", count=len(tensor), root_rank=root_rank, fusion=fusion, group=group)
    tensors = [tf.convert_to_tensor(t) for t in tensor]
    key = tf.compat.v1.get_default_graph().unique_name("HcomBroadcast", mark_as_used=True)

    def send(*values):
        return [_exchange("{}-{}".format(key, index), value)[root_rank].astype(value.dtype)
                for index, value in enumerate(values)]

    results = tf.compat.v1.py_func(send, tensors, [t.dtype for t in tensors], stateful=True, name=key)
    for result, original in zip(results, tensors):
        result.set_shape(original.shape)
    return results
