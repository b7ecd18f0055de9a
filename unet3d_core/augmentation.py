"""The nnunet recipe's training sample: a crop centred on foreground or anywhere, resampled through a
rotated, scaled and mirrored grid, then six intensity augmentations, all as graph ops in tf.data.

Only the crop's own sampling grid is read from the case: a sample without
rotation or scaling is a slice (zero-padded where it leaves the volume) and
a reversal per mirrored axis; one with them gathers the eight neighbours of
each grid point (trilinear for images, nearest for labels). The cost is that
of one crop whatever the volume's size.

Probabilities and ranges (nnU-Net v2.8.1's training transforms; sources in
docs/training.md, "Recipes"):

- crop centre: a voxel of a class present in the case for the last
  ``round`` share of each batch (nnU-Net's ``oversample_foreground_percent``),
  from the locations preprocessing stored; uniform otherwise, and for cases
  without any foreground;
- rotation p 0.2, each axis U(-30, 30) degrees; scaling p 0.2, one factor
  U(0.7, 1.4) for all axes (> 1 shows a larger field of view); mirroring
  each axis p 0.5;
- Gaussian noise p 0.1, variance U(0, 0.1), one for all channels;
- Gaussian blur p 0.2, each channel p 0.5, sigma U(0.5, 1) per axis and channel;
- multiplicative brightness p 0.15, U(0.75, 1.25) per channel;
- contrast p 0.15, U(0.75, 1.25) per channel around its mean, clipped to the
  channel's range before;
- low resolution p 0.25, each channel p 0.5, zoom U(0.5, 1): nearest-neighbour
  down-sampling then linear up-sampling (nnU-Net up-samples cubically);
- inverted gamma p 0.1, then gamma p 0.3, per channel gamma U(0.7, 1) or
  U(1, 1.5) with even odds, mean and standard deviation kept.

Every random number comes from stateless generators keyed by (seed, sample
number), like the seed recipe's, so a resumed run continues the exact
sample sequence and thread scheduling changes nothing.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

ROTATION_PROBABILITY = 0.2
ROTATION_DEGREES = 30.0
SCALING_PROBABILITY = 0.2
SCALING_RANGE = (0.7, 1.4)
MIRROR_PROBABILITY = 0.5
NOISE_PROBABILITY = 0.1
NOISE_VARIANCE = (0.0, 0.1)
BLUR_PROBABILITY = 0.2
BLUR_CHANNEL_PROBABILITY = 0.5
BLUR_SIGMA = (0.5, 1.0)
BLUR_RADIUS = 4  # taps each side: 4 x the largest sigma, scipy.ndimage's default truncation
BRIGHTNESS_PROBABILITY = 0.15
BRIGHTNESS_RANGE = (0.75, 1.25)
CONTRAST_PROBABILITY = 0.15
CONTRAST_RANGE = (0.75, 1.25)
LOW_RESOLUTION_PROBABILITY = 0.25
LOW_RESOLUTION_CHANNEL_PROBABILITY = 0.5
LOW_RESOLUTION_ZOOM = (0.5, 1.0)
INVERTED_GAMMA_PROBABILITY = 0.1
GAMMA_PROBABILITY = 0.3
GAMMA_RANGE = (0.7, 1.5)
GAMMA_EPSILON = 1e-7
# Elastic deformation (--elastic_probability, 0 in both recipes as in nnU-Net v2.8.1): a displacement field
# interpolated linearly from ELASTIC_CONTROL_POINTS^3 standard-normal control values per axis, scaled by
# U(0, ELASTIC_MAGNITUDE) x the crop's size along that axis.
ELASTIC_CONTROL_POINTS = 5
ELASTIC_MAGNITUDE = 0.03

# Rows of the per-sample draw matrix (uniform in [0, 1)); columns: axes or channels.
(_FOREGROUND_CLASS, _FOREGROUND_VOXEL, _UNIFORM_START, _ROTATE, _ANGLES, _SCALE, _SCALE_FACTOR, _MIRROR, _NOISE,
 _NOISE_VARIANCE, _BLUR, _BLUR_CHANNELS, _BLUR_SIGMA_X, _BLUR_SIGMA_Y, _BLUR_SIGMA_Z, _BRIGHTNESS,
 _BRIGHTNESS_FACTORS, _CONTRAST, _CONTRAST_FACTORS, _LOW_RESOLUTION, _LOW_RESOLUTION_CHANNELS,
 _LOW_RESOLUTION_ZOOMS, _INVERTED_GAMMA, _INVERTED_GAMMA_LOW, _INVERTED_GAMMA_VALUES, _GAMMA, _GAMMA_LOW,
 _GAMMA_VALUES, _ELASTIC, _ELASTIC_MAGNITUDE, DRAW_ROWS) = range(31)
MIRROR_ROW, BRIGHTNESS_ROW = _MIRROR, _BRIGHTNESS_FACTORS  # rows --augmentation seed reuses with this sampling


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


def _linear_matrix(points: int, length: int) -> np.ndarray:
    """[length, points]: linear interpolation of ``points`` control values spread over ``length`` samples."""
    position = np.linspace(0.0, points - 1.0, length)
    below = np.minimum(np.floor(position).astype(int), points - 2)
    weight = position - below
    matrix = np.zeros((length, points), np.float32)
    matrix[np.arange(length), below] = 1.0 - weight
    matrix[np.arange(length), below + 1] = weight
    return matrix


def elastic_displacement(control, crop_shape: Sequence[int], magnitude):
    """float32 [3, cx, cy, cz] displacement (voxels) from ``control`` [3, G, G, G] standard-normal values."""
    crop = [int(size) for size in crop_shape]
    points = int(control.shape[1])
    field = control
    for axis, length in enumerate(crop):
        field = tf.einsum(("ij,cjyz->ciyz", "ij,cxjz->cxiz", "ij,cxyj->cxyi")[axis],
                          tf.constant(_linear_matrix(points, length)), field)
    scale = tf.constant(np.array(crop, np.float32).reshape(3, 1, 1, 1))
    return field * scale * magnitude


def _uniform(draw, bounds):
    low, high = bounds
    return low + (high - low) * draw


# ------------------------------------------------------------------ where the crop is
def crop_start(shape, crop_shape: Sequence[int], draws, counts, locations, centre_on_foreground):
    """int32 [3] lower corner of the crop in the case (may lie outside it for foreground centres).

    Args:
        shape: int32 [3] the case's size.
        counts, locations: the record's foreground locations (empty for format-1 records).
        centre_on_foreground: bool scalar tensor; without any foreground it falls back to uniform.
    """
    crop = tf.constant([int(size) for size in crop_shape], tf.int32)
    room = tf.maximum(shape - crop + 1, 1)  # valid lower corners per axis (1 where the case is smaller)
    uniform = tf.minimum(tf.cast(tf.floor(draws[_UNIFORM_START, :3] * tf.cast(room, tf.float32)), tf.int32), room - 1)
    present = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
    classes = tf.size(present)

    def on_foreground():
        choice = tf.minimum(tf.cast(draws[_FOREGROUND_CLASS, 0] * tf.cast(classes, tf.float32), tf.int32),
                            classes - 1)
        klass = present[choice]
        first = tf.reduce_sum(counts[:klass])
        voxel = tf.minimum(tf.cast(draws[_FOREGROUND_VOXEL, 0] * tf.cast(counts[klass], tf.float32), tf.int32),
                           counts[klass] - 1)
        return locations[first + voxel] - crop // 2

    return tf.cond(tf.logical_and(centre_on_foreground, classes > 0), on_foreground, lambda: uniform)


def rotation_matrix(angles):
    """float32 [3, 3] rotation about x, then y, then z by ``angles`` (radians, [3])."""
    cx, cy, cz = tf.unstack(tf.cos(angles))
    sx, sy, sz = tf.unstack(tf.sin(angles))
    one, zero = tf.constant(1.0), tf.constant(0.0)
    about_x = tf.stack([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    about_y = tf.stack([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    about_z = tf.stack([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    return tf.matmul(about_z, tf.matmul(about_y, about_x))


def spatial_matrix(draws):
    """One sample's (float32 [3, 3] grid matrix, rotated, scaled, scale factor); mirroring excluded."""
    rotate = draws[_ROTATE, 0] < ROTATION_PROBABILITY
    scale = draws[_SCALE, 0] < SCALING_PROBABILITY
    angles = _uniform(draws[_ANGLES, :3], (-ROTATION_DEGREES, ROTATION_DEGREES)) * (math.pi / 180.0)
    matrix = tf.cond(rotate, lambda: rotation_matrix(angles), lambda: tf.eye(3))
    factor = tf.where(scale, _uniform(draws[_SCALE_FACTOR, 0], SCALING_RANGE), 1.0)
    return matrix * factor, rotate, scale, factor


