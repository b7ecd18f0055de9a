"""BraTS 2023+ cohorts: detection, each cohort's own labels and regions, channels and classes that follow the
data, predictions in the cohort's labels, and a one-image cohort (MEN-RT) trained, evaluated and scored."""
import csv
import json
import os

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli
from raw_trees import COHORT_LABELS, preprocess_tree, save, write_cohort

from unet3d_core.data.case_scan import discover_cases, scan_cases
from unet3d_core.data.layouts import detect_layout, inverse_label_map
from unet3d_core.data.preprocess import validate
from unet3d_core.data.records import Manifest, read_record
from unet3d_core.errors import DataError

# Written out from the releases' documentation (the issue's cohort table), not taken from the code:
# cohort -> (layout, image channels, classes, label meanings, regions in source labels).
GLIOMA = {1: "NETC", 2: "SNFH", 3: "ET"}
GLIOMA_REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
EXPECTED = {
    "GLI": ("brats2023", 4, 4, GLIOMA, GLIOMA_REGIONS),
    "GLI-post": ("brats2024-gli", 4, 5, {**GLIOMA, 4: "RC"},
                 dict(GLIOMA_REGIONS, NETC=[1], SNFH=[2], RC=[4])),
    "SSA": ("brats-ssa", 4, 4, GLIOMA, GLIOMA_REGIONS),
    "MEN": ("brats-men", 4, 4, GLIOMA, GLIOMA_REGIONS),
    "GoAT": ("brats-goat", 4, 4, GLIOMA, GLIOMA_REGIONS),
    "MET": ("brats-met", 4, 5, {**GLIOMA, 4: "RC"}, GLIOMA_REGIONS),
    "PED": ("brats-ped", 4, 5, {1: "ET", 2: "NETC", 3: "CC", 4: "ED"},
            {"WT": [1, 2, 3, 4], "TC": [1, 2, 3], "ET": [1]}),
    "MEN-RT": ("brats-men-rt", 1, 2, {1: "GTV"}, {"GTV": [1]}),
}


_preprocess = preprocess_tree


@pytest.mark.parametrize("cohort", sorted(EXPECTED))
def test_each_cohort_is_detected_and_keeps_its_labels_channels_and_classes(cohort, tmp_path):
    layout, channels, classes, meanings, regions = EXPECTED[cohort]
    raw = str(tmp_path / cohort)
    written = write_cohort(raw, cohort, count=4)
    assert detect_layout(raw) == layout
    cases = discover_cases(raw)
    assert [case.case_id for case in cases] == sorted(written)
    assert all(len(case.images) == channels for case in cases)
    manifest = Manifest(_preprocess(raw, tmp_path))
    assert manifest.layout == layout and len(manifest.channels) == channels and manifest.num_classes == classes
    assert manifest.content["cohort"] == cohort.replace("-post", "")
    assert {int(key): value for key, value in manifest.content["label_names"].items()} == {**meanings, 0: "background"}
    assert manifest.content["regions"] == regions
    # Labels both ways: 2023+ releases keep their own numbers inside.
    assert manifest.label_map == {label: label for label in range(classes)}
    assert inverse_label_map(manifest.label_map) == manifest.label_map
    for entry in manifest.cases:
        record = read_record(manifest.record_path(entry))
        assert record["image"].shape[-1] == channels and record["mean"].shape == (channels,)
        assert np.array_equal(record["label"], written[entry["id"]].seg)
        assert set(np.unique(record["label"])) == {0} | set(COHORT_LABELS[cohort])


def test_a_label_outside_the_cohort_is_named_with_the_file(tmp_path):
    raw = str(tmp_path / "gli")
    write_cohort(raw, "GLI", count=3, labels=(1, 2, 4))
    report = validate(raw, show_progress=False)
    assert len(report.problems) == 3
    problem = str(report.problems[0])
    assert "BraTS-GLI-00000-000-seg.nii.gz" in problem and "unknown label value(s) 4" in problem
    assert "use --layout brats2024-gli" in problem
    raw = str(tmp_path / "men-rt")
    write_cohort(raw, "MEN-RT", count=2, labels=(1, 2))
    (first, _) = validate(raw, show_progress=False).problems
    assert "BraTS-MEN-RT-0000-1_gtv.nii.gz" in str(first) and "unknown label value(s) 2" in str(first)


def test_layout_forces_a_cohort_and_mixed_cohorts_are_refused(tmp_path):
    raw = str(tmp_path / "ped")
    write_cohort(raw, "PED", count=2)
    assert detect_layout(raw, "brats2023-ped") == "brats2023-ped"
    problems = validate(raw, layout="brats2023-ped", show_progress=False).problems
    assert problems and "unknown label value(s) 4" in str(problems[0])
    write_cohort(raw, "MET", count=1)
    with pytest.raises(DataError, match=r"several layouts \(brats-met e\.g\. BraTS-MET-00000-000, brats-ped"):
        detect_layout(raw)


def test_goat_cases_without_labels_are_kept_for_predict(tmp_path):
    raw = str(tmp_path / "goat")
    write_cohort(raw, "GoAT", count=5, unlabelled=(3, 4))
    scan = scan_cases(raw)
    assert scan.layout == "brats-goat" and not scan.problems
    assert [case.segmentation is None for case in scan.cases] == [False, False, False, True, True]
    manifest = Manifest(_preprocess(raw, tmp_path))
    assert sum(not case["has_label"] for case in manifest.cases) == 2
    training, validation = manifest.split(0)
    assert all(case["has_label"] for case in training + validation) and len(training + validation) == 3


