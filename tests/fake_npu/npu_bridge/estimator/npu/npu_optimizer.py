"""Fake NPUDistributedOptimizer and the module's ``allreduce`` (npu_optimizer.py:39-83, 264-378).

With more than one rank (util.get_ranksize()), compute_gradients returns each gradient summed over the ranks
(hccl_ops.allreduce(grad, "sum"), fusion left at its default 1) and divided by the rank size, which
``NPUBasics("").size()`` gives (npu_common.py:126-220: from the job config file, else from $JOB_ID's job; with
neither, ``size()`` fails). With one rank the gradients are the wrapped optimizer's, unchanged.
"""
import os

import tensorflow as tf

from npu_bridge import record
from npu_bridge.estimator.npu import util
from npu_bridge.hccl import hccl_ops

tf1 = tf.compat.v1
_npu_basics = {}  # NPUBasics is a singleton: its job info is read once per process (npu_common.py:131-140)


class _JobInfo(object):
    def __init__(self, rank_size):
        self._rank_size = rank_size


def _rank_size():
    """NPUBasics("").size(): without a job config file, the job of $JOB_ID; no JOB_ID, no job info."""
    if "job_info" not in _npu_basics:
        if not os.getenv("JOB_ID", ""):
            _npu_basics["job_info"] = None  # logged "Error:can not get job config from env" (npu_common.py:187-189)
        else:
            size = util.get_ranksize()
            _npu_basics["job_info"] = _JobInfo(int(size) if size.isdigit() else 1)
    return _npu_basics["job_info"]._rank_size  # AttributeError on None, as the real size() raises


def allreduce(tensor, average=True):
    """npu_optimizer.py:39-83 for a dense tensor (IndexedSlices go through allgather there; not faked)."""
    if isinstance(tensor, tf.IndexedSlices):
        raise NotImplementedError("fake_npu: allreduce of IndexedSlices (two allgathers in the adapter) is not faked")
    size = _rank_size()
    summed = hccl_ops.allreduce(tensor, "sum")
    return tf.math.divide(summed, tf.cast(size, dtype=tensor.dtype)) if average else summed


class NPUDistributedOptimizer(tf1.train.Optimizer):
    def __init__(self, optimizer, is_weight_update_sharding=False, name=None):
        record("NPUDistributedOptimizer", optimizer=type(optimizer).__name__,
               is_weight_update_sharding=is_weight_update_sharding)
        if name is None:
            name = "Distributed{}".format(type(optimizer).__name__)
        self._optimizer = optimizer
        self._is_weight_update_sharding = is_weight_update_sharding
        super(NPUDistributedOptimizer, self).__init__(name=name, use_locking=False)

    def compute_gradients(self, *args, **kwargs):
        gradients = self._optimizer.compute_gradients(*args, **kwargs)
        rank_size = util.get_ranksize()
        if rank_size is None or int(rank_size) <= 1:
            return gradients
        if self._is_weight_update_sharding:
            raise NotImplementedError("fake_npu: weight update sharding is not faked")
        present = [(grad, var) for grad, var in gradients if grad is not None]
        if any(isinstance(grad, tf.IndexedSlices) for grad, _ in present):
            raise NotImplementedError("fake_npu: allreduce of IndexedSlices (two allgathers in the adapter) is "
                                      "not faked")
        size = _rank_size()
        with tf.name_scope(self._name + "_Allreduce"):
            # The fake's collectives meet through files: every rank runs them in one fixed order, or their
            # blocking calls could wait on each other (HCCL itself needs no such order; see allreduce_in_order).
            summed = iter(hccl_ops.allreduce_in_order([grad for grad, _ in present], "sum"))
            averaged = [(None, var) if grad is None else
                        (tf.math.divide(next(summed), tf.cast(size, dtype=grad.dtype)), var)
                        for grad, var in gradients]
        return averaged

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        rank_size = util.get_ranksize()
        if rank_size is None or int(rank_size) <= 1:
            return self._optimizer.apply_gradients(grads_and_vars, global_step, name)
        if self._is_weight_update_sharding:
            raise NotImplementedError("fake_npu: weight update sharding is not faked")
        return self._optimizer.apply_gradients(grads_and_vars, global_step, name)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self, *args, **kwargs):
        return self._optimizer.variables(*args, **kwargs)
