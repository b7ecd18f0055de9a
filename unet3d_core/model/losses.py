"""Segmentation losses: soft Dice over the foreground classes, cross-entropy, or both.

With ``--target regions`` (:func:`region_loss`) each output is one region's
sigmoid, as nnU-Net trains BraTS: soft Dice per region over the whole batch
(nnU-Net's "batch Dice": a crop without enhancing tumour does not get a Dice
of its own) plus the binary cross-entropy of every region, the regions
overlapping (WT holds TC holds ET).

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


def region_targets(labels, regions, num_classes: int):
    """float32 [batch, x, y, z, regions]: 1 where a voxel's label is in the region."""
    table = [[1.0 if label in labels_of_region else 0.0 for _, labels_of_region in regions]
             for label in range(num_classes)]
    return tf.gather(tf.constant(table, tf.float32), labels)


def region_loss(logits, labels, regions, num_classes: int, kind: str = "dice+ce"):
    """The ``--loss`` of one sigmoid per region.

    Args:
        logits: float [batch, x, y, z, regions].
        labels: int32 [batch, x, y, z] internal labels in [0, num_classes).
        regions: (name, internal labels) per output, as ModelConfig.regions.
    """
    logits = tf.cast(logits, tf.float32)
    targets = region_targets(labels, regions, num_classes)
    terms = []
    if kind in ("dice", "dice+ce"):
        probabilities = tf.sigmoid(logits)
        axes = [0, 1, 2, 3]  # batch Dice
        intersection = tf.reduce_sum(probabilities * targets, axis=axes)
        total = tf.reduce_sum(probabilities, axis=axes) + tf.reduce_sum(targets, axis=axes)
        terms.append(1.0 - tf.reduce_mean((2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)))
    if kind in ("ce", "dice+ce"):
        terms.append(tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)))
    if not terms:
        raise ValueError("unknown loss {!r}".format(kind))
    return tf.add_n(terms)