def _either(condition, transform, value):
    """``transform(value)`` where ``condition`` holds, else ``value`` (a graph-time branch)."""
    return tf.cond(condition, lambda: transform(value), lambda: value)


def slice_padded(volume, start, crop_shape):
    """``volume[start : start + crop]`` on the three spatial axes, zeros where the box leaves the volume."""
    crop = tf.convert_to_tensor(crop_shape, tf.int32)
    shape = tf.shape(volume)[:3]
    low = tf.clip_by_value(start, 0, shape)
    high = tf.clip_by_value(start + crop, 0, shape)
    extra = len(volume.shape) - 3
    piece = tf.slice(volume, tf.concat([low, tf.zeros([extra], tf.int32)], 0),
                     tf.concat([high - low, -tf.ones([extra], tf.int32)], 0))
    before = low - start
    after = crop - before - (high - low)
    padding = tf.concat([tf.stack([before, after], axis=1), tf.zeros([extra, 2], tf.int32)], 0)
    return tf.pad(piece, padding)


def _axis_taps(coordinate, length):
    """Linear interpolation taps along one axis: (index, weight) of the lower and the upper neighbour of each
    coordinate; a neighbour outside [0, length) gets weight 0 and a clamped index."""
    lower = tf.floor(coordinate)
    upper_weight = coordinate - lower
    index = tf.cast(lower, tf.int32)
    taps = []
    for offset, weight in ((0, 1.0 - upper_weight), (1, upper_weight)):
        neighbour = index + offset
        # One unsigned comparison tells 0 <= i < length (negatives wrap to large values).
        inside = tf.less(tf.bitcast(neighbour, tf.uint32), tf.cast(length, tf.uint32))
        taps.append((tf.clip_by_value(neighbour, 0, length - 1), weight * tf.cast(inside, tf.float32)))
    return taps


