"""tf.data input pipelines: training crops with the recipe's sampling and augmentation, whole-volume evaluation.

Training with the nnunet recipe (or any foreground oversampling): see
:mod:`unet3d_core.data.crop_sampling` (the crop), :mod:`unet3d_core.data.intensity_transforms`
(the intensity steps) and :mod:`unet3d_core.data.draw_matrix` (their random draws).
Training with the seed recipe (reference
order): random crop to ``--input_shape`` -> cast to float32 -> [augment]
flip along y with p=0.5 -> z-score normalise voxels > 0 with the record's
statistics -> [augment] brightness: with p=0.5 add a per-channel shift
drawn from U(0.9, 1.1) to voxels > 0. (The code flips the uint8 crop
before the cast, which gives the same numbers faster.)

Every random number of a sample comes from a stateless generator keyed by
(seed, global sample number), so the pipeline gives the same samples for the
same seed whatever the thread scheduling, and a resumed run continues the
exact sample sequence of an uninterrupted one.

Evaluation: centre crop to at most ``--eval_crop`` (reference: 224x224x155,
i.e. offsets 8, 8, 0 on a BraTS volume), cast, normalise, zero-pad every axis
at its end to a multiple of the network's divisor (155 -> 160).
"""
from __future__ import annotations

from typing import List, Sequence

import tensorflow as tf

from unet3d_core.data import crop_sampling, draw_matrix, intensity_transforms
from unet3d_core.data.records import parse_case

FLIP_AXIS = 1  # y of [x, y, z, c]: the axis the reference's "horizontal" flip reverses
FLIP_PROBABILITY = 0.5
BRIGHTNESS_PROBABILITY = 0.5
BRIGHTNESS_RANGE = (0.9, 1.1)
NORMALIZE_EPSILON = 1e-8
# Draws per sample: 3 crop offsets, flip gate, brightness gate, 4 brightness shifts.
DRAWS_PER_SAMPLE = 9
AUTOTUNE = tf.data.experimental.AUTOTUNE


def normalize(image, mean, std):
    """Z-score voxels > 0 with the stored per-channel statistics; zeros stay zero.

    ``image``: non-negative intensities, uint8 or uint16 as stored, or float32. Returns float32.
    """
    # Arithmetic with a 0/1 mask instead of tf.where: the same numbers (to float
    # rounding) at a third of the cost, tf.where being slow on large volumes.
    # The comparison on the float copy: TensorFlow 1.15 has no uint16 Greater.
    image = tf.cast(image, tf.float32)
    foreground = tf.cast(image > 0, tf.float32)
    return (image - mean * foreground) * (1.0 / (std + NORMALIZE_EPSILON))


def _pad_to_at_least(volume, minimum_shape):
    shape = tf.shape(volume)
    padding = [[0, tf.maximum(minimum_shape[axis] - shape[axis], 0)] for axis in range(3)]
    padding += [[0, 0]] * (len(volume.shape) - 3)
    return tf.pad(volume, padding)


