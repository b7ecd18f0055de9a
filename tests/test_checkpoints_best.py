"""The ``best`` checkpoint: pseudo-Dice validations during train_and_evaluate, and ``--checkpoint`` choosing."""
import json
import os
import shutil

import numpy as np
import pytest
from conftest import run_cli, train_args

from unet3d_core.engine import best_checkpoint as best_lib
from unet3d_core.errors import ConfigError
from unet3d_core.model import checkpoints
from unet3d_core.model.checkpoints import (
    BEST_FOLDER,
    best_checkpoint,
    checkpoint_step,
    latest_checkpoint,
    select_checkpoint,
)
from unet3d_core.model.config import ModelConfig


def _log_records(model_dir):
    with open(os.path.join(model_dir, "log.json")) as handle:
        return [json.loads(line[5:]) for line in handle if line.startswith("DLLL ")]


def _validation(model_dir):
    with open(os.path.join(model_dir, best_lib.VALIDATION_FILE)) as handle:
        return json.load(handle)


def _eval_results(model_dir):
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        return json.load(handle)


def _best_files(model_dir):
    return sorted(name for name in os.listdir(os.path.join(model_dir, BEST_FOLDER)) if name.endswith(".index"))


# ------------------------------------------------------------------ pieces
def test_ema_follows_nnunet_and_best_is_where_it_peaks():
    state = best_lib.ValidationState()
    improved = [state.record(step, score) for step, score in [(10, 0.5), (20, 0.9), (30, float("nan")), (40, 0.1)]]
    emas = [entry["ema"] for entry in state.history]
    assert emas == pytest.approx([0.5, 0.54, 0.54, 0.496])  # 0.9 * 0.5 + 0.1 * 0.9; NaN keeps the EMA
    assert improved == [True, True, False, False]
    assert (state.best_step, state.best_ema) == (20, pytest.approx(0.54))


def test_pseudo_dice_pools_counts_over_patches_and_skips_absent_classes():
    network = ModelConfig(num_classes=4)
    labels = np.zeros((2, 4, 4, 4), np.int32)
    labels[0, :2] = 1  # 32 voxels of class 1 in the first patch, none elsewhere; classes 2 and 3 absent
    predicted = np.zeros_like(labels)
    predicted[0, :1] = 1  # 16 of them found
    predicted[1, :1] = 1  # and 16 false positives in the second patch
    probabilities = np.eye(4, dtype=np.float32)[predicted]
    score, per_class = best_lib.pseudo_dice(probabilities, labels, network)
    assert per_class[0] == pytest.approx(2 * 16 / (32 + 32))  # tp 16, fp 16, fn 16, pooled over both patches
    assert np.isnan(per_class[1]) and np.isnan(per_class[2])
    assert score == pytest.approx(0.5)
    regions = ModelConfig(num_classes=4, target="regions", regions=(("WT", (1, 2, 3)), ("ET", (3,))))
    outputs = np.zeros(labels.shape + (2,), np.float32)
    outputs[..., 0] = labels > 0  # whole tumour exactly right, ET predicted nowhere and absent: NaN
    assert best_lib.pseudo_dice(outputs, labels, regions)[0] == pytest.approx(1.0)


def test_patches_are_fixed_and_every_other_one_is_on_tumour():
    random = np.random.RandomState(0)
    cases = []
    for index in range(3):
        label = np.zeros((20, 18, 12), np.uint8)
        label[2 + index, 3:5, 9:11] = 3  # a small lesion near one edge
        cases.append((random.standard_normal(label.shape + (4,)).astype(np.float32), label))
    order = best_lib.case_order(len(cases), 6)
    assert order == [0, 1, 2, 0, 1, 2] and best_lib.case_order(10, 4) == [0, 2, 5, 7]
    images, labels = best_lib.cut_patches(iter(cases), order, (8, 8, 16), seed=5)
    again = best_lib.cut_patches(iter(cases), order, (8, 8, 16), seed=5)
    assert images.shape == (6, 8, 8, 16, 4) and labels.shape == (6, 8, 8, 16)  # z padded from 12 to 16
    assert np.array_equal(images, again[0]) and np.array_equal(labels, again[1])
    assert all(np.count_nonzero(labels[index]) > 0 for index in range(0, 6, 2))