def _resample(image, label, start, matrix, crop_shape, displacement=None):
    """Sample the crop's grid ``start + centre + matrix @ (index - centre)`` (+ ``displacement`` [3, cx, cy, cz]
    when given): images trilinear, labels nearest,
    zero outside the case. Gathers from the case's flat buffer, so only the grid's neighbours are read; every
    per-voxel step works on one axis's [n] vector (cheaper than [n, 3] arithmetic)."""
    crop = [int(size) for size in crop_shape]
    channels = int(image.shape[-1])
    shape = tf.shape(label)
    centre = np.array([(size - 1) / 2.0 for size in crop], np.float32)
    offsets = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float32) for size in crop], indexing="ij"),
                       axis=-1).reshape(-1, 3) - centre  # a constant of the graph: the crop's grid
    source = tf.matmul(tf.constant(offsets), matrix, transpose_b=True) + (
        tf.cast(start, tf.float32) + tf.constant(centre))
    coordinates = tf.unstack(source, axis=1)
    if displacement is not None:
        coordinates = [coordinate + tf.reshape(displacement[axis], [-1])
                       for axis, coordinate in enumerate(coordinates)]
    strides = [shape[1] * shape[2], shape[2], 1]
    flat_image = tf.reshape(image, [-1, channels])
    # Labels: the nearest voxel; outside the case, label 0.
    nearest = [tf.cast(tf.floor(coordinate + 0.5), tf.int32) for coordinate in coordinates]
    inside = tf.ones_like(nearest[0], tf.bool)
    label_index = tf.zeros_like(nearest[0])
    for axis in range(3):
        inside = tf.logical_and(inside, tf.less(tf.bitcast(nearest[axis], tf.uint32), tf.cast(shape[axis], tf.uint32)))
        label_index += tf.clip_by_value(nearest[axis], 0, shape[axis] - 1) * strides[axis]
    out_label = tf.gather(tf.reshape(label, [-1]), label_index) * tf.cast(inside, label.dtype)
    # Images: eight neighbours, weights as products of the axes' linear weights.
    taps = [_axis_taps(coordinates[axis], shape[axis]) for axis in range(3)]
    pairs = [(y * strides[1] + z, wy * wz)
             for y, wy in taps[1] for z, wz in taps[2]]
    out_image = None
    for x, wx in taps[0]:
        for yz_index, yz_weight in pairs:
            values = tf.cast(tf.gather(flat_image, x * strides[0] + yz_index), tf.float32)
            term = values * (wx * yz_weight)[:, None]
            out_image = term if out_image is None else out_image + term
    return tf.reshape(out_image, crop + [channels]), tf.reshape(out_label, crop)


