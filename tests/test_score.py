"""`cli.py score` on anyone's predictions, and `--fold all` cross-validation."""
import csv
import json
import os
import shutil

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli, train_args

from unet3d_core.evaluation import metrics

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _save(path, labels, affine=AFFINE, dtype=np.uint8):
    image = nibabel.Nifti1Image(labels.astype(dtype), affine)
    image.set_data_dtype(dtype)
    nibabel.save(image, path)


def _hand_made(tmp_path):
    """Two cases, flat folders, BraTS 2019 labels; spacing 1 x 1 x 2 mm."""
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir()
    pred_dir.mkdir()
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[2:4, 2:4, 2] = 4  # 4 enhancing voxels
    truth[2:4, 2:4, 3] = 2  # 4 oedema voxels
    perfect = truth.copy()
    shifted = np.zeros_like(truth)
    shifted[2:4, 2:4, 4] = 4  # enhancing one slice (2 mm) past the oedema, oedema missed
    _save(str(truth_dir / "A.nii.gz"), truth)
    _save(str(truth_dir / "B_seg.nii.gz"), truth)  # a _seg suffix still names case B
    # Another tool's output: float64, uncompressed.
    _save(str(pred_dir / "A.nii"), perfect, dtype=np.float64)
    _save(str(pred_dir / "B.nii.gz"), shifted)
    (pred_dir / "B_probabilities.nii.gz").write_text("ignored")
    return str(pred_dir), str(truth_dir)


def test_score_writes_hand_checkable_csv_and_json_summary(tmp_path, capsys):
    pred_dir, truth_dir = _hand_made(tmp_path)
    out = str(tmp_path / "scores" / "metrics.csv")
    run_cli(["score", "--pred", pred_dir, "--truth", truth_dir, "--out", out])
    printed = capsys.readouterr().out
    assert "Dice_WT" in printed and "HD95_ET" in printed and "legacy" in printed and "brats" in printed
    with open(out) as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["A", "B"]
    assert float(rows["A"]["Dice_WT"]) == 1.0 and float(rows["A"]["HD95_WT"]) == 0.0
    b = rows["B"]
    assert float(b["EnhancingTumor"]) == 0.0 and float(b["Dice_ET"]) == 0.0
    assert float(b["PeritumoralEdema"]) == 0.0  # oedema missed
    assert float(b["Dice_WT"]) == pytest.approx(2 * 0 / 12)  # no overlap at all
    assert float(b["HD95_ET"]) == pytest.approx(4.0)  # two slices of 2 mm
    with open(str(tmp_path / "scores" / "metrics.json")) as handle:
        summary = json.load(handle)
    assert summary["cases"] == 2 and summary["labels"] == "brats2019"
    assert summary["metrics"]["HD95_ET"] == dict(summary["metrics"]["HD95_ET"], scheme="brats",
                                                 mean=pytest.approx(2.0), median=pytest.approx(2.0),
                                                 std=pytest.approx(2.0))
    assert summary["metrics"]["TumorCore"]["scheme"] == "legacy"
    assert "label 1 alone" in summary["naming"]["legacy"]


def test_score_reads_a_raw_brats_truth_folder(raw_dataset, tmp_path):
    from unet3d_core.data.case_scan import discover_cases

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    cases = discover_cases(raw_dataset)
    for case in cases[:3]:
        shutil.copy(case.segmentation, str(pred_dir / (case.case_id + ".nii.gz")))
    run_cli(["score", "--pred", str(pred_dir), "--truth", raw_dataset])
    with open(str(pred_dir / "metrics.json")) as handle:
        summary = json.load(handle)
    assert summary["cases"] == 3 and len(summary["truth_cases_without_prediction"]) == len(cases) - 3
    assert summary["metrics"]["Dice_WT"]["mean"] == 1.0 and summary["metrics"]["HD95_TC"]["max"] == 0.0
    # Every truth case must be predicted with --require_all.
    assert run_cli(["score", "--pred", str(pred_dir), "--truth", raw_dataset, "--require_all"], check=False) == 1


def test_scoring_predict_outputs_reproduces_evaluate_exactly(records, raw_dataset, tmp_path):
    """The two roads to a number (evaluate on records; predict to NIfTI, then score) agree."""
    from unet3d_core.evaluation.inference import initialize_checkpoint
    from unet3d_core.model.config import ModelConfig

    model_dir, predictions = str(tmp_path / "model"), str(tmp_path / "predictions")
    initialize_checkpoint(model_dir, ModelConfig(base_filters=4, max_filters=16, depth=3), seed=11)
    common = ["--data_dir", records, "--model_dir", model_dir, "--fold", "1"] + TINY_MODEL
    run_cli(["evaluate"] + common)
    run_cli(["predict", "--output_dir", predictions] + common)
    run_cli(["score", "--pred", predictions, "--truth", raw_dataset, "--out", str(tmp_path / "scores.csv")])
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        evaluated = json.load(handle)
    with open(str(tmp_path / "scores.csv")) as handle:
        scored = {row["case"]: row for row in csv.DictReader(handle)}
    assert sorted(scored) == sorted(evaluated["cases"])
    for case_id, values in evaluated["cases"].items():
        for name in metrics.default_scheme().names:
            assert float(scored[case_id][name]) == pytest.approx(values[name], rel=1e-5), (case_id, name)