def _write_checkpoints(model_dir, steps):
    """Checkpoints of a one-variable graph at ``steps``, as the trainer names them."""
    import tensorflow as tf

    os.makedirs(model_dir, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.get_variable("weight", [3], initializer=tf.compat.v1.zeros_initializer())
        saver = tf.compat.v1.train.Saver(max_to_keep=None)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for step in steps:
                saver.save(session, os.path.join(model_dir, "model.ckpt"), global_step=step, write_meta_graph=False)


def test_best_survives_rotation_and_selection_names_what_exists(tmp_path):
    model_dir = str(tmp_path / "run")
    _write_checkpoints(model_dir, (1, 2, 3))
    checkpoints.keep_as_best(os.path.join(model_dir, "model.ckpt-1"), model_dir)
    checkpoints.keep_as_best(os.path.join(model_dir, "model.ckpt-2"), model_dir)
    assert _best_files(model_dir) == ["model.ckpt-2.index"]  # the best it replaces is gone
    checkpoints.prune_checkpoints(model_dir, 1)
    assert latest_checkpoint(model_dir)[1] == 3 and best_checkpoint(model_dir)[1] == 2
    assert select_checkpoint(model_dir)[1:] == (2, "best")
    assert select_checkpoint(model_dir, "latest")[1:] == (3, "latest")
    assert select_checkpoint(model_dir, "2")[1:] == (2, "step")  # only the best copy holds step 2 now
    with pytest.raises(ConfigError, match=r"--checkpoint 1: .* it has: best \(step 2\), step 3$"):
        select_checkpoint(model_dir, "1")
    shutil.rmtree(os.path.join(model_dir, BEST_FOLDER))
    assert select_checkpoint(model_dir)[1:] == (3, "latest")
    with pytest.raises(ConfigError, match=r"--checkpoint best: .* no best checkpoint .* it has: step 3$"):
        select_checkpoint(model_dir, "best")


class _Logger:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def _resume_tracking(model_dir, step):
    from types import SimpleNamespace

    listener = best_lib.BestCheckpoint(SimpleNamespace(model_dir=model_dir), every=1, total_steps=9, saver=None,
                                       guard=None, patches=(np.zeros((2, 4, 4, 4, 1)), np.zeros((2, 4, 4, 4))),
                                       session_config=None, layer_ops=None, logger=_Logger())
    listener.begin(None, step)
    return listener


def test_resume_repairs_best_to_what_the_kept_validations_chose(tmp_path):
    model_dir = str(tmp_path / "run")
    _write_checkpoints(model_dir, (1, 2, 3))
    state = best_lib.ValidationState()
    for step, score in ((1, 0.2), (2, 0.6), (3, 0.9)):
        state.record(step, score)
    best_lib.write_state(model_dir, state)
    checkpoints.keep_as_best(os.path.join(model_dir, "model.ckpt-2"), model_dir)
    # Killed after recording step 3 as best, before copying it: the copy is made on resuming.
    assert _resume_tracking(model_dir, 3).state.best_step == 3 and best_checkpoint(model_dir)[1] == 3
    # Resumed from step 1 (later checkpoints damaged): the best of steps being redone is replaced by step 1's.
    listener = _resume_tracking(model_dir, 1)
    assert [entry["step"] for entry in listener.state.history] == [1] and best_checkpoint(model_dir)[1] == 1
    # No validation up to the resumed step: a best left in the folder is removed, not evaluated later.
    listener = _resume_tracking(model_dir, 0)
    assert listener.state.best_step is None and not os.path.exists(os.path.join(model_dir, BEST_FOLDER))
    assert "no validation up to step 0 chose it" in listener.logger.lines[-1]


# ------------------------------------------------------------------ during training
SEED_RECIPE = ["--recipe", "seed"]  # the quickest training; nothing here depends on the recipe


@pytest.fixture(scope="module")
def validated(records, tmp_path_factory):
    """train_and_evaluate, 6 steps, checkpoints and validations every 2 steps, 2 checkpoints kept."""
    model_dir = str(tmp_path_factory.mktemp("best") / "run")
    run_cli(train_args(records, model_dir, "--exec_mode", "train_and_evaluate", "--max_steps", "6",
                       "--checkpoint_every", "2", "--validate_every", "2", "--keep_checkpoints", "2",
                       "--validation_patches", "4", *SEED_RECIPE))
    return model_dir


def test_training_validates_and_keeps_the_step_where_the_ema_peaked(validated):
    content = _validation(validated)
    history = content["history"]
    assert [entry["step"] for entry in history] == [2, 4, 6]
    assert content["patches"] == 4 and content["validate_every"] == 2
    ema = None
    for entry in history:
        assert 0.0 <= entry["pseudo_dice"] <= 1.0
        ema = entry["pseudo_dice"] if ema is None else 0.9 * ema + 0.1 * entry["pseudo_dice"]
        assert entry["ema"] == pytest.approx(ema)
    peak = max(history, key=lambda entry: entry["ema"])  # the first of equal values, as ">" keeps it
    assert content["best"]["step"] == peak["step"]
    assert _best_files(validated) == ["model.ckpt-{}.index".format(peak["step"])]
    logged = [record["data"] for record in _log_records(validated) if record["step"] == "validation"]
    assert [(data["step"], data["ema"]) for data in logged] == [(entry["step"], pytest.approx(entry["ema"]))
                                                                 for entry in history]
    # The final evaluation scored the best checkpoint, and says so.
    results = _eval_results(validated)
    assert results["checkpoint_step"] == peak["step"]
    assert results["checkpoint"] == "best/model.ckpt-{}".format(peak["step"])


def test_checkpoint_flag_selects_latest_step_or_best(validated, records, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    shutil.copytree(validated, run_dir)
    best_step = _validation(run_dir)["best"]["step"]
    for choice, step, name in (("latest", 6, "model.ckpt-6"), ("4", 4, "model.ckpt-4"),
                               ("best", best_step, "best/model.ckpt-{}".format(best_step))):
        run_cli(["evaluate", "--data_dir", records, "--model_dir", run_dir, "--checkpoint", choice])
        results = _eval_results(run_dir)
        assert (results["checkpoint_step"], results["checkpoint"]) == (step, name), choice
    capsys.readouterr()
    missing = 5 if best_step != 5 else 3
    assert run_cli(["evaluate", "--data_dir", records, "--model_dir", run_dir, "--checkpoint", str(missing)],
                   check=False) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --checkpoint {}: ".format(missing)) and "steps 4, 6" in error
    assert len(error.splitlines()) == 1
    out = str(tmp_path / "exported")
    run_cli(["export", "--model_dir", run_dir, "--out", out, "--checkpoint", "4"])
    with open(os.path.join(out, "export.json")) as handle:
        assert json.load(handle)["source"]["step"] == 4


def test_checkpoint_best_without_one_is_an_error(records, tmp_path, capsys):
    model_dir = str(tmp_path / "plain")
    run_cli(train_args(records, model_dir, "--max_steps", "1", *SEED_RECIPE))  # train alone keeps no best
    assert not os.path.isdir(os.path.join(model_dir, BEST_FOLDER))
    capsys.readouterr()
    assert run_cli(["predict", "--data_dir", records, "--model_dir", model_dir, "--checkpoint", "best"],
                   check=False) == 1
    assert "--checkpoint best: {} has no best checkpoint".format(model_dir) in capsys.readouterr().err


SCORES = {1: 0.9, 2: 0.1, 3: 0.1, 4: 0.5, 5: 0.5, 6: 0.5}  # a restarted EMA would pick step 4, the kept one step 1


def test_resume_continues_the_ema_and_picks_the_same_best(records, tmp_path, monkeypatch):
    monkeypatch.setattr(best_lib.BestCheckpoint, "score",
                        lambda self, checkpoint: (SCORES[checkpoint_step(checkpoint)], [0.0]))
    common = ["--exec_mode", "train_and_evaluate", "--checkpoint_every", "1", "--keep_checkpoints", "1"] + SEED_RECIPE
    whole = str(tmp_path / "whole")
    run_cli(train_args(records, whole, "--max_steps", "6", *common))
    parts = str(tmp_path / "parts")
    run_cli(train_args(records, parts, "--max_steps", "3", *common))
    run_cli(train_args(records, parts, "--max_steps", "6", *common))
    uninterrupted, resumed = _validation(whole), _validation(parts)
    assert [entry["ema"] for entry in resumed["history"]] == [entry["ema"] for entry in uninterrupted["history"]]
    assert uninterrupted["best"]["step"] == resumed["best"]["step"] == 1
    for model_dir in (whole, parts):  # step 1 rotated out of the newest checkpoints long ago; best kept it
        assert latest_checkpoint(model_dir)[1] == 6 and best_checkpoint(model_dir)[1] == 1
        assert _eval_results(model_dir)["checkpoint"] == "best/model.ckpt-1"