def _scaled(image, label, start, factor, crop_shape):
    """The crop's grid scaled by ``factor`` about its centre, without rotation: trilinear (images) and nearest
    (labels) sampling are then separable, so the box the grid covers is sliced once and resampled by one
    [crop, box] matrix product per axis (labels: one gather per axis) - the same numbers as :func:`_resample`
    for a fraction of its cost."""
    crop = [int(size) for size in crop_shape]
    coordinates = [tf.cast(start[axis], tf.float32) + (size - 1) / 2.0 + factor * (
        tf.range(size, dtype=tf.float32) - (size - 1) / 2.0) for axis, size in enumerate(crop)]
    low = tf.stack([tf.cast(tf.floor(coordinate[0]), tf.int32) for coordinate in coordinates])
    box = tf.stack([tf.cast(tf.floor(coordinate[-1]), tf.int32) + 2 for coordinate in coordinates]) - low
    image_box = tf.cast(slice_padded(image, low, box), tf.float32)
    label_box = slice_padded(label, low, box)
    for axis, coordinate in enumerate(coordinates):
        position = coordinate - tf.cast(low[axis], tf.float32)
        below = tf.cast(tf.floor(position), tf.int32)
        weight = (position - tf.cast(below, tf.float32))[:, None]
        matrix = (tf.one_hot(below, box[axis], dtype=tf.float32) * (1.0 - weight)
                  + tf.one_hot(below + 1, box[axis], dtype=tf.float32) * weight)
        image_box = tf.einsum(("ix,xyzc->iyzc", "iy,xyzc->xizc", "iz,xyzc->xyic")[axis], matrix, image_box)
        nearest = tf.minimum(tf.cast(tf.floor(position + 0.5), tf.int32), box[axis] - 1)
        label_box = tf.gather(label_box, nearest, axis=axis)
    image_box.set_shape(crop + [image.shape[-1]])
    return image_box, label_box


