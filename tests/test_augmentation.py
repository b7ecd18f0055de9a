"""The nnunet recipe's sampling and augmentation against numpy/scipy references: the rotated and scaled grid,
mirroring, blur, low resolution, gamma, contrast, labels, foreground-centred crops and their share."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import record_intensity
from scipy import ndimage

from unet3d_core.data import crop_sampling, draw_matrix, input_pipeline, intensity_transforms
from unet3d_core.data.records import Manifest, foreground_locations, read_record

tf1 = tf.compat.v1


def _run(build):
    graph = tf.Graph()
    with graph.as_default():
        fetches = build()
        with tf1.Session(graph=graph) as session:
            return session.run(fetches)


def _case(shape=(20, 18, 16), channels=2, seed=0):
    rng = np.random.RandomState(seed)
    image = ndimage.gaussian_filter(rng.uniform(0, 255, shape + (channels,)), (2, 2, 2, 0)).astype(np.uint8)
    label = np.zeros(shape, np.uint8)
    label[5:12, 4:10, 6:11] = 1
    label[7:10, 6:8, 7:9] = 3
    return image, label


def _draws(**rows):
    """A draw matrix that applies nothing (every gate at 0.99) but the rows given (``ROW_*`` names)."""
    draws = np.full((draw_matrix.DRAW_ROWS, 4), 0.99, np.float32)
    for name, values in rows.items():
        draws[getattr(draw_matrix, name)] = values
    return draws


def _assert_like_affine_transform(out_image, out_label, image, label, matrix, start, crop):
    """The crop equals scipy's affine_transform of the grid ``start + centre + matrix @ (index - centre)``."""
    centre = (np.array(crop) - 1) / 2.0
    offset = start + centre - matrix @ centre
    for channel in range(image.shape[-1]):
        expected = ndimage.affine_transform(image[..., channel].astype(np.float64), matrix, offset, crop, order=1,
                                            mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out_image[..., channel], expected, atol=1e-3)
    expected_label = ndimage.affine_transform(label, matrix, offset, crop, order=0, mode="constant", cval=0)
    assert np.mean(out_label == expected_label) > 0.995  # nearest differs only on exact .5 ties
    assert set(np.unique(out_label)) <= {0, 1, 3}


def test_rotated_and_scaled_grid_matches_scipy_affine_transform():
    image, label = _case()
    angles = np.radians([17.0, -23.0, 9.0])
    scale = 1.2
    draws = _draws(ROW_ROTATE=0.0, ROW_ANGLES=(np.array([17.0, -23.0, 9.0, 0]) + 30) / 60, ROW_SCALE=0.0,
                   ROW_SCALE_FACTOR=(scale - 0.7) / 0.7)
    start = np.array([2, 1, 3], np.int32)
    crop = (12, 10, 8)
    out_image, out_label = _run(lambda: crop_sampling.spatial_crop(
        tf.constant(image), tf.constant(label), tf.constant(start), tf.constant(draws), crop))

    def rotation(axis, angle):
        c, s = np.cos(angle), np.sin(angle)
        matrix = np.eye(3)
        i, j = [a for a in range(3) if a != axis]
        matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
        if axis == 1:  # about y: the sign convention of the right-handed x, z plane
            matrix[i, j], matrix[j, i] = s, -s
        return matrix

    matrix = rotation(2, angles[2]) @ rotation(1, angles[1]) @ rotation(0, angles[0]) * scale
    _assert_like_affine_transform(out_image, out_label, image, label, matrix, start, crop)


@pytest.mark.parametrize("scale", [0.75, 1.35])
def test_scaling_alone_matches_scipy_affine_transform(scale):
    image, label = _case()
    draws = _draws(ROW_SCALE=0.0, ROW_SCALE_FACTOR=(scale - 0.7) / 0.7)
    start = np.array([4, -2, 3], np.int32)  # the grid leaves the volume on y
    crop = (10, 12, 8)
    out_image, out_label = _run(lambda: crop_sampling.spatial_crop(
        tf.constant(image), tf.constant(label), tf.constant(start), tf.constant(draws), crop))
    _assert_like_affine_transform(out_image, out_label, image, label, np.eye(3) * scale, start, crop)


