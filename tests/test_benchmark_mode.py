"""--benchmark and --synthetic_input: timing the device, not the disk, for train and predict (tiny shapes)."""
import glob
import json
import os
import shutil

import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli, train_args

TINY_CONFIG = dict(base_filters=4, max_filters=16, depth=3)


def _benchmark_record(model_dir):
    with open(os.path.join(model_dir, "log.json")) as handle:
        records = [json.loads(line[5:]) for line in handle if line.startswith("DLLL ")]
    found = [record["data"] for record in records if record.get("step") == "benchmark"]
    assert len(found) == 1, records
    return found[0]


@pytest.fixture
def unreadable_records(records, tmp_path):
    """A copy of the data set whose record files are zeros (of the right size): only the manifest is usable."""
    folder = str(tmp_path / "broken")
    shutil.copytree(records, folder)
    for path in glob.glob(os.path.join(folder, "*.tfrecord")):
        size = os.path.getsize(path)
        with open(path, "wb") as handle:
            handle.write(bytes(size))
    return folder


def test_synthetic_input_benchmark_times_training_without_reading_records(unreadable_records, tmp_path):
    model_dir = str(tmp_path / "bench")
    run_cli(train_args(unreadable_records, model_dir, "--benchmark", "--synthetic_input", "--max_steps", "4",
                       "--warmup_steps", "1"))
    report = _benchmark_record(model_dir)
    assert report["throughput_train"] > 0
    # batch 2 on one worker: throughput is 2 volumes per mean step time
    assert report["throughput_train"] == pytest.approx(2000.0 / report["latency_train_mean_ms"], rel=1e-6)
    assert report["latency_train_p99_ms"] >= report["latency_train_p95_ms"] >= report["latency_train_p90_ms"] > 0
    assert not glob.glob(os.path.join(model_dir, "model.ckpt*"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoint"))


def test_synthetic_batches_are_deterministic_repeated_and_shaped():
    import tensorflow as tf

    from unet3d_core.engine.training_graph import synthetic_training_dataset
    from unet3d_core.model.config import ModelConfig

    def first_batches(seed, count=2):
        graph = tf.Graph()
        with graph.as_default():
            dataset = synthetic_training_dataset(batch_size=2, crop_shape=(8, 8, 4), model_config=ModelConfig(),
                                                 seed=seed)
            batch = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
            with tf.compat.v1.Session(graph=graph) as session:
                return [session.run(batch) for _ in range(count)]

    (image, label), (again_image, again_label) = first_batches(5)
    assert image.shape == (2, 8, 8, 4, 4) and image.dtype == np.float32
    assert label.shape == (2, 8, 8, 4) and label.dtype == np.int32
    assert set(np.unique(label).tolist()) <= {0, 1, 2, 3}
    assert np.array_equal(image, again_image) and np.array_equal(label, again_label)  # one batch, repeated
    assert np.array_equal(first_batches(5, 1)[0][0], image)  # same seed, same data
    assert not np.array_equal(first_batches(6, 1)[0][0], image)


def test_per_step_time_is_derived_when_one_run_does_several_steps():
    """Iterations per loop (NPU): a session run of k steps counts as k steps of a k-th of its time."""
    from unet3d_core.engine.listeners import BenchmarkTimer, StepResult
    from unet3d_core.logger import benchmark_report

    class Logger:
        def __init__(self):
            self.logged = []

        def metrics(self, step, values):
            self.logged.append((step, values))

    timer, logger = BenchmarkTimer(), Logger()
    step = 0
    for seconds in (4.0, 2.0, 2.0, 2.0):  # 2 steps per run; the first run compiles
        timer.after_step(StepResult(step_before=step, step=step + 2, loss=1.0, learning_rate=1e-3, seconds=seconds))
        step += 2
    timer.after_step(StepResult(step_before=step, step=step, loss=1.0, learning_rate=1e-3, seconds=9.0))  # skipped
    assert timer.step_times == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    report = benchmark_report(timer.step_times, "train", warmup_steps=2, max_steps=8, logger=logger,
                              volumes_per_step=2 * 8)  # batch 2 on 8 devices
    assert report["throughput_train"] == pytest.approx(16.0)
    assert report["latency_train_mean_ms"] == pytest.approx(1000.0)
    assert logger.logged == [("benchmark", report)]


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    from unet3d_core.evaluation.inference import initialize_checkpoint
    from unet3d_core.model.config import ModelConfig

    model_dir = str(tmp_path_factory.mktemp("predict-bench") / "model")
    initialize_checkpoint(model_dir, ModelConfig(**TINY_CONFIG), seed=0)
    return model_dir


def _predict_args(records, model_dir, *extra):
    return ["predict", "--data_dir", records, "--model_dir", model_dir, "--predict_on", "all",
            "--benchmark"] + TINY_MODEL + list(extra)


def test_predict_benchmark_times_whole_volumes_and_writes_nothing(records, checkpoint_dir):
    # The data set has 10 cases; 12 volumes means going round them again.
    run_cli(_predict_args(records, checkpoint_dir, "--warmup_steps", "2", "--max_steps", "12"))
    report = _benchmark_record(checkpoint_dir)
    assert report["throughput_predict"] == pytest.approx(1000.0 / report["latency_predict_mean_ms"], rel=1e-6)
    assert report["latency_predict_p99_ms"] >= report["latency_predict_p90_ms"] > 0
    assert not os.path.exists(os.path.join(checkpoint_dir, "predictions"))


def test_predict_benchmark_on_a_synthetic_volume(unreadable_records, checkpoint_dir, tmp_path):
    model_dir = str(tmp_path / "model")
    shutil.copytree(checkpoint_dir, model_dir, ignore=shutil.ignore_patterns("log.json"))  # only the checkpoint
    run_cli(_predict_args(unreadable_records, model_dir, "--synthetic_input", "--eval_crop", "32", "32", "24",
                          "--warmup_steps", "1", "--max_steps", "3"))
    assert _benchmark_record(model_dir)["throughput_predict"] > 0
    assert not os.path.exists(os.path.join(model_dir, "predictions"))
