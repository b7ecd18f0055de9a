"""`cli.py report RUN_DIR`: curves, case overlays and a Markdown summary people can open.

The pictures are decoded and looked at (size, not blank, overlays drawn), and the index is read
for what a user takes from it: a link to each picture, the requested cases and no others, and the
numbers of the run's log and evaluation, checked against values computed here.
"""
import json
import os
import re

import nibabel
import numpy as np
import pytest
from conftest import run_cli, train_args
from raw_trees import save, write_brats2020

from unet3d_core.evaluation import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# plot_curves: figsize (15, 4) at 100 dpi; plot_case: 3.3 x 6.6 inches a column at 90 dpi.
CURVES_SIZE = (400, 1500)
CASE_HEIGHT, CASE_COLUMN_WIDTH = 594, 297
LINK = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


@pytest.fixture(scope="module")
def predicted_run(records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("report") / "run")
    run_cli(train_args(records, model_dir, "--exec_mode", "train_and_evaluate", "--max_steps", "3"))
    run_cli(["predict", "--data_dir", records, "--model_dir", model_dir, "--predict_on", "all",
             "--input_shape", "16", "16", "16", "--base_filters", "4", "--max_filters", "16", "--depth", "3"])
    return model_dir


def _picture(path, size=None):
    """The decoded RGB pixels of a PNG, checked to be one of ``size`` (height, width) and not blank."""
    from matplotlib import image

    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE, path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4), (path, pixels.shape)
    if size is not None:
        assert abs(pixels.shape[0] - size[0]) <= 1 and abs(pixels.shape[1] - size[1]) <= 1, (path, pixels.shape)
    rgb = pixels[..., :3]
    colours = np.unique(np.round(rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 32, "{}: only {} distinct colours: a blank picture".format(path, len(colours))
    return rgb


def _colourful(rgb):
    """Pixels that are not grey: the label overlays (and the legend's patches)."""
    return int(np.count_nonzero(rgb.max(axis=-1) - rgb.min(axis=-1) > 0.05))


def _links(index, out_dir):
    links = LINK.findall(index)
    for _, target in links:
        assert os.path.isfile(os.path.join(out_dir, target)), "index.md links {}, not written".format(target)
    return links


def _dice(a, b):
    return 1.0 if not a.any() and not b.any() else 2.0 * np.count_nonzero(a & b) / (a.sum() + b.sum())


def _caption(case_id, truth, prediction):
    """plot_case's caption, computed here from label maps in BraTS 2019 labels (ET = 4)."""
    index = int(np.argmax(np.count_nonzero(truth > 0, axis=(0, 1))))
    regions = (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,)))
    return "{}: axial slice {} of {}; whole-volume Dice (BraTS regions) {}".format(
        case_id, index, truth.shape[2], ", ".join("{} {:.3f}".format(name, _dice(np.isin(prediction, labels),
                                                                                np.isin(truth, labels)))
                                                   for name, labels in regions))


def _segmentation_of(raw_dir, case_id):
    for folder, _, names in os.walk(raw_dir):
        for name in names:
            if name in (case_id + "_seg.nii.gz", case_id + "_seg.nii"):
                return os.path.join(folder, name)
    raise AssertionError("no segmentation of {} in {}".format(case_id, raw_dir))


def _load(path):
    return np.asanyarray(nibabel.load(path).dataobj)