def test_without_rotation_or_scaling_the_crop_is_a_padded_slice_and_mirroring_reverses_it():
    image, label = _case()
    start = np.array([-3, 10, 2], np.int32)  # leaves the volume on x (before) and y (after)
    crop = (8, 12, 8)
    draws = _draws(ROW_MIRROR=(0.1, 0.9, 0.2, 0.9))  # mirror x and z
    out_image, out_label = _run(lambda: crop_sampling.spatial_crop(
        tf.constant(image), tf.constant(label), tf.constant(start), tf.constant(draws), crop))
    padded = np.pad(image, ((3, 0), (0, 4), (0, 0), (0, 0)))
    padded_label = np.pad(label, ((3, 0), (0, 4), (0, 0)))
    expected = padded[0:8, 10:22, 2:10][::-1, :, ::-1]
    expected_label = padded_label[0:8, 10:22, 2:10][::-1, :, ::-1]
    np.testing.assert_array_equal(out_image, expected.astype(np.float32))
    np.testing.assert_array_equal(out_label, expected_label)


def test_blur_matches_scipy_gaussian_filter_per_channel_and_axis():
    rng = np.random.RandomState(1)
    image = rng.normal(size=(10, 9, 11, 2)).astype(np.float32)
    sigmas = np.array([[1.0, 0.5], [0.75, 1.0], [0.5, 0.9]], np.float32)  # [axis, channel]
    out = _run(lambda: intensity_transforms.gaussian_blur(tf.constant(image), tf.constant(sigmas)))
    for channel in range(2):
        expected = image[..., channel].astype(np.float64)
        for axis in range(3):
            sigma = float(sigmas[axis, channel])
            # Our taps reach 4 voxels at every sigma; scipy's reach 4 x sigma, so compare at the same reach.
            expected = ndimage.gaussian_filter1d(expected, sigma, axis=axis, mode="reflect", truncate=4.0 / sigma)
        np.testing.assert_allclose(out[..., channel], expected, atol=1e-5)


def test_low_resolution_is_nearest_down_then_linear_up():
    rng = np.random.RandomState(2)
    volume = rng.normal(size=(8, 6, 10)).astype(np.float32)
    same = _run(lambda: intensity_transforms.simulate_low_resolution(tf.constant(volume), tf.constant(1.0)))
    np.testing.assert_allclose(same, volume, atol=1e-6)
    half = _run(lambda: intensity_transforms.simulate_low_resolution(tf.constant(volume), tf.constant(0.5)))
    # numpy reference, one axis after another.
    expected = volume.astype(np.float64)
    for axis in range(3):
        length = expected.shape[axis]
        small = max(int(round(length * 0.5)), 1)
        ratio = length / small
        picked = np.minimum(np.floor((np.arange(small) + 0.5) * ratio).astype(int), length - 1)
        reduced = np.take(expected, picked, axis=axis)
        position = np.clip((np.arange(length) + 0.5) / ratio - 0.5, 0, small - 1)
        below = np.floor(position).astype(int)
        above = np.minimum(below + 1, small - 1)
        weight = (position - below).reshape([-1 if a == axis else 1 for a in range(3)])
        expected = np.take(reduced, below, axis=axis) * (1 - weight) + np.take(reduced, above, axis=axis) * weight
    np.testing.assert_allclose(half, expected, atol=1e-5)
    assert half.shape == volume.shape


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_keeps_each_channels_mean_and_std_and_order(invert):
    rng = np.random.RandomState(3)
    image = (rng.normal(size=(9, 8, 7, 3)) * [1.0, 2.0, 0.5] + [0.0, 1.0, -2.0]).astype(np.float32)
    gammas = np.array([0.7, 1.5, 1.2], np.float32)
    out = _run(lambda: intensity_transforms.gamma_keep_statistics(tf.constant(image), tf.constant(gammas), invert))
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), image.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), image.std(axis=(0, 1, 2)), rtol=1e-3)
    for channel in range(3):  # a monotonic map: the voxels' order is kept
        order = np.argsort(image[..., channel].ravel())
        assert np.all(np.diff(out[..., channel].ravel()[order]) >= -1e-5)
    # gamma != 1 changes the shape of the histogram: not the identity.
    assert np.abs(out - image).max() > 0.05
    # numpy reference of the first channel
    channel = image[..., 0].astype(np.float64) * (-1 if invert else 1)
    low, span = channel.min(), channel.max() - channel.min()
    mapped = ((channel - low) / (span + 1e-7)) ** 0.7 * (span + 1e-7) + low
    mapped = (mapped - mapped.mean()) / mapped.std() * channel.std() + channel.mean()
    np.testing.assert_allclose(out[..., 0], mapped * (-1 if invert else 1), atol=1e-4)