def spatial_crop(image, label, start, draws, crop_shape: Sequence[int], elastic_probability: float = 0.0,
                 elastic_seed=None):
    """The sample's crop after rotation, scaling, elastic deformation (with ``elastic_probability`` > 0 and the
    sample's :func:`elastic_key` as ``elastic_seed``) and mirroring.

    Returns:
        float32 [cx, cy, cz, C] intensities as stored (not yet normalised) and the label crop (its dtype).
    """
    crop = [int(size) for size in crop_shape]
    matrix, rotate, scale, factor = spatial_matrix(draws)

    def plain():
        return tf.cast(slice_padded(image, start, crop), tf.float32), slice_padded(label, start, crop)

    deform = None
    if elastic_probability > 0:
        deform = draws[_ELASTIC, 0] < elastic_probability

    def resampled():
        displacement = None
        if deform is not None:
            control = tf.random.stateless_normal([3] + [ELASTIC_CONTROL_POINTS] * 3, seed=elastic_seed)
            magnitude = _uniform(draws[_ELASTIC_MAGNITUDE, 0], (0.0, ELASTIC_MAGNITUDE)) * tf.cast(deform, tf.float32)
            displacement = elastic_displacement(control, crop, magnitude)
        return _resample(image, label, start, matrix, crop, displacement)

    general = rotate if deform is None else tf.logical_or(rotate, deform)
    out_image, out_label = tf.cond(general, resampled, lambda: tf.cond(
        scale, lambda: _scaled(image, label, start, factor, crop), plain))
    mirror = draws[_MIRROR, :3] < MIRROR_PROBABILITY
    for axis in range(3):
        # A mirrored crop is the crop of the mirrored grid; reversing the output costs one pass.
        out_image = _either(mirror[axis], functools.partial(tf.reverse, axis=[axis]), out_image)
        out_label = _either(mirror[axis], functools.partial(tf.reverse, axis=[axis]), out_label)
    return out_image, out_label


# ------------------------------------------------------------------ intensities (on the normalised crop)
# The filters along an axis (blur, low resolution) are one [C, n, n] matrix product per axis on the crop
# taken channel first, [C, x, y, z], which costs far less than a sum of shifted copies.
_ALONG_AXIS = ("cij,cjyz->ciyz", "cij,cxjz->cxiz", "cij,cxyj->cxyi")


def _apply_along(volumes, axis: int, matrices):
    """``volumes`` [C, x, y, z] with each channel's [n, n] matrix applied along spatial ``axis`` (0, 1, 2)."""
    return tf.einsum(_ALONG_AXIS[axis], matrices, volumes)


def gaussian_matrices(sigmas, length):
    """float32 [C, n, n]: correlation with each channel's Gaussian (taps within BLUR_RADIUS, edges mirrored as
    scipy.ndimage's 'reflect': the sample before index 0 is index 0)."""
    offsets = tf.range(-BLUR_RADIUS, BLUR_RADIUS + 1)
    taps = tf.exp(-0.5 * tf.square(tf.cast(offsets, tf.float32)[None, :] / sigmas[:, None]))
    taps = taps / tf.reduce_sum(taps, axis=1, keepdims=True)  # [C, T]
    source = tf.range(length)[:, None] + offsets[None, :]  # [n, T]
    source = tf.where(source < 0, -source - 1, source)
    source = tf.where(source >= length, 2 * length - 1 - source, source)
    source = tf.clip_by_value(source, 0, length - 1)  # only for lengths shorter than the taps' reach
    picks = tf.one_hot(source, length, dtype=tf.float32)  # [n, T, n]
    return tf.einsum("ct,itj->cij", taps, picks)


def gaussian_blur(image, sigmas):
    """Blur each channel of ``image`` [x, y, z, C] with its own sigma per axis: ``sigmas`` float32 [3, C]."""
    volumes = tf.transpose(image, [3, 0, 1, 2])
    volumes = _blur_channels_first(volumes, sigmas)
    return tf.transpose(volumes, [1, 2, 3, 0])


def _blur_channels_first(volumes, sigmas):
    shape = tf.shape(volumes)
    for axis in range(3):
        volumes = _apply_along(volumes, axis, gaussian_matrices(sigmas[axis], shape[axis + 1]))
    return volumes


