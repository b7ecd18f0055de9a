"""The in-memory case cache changes speed only: the same samples, in the same order, resumable."""
import numpy as np
import tensorflow as tf
from conftest import record_intensity

from unet3d_core.data import input_pipeline
from unet3d_core.data.records import Manifest

tf1 = tf.compat.v1


def _batches(files, first_sample, count, cache, seed=5):
    graph = tf.Graph()
    with graph.as_default():
        dataset = input_pipeline.training_dataset(
            files, intensity=record_intensity(files), batch_size=2, crop_shape=(16, 16, 16), augmentation="seed",
            seed=seed, first_sample=first_sample, cache=cache)
        next_batch = tf1.data.make_one_shot_iterator(dataset).get_next()
        with tf1.Session(graph=graph) as session:
            return [session.run(next_batch) for _ in range(count)]


def _files(records):
    manifest = Manifest(records)
    return [manifest.record_path(case) for case in manifest.cases]


def test_cached_stream_equals_uncached_stream_over_several_epochs(records):
    files = _files(records)[:4]  # 4 cases, batch 2: 7 batches cover 3.5 epochs
    plain = _batches(files, 0, 7, cache=False)
    cached = _batches(files, 0, 7, cache=True)
    for (image_a, label_a), (image_b, label_b) in zip(plain, cached):
        assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)


def test_cached_stream_resumes_exactly(records):
    files = _files(records)
    uninterrupted = _batches(files, 0, 7, cache=True)
    resumed = _batches(files, 10, 2, cache=True)  # step 5 at batch 2, in the second epoch
    for (image_a, label_a), (image_b, label_b) in zip(uninterrupted[5:], resumed):
        assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