def test_contrast_and_brightness_per_channel():
    rng = np.random.RandomState(4)
    image = rng.normal(size=(6, 6, 6, 2)).astype(np.float32)
    draws = _draws(ROW_CONTRAST=0.0, ROW_CONTRAST_FACTORS=(1.0, 0.0, 0, 0), ROW_BRIGHTNESS=0.0,
                   ROW_BRIGHTNESS_FACTORS=(0.5, 1.0, 0, 0))
    out = _run(lambda: intensity_transforms.intensity_augmentation(tf.constant(image), tf.constant(draws),
                                                                   tf.constant([1, 2], tf.int64), 2))
    bright = image * np.array([1.0, 1.25], np.float32)  # U(0.75, 1.25) at draws 0.5 and 1.0
    factors = np.array([1.25, 0.75], np.float32)
    mean = bright.mean(axis=(0, 1, 2))
    expected = np.clip((bright - mean) * factors + mean, bright.min(axis=(0, 1, 2)), bright.max(axis=(0, 1, 2)))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_no_gate_open_changes_nothing():
    rng = np.random.RandomState(5)
    image = rng.normal(size=(6, 6, 6, 4)).astype(np.float32)
    out = _run(lambda: intensity_transforms.intensity_augmentation(tf.constant(image), tf.constant(_draws()),
                                                                   tf.constant([1, 2], tf.int64), 4))
    np.testing.assert_array_equal(out, image)


def test_foreground_locations_are_of_their_class_and_capped():
    _, label = _case()
    counts, locations = foreground_locations(label, 4, "case-1", limit=50)
    assert counts.tolist() == [50, 0, 12]  # class 1 has 7*6*5 - 12 = 198 voxels: capped; class 3 has 12
    assert np.all(label[tuple(locations[:50].T)] == 1) and np.all(label[tuple(locations[50:].T)] == 3)
    again = foreground_locations(label, 4, "case-1", limit=50)
    np.testing.assert_array_equal(again[1], locations)  # seeded by the case id


