"""The input pipeline's numbers: crops, flip, normalisation, brightness, determinism, evaluation crop/pad."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import record_intensity

from unet3d_core.data import input_pipeline
from unet3d_core.data.records import Manifest

tf1 = tf.compat.v1


def _run(fetches):
    with tf1.Session() as session:
        return session.run(fetches)


def _case(shape=(6, 5, 4)):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, size=shape + (4,)).astype(np.uint8)
    image[0] = 0  # some background
    label = rng.randint(0, 4, size=shape).astype(np.uint8)
    mean = np.array([100, 110, 120, 130], np.float32)
    std = np.array([10, 20, 30, 40], np.float32)
    return image, label, mean, std


def _transform(image, label, mean, std, draws, crop, augment):
    graph = tf.Graph()
    with graph.as_default():
        out = input_pipeline.training_transform(tf.constant(image), tf.constant(label), tf.constant(mean),
                                                tf.constant(std), tf.constant(draws, tf.float32), crop, augment)
        with tf1.Session(graph=graph) as session:
            return session.run(out)


def _normalized(volume, mean, std):
    volume = volume.astype(np.float32)
    return np.where(volume > 0, (volume - mean) / (std + 1e-8), volume)


def test_crop_offsets_follow_the_draws_and_normalise_foreground_only():
    image, label, mean, std = _case()
    draws = np.array([0.99, 0.0, 0.5, 0.9, 0.9, 0, 0, 0, 0], np.float32)  # no flip, no brightness
    out_image, out_label = _transform(image, label, mean, std, draws, (4, 4, 2), augment=True)
    # 3 valid x offsets (0..2) -> 2; 2 valid y -> 0; 3 valid z -> floor(0.5 * 3) = 1
    expected = image[2:6, 0:4, 1:3]
    assert np.array_equal(out_label, label[2:6, 0:4, 1:3])
    assert np.allclose(out_image, _normalized(expected, mean, std), atol=1e-5)
    assert out_image.dtype == np.float32 and out_label.dtype == np.int32


def test_flip_reverses_y_for_image_and_label_together():
    image, label, mean, std = _case()
    draws = np.array([0, 0, 0, 0.1, 0.9, 0, 0, 0, 0], np.float32)  # flip, no brightness
    out_image, out_label = _transform(image, label, mean, std, draws, (6, 5, 4), augment=True)
    assert np.array_equal(out_label, label[:, ::-1])
    assert np.allclose(out_image, _normalized(image[:, ::-1], mean, std), atol=1e-5)


def test_brightness_adds_a_per_channel_shift_to_positive_voxels():
    image, label, mean, std = _case()
    draws = np.array([0, 0, 0, 0.9, 0.1, 0.0, 0.5, 1.0, 0.25], np.float32)  # brightness, no flip
    out_image, _ = _transform(image, label, mean, std, draws, (6, 5, 4), augment=True)
    normalized = _normalized(image, mean, std)
    shift = np.array([0.9, 1.0, 1.1, 0.95], np.float32)
    assert np.allclose(out_image, np.where(normalized > 0, normalized + shift, normalized), atol=1e-5)


def test_without_augment_there_is_no_flip_or_brightness():
    image, label, mean, std = _case()
    draws = np.array([0, 0, 0, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5], np.float32)
    out_image, out_label = _transform(image, label, mean, std, draws, (6, 5, 4), augment=False)
    assert np.array_equal(out_label, label)
    assert np.allclose(out_image, _normalized(image, mean, std), atol=1e-5)


def test_small_volumes_are_zero_padded_to_the_crop():
    image, label, mean, std = _case((3, 5, 4))
    out_image, out_label = _transform(image, label, mean, std, np.zeros(9, np.float32), (4, 4, 4), augment=False)
    assert out_image.shape == (4, 4, 4, 4)
    assert np.all(out_image[3] == 0) and np.all(out_label[3] == 0)


def test_evaluation_crops_brats_volumes_like_the_reference_and_pads_depth_to_160():
    shape = (240, 240, 155)
    image = np.zeros(shape + (4,), np.uint8)
    image[8, 8, 0] = 200  # first voxel of the reference's 224x224x155 centre crop
    image[7, 8, 0] = 100  # just outside it
    mean, std = np.full(4, 50, np.float32), np.full(4, 25, np.float32)
    graph = tf.Graph()
    with graph.as_default():
        out = input_pipeline.evaluation_transform(tf.constant(image), tf.constant(mean), tf.constant(std),
                                                  (224, 224, 155), 32)
        with tf1.Session(graph=graph) as session:
            volume, offsets, crop = session.run(out)
    assert volume.shape == (224, 224, 160, 4)
    assert offsets.tolist() == [8, 8, 0] and crop.tolist() == [224, 224, 155]
    assert volume[0, 0, 0, 0] == pytest.approx((200 - 50) / 25)
    assert np.count_nonzero(volume) == 4  # the outside voxel was cropped away; padding is zero


def _first_batches(files, first_sample, batches, seed=5):
    graph = tf.Graph()
    with graph.as_default():
        dataset = input_pipeline.training_dataset(
            files, intensity=record_intensity(files), batch_size=2, crop_shape=(16, 16, 16), augmentation="seed",
            seed=seed, first_sample=first_sample)
        next_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        with tf1.Session(graph=graph) as session:
            return [session.run(next_batch) for _ in range(batches)]


def test_training_stream_is_deterministic_and_resumes_exactly(records):
    manifest = Manifest(records)
    files = [manifest.record_path(case) for case in manifest.cases]
    first = _first_batches(files, 0, 3)
    again = _first_batches(files, 0, 3)
    resumed = _first_batches(files, 4, 1)  # step 2 at batch 2 = sample 4
    for (image_a, label_a), (image_b, label_b) in zip(first, again):
        assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert np.array_equal(resumed[0][0], first[2][0]) and np.array_equal(resumed[0][1], first[2][1])
    other_seed = _first_batches(files, 0, 1, seed=6)
    assert not np.array_equal(other_seed[0][0], first[0][0])
    assert first[0][0].shape == (2, 16, 16, 16, 4) and first[0][1].shape == (2, 16, 16, 16)