def test_report_renders_curves_case_overlays_and_an_index(predicted_run, raw_dataset, capsys):
    run_cli(["report", predicted_run, "--cases", "2"])
    out_dir = os.path.join(predicted_run, "report")
    assert "index.md" in capsys.readouterr().out
    _picture(os.path.join(out_dir, "curves.png"), CURVES_SIZE)
    predicted = sorted(name[:-len(".nii.gz")] for name in os.listdir(os.path.join(predicted_run, "predictions"))
                       if name.endswith(".nii.gz"))
    drawn = predicted[:2]  # --cases 2: the first two predictions in name order
    assert sorted(name for name in os.listdir(out_dir) if name.endswith(".png")) == sorted(
        ["curves.png"] + ["case-{}.png".format(case_id) for case_id in drawn])
    for case_id in drawn:
        _picture(os.path.join(out_dir, "case-{}.png".format(case_id)), (CASE_HEIGHT, 3 * CASE_COLUMN_WIDTH))
    with open(os.path.join(out_dir, "index.md")) as handle:
        index = handle.read()
    assert sorted(_links(index, out_dir)) == sorted([("training curves", "curves.png")] + [
        (case_id, "case-{}.png".format(case_id)) for case_id in drawn])
    assert predicted[2] not in index
    # The numbers: the last logged loss of log.json, every statistic of eval_results.json, each case's Dice.
    steps = []
    with open(os.path.join(predicted_run, "log.json")) as handle:
        for line in handle:
            record = json.loads(line[len("DLLL "):]) if line.startswith("DLLL ") else {}
            if isinstance(record.get("step"), int) and "loss" in record.get("data", {}):
                steps.append((record["step"], record["data"]["loss"]))
    assert steps and "- run: steps {}..{}, last logged loss {:.4f}, 1 evaluation(s)".format(
        steps[0][0], steps[-1][0], steps[-1][1]) in index
    with open(os.path.join(predicted_run, "eval_results.json")) as handle:
        results = json.load(handle)
    assert {"Dice_ET", "MeanDice", "HD95_WT"} <= set(results["statistics"])
    for name, row in results["statistics"].items():
        assert "| {} | {} | {:.4f} | {:.4f} | {:.4f} |".format(
            name, row["scheme"], row["mean"], row["median"], row["std"]) in index
    assert "Checkpoint step {};".format(results["checkpoint_step"]) in index
    for case_id in drawn:
        truth = _load(_segmentation_of(raw_dataset, case_id))
        prediction = _load(os.path.join(predicted_run, "predictions", case_id + ".nii.gz"))
        assert _caption(case_id, truth, prediction) in index


LOG = [
    {"type": "PARAMETER", "step": "PARAMETER", "data": {"data_dir": "/nowhere", "max_steps": 30}},
    {"type": "LOG", "step": 10, "data": {"loss": 1.5, "learning_rate": 0.001}},
    {"type": "LOG", "step": 20, "data": {"loss": 1.25, "learning_rate": 0.0005}},
    {"type": "LOG", "step": 30, "data": {"loss": 0.8125, "learning_rate": 0.00025}},
    {"type": "LOG", "step": "eval", "data": {"MeanDice": 0.625, "Dice_WT": 0.875, "checkpoint_step": 30}},
]
EVALUATION = {"checkpoint_step": 30, "inference": {"mode": "sliding"}, "statistics": {
    "MeanDice": {"scheme": "legacy", "mean": 0.5, "median": 0.4375, "std": 0.125},
    "Dice_WT": {"scheme": "brats", "mean": 0.8125, "median": 0.875, "std": 0.0625},
    "HD95_ET": {"scheme": "brats", "mean": 12.25, "median": 3.5, "std": 17.0},
}}


@pytest.fixture
def hand_made_run(tmp_path):
    """A run folder written by hand: its log, its evaluation, raw images and four predictions whose
    Dice is known (A exact, B with its enhancing tumour called necrosis, C empty, D never drawn)."""
    raw = str(tmp_path / "raw")
    cases = write_brats2020(raw, count=4)
    ids = sorted(cases)
    # A's tumour is largest in axial slice 11 (raw_trees' blocks span slices 4..9 evenly).
    first = cases[ids[0]]
    first.seg[4:20, 4:20, 11] = 2
    save(_segmentation_of(raw, ids[0]), first.seg)
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    with open(str(run / "log.json"), "w") as handle:
        handle.writelines("DLLL " + json.dumps(line) + "\n" for line in LOG)
    with open(str(run / "eval_results.json"), "w") as handle:
        json.dump(EVALUATION, handle)
    predictions = {ids[0]: first.seg, ids[1]: np.where(cases[ids[1]].seg == 4, 1, cases[ids[1]].seg),
                   ids[2]: np.zeros_like(cases[ids[2]].seg), ids[3]: cases[ids[3]].seg}
    for case_id, labels in predictions.items():
        save(str(run / "predictions" / (case_id + ".nii.gz")), labels.astype(np.uint8))
    return str(run), raw, {case_id: (cases[case_id].seg, labels) for case_id, labels in predictions.items()}


