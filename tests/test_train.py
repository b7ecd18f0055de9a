"""Training, resuming, evaluation and prediction through the CLI, at toy sizes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nibabel
import numpy as np
import pytest
from conftest import ROOT, cli_subprocess, run_cli, train_args

from unet3d_core.data.records import Manifest


def _log_records(model_dir):
    with open(os.path.join(model_dir, "log.json")) as handle:
        return [json.loads(line[5:]) for line in handle if line.startswith("DLLL ")]


def _checkpoint_steps(model_dir):
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(model_dir)
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths] if state else []


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    """A run trained for 6 steps with train_and_evaluate, checkpoints every 3 steps."""
    model_dir = str(tmp_path_factory.mktemp("run") / "model")
    run_cli(train_args(records, model_dir, "--exec_mode", "train_and_evaluate", "--max_steps", "6",
                       "--checkpoint_every", "3", "--augment"))
    return model_dir


def test_training_logs_falling_steps_and_writes_chief_checkpoints(trained):
    steps = [r["step"] for r in _log_records(trained) if r["type"] == "LOG" and isinstance(r["step"], int)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert _checkpoint_steps(trained) == [3, 6]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(trained))


def test_evaluation_scores_every_validation_case_once(trained, records):
    with open(os.path.join(trained, "eval_results.json")) as handle:
        report = json.load(handle)
    _, validation = Manifest(records).split(0)
    assert sorted(report["cases"]) == sorted(case["id"] for case in validation)
    with open(os.path.join(trained, "validation.json")) as handle:
        best_step = json.load(handle)["best"]["step"]  # train_and_evaluate scores its best checkpoint
    assert best_step in (3, 6) and report["checkpoint_step"] == best_step
    for name in ("WholeTumor", "MeanDice", "Dice_WT", "Dice_TC", "Dice_ET"):
        assert 0.0 <= report["mean"][name] <= 1.0
    assert "label 4" in report["naming"]["legacy"]
    # The same means reach TensorBoard, at the checkpoint's step.
    import tensorflow as tf

    events = [os.path.join(trained, "eval", name) for name in os.listdir(os.path.join(trained, "eval"))]
    scalars = {value.tag: (event.step, value.simple_value) for path in events
               for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert scalars["eval/Dice_WT"] == (best_step, pytest.approx(report["mean"]["Dice_WT"]))


def test_resume_continues_at_saved_step(trained, records, capsys, tmp_path):
    resumed = str(tmp_path / "resumed")
    shutil.copytree(trained, resumed)  # the module's run stays as the other tests expect it
    run_cli(train_args(records, resumed, "--max_steps", "8", "--checkpoint_every", "3"))
    output = capsys.readouterr().out
    assert "Resuming from" in output and "at step 6" in output
    steps = [r["step"] for r in _log_records(resumed) if r["type"] == "LOG" and isinstance(r["step"], int)]
    assert steps[-2:] == [7, 8]
    assert _checkpoint_steps(resumed) == [3, 6, 8]  # --keep_checkpoints 3 (the default)
    # Re-running a finished run does no work and says so.
    run_cli(train_args(records, resumed, "--max_steps", "8"))
    assert "already finished" in capsys.readouterr().out
    assert _checkpoint_steps(trained) == [3, 6]


def test_prediction_is_nifti_in_source_geometry_and_labels(trained, records, tmp_path):
    out = str(tmp_path / "predictions")
    run_cli(["predict", "--data_dir", records, "--model_dir", trained, "--output_dir", out, "--predict_on", "all"])
    manifest = Manifest(records)
    assert sorted(os.listdir(out)) == sorted(case["id"] + ".nii.gz" for case in manifest.cases)
    case = manifest.cases[0]
    source = nibabel.load(case["source_images"]["flair"])
    predicted = nibabel.load(os.path.join(out, case["id"] + ".nii.gz"))
    assert predicted.shape == source.shape
    assert np.allclose(predicted.affine, source.affine)
    assert set(np.unique(np.asanyarray(predicted.dataobj)).tolist()) <= {0, 1, 2, 4}
    # Existing predictions are not replaced without --overwrite.
    code = run_cli(["predict", "--data_dir", records, "--model_dir", trained, "--output_dir", out], check=False)
    assert code == 1


def test_benchmark_reports_throughput_and_writes_no_checkpoint(records, tmp_path):
    model_dir = str(tmp_path / "bench")
    run_cli(train_args(records, model_dir, "--benchmark", "--max_steps", "5", "--warmup_steps", "2"))
    report = [r for r in _log_records(model_dir) if r["step"] == "benchmark"][0]["data"]
    assert report["throughput_train"] > 0
    assert report["latency_train_p99_ms"] >= report["latency_train_p90_ms"] > 0
    assert _checkpoint_steps(model_dir) == []


def test_learning_rate_schedule_values():
    import tensorflow as tf

    from unet3d_core.engine.training_graph import learning_rate_at

    graph = tf.Graph()
    with graph.as_default():
        step = tf.compat.v1.placeholder(tf.int64, [])
        constant = learning_rate_at(step, base=1.0, warmup_steps=4, total_steps=104, schedule="constant")
        cosine = learning_rate_at(step, base=1.0, warmup_steps=4, total_steps=104, schedule="cosine")
        with tf.compat.v1.Session(graph=graph) as session:
            def value(op, at):
                return session.run(op, {step: at})

            assert value(constant, 0) == pytest.approx(0.25)
            assert value(constant, 3) == pytest.approx(1.0)
            assert value(constant, 50) == pytest.approx(1.0)
            assert value(cosine, 54) == pytest.approx(0.5, abs=1e-6)
            assert value(cosine, 104) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_sigkill_then_restart_continues_from_last_checkpoint(records, tmp_path):
    model_dir = str(tmp_path / "killed")
    args = train_args(records, model_dir, "--max_steps", "400", "--checkpoint_every", "2")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py")] + args, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not [s for s in _checkpoint_steps(model_dir) if s >= 4]:
            time.sleep(0.2)
        assert process.poll() is None, "training ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    saved = max(_checkpoint_steps(model_dir))
    assert saved >= 4
    result = cli_subprocess(train_args(records, model_dir, "--max_steps", str(saved + 2),
                                       "--checkpoint_every", "2"))
    assert result.returncode == 0, result.stderr
    assert "Resuming from" in result.stdout and "at step {}".format(saved) in result.stdout
    assert max(_checkpoint_steps(model_dir)) == saved + 2