def seed_flip(image, label, draw):
    """The seed's flip: reverse y of image and label when ``draw`` < FLIP_PROBABILITY."""
    flip = draw < FLIP_PROBABILITY
    return (tf.cond(flip, lambda: tf.reverse(image, [FLIP_AXIS]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(label, [FLIP_AXIS]), lambda: label))


def seed_brightness(image, gate_draw, shift_draws):
    """The seed's brightness: when ``gate_draw`` < BRIGHTNESS_PROBABILITY, add a per-channel shift from
    U(BRIGHTNESS_RANGE) (``shift_draws`` [C] in [0, 1)) to the voxels > 0 of the normalised ``image``."""
    low, high = BRIGHTNESS_RANGE
    shift = low + (high - low) * shift_draws
    brighten = gate_draw < BRIGHTNESS_PROBABILITY
    return tf.cond(brighten, lambda: image + shift * tf.cast(image > 0, tf.float32), lambda: image)


def training_transform(image, label, mean, std, draws, crop_shape: Sequence[int], augment: bool):
    """Apply the training transforms to one case with the given uniform draws in [0, 1).

    Args:
        image: uint8 [x, y, z, C] (C known in its static shape); label: uint8 [x, y, z].
        mean, std: float32 [C].
        draws: float32 [DRAWS_PER_SAMPLE] uniform in [0, 1).
        crop_shape: (cx, cy, cz); volumes smaller than it are zero-padded first.
    Returns:
        float32 [cx, cy, cz, C] image and int32 [cx, cy, cz] label.
    """
    crop_shape = [int(size) for size in crop_shape]
    channels = int(image.shape[-1])
    image = _pad_to_at_least(image, crop_shape)
    label = _pad_to_at_least(label, crop_shape)
    room = tf.cast(tf.shape(label)[:3] - crop_shape + 1, tf.float32)  # number of valid offsets per axis
    offsets = tf.minimum(tf.cast(tf.floor(draws[:3] * room), tf.int32), tf.cast(room, tf.int32) - 1)
    image = tf.slice(image, tf.concat([offsets, [0]], 0), crop_shape + [channels])
    label = tf.slice(label, offsets, crop_shape)
    if augment:
        # The flip commutes with the voxel-wise steps after it, so it runs on
        # the uint8 crop: a quarter of the bytes of the float32 one.
        image, label = seed_flip(image, label, draws[3])
    image = normalize(image, mean, std)  # also the cast to float32
    if augment:
        image = seed_brightness(image, draws[4], draws[5:9])
    image.set_shape(crop_shape + [channels])
    label = tf.cast(label, tf.int32)
    label.set_shape(crop_shape)
    return image, label


def recipe_transform(case, sample_number, *, seed: int, crop_shape: Sequence[int], batch_size: int,
                     oversample_foreground: float, augmentation: str, elastic_probability: float = 0.0):
    """One training sample of the nnunet recipe's sampling (and augmentation unless ``augmentation`` is not
    ``nnunet``): float32 [cx, cy, cz, C] image and int32 [cx, cy, cz] label."""
    crop = [int(size) for size in crop_shape]
    image, label = case["image"], case["label"]
    channels = int(image.shape[-1])
    draws = draw_matrix.sample_draws(seed, sample_number, channels)
    on_foreground = draw_matrix.foreground_samples_per_batch(batch_size, oversample_foreground)
    position = tf.math.floormod(tf.cast(sample_number, tf.int64), batch_size)
    centre_on_foreground = position >= batch_size - on_foreground
    start = crop_sampling.crop_start(tf.shape(label), crop, draws, case["foreground_counts"],
                                     case["foreground_locations"], centre_on_foreground)
    if augmentation == "nnunet":
        image, label = crop_sampling.spatial_crop(
            image, label, start, draws, crop, elastic_probability=elastic_probability,
            elastic_seed=draw_matrix.elastic_key(seed, sample_number))
    else:
        image = tf.cast(crop_sampling.slice_padded(image, start, crop), tf.float32)
        label = crop_sampling.slice_padded(label, start, crop)
    image = normalize(image, case["mean"], case["std"])
    image.set_shape(crop + [channels])  # static, for the intensity steps' per-channel reductions
    if augmentation == "nnunet":
        image = intensity_transforms.intensity_augmentation(image, draws, draw_matrix.noise_key(
            seed, sample_number), channels)
    elif augmentation == "seed":
        # The seed's two transforms with this sample's draws.
        image, label = seed_flip(image, label, draws[draw_matrix.ROW_MIRROR, 0])
        image = seed_brightness(image, draws[draw_matrix.ROW_MIRROR, 1],
                                draws[draw_matrix.ROW_BRIGHTNESS_FACTORS, :channels])
    image.set_shape(crop + [channels])
    label = tf.cast(label, tf.int32)
    label.set_shape(crop)
    return image, label


def uses_recipe_sampling(augmentation: str, oversample_foreground: float) -> bool:
    """Whether training samples come from :func:`recipe_transform` (else the seed's ``training_transform``,
    kept as it was so that the seed recipe gives the same samples as before recipes existed)."""
    return augmentation == "nnunet" or oversample_foreground > 0


def sample_draws(seed: int, sample_number):
    """The uniform draws of one sample, keyed by (seed, sample number)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(sample_number, tf.int64)])
    return tf.random.stateless_uniform([DRAWS_PER_SAMPLE], seed=key, dtype=tf.float32)


def training_dataset(record_files: List[str], *, intensity: str, batch_size: int, crop_shape: Sequence[int],
                     augmentation: str, seed: int, first_sample: int = 0, parallel_reads: int = 4, cache: bool = False,
                     channels: int = 4, oversample_foreground: float = 0.0, elastic_probability: float = 0.0):
    """An endless, deterministic stream of (image, label) batches.

    ``augmentation``: none, seed or nnunet; ``oversample_foreground``: the share
    of each batch centred on a foreground voxel (see :mod:`unet3d_core.data.crop_sampling`);
    ``intensity``: the records' storage (``Manifest.intensity_format``).

    Case order: shuffled with ``seed`` each epoch. ``first_sample`` skips that
    many samples (the resume point: step x batch size) without transforming them.

    Args:
        parallel_reads: record files open at once, read one after another (without the cache).
        cache: keep every decoded case (as stored) in memory after its
            first read, so later epochs read no files: about 45 MB per
            240x240x155 case in uint8, 80 MB in uint16. The first batch waits until every case is read.
            The stream is the same, sample for sample, with or without it.
    """
    files = list(record_files)
    numbers = tf.data.Dataset.range(first_sample, 2 ** 62)
    if cache:
        # Shuffling decoded cases draws the same permutation as shuffling file
        # names would: shuffle's choices depend on its seed and buffer size only.
        cases = tf.data.TFRecordDataset(files).map(lambda record: parse_case(record, channels, intensity),
                                                   num_parallel_calls=AUTOTUNE).cache()
        cases = cases.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
        dataset = tf.data.Dataset.zip((numbers, cases.skip(first_sample)))
    else:
        names = tf.data.Dataset.from_tensor_slices(files)
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
        names = names.skip(first_sample)
        # One record per file, so interleave keeps the order. Reads are sequential:
        # TensorFlow 1.15 can crash closing a session while a parallel interleave runs.
        dataset = tf.data.Dataset.zip((numbers, names)).interleave(
            lambda number, name: tf.data.TFRecordDataset(name).map(lambda record: (number, record)),
            cycle_length=parallel_reads, block_length=1)

    recipe_sampling = uses_recipe_sampling(augmentation, oversample_foreground)

    def transform(number, case):
        if not cache:
            case = parse_case(case, channels, intensity)  # here, in the parallel map, not in the sequential read
        if recipe_sampling:
            return recipe_transform(case, number, seed=seed, crop_shape=crop_shape, batch_size=batch_size,
                                    oversample_foreground=oversample_foreground, augmentation=augmentation,
                                    elastic_probability=elastic_probability)
        return training_transform(case["image"], case["label"], case["mean"], case["std"],
                                  sample_draws(seed, number), crop_shape, augmentation == "seed")

    dataset = dataset.map(transform, num_parallel_calls=AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(2)


def evaluation_transform(image, mean, std, eval_crop: Sequence[int], divisor: int):
    """Centre crop, cast, normalise, pad to a multiple of ``divisor``.

    Returns:
        (float32 [x', y', z', C] network input, int32 [3] crop offsets, int32 [3] crop size)
    """
    channels = int(image.shape[-1])
    shape = tf.shape(image)[:3]
    crop = tf.minimum(shape, tf.constant([int(size) for size in eval_crop], tf.int32))
    offsets = (shape - crop) // 2
    image = tf.slice(image, tf.concat([offsets, [0]], 0), tf.concat([crop, [channels]], 0))
    image = normalize(image, mean, std)
    padded = (crop + divisor - 1) // divisor * divisor
    padding = tf.stack([tf.zeros([3], tf.int32), padded - crop], axis=1)
    image = tf.pad(image, tf.concat([padding, [[0, 0]]], axis=0))
    image.set_shape([None, None, None, channels])
    return image, offsets, crop

