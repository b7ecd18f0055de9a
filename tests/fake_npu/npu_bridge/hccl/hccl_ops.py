"""Fake hccl_ops (tf_adapter/python/npu_bridge/hccl/hccl_ops.py): allreduce and broadcast between the ranks of
one job, through files.

Signatures are the real ones (hccl_ops.py:31, 70); the op registrations' rules (tf_adapter/ops/hccl/
hccl_ops.cc:19-26 HcomAllReduce, 92-99 HcomBroadcast) are checked when the op is built. At run time a
collective needs HCCL started (GE starts it with the rank table: ge_plugin.cc:378-401, see ge_plugin.py).
Each call is identified by the op's name and how many times this process has run it, so every rank meets the
same partner call. A rank that never arrives makes the others fail after ``$FAKE_HCCL_WAIT_SECONDS`` (the
fake's own knob, for tests) or else HCCL's execution timeout (HCCL_EXEC_TIMEOUT as HCCL applies it, default
1836 s).
"""
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from hccl.manage import _hcomm
from hccl.manage.api import check_group

from npu_bridge import record

_runs = {}
_REDUCTIONS = {"min": np.min, "max": np.max, "prod": np.prod, "sum": np.sum}  # hccl_ops.cc:23
_ALLREDUCE_TYPES = (tf.int8, tf.int16, tf.int32, tf.int64, tf.float16, tf.float32, tf.bfloat16)  # hccl_ops.cc:22


def _folder():
    folder = os.environ.get("FAKE_HCCL_DIR") or os.path.join(
        tempfile.gettempdir(), "fake-hccl-{}".format(os.environ.get("JOB_ID", "nojob")))
    os.makedirs(folder, exist_ok=True)
    return folder


def _wait_seconds():
    if os.environ.get("FAKE_HCCL_WAIT_SECONDS"):
        return float(os.environ["FAKE_HCCL_WAIT_SECONDS"])
    return float(_hcomm.state["exec_timeout"])


def _exchange(key, value):
    """Every rank's value of this call, in rank order."""
    if not _hcomm.state["started"]:
        raise RuntimeError("{}: HCCL is not started in this process: GE starts it only with a rank table "
                           "(RANK_TABLE_FILE, RANK_SIZE > 0; tf_adapter/util/ge_plugin.cc:378-401)".format(key))
    size, rank = _hcomm.state["size"], _hcomm.state["rank"]
    count = _runs.get(key, 0)
    _runs[key] = count + 1
    if size == 1:
        return [value]
    stem = os.path.join(_folder(), "{}.{}".format(key.replace("/", "_"), count))
    temporary = "{}.rank{}.tmp.npy".format(stem, rank)
    np.save(temporary, value)
    os.replace(temporary, "{}.rank{}.npy".format(stem, rank))
    deadline = time.time() + _wait_seconds()
    paths = ["{}.rank{}.npy".format(stem, other) for other in range(size)]
    while not all(os.path.exists(path) for path in paths):
        if time.time() > deadline:
            raise RuntimeError("HCCL timeout: not every rank reached {}".format(key))
        time.sleep(0.002)
    return [np.load(path) for path in paths]


def _checked(tensor, reduction, group):
    """The op registration's rules for one HcomAllReduce input; the tensor."""
    if reduction not in _REDUCTIONS:
        raise ValueError("Attr 'reduction' of 'HcomAllReduce' Op passed string '{}' not in: \"min\", \"max\", "
                         "\"prod\", \"sum\". (tf_adapter/ops/hccl/hccl_ops.cc:23)".format(reduction))
    check_group(group)
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype.base_dtype not in _ALLREDUCE_TYPES:
        raise TypeError("Value passed to parameter 'input' has DataType {} not in list of allowed values: int8, "
                        "int16, int32, int64, float16, float32, bfloat16 (tf_adapter/ops/hccl/hccl_ops.cc:22)"
                        .format(tensor.dtype.name))
    return tensor


def _allreduce_op(tensor, reduction, after=()):
    """One HcomAllReduce as a blocking py_func; ``after`` are tensors it takes as extra, unread inputs."""
    key = tf.compat.v1.get_default_graph().unique_name("HcomAllReduce", mark_as_used=True)

    def reduce(value, *_):
        values = _exchange(key, value)
        return _REDUCTIONS[reduction](np.stack(values), axis=0).astype(value.dtype)

    result = tf.compat.v1.py_func(reduce, [tensor] + list(after), tensor.dtype, stateful=True, name=key)
    result.set_shape(tensor.shape)
    return result


def allreduce(tensor, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
    """hccl_ops.py:31: HcomAllReduce of one tensor (a list is packed into one, as convert_to_tensor does)."""
    tensor = _checked(tensor, reduction, group)
    record("allreduce", reduction=reduction, fusion=fusion, fusion_id=fusion_id, group=group)
    return _allreduce_op(tensor, reduction)


def allreduce_in_order(tensors, reduction, fusion=1, fusion_id=-1, group="hccl_world_group"):
    """The fake's own: :func:`allreduce` of each tensor, run one after the other in list order on every rank.

    Not an adapter API. On the device GE runs a graph's collectives in one order that is the same on every
    rank. Here each collective blocks a host thread until every rank has reached it, so collectives that are
    independent in the graph could start in a different order on each rank and wait on each other forever.
    Each one therefore takes the previous result as an extra input it never reads: a data edge, which
    TensorFlow's graph optimisers keep (they dropped a control-dependency chain and let the ranks diverge).
    """
    results, previous = [], []
    for tensor in tensors:
        tensor = _checked(tensor, reduction, group)
        record("allreduce", reduction=reduction, fusion=fusion, fusion_id=fusion_id, group=group)
        result = _allreduce_op(tensor, reduction, after=previous)
        previous = [result]
        results.append(result)
    return results


def broadcast(tensor, root_rank, fusion=2, fusion_id=0, group="hccl_world_group"):
    """hccl_ops.py:70: HcomBroadcast of a list of tensors; fusion 0 or 2 (hccl_ops.py:66, broadcast.md)."""
    if fusion not in (0, 2):
        raise ValueError("broadcast fusion must be 0 (no fusion) or 2 (fuse by fusion_id), got {} "
                         "(tf_adapter/python/npu_bridge/hccl/hccl_ops.py:66)".format(fusion))
    check_group(group)
    tensors = [tf.convert_to_tensor(t) for t in tensor]
    record("broadcast", count=len(tensor), root_rank=root_rank, fusion=fusion, group=group,
           dtypes=sorted({t.dtype.base_dtype.name for t in tensors}))
    key = tf.compat.v1.get_default_graph().unique_name("HcomBroadcast", mark_as_used=True)

    def send(*values):
        return [_exchange("{}-{}".format(key, index), value)[root_rank].astype(value.dtype)
                for index, value in enumerate(values)]

    results = tf.compat.v1.py_func(send, tensors, [t.dtype for t in tensors], stateful=True, name=key)
    for result, original in zip(results, tensors):
        result.set_shape(original.shape)
    return results