def _centre_labels(files, *, batch_size, share, samples, augmentation_name="none", crop=(8, 8, 8)):
    """Label at the crop's centre voxel (crop // 2) of the first ``samples`` samples."""
    def build():
        dataset = input_pipeline.training_dataset(
            files, intensity=record_intensity(files), batch_size=batch_size, crop_shape=crop,
            augmentation=augmentation_name, seed=11,
            oversample_foreground=share).apply(tf.data.experimental.unbatch())
        return tf1.data.make_one_shot_iterator(dataset.batch(samples)).get_next()

    images, labels = _run(build)
    centre = tuple(size // 2 for size in crop)
    return labels[(slice(None),) + centre], labels


def test_foreground_share_of_batches_and_crops_centred_on_their_class(records):
    manifest = Manifest(records)
    files = [manifest.record_path(case) for case in manifest.cases if case["has_label"]]
    assert read_record(files[0])["label"] is not None
    centres, labels = _centre_labels(files, batch_size=3, share=0.33, samples=120)
    # batch 3 at 0.33: round(3 x 0.67) = 2 uniform, the last one on foreground.
    assert draw_matrix.foreground_samples_per_batch(3, 0.33) == 1
    assert draw_matrix.foreground_samples_per_batch(2, 0.33) == 1
    assert draw_matrix.foreground_samples_per_batch(1, 0.33) == 0
    foreground_positions = centres[2::3]
    assert np.all(foreground_positions > 0)  # every forced sample is centred on a class present
    uniform = centres.reshape(-1, 3)[:, :2]
    assert np.mean(uniform > 0) < 0.5  # uniform crops of these small tumours mostly land elsewhere
    # every class is chosen: classes present in a case are drawn uniformly, not by their size
    assert set(np.unique(foreground_positions)) == {1, 2, 3}
    assert set(np.unique(labels)) <= {0, 1, 2, 3}


def test_nnunet_samples_resume_exactly_and_keep_labels_in_the_label_set(records):
    manifest = Manifest(records)
    files = [manifest.record_path(case) for case in manifest.cases]

    def batches(first_sample, count):
        def build():
            dataset = input_pipeline.training_dataset(
                files, intensity=record_intensity(files), batch_size=2, crop_shape=(16, 16, 16),
                augmentation="nnunet", seed=5, first_sample=first_sample,
                oversample_foreground=0.33)
            return tf1.data.make_one_shot_iterator(dataset.take(count).batch(count)).get_next()
        return _run(build)

    first = batches(0, 6)
    resumed = batches(8, 2)  # step 4 at batch 2
    np.testing.assert_array_equal(resumed[0], first[0][4:6])
    np.testing.assert_array_equal(resumed[1], first[1][4:6])
    assert set(np.unique(first[1])) <= {0, 1, 2, 3}
    assert first[0].shape == (6, 2, 16, 16, 16, 4) and np.isfinite(first[0]).all()


def test_records_of_format_1_train_on_uniform_crops():
    image, label = _case(channels=4)

    def build():
        case = {"image": tf.constant(image), "label": tf.constant(label), "mean": tf.constant([50.0] * 4),
                "std": tf.constant([10.0] * 4), "foreground_counts": tf.zeros([0], tf.int32),
                "foreground_locations": tf.zeros([0, 3], tf.int32)}
        return input_pipeline.recipe_transform(case, tf.constant(1, tf.int64), seed=3, crop_shape=(8, 8, 8),
                                               batch_size=2, oversample_foreground=1.0, augmentation="none")

    out_image, out_label = _run(build)
    assert out_image.shape == (8, 8, 8, 4) and out_label.shape == (8, 8, 8)


def test_elastic_deformation_samples_the_displaced_grid_like_scipy_map_coordinates():
    image, label = _case()
    start = np.array([3, 2, 4], np.int32)
    crop = (12, 10, 8)
    draws = _draws(ROW_ELASTIC=0.0, ROW_ELASTIC_MAGNITUDE=1.0)  # deformed, at the largest magnitude

    def build():
        key = draw_matrix.elastic_key(7, tf.constant(5, tf.int64))
        out = crop_sampling.spatial_crop(tf.constant(image), tf.constant(label), tf.constant(start),
                                         tf.constant(draws), crop, elastic_probability=0.5, elastic_seed=key)
        control = tf.random.stateless_normal([3] + [crop_sampling.ELASTIC_CONTROL_POINTS] * 3, seed=key)
        return out + (crop_sampling.elastic_displacement(control, crop, crop_sampling.ELASTIC_MAGNITUDE),)

    out_image, out_label, displacement = _run(build)
    assert 0.2 < np.abs(displacement).max() < 3 * crop_sampling.ELASTIC_MAGNITUDE * 12  # a few voxels at most
    grid = np.stack(np.meshgrid(*[np.arange(size) for size in crop], indexing="ij")).astype(np.float64)
    points = grid + start[:, None, None, None] + displacement
    for channel in range(image.shape[-1]):
        expected = ndimage.map_coordinates(image[..., channel].astype(np.float64), points, order=1,
                                           mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out_image[..., channel], expected, atol=1e-3)
    expected_label = ndimage.map_coordinates(label, points, order=0, mode="grid-constant", cval=0)
    assert np.mean(out_label == expected_label) > 0.99
    # The field is smooth: neighbouring voxels move by much less than the field's range.
    assert np.abs(np.diff(displacement, axis=1)).max() < 0.5 * np.abs(displacement).max()
    # Without the gate, the crop is the plain slice.
    plain, _ = _run(lambda: crop_sampling.spatial_crop(tf.constant(image), tf.constant(label), tf.constant(start),
                                                       tf.constant(_draws()), crop, elastic_probability=0.5,
                                                       elastic_seed=tf.constant([1, 2], tf.int64)))
    np.testing.assert_array_equal(plain, image[3:15, 2:12, 4:12].astype(np.float32))