def low_resolution_matrix(zoom, length):
    """float32 [n, n]: nearest-neighbour down-sampling of n samples by ``zoom``, then linear up-sampling."""
    size = tf.cast(length, tf.float32)
    small = tf.maximum(tf.cast(tf.round(size * zoom), tf.int32), 1)
    ratio = size / tf.cast(small, tf.float32)
    # Down: the sample nearest each small sample's centre.
    picked = tf.minimum(tf.cast(tf.floor((tf.cast(tf.range(small), tf.float32) + 0.5) * ratio), tf.int32),
                        length - 1)
    down = tf.one_hot(picked, length, dtype=tf.float32)  # [small, n]
    # Up: each output sample's centre in the small grid, linear between its two neighbours.
    position = tf.clip_by_value((tf.cast(tf.range(length), tf.float32) + 0.5) / ratio - 0.5, 0.0,
                                tf.cast(small - 1, tf.float32))
    below = tf.cast(tf.floor(position), tf.int32)
    above = tf.minimum(below + 1, small - 1)
    weight = (position - tf.cast(below, tf.float32))[:, None]
    up = (tf.one_hot(below, small, dtype=tf.float32) * (1.0 - weight)
          + tf.one_hot(above, small, dtype=tf.float32) * weight)
    return tf.matmul(up, down)


def simulate_low_resolution(volume, zoom):
    """One channel [x, y, z]: nearest-neighbour down-sampling by ``zoom`` on every axis, then linear back."""
    volumes = volume[None]
    shape = tf.shape(volumes)
    for axis in range(3):
        volumes = _apply_along(volumes, axis, low_resolution_matrix(zoom, shape[axis + 1])[None])
    return volumes[0]


def _per_channel(reduce, image):
    """``reduce`` (tf.reduce_sum, _min, _max) of ``image`` [x, y, z, C] over its voxels, per channel: [C].

    In two stages over [voxels / k, k x C] then [k, C]: a reduction down the outer axis of a wide row is
    several times faster in TensorFlow than one over [voxels, C], whose rows hold a few channels."""
    channels = int(image.shape[-1])
    voxels = int(np.prod(image.shape[:3])) if image.shape[:3].is_fully_defined() else 0
    rows = math.gcd(voxels, 64) if voxels else 1
    partial = reduce(tf.reshape(image, [-1, rows * channels]), axis=0)
    return reduce(tf.reshape(partial, [rows, channels]), axis=0)


def _mean(image):
    """Per-channel mean of ``image`` [x, y, z, C]."""
    return _per_channel(tf.reduce_sum, image) / tf.cast(tf.reduce_prod(tf.shape(image)[:3]), tf.float32)


def _moments(image):
    """Per-channel mean and variance of ``image`` [x, y, z, C] (two passes, as tf.nn.moments)."""
    mean = _mean(image)
    return mean, _mean(tf.square(image - mean))


def gamma_keep_statistics(image, gammas, invert: bool):
    """Per channel of ``image`` [x, y, z, C]: rescale to [0, 1], raise to ``gammas`` [C], rescale back, restore
    mean and standard deviation; ``invert`` applies it to the negated image (nnU-Net's inverted gamma)."""
    if invert:
        image = -image
    mean, variance = _moments(image)
    low = _per_channel(tf.reduce_min, image)
    span = _per_channel(tf.reduce_max, image) - low + GAMMA_EPSILON
    # x^gamma as exp(gamma log x) (0 stays 0: log 0 = -inf), a quarter of the time of tf.pow's broadcast.
    out = tf.exp(tf.math.log(tf.maximum((image - low) / span, 0.0)) * gammas) * span + low
    new_mean, new_variance = _moments(out)
    out = (out - new_mean) * (tf.sqrt(variance) / (tf.sqrt(new_variance) + 1e-8)) + mean
    return -out if invert else out


def _gammas(low_draws, value_draws):
    """Per channel: U(0.7, 1) or U(1, 1.5), even odds (nnU-Net draws gamma < 1 half the time)."""
    low_gamma = _uniform(value_draws, (GAMMA_RANGE[0], 1.0))
    high_gamma = _uniform(value_draws, (1.0, GAMMA_RANGE[1]))
    return tf.where(low_draws < 0.5, low_gamma, high_gamma)