def test_report_of_a_hand_made_run_shows_its_numbers_and_the_requested_cases(hand_made_run, tmp_path, capsys):
    run, raw, labels = hand_made_run
    ids = sorted(labels)
    out_dir = str(tmp_path / "pictures")
    run_cli(["report", run, "--cases", "3", "--images", raw, "--out", out_dir])
    assert capsys.readouterr().out.strip() == "wrote {}".format(os.path.join(out_dir, "index.md"))
    with open(os.path.join(out_dir, "index.md")) as handle:
        index = handle.read()
    drawn = ids[:3]
    assert sorted(os.listdir(out_dir)) == sorted(["index.md", "curves.png"] + ["case-{}.png".format(i) for i in drawn])
    assert _links(index, out_dir) == [("training curves", "curves.png")] + [
        (case_id, "case-{}.png".format(case_id)) for case_id in drawn]
    assert ids[3] not in index
    _picture(os.path.join(out_dir, "curves.png"), CURVES_SIZE)
    pictures = {case_id: _picture(os.path.join(out_dir, "case-{}.png".format(case_id)),
                                  (CASE_HEIGHT, 3 * CASE_COLUMN_WIDTH)) for case_id in drawn}
    # The empty prediction adds no overlay: fewer coloured pixels than B (the same truth geometry, slice 4).
    assert _colourful(pictures[ids[2]]) < _colourful(pictures[ids[1]])
    assert "- run: steps 10..30, last logged loss 0.8125, 1 evaluation(s)" in index
    assert "| MeanDice | legacy | 0.5000 | 0.4375 | 0.1250 |" in index
    assert "| Dice_WT | brats | 0.8125 | 0.8750 | 0.0625 |" in index
    assert "| HD95_ET | brats | 12.2500 | 3.5000 | 17.0000 |" in index
    assert 'Checkpoint step 30; inference {"mode": "sliding"}.' in index
    expected = {
        ids[0]: "{}: axial slice 11 of 16; whole-volume Dice (BraTS regions) WT 1.000, TC 1.000, ET 1.000",
        ids[1]: "{}: axial slice 4 of 16; whole-volume Dice (BraTS regions) WT 1.000, TC 1.000, ET 0.000",
        ids[2]: "{}: axial slice 4 of 16; whole-volume Dice (BraTS regions) WT 0.000, TC 0.000, ET 0.000",
    }
    for case_id, caption in expected.items():
        assert caption.format(case_id) in index
        assert caption.format(case_id) == _caption(case_id, *labels[case_id])


def test_report_without_predictions_says_how_to_get_case_pictures(hand_made_run, tmp_path):
    run, raw, _ = hand_made_run
    for name in os.listdir(os.path.join(run, "predictions")):
        os.remove(os.path.join(run, "predictions", name))
    index_path = report.build_report(run, out_dir=str(tmp_path / "out"), images_dir=raw)
    with open(index_path) as handle:
        index = handle.read()
    assert _links(index, str(tmp_path / "out")) == [("training curves", "curves.png")]
    assert "No case pictures: no predictions with findable images" in index
    assert "| Dice_WT | brats | 0.8125 | 0.8750 | 0.0625 |" in index


def test_log_lines_become_curves(tmp_path):
    path = str(tmp_path / "log.json")
    lines = [
        {"type": "PARAMETER", "step": "PARAMETER", "data": {"data_dir": "/nowhere"}},
        {"type": "LOG", "step": 10, "data": {"loss": 1.5, "learning_rate": 0.001}},
        {"type": "LOG", "step": 20, "data": {"loss": 1.0, "learning_rate": 0.0005}},
        {"type": "LOG", "step": "eval", "data": {"MeanDice": 0.5, "Dice_WT": 0.8, "checkpoint_step": 20}},
        {"type": "LOG", "step": "eval", "data": {"MeanDice": 0.6}},  # older logs: no checkpoint_step
    ]
    with open(path, "w") as handle:
        for line in lines:
            handle.write("DLLL " + json.dumps(line) + "\n")
        handle.write("DLLL {\"cut short by a kill")
    parameters, records = report.read_log(path)
    assert parameters == {"data_dir": "/nowhere"}
    curves = report.curves_of(records)
    assert curves["steps"] == [10, 20] and curves["loss"] == [1.5, 1.0]
    assert curves["evaluations"] == [(20, {"MeanDice": 0.5, "Dice_WT": 0.8}), (20, {"MeanDice": 0.6})]


def test_report_on_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(["report", str(tmp_path)], check=False) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: RUN_DIR") and "\n" not in err
