"""Fake npu_bridge.estimator.npu.util, following tf_adapter/python/npu_bridge/estimator/npu/util.py."""
import os

import tensorflow as tf

from npu_bridge import record

tf1 = tf.compat.v1

# util.py:35-39
_NPU_RUNCONFIG = "npu_runconfig"
_ITERATIONS_PER_LOOP_VAR = "iterations_per_loop"
_LOOP_COND_VAR = "loop_cond"
_CONST_ZERO = "zero"
_CONST_ONE = "one"


def check_not_none(value, name):
    """util.py:42-46."""
    if value is None:
        raise ValueError("{} must not be None".format(name))


def check_positive_integer(value, name):
    """util.py:49-56: six.integer_types (a bool passes), then > 0."""
    if not isinstance(value, int):
        raise TypeError("{} must be int, got {}".format(name, type(value)))
    if value <= 0:
        raise ValueError("{} must be positive, got {}".format(name, value))


def create_or_get_var(var_name):
    """util.py:168-189: the npu_runconfig/<var_name> variable of the default graph, created once."""
    graph = tf1.get_default_graph()
    collection = "{}_{}".format(_NPU_RUNCONFIG, var_name)
    existing = graph.get_collection(collection)
    if len(existing) == 1:
        return existing[0]
    if len(existing) > 1:
        raise RuntimeError("Multiple var in collection.")
    global_step = tf1.train.get_global_step()
    with tf1.colocate_with(global_step, ignore_existing=global_step is None):
        with tf1.variable_scope(_NPU_RUNCONFIG, reuse=tf1.AUTO_REUSE):
            return tf1.get_variable(var_name, initializer=tf1.zeros_initializer(), shape=[], dtype=tf.int64,
                                    trainable=False, collections=[collection, tf1.GraphKeys.LOCAL_VARIABLES],
                                    use_resource=True)


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    """util.py:192-226. The op it returns is the one the device loop looks for (geop_npu.cc:1545-1548: a node
    named exactly "IterationOp"; a second call in one graph makes "IterationOp_1", which no loop finds)."""
    record("set_iteration_per_loop", iterations_per_loop=iterations_per_loop)
    if not isinstance(train_op, tf.Operation):
        raise ValueError("The incoming 'train_op' type is '%s', and the need type is 'Operation'"
                         % (train_op.dtype.name))
    check_positive_integer(iterations_per_loop, "iterations_per_loop")
    if iterations_per_loop == 1:
        return train_op
    iterations_per_loop_var = create_or_get_var(_ITERATIONS_PER_LOOP_VAR)
    loop_cond_var = create_or_get_var(_LOOP_COND_VAR)
    const_zero = create_or_get_var(_CONST_ZERO)
    const_one = create_or_get_var(_CONST_ONE)
    iterations_per_loop_var.load(iterations_per_loop - 1, session=sess)
    loop_cond_var.load(0, session=sess)
    const_zero.load(0, session=sess)
    const_one.load(1, session=sess)
    return tf.group(train_op, name="IterationOp")


def get_ranksize():
    """util.py:229-233: RANK_SIZE, else CM_WORKER_SIZE, else '1', as a string; not both."""
    if os.getenv("CM_WORKER_SIZE") is not None and os.getenv("RANK_SIZE") is not None:
        raise ValueError("RANK_SIZE and CM_WORK_SIZE cannot be configured at the same time")
    return os.getenv("RANK_SIZE") if os.getenv("RANK_SIZE") is not None else os.getenv("CM_WORKER_SIZE", "1")


class IterationPerLoop(object):
    """util.py:236-286: the two-step form of set_iteration_per_loop."""

    def __init__(self):
        self._const_one = None
        self._const_zero = None
        self._loop_cond_var = None
        self._iterations_per_loop_var = None

    def create_iteration_per_loop_var(self, train_op):
        if not isinstance(train_op, tf.Operation):
            raise ValueError("The incoming 'train_op' type is '%s', and the need type is 'Operation'"
                             % (train_op.dtype.name))
        self._iterations_per_loop_var = create_or_get_var(_ITERATIONS_PER_LOOP_VAR)
        self._loop_cond_var = create_or_get_var(_LOOP_COND_VAR)
        self._const_zero = create_or_get_var(_CONST_ZERO)
        self._const_one = create_or_get_var(_CONST_ONE)
        return tf.group(train_op, name="IterationOp")

    def load_iteration_per_loop_var(self, sess, iterations_per_loop=1):
        check_positive_integer(iterations_per_loop, "iterations_per_loop")
        self._iterations_per_loop_var.load(iterations_per_loop - 1, session=sess)
        self._loop_cond_var.load(0, session=sess)
        self._const_zero.load(0, session=sess)
        self._const_one.load(1, session=sess)
