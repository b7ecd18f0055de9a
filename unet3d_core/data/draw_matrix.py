"""The random draws of one nnunet-recipe training sample: the draw matrix's layout, its keys, and reading it.

Every random number of a sample comes from stateless generators keyed by
(seed, sample number), like the seed recipe's, so a resumed run continues the
exact sample sequence and thread scheduling changes nothing. One uniform
[DRAW_ROWS, channels] matrix per sample holds the draws of both the crop
(:mod:`unet3d_core.data.crop_sampling`) and the intensity steps
(:mod:`unet3d_core.data.intensity_transforms`), one ``ROW_*`` row per decision;
the noise field and the elastic control values have keys of their own.
"""
from __future__ import annotations

import tensorflow as tf

# Rows of the per-sample draw matrix (uniform in [0, 1)); columns: axes or channels.
(ROW_FOREGROUND_CLASS, ROW_FOREGROUND_VOXEL, ROW_UNIFORM_START, ROW_ROTATE, ROW_ANGLES, ROW_SCALE, ROW_SCALE_FACTOR,
 ROW_MIRROR, ROW_NOISE, ROW_NOISE_VARIANCE, ROW_BLUR, ROW_BLUR_CHANNELS, ROW_BLUR_SIGMA_X, ROW_BLUR_SIGMA_Y,
 ROW_BLUR_SIGMA_Z, ROW_BRIGHTNESS, ROW_BRIGHTNESS_FACTORS, ROW_CONTRAST, ROW_CONTRAST_FACTORS, ROW_LOW_RESOLUTION,
 ROW_LOW_RESOLUTION_CHANNELS, ROW_LOW_RESOLUTION_ZOOMS, ROW_INVERTED_GAMMA, ROW_INVERTED_GAMMA_LOW,
 ROW_INVERTED_GAMMA_VALUES, ROW_GAMMA, ROW_GAMMA_LOW, ROW_GAMMA_VALUES, ROW_ELASTIC, ROW_ELASTIC_MAGNITUDE,
 DRAW_ROWS) = range(31)
# ``--augmentation seed`` reuses ROW_MIRROR (flip, brightness shift) and ROW_BRIGHTNESS_FACTORS with this sampling.


def foreground_samples_per_batch(batch_size: int, share: float) -> int:
    """How many of a batch's samples are centred on foreground: nnU-Net counts the others as
    round(batch x (1 - share)), so batch 2 at 0.33 gives 1 and batch 1 gives 0."""
    return batch_size - int(round(batch_size * (1.0 - share)))


def sample_draws(seed: int, sample_number, channels: int):
    """float32 [DRAW_ROWS, max(channels, 3)] uniform draws of one sample, keyed by (seed, sample number)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(sample_number, tf.int64)])
    return tf.random.stateless_uniform([DRAW_ROWS, max(channels, 3)], seed=key, dtype=tf.float32)


def noise_key(seed: int, sample_number):
    """The key of a sample's noise field: negative numbers never meet the draws' keys (numbers >= 0)."""
    return tf.stack([tf.constant(seed, tf.int64), -1 - tf.cast(sample_number, tf.int64)])


def elastic_key(seed: int, sample_number):
    """The key of a sample's elastic control values: below -2^62, apart from the draws' and the noise's keys."""
    return tf.stack([tf.constant(seed, tf.int64), -(2 ** 62) - 1 - tf.cast(sample_number, tf.int64)])


def uniform(draw, bounds):
    """``draw`` in [0, 1) mapped linearly onto ``bounds`` (low, high)."""
    low, high = bounds
    return low + (high - low) * draw


def either(condition, transform, value):
    """``transform(value)`` where ``condition`` holds, else ``value`` (a graph-time branch)."""
    return tf.cond(condition, lambda: transform(value), lambda: value)
