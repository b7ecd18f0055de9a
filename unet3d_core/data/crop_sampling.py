"""The nnunet recipe's training crop: centred on foreground or anywhere, resampled through a rotated,
scaled (and, with ``--elastic_probability``, elastically deformed) and mirrored grid, as graph ops in tf.data.

Only the crop's own sampling grid is read from the case: a sample without
rotation or scaling is a slice (zero-padded where it leaves the volume) and
a reversal per mirrored axis; one with them gathers the eight neighbours of
each grid point (trilinear for images, nearest for labels). The cost is that
of one crop whatever the volume's size. The intensity steps that follow are
:mod:`unet3d_core.data.intensity_transforms`; the draws, :mod:`unet3d_core.data.draw_matrix`.

Probabilities and ranges (nnU-Net v2.8.1's training transforms; sources in
docs/training.md, "Recipes"):

- crop centre: a voxel of a class present in the case for the last
  ``round`` share of each batch (nnU-Net's ``oversample_foreground_percent``),
  from the locations preprocessing stored; uniform otherwise, and for cases
  without any foreground;
- rotation p 0.2, each axis U(-30, 30) degrees; scaling p 0.2, one factor
  U(0.7, 1.4) for all axes (> 1 shows a larger field of view); mirroring
  each axis p 0.5.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from unet3d_core.data.draw_matrix import (
    ROW_ANGLES,
    ROW_ELASTIC,
    ROW_ELASTIC_MAGNITUDE,
    ROW_FOREGROUND_CLASS,
    ROW_FOREGROUND_VOXEL,
    ROW_MIRROR,
    ROW_ROTATE,
    ROW_SCALE,
    ROW_SCALE_FACTOR,
    ROW_UNIFORM_START,
    either,
    uniform,
)

ROTATION_PROBABILITY = 0.2
ROTATION_DEGREES = 30.0
SCALING_PROBABILITY = 0.2
SCALING_RANGE = (0.7, 1.4)
MIRROR_PROBABILITY = 0.5
# Elastic deformation (--elastic_probability, 0 in both recipes as in nnU-Net v2.8.1): a displacement field
# interpolated linearly from ELASTIC_CONTROL_POINTS^3 standard-normal control values per axis, scaled by
# U(0, ELASTIC_MAGNITUDE) x the crop's size along that axis.
ELASTIC_CONTROL_POINTS = 5
ELASTIC_MAGNITUDE = 0.03


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
    uniform_start = tf.minimum(tf.cast(tf.floor(draws[ROW_UNIFORM_START, :3] * tf.cast(room, tf.float32)), tf.int32),
                               room - 1)
    present = tf.cast(tf.where(counts > 0)[:, 0], tf.int32)
    classes = tf.size(present)

    def on_foreground():
        choice = tf.minimum(tf.cast(draws[ROW_FOREGROUND_CLASS, 0] * tf.cast(classes, tf.float32), tf.int32),
                            classes - 1)
        klass = present[choice]
        first = tf.reduce_sum(counts[:klass])
        voxel = tf.minimum(tf.cast(draws[ROW_FOREGROUND_VOXEL, 0] * tf.cast(counts[klass], tf.float32), tf.int32),
                           counts[klass] - 1)
        return locations[first + voxel] - crop // 2

    return tf.cond(tf.logical_and(centre_on_foreground, classes > 0), on_foreground, lambda: uniform_start)


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
    rotate = draws[ROW_ROTATE, 0] < ROTATION_PROBABILITY
    scale = draws[ROW_SCALE, 0] < SCALING_PROBABILITY
    angles = uniform(draws[ROW_ANGLES, :3], (-ROTATION_DEGREES, ROTATION_DEGREES)) * (math.pi / 180.0)
    matrix = tf.cond(rotate, lambda: rotation_matrix(angles), lambda: tf.eye(3))
    factor = tf.where(scale, uniform(draws[ROW_SCALE_FACTOR, 0], SCALING_RANGE), 1.0)
    return matrix * factor, rotate, scale, factor


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
        deform = draws[ROW_ELASTIC, 0] < elastic_probability

    def resampled():
        displacement = None
        if deform is not None:
            control = tf.random.stateless_normal([3] + [ELASTIC_CONTROL_POINTS] * 3, seed=elastic_seed)
            magnitude = uniform(draws[ROW_ELASTIC_MAGNITUDE, 0], (0.0, ELASTIC_MAGNITUDE)) * tf.cast(deform, tf.float32)
            displacement = elastic_displacement(control, crop, magnitude)
        return _resample(image, label, start, matrix, crop, displacement)

    general = rotate if deform is None else tf.logical_or(rotate, deform)
    out_image, out_label = tf.cond(general, resampled, lambda: tf.cond(
        scale, lambda: _scaled(image, label, start, factor, crop), plain))
    mirror = draws[ROW_MIRROR, :3] < MIRROR_PROBABILITY
    for axis in range(3):
        # A mirrored crop is the crop of the mirrored grid; reversing the output costs one pass.
        out_image = either(mirror[axis], functools.partial(tf.reverse, axis=[axis]), out_image)
        out_label = either(mirror[axis], functools.partial(tf.reverse, axis=[axis]), out_label)
    return out_image, out_label
