"""The nnunet recipe's six intensity augmentations, in nnU-Net's order, on the normalised crop, as graph ops.

They follow the crop (:mod:`unet3d_core.data.crop_sampling`) and read the same
per-sample draws (:mod:`unet3d_core.data.draw_matrix`). Probabilities and ranges
(nnU-Net v2.8.1's training transforms; sources in docs/training.md, "Recipes"):

- Gaussian noise p 0.1, variance U(0, 0.1), one for all channels;
- Gaussian blur p 0.2, each channel p 0.5, sigma U(0.5, 1) per axis and channel;
- multiplicative brightness p 0.15, U(0.75, 1.25) per channel;
- contrast p 0.15, U(0.75, 1.25) per channel around its mean, clipped to the
  channel's range before;
- low resolution p 0.25, each channel p 0.5, zoom U(0.5, 1): nearest-neighbour
  down-sampling then linear up-sampling (nnU-Net up-samples cubically);
- inverted gamma p 0.1, then gamma p 0.3, per channel gamma U(0.7, 1) or
  U(1, 1.5) with even odds, mean and standard deviation kept.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from unet3d_core.data.draw_matrix import (
    ROW_BLUR,
    ROW_BLUR_CHANNELS,
    ROW_BLUR_SIGMA_X,
    ROW_BLUR_SIGMA_Y,
    ROW_BLUR_SIGMA_Z,
    ROW_BRIGHTNESS,
    ROW_BRIGHTNESS_FACTORS,
    ROW_CONTRAST,
    ROW_CONTRAST_FACTORS,
    ROW_GAMMA,
    ROW_GAMMA_LOW,
    ROW_GAMMA_VALUES,
    ROW_INVERTED_GAMMA,
    ROW_INVERTED_GAMMA_LOW,
    ROW_INVERTED_GAMMA_VALUES,
    ROW_LOW_RESOLUTION,
    ROW_LOW_RESOLUTION_CHANNELS,
    ROW_LOW_RESOLUTION_ZOOMS,
    ROW_NOISE,
    ROW_NOISE_VARIANCE,
    either,
    uniform,
)

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
    low_gamma = uniform(value_draws, (GAMMA_RANGE[0], 1.0))
    high_gamma = uniform(value_draws, (1.0, GAMMA_RANGE[1]))
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
        std = tf.sqrt(uniform(draws[ROW_NOISE_VARIANCE, 0], NOISE_VARIANCE))
        return current + std * tf.random.stateless_normal(tf.shape(current), seed=noise_seed, dtype=tf.float32)

    def channels_first(transform_volumes):
        """A step on [C, x, y, z] (matrix products along the axes) applied to the [x, y, z, C] crop."""
        return lambda current: tf.transpose(transform_volumes(tf.transpose(current, [3, 0, 1, 2])), [1, 2, 3, 0])

    @channels_first
    def blur(volumes):
        chosen = per_channel(ROW_BLUR_CHANNELS) < BLUR_CHANNEL_PROBABILITY
        shape = tf.shape(volumes)
        for axis, row in enumerate((ROW_BLUR_SIGMA_X, ROW_BLUR_SIGMA_Y, ROW_BLUR_SIGMA_Z)):
            matrices = gaussian_matrices(uniform(per_channel(row), BLUR_SIGMA), shape[axis + 1])
            volumes = _apply_along(volumes, axis, chosen_or_identity(chosen, matrices, shape[axis + 1]))
        return volumes

    def brightness(current):
        return current * uniform(per_channel(ROW_BRIGHTNESS_FACTORS), BRIGHTNESS_RANGE)

    def contrast(current):
        factors = uniform(per_channel(ROW_CONTRAST_FACTORS), CONTRAST_RANGE)
        mean = _mean(current)
        low, high = _per_channel(tf.reduce_min, current), _per_channel(tf.reduce_max, current)
        return tf.minimum(tf.maximum((current - mean) * factors + mean, low), high)

    @channels_first
    def low_resolution(volumes):
        zooms = uniform(per_channel(ROW_LOW_RESOLUTION_ZOOMS), LOW_RESOLUTION_ZOOM)
        chosen = per_channel(ROW_LOW_RESOLUTION_CHANNELS) < LOW_RESOLUTION_CHANNEL_PROBABILITY
        shape = tf.shape(volumes)
        for axis in range(3):
            length = shape[axis + 1]
            matrices = tf.stack([low_resolution_matrix(zooms[channel], length) for channel in range(channels)])
            volumes = _apply_along(volumes, axis, chosen_or_identity(chosen, matrices, length))
        return volumes

    def inverted_gamma(current):
        return gamma_keep_statistics(current, _gammas(per_channel(ROW_INVERTED_GAMMA_LOW),
                                                      per_channel(ROW_INVERTED_GAMMA_VALUES)), invert=True)

    def gamma(current):
        return gamma_keep_statistics(current, _gammas(per_channel(ROW_GAMMA_LOW), per_channel(ROW_GAMMA_VALUES)),
                                     invert=False)

    for row, transform in ((ROW_NOISE, noise), (ROW_BLUR, blur), (ROW_BRIGHTNESS, brightness),
                           (ROW_CONTRAST, contrast), (ROW_LOW_RESOLUTION, low_resolution),
                           (ROW_INVERTED_GAMMA, inverted_gamma), (ROW_GAMMA, gamma)):
        image = either(draws[row, 0] < _threshold[row], transform, image)
    return image


_threshold = {ROW_NOISE: NOISE_PROBABILITY, ROW_BLUR: BLUR_PROBABILITY, ROW_BRIGHTNESS: BRIGHTNESS_PROBABILITY,
              ROW_CONTRAST: CONTRAST_PROBABILITY, ROW_LOW_RESOLUTION: LOW_RESOLUTION_PROBABILITY,
              ROW_INVERTED_GAMMA: INVERTED_GAMMA_PROBABILITY, ROW_GAMMA: GAMMA_PROBABILITY}