def intensity_augmentation(image, draws, noise_seed, channels: int):
    """nnU-Net's intensity transforms, in its order, on a normalised crop float32 [x, y, z, C]."""
    def per_channel(row):
        return draws[row, :channels]

    def chosen_or_identity(chosen, matrices, length):
        """Each channel's matrix where ``chosen``, the identity elsewhere: [C, n, n]."""
        mask = tf.reshape(tf.cast(chosen, tf.float32), [-1, 1, 1])
        return matrices * mask + tf.eye(length)[None] * (1.0 - mask)

    def noise(current):
        std = tf.sqrt(_uniform(draws[_NOISE_VARIANCE, 0], NOISE_VARIANCE))
        return current + std * tf.random.stateless_normal(tf.shape(current), seed=noise_seed, dtype=tf.float32)

    def channels_first(transform_volumes):
        """A step on [C, x, y, z] (matrix products along the axes) applied to the [x, y, z, C] crop."""
        return lambda current: tf.transpose(transform_volumes(tf.transpose(current, [3, 0, 1, 2])), [1, 2, 3, 0])

    @channels_first
    def blur(volumes):
        chosen = per_channel(_BLUR_CHANNELS) < BLUR_CHANNEL_PROBABILITY
        shape = tf.shape(volumes)
        for axis, row in enumerate((_BLUR_SIGMA_X, _BLUR_SIGMA_Y, _BLUR_SIGMA_Z)):
            matrices = gaussian_matrices(_uniform(per_channel(row), BLUR_SIGMA), shape[axis + 1])
            volumes = _apply_along(volumes, axis, chosen_or_identity(chosen, matrices, shape[axis + 1]))
        return volumes

    def brightness(current):
        return current * _uniform(per_channel(_BRIGHTNESS_FACTORS), BRIGHTNESS_RANGE)

    def contrast(current):
        factors = _uniform(per_channel(_CONTRAST_FACTORS), CONTRAST_RANGE)
        mean = _mean(current)
        low, high = _per_channel(tf.reduce_min, current), _per_channel(tf.reduce_max, current)
        return tf.minimum(tf.maximum((current - mean) * factors + mean, low), high)

    @channels_first
    def low_resolution(volumes):
        zooms = _uniform(per_channel(_LOW_RESOLUTION_ZOOMS), LOW_RESOLUTION_ZOOM)
        chosen = per_channel(_LOW_RESOLUTION_CHANNELS) < LOW_RESOLUTION_CHANNEL_PROBABILITY
        shape = tf.shape(volumes)
        for axis in range(3):
            length = shape[axis + 1]
            matrices = tf.stack([low_resolution_matrix(zooms[channel], length) for channel in range(channels)])
            volumes = _apply_along(volumes, axis, chosen_or_identity(chosen, matrices, length))
        return volumes

    def inverted_gamma(current):
        return gamma_keep_statistics(current, _gammas(per_channel(_INVERTED_GAMMA_LOW),
                                                      per_channel(_INVERTED_GAMMA_VALUES)), invert=True)

    def gamma(current):
        return gamma_keep_statistics(current, _gammas(per_channel(_GAMMA_LOW), per_channel(_GAMMA_VALUES)),
                                     invert=False)

    for row, transform in ((_NOISE, noise), (_BLUR, blur), (_BRIGHTNESS, brightness), (_CONTRAST, contrast),
                           (_LOW_RESOLUTION, low_resolution), (_INVERTED_GAMMA, inverted_gamma), (_GAMMA, gamma)):
        image = _either(draws[row, 0] < _threshold[row], transform, image)
    return image


_threshold = {_NOISE: NOISE_PROBABILITY, _BLUR: BLUR_PROBABILITY, _BRIGHTNESS: BRIGHTNESS_PROBABILITY,
              _CONTRAST: CONTRAST_PROBABILITY, _LOW_RESOLUTION: LOW_RESOLUTION_PROBABILITY,
              _INVERTED_GAMMA: INVERTED_GAMMA_PROBABILITY, _GAMMA: GAMMA_PROBABILITY}
