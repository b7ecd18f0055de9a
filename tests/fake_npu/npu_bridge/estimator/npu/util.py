"""Fake util.set_iteration_per_loop with the real argument checks."""
import tensorflow as tf

from npu_bridge import record


def set_iteration_per_loop(sess, train_op, iterations_per_loop=1):
    record("set_iteration_per_loop", iterations_per_loop=iterations_per_loop)
    if not isinstance(train_op, tf.Operation):
        raise ValueError("The incoming 'train_op' type is '{}', and the need type is 'Operation'".format(
            type(train_op).__name__))
    if not isinstance(iterations_per_loop, int) or iterations_per_loop < 1:
        raise ValueError("iterations_per_loop must be a positive integer")
    if sess.graph.finalized:
        raise RuntimeError("set_iteration_per_loop changes the graph; it cannot be used on a finalized graph")
    if iterations_per_loop == 1:
        return train_op
    with sess.graph.as_default():
        return tf.group(train_op, name="IterationOp")