def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_score_errors_name_the_case_and_the_problem(tmp_path, capsys):
    pred_dir, truth_dir = _hand_made(tmp_path)
    args = ["score", "--pred", pred_dir, "--truth", truth_dir]

    _save(os.path.join(pred_dir, "C.nii.gz"), np.zeros((8, 8, 8)))
    assert run_cli(args, check=False) == 1
    message = _error(capsys)
    assert "1 prediction(s) have no ground truth" in message and message.endswith(": C")
    os.remove(os.path.join(pred_dir, "C.nii.gz"))

    _save(os.path.join(pred_dir, "B.nii.gz"), np.zeros((8, 8, 7)))
    assert run_cli(args, check=False) == 1
    assert "case B: prediction" in _error(capsys)

    _save(os.path.join(pred_dir, "B.nii.gz"), np.zeros((8, 8, 8)), affine=np.diag([1.0, 1.0, 1.0, 1.0]))
    assert run_cli(args, check=False) == 1
    assert "different affines" in _error(capsys)

    labels = np.zeros((8, 8, 8))
    labels[0, 0, 0] = 3  # not a BraTS 2019 label
    _save(os.path.join(pred_dir, "B.nii.gz"), labels)
    assert run_cli(args, check=False) == 1
    assert "unknown label value(s) 3" in _error(capsys)


def test_score_of_an_empty_folder_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    assert run_cli(["score", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")], check=False) == 1
    assert "no <case>.nii.gz label maps" in _error(capsys)


# ------------------------------------------------------------------ cross-validation
def test_fold_all_trains_evaluates_each_fold_and_pools_every_case_once(records, tmp_path, capsys):
    from unet3d_core.data.records import Manifest

    model_dir = str(tmp_path / "cv")
    args = train_args(records, model_dir, "--fold", "all", "--exec_mode", "train_and_evaluate",
                      "--max_steps", "1", "--inference_mode", "crop")
    run_cli(args)
    for fold in range(5):
        assert os.path.isfile(os.path.join(model_dir, "fold-{}".format(fold), "eval_results.json"))
    with open(os.path.join(model_dir, "cv_results.json")) as handle:
        pooled = json.load(handle)
    labelled = [case["id"] for case in Manifest(records).cases if case["has_label"]]
    assert pooled["cases"] == len(labelled) and pooled["folds"] == 5
    with open(os.path.join(model_dir, "cv_results.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["case"] for row in rows) == sorted(labelled)
    held_out = {case["id"]: case["fold"] for case in Manifest(records).cases if case["has_label"]}
    assert {row["case"]: int(row["fold"]) for row in rows} == held_out  # the fold that scored each case
    assert set(pooled["pooled"]) == set(metrics.default_scheme().names)
    # The pooled numbers are those of every case once, each scored by the fold that held it out.
    per_fold = []
    for fold in range(5):
        with open(os.path.join(model_dir, "fold-{}".format(fold), "eval_results.json")) as handle:
            per_fold.append(json.load(handle))
    cases = {case: values for report in per_fold for case, values in report["cases"].items()}
    assert sorted(cases) == sorted(labelled)
    for name in metrics.default_scheme().names:
        values = [case[name] for case in cases.values()]
        assert pooled["pooled"][name]["mean"] == pytest.approx(sum(values) / len(values), rel=1e-9)
        assert pooled["pooled"][name]["max"] == pytest.approx(max(values), rel=1e-9)
        assert pooled["mean_of_folds"][name] == pytest.approx(
            sum(report["mean"][name] for report in per_fold) / 5, rel=1e-9)
    assert "Cross-validation over 5 folds" in capsys.readouterr().out
    # Each fold kept its held-out label maps; post-processing was chosen on all of them pooled, starting from
    # the same Dice the evaluations report (docs/evaluation.md).
    for fold, report in enumerate(per_fold):
        assert sorted(os.listdir(os.path.join(model_dir, "fold-{}".format(fold), "heldout"))) == sorted(
            case + ".npz" for case in report["cases"])
    with open(os.path.join(model_dir, "postprocessing.json")) as handle:
        chosen = json.load(handle)
    assert chosen["cases"] == len(labelled) and chosen["folds"] == 5
    pooled_dice = sum(pooled["pooled"]["Dice_" + region]["mean"] for region in ("WT", "TC", "ET")) / 3
    assert chosen["dice_before"] == pytest.approx(pooled_dice, abs=1e-9)
    assert pooled["postprocessing"]["mean_dice_before"] == chosen["dice_before"]
    assert chosen["dice_after"] >= chosen["dice_before"]
    assert len(chosen["tried"]) == 5 and len(chosen["tried"][0]["dice_by_threshold"]) == 76
    # Resumable: a second run finds every fold finished and every evaluation current.
    run_cli(args)
    output = capsys.readouterr().out
    assert output.count("already finished") == 5 and output.count("; kept") == 5


def test_fold_all_is_accepted_only_where_it_means_something(records, tmp_path, capsys):
    result = run_cli(["predict", "--data_dir", records, "--model_dir", str(tmp_path / "m"), "--fold", "all",
                      "--predict_on", "all"] + TINY_MODEL, check=False)
    assert result == 1
    assert "--predict_on fold" in _error(capsys)


@pytest.mark.parametrize("command, flags", [("score", ["--pred", "--truth", "--out", "--require_all"]),
                                            ("report", ["RUN_DIR", "--cases", "--images"]),
                                            ("predict", ["--input_dir", "--inference_mode", "--overlap", "--tta",
                                                         "--save_probabilities", "--min_et_component_voxels"])])
def test_new_commands_and_flags_are_documented(command, flags):
    from conftest import cli_subprocess

    result = cli_subprocess([command, "--help"], timeout=60)
    assert result.returncode == 0
    for flag in flags:
        assert flag in result.stdout, flag