@pytest.mark.parametrize("cohort", ["PED", "MEN-RT", "GLI-post"])
def test_predictions_are_written_in_the_cohorts_labels(cohort, tmp_path):
    from unet3d_core.data.volumes import raw_folder_cases, write_label_map

    raw = str(tmp_path / cohort)
    written = write_cohort(raw, cohort, count=2)
    ids, loaded = raw_folder_cases(raw)
    for case_id, case in zip(ids, loaded):
        assert case.image.shape[-1] == EXPECTED[cohort][1]
        path = str(tmp_path / (case_id + ".nii.gz"))
        write_label_map(path, case.label, case)
        back = nibabel.load(path)
        assert np.array_equal(np.asanyarray(back.dataobj), written[case_id].seg)
        image = os.path.join(written[case_id].folder, sorted(os.listdir(written[case_id].folder))[0])
        assert np.allclose(back.affine, nibabel.load(image).affine)


def test_men_rt_trains_on_one_image_and_two_classes_and_scores_lesion_wise(tmp_path, capsys):
    raw = str(tmp_path / "men-rt")
    write_cohort(raw, "MEN-RT", count=4)
    records = _preprocess(raw, tmp_path)
    model_dir, predictions = str(tmp_path / "run"), str(tmp_path / "predictions")
    common = ["--data_dir", records, "--model_dir", model_dir, "--fold", "0", "--backend", "cpu"] + TINY_MODEL
    run_cli(["train", "--exec_mode", "train_and_evaluate", "--max_steps", "2", "--batch_size", "1",
             "--inference_mode", "crop"] + common)
    with open(os.path.join(model_dir, "run.json")) as handle:
        network = json.load(handle)["network"]
    assert (network["in_channels"], network["num_classes"]) == (1, 2)
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        evaluated = json.load(handle)
    assert list(evaluated["mean"]) == ["Dice_GTV", "HD95_GTV", "LesionDice_GTV", "LesionHD95_GTV"]
    assert evaluated["layout"] == "brats-men-rt" and evaluated["lesion_rules"] == "2024"
    assert "BraTS 2024 rules for MEN-RT" in evaluated["naming"]["lesion"]
    out = capsys.readouterr().out
    assert "LesionDice_GTV" in out and "lesion-wise (2024)" in out
    run_cli(["predict", "--output_dir", predictions, "--inference_mode", "crop"] + common)
    files = sorted(name for name in os.listdir(predictions) if name.endswith(".nii.gz"))
    assert files == sorted(case["id"] + ".nii.gz" for case in Manifest(records).cases if case["fold"] == 0)
    for name in files:
        assert set(np.unique(np.asanyarray(nibabel.load(os.path.join(predictions, name)).dataobj))) <= {0, 1}
    # Scoring the written predictions against the raw _gtv files gives evaluate's numbers.
    run_cli(["score", "--pred", predictions, "--truth", raw, "--out", str(tmp_path / "scores.csv")])
    with open(str(tmp_path / "scores.csv")) as handle:
        scored = {row["case"]: row for row in csv.DictReader(handle)}
    assert sorted(scored) == sorted(evaluated["cases"])
    for case_id, values in evaluated["cases"].items():
        for name, value in values.items():
            assert float(scored[case_id][name]) == pytest.approx(value, rel=1e-5, abs=1e-9), (case_id, name)
    # The report shows the lesion-wise numbers with their rules and draws the one-image cases.
    run_cli(["report", model_dir, "--predictions", predictions])
    with open(os.path.join(model_dir, "report", "index.md")) as handle:
        index = handle.read()
    assert "| LesionDice_GTV | lesion |" in index and "BraTS 2024 rules for MEN-RT" in index
    assert "![BraTS-MEN-RT-" in index and "GTV" in index.split("## Cases")[1]
    # The run's network takes one image: a four-image data set is refused in one line.
    glioma = str(tmp_path / "gli")
    write_cohort(glioma, "GLI", count=2)
    other = _preprocess(glioma, tmp_path, name="gli-records")
    capsys.readouterr()
    assert run_cli(["evaluate", "--data_dir", other, "--model_dir", model_dir, "--backend", "cpu"], check=False) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "4 image channel(s) and 4 classes" in err and "trained on 1 and 2" in err
    # MEN-RT has no 2023 rules.
    assert run_cli(["evaluate", "--lesion_rules", "2023"] + common, check=False) == 1
    assert "no MEN-RT cohort" in capsys.readouterr().err


def test_score_detects_the_cohort_from_the_truth_and_uses_its_regions(tmp_path):
    raw = str(tmp_path / "ped")
    written = write_cohort(raw, "PED", count=2)
    predictions = str(tmp_path / "pred")
    for case_id, case in written.items():
        prediction = case.seg.copy()
        prediction[prediction == 3] = 0  # CC missed
        save(os.path.join(predictions, case_id + ".nii.gz"), prediction)
    run_cli(["score", "--pred", predictions, "--truth", raw, "--lesion_rules", "2024"])
    with open(os.path.join(predictions, "metrics.json")) as handle:
        summary = json.load(handle)
    assert summary["labels"] == "brats-ped" and summary["cohort"] == "PED"
    assert summary["metrics"]["Dice_ET"]["mean"] == 1.0  # PED's ET is label 1
    assert summary["metrics"]["LesionDice_CC"]["mean"] == 0.0 and summary["metrics"]["LesionHD95_CC"]["mean"] == 374
    assert summary["metrics"]["Dice_WT"]["mean"] < 1.0
    assert "BraTS 2024 rules for PED" in summary["naming"]["lesion"]
