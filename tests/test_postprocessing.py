"""Post-processing chosen on the pooled held-out cases of cross-validation, written to postprocessing.json and
applied by predict."""
import json
import os

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli, train_args

from unet3d_core.data.layouts import LAYOUTS
from unet3d_core.errors import ConfigError
from unet3d_core.evaluation import postprocessing
from unet3d_core.evaluation.distances import dice

GLIOMA = LAYOUTS["brats2019"].regions  # WT {1,2,3}, TC {1,3}, ET {3}
SHAPE = (24, 24, 16)


class _Messages:
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def _tumour(core=True, enhancing=None):
    """Oedema 8x8x6 around a 4x4x4 necrotic core; ``enhancing`` (low, high) boxes of label 3 inside it."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:12, 4:12, 4:10] = 2
    if core:
        labels[6:10, 6:10, 5:9] = 1
    for low, high in enhancing or ():
        labels[tuple(slice(a, b) for a, b in zip(low, high))] = 3
    return labels


def _loader(cases):
    return lambda: iter(cases)


def test_a_small_false_enhancing_region_is_relabelled_by_the_chosen_threshold():
    # Case 1: no enhancing tumour in the truth, 2x2x4 = 16 voxels predicted inside the core. Case 2: a core
    # of 4x4x4 = 64 voxels of ET, predicted exactly. Relabelling ET below T voxels helps case 1 for T > 16
    # and hurts case 2 for T > 64.
    truth_1 = _tumour()
    prediction_1 = truth_1.copy()
    prediction_1[7:9, 7:9, 5:9] = 3
    truth_2 = _tumour(enhancing=[((6, 6, 5), (10, 10, 9))])
    cases = [(prediction_1, truth_1), (truth_2.copy(), truth_2)]
    content = postprocessing.choose(_loader(cases), GLIOMA)
    step = content["tried"][0]
    assert step["step"] == "et_volume_threshold" and step["kept"]
    assert step["threshold_voxels"] == 20  # the smallest T above 16 voxels
    # Before: case 1 scores WT 1, TC 1 (ET voxels lie in TC either way), ET 0 (nothing to find); case 2 all 1.
    assert step["dice_before"] == pytest.approx((2 / 3 + 1) / 2)
    assert step["dice_after"] == pytest.approx(1.0)
    curve = step["dice_by_threshold"]
    assert len(curve) == 76 and curve["0"] == pytest.approx(5 / 6) and curve["10"] == pytest.approx(5 / 6)
    assert curve["60"] == pytest.approx(1.0)
    assert curve["70"] == pytest.approx((1 + 2 / 3) / 2)  # case 2's 64 voxels relabelled too: its ET Dice is 0
    assert content["chosen"]["et_volume_threshold"] == 20
    assert content["per_region"]["ET"] == {"before": pytest.approx(0.5), "after": pytest.approx(1.0)}
    assert content["dice_before"] == pytest.approx(5 / 6) and content["dice_after"] == pytest.approx(1.0)
    # Single components everywhere: keep-largest changes nothing, so it is not kept.
    assert [step["kept"] for step in content["tried"][1:]] == [False] * 4
    chosen = postprocessing.PostProcessing(20)
    assert np.count_nonzero(chosen.apply(prediction_1) == 3) == 0
    assert np.array_equal(chosen.apply(truth_2), truth_2)


def test_keep_largest_is_not_kept_when_the_truth_has_two_lesions():
    # Two separate true tumours, both found: keeping the largest component deletes a true one.
    truth = _tumour()
    truth[16:20, 16:20, 10:14] = 2
    prediction = truth.copy()
    prediction[9:12, 4:12, 4:10] = 0  # the first tumour found in part, still the larger one
    content = postprocessing.choose(_loader([(prediction, truth)]), GLIOMA)
    foreground = content["tried"][1]
    assert foreground["region"] == "foreground" and not foreground["kept"]
    assert foreground["dice_after"] < foreground["dice_before"]
    # WT loses the second (64-voxel) tumour, which was found exactly.
    kept_largest = postprocessing.keep_largest_component(prediction, None)
    assert np.count_nonzero(kept_largest) == np.count_nonzero(prediction) - 64
    assert foreground["dice_after"] == pytest.approx(np.mean([
        dice(np.isin(kept_largest, labels), np.isin(truth, labels)) for labels in GLIOMA.values()]))
    assert content["chosen"]["largest_component"] == [] and content["dice_after"] == content["dice_before"]
    assert "nothing" in content["description"]


def test_keep_largest_is_kept_when_it_removes_a_false_positive_speck():
    truth = _tumour()
    prediction = truth.copy()
    prediction[20:22, 20:22, 13:15] = 2  # 8 voxels of oedema far from the tumour
    content = postprocessing.choose(_loader([(prediction, truth)]), GLIOMA)
    assert [(step["region"], step["kept"]) for step in content["tried"][1:]] == [
        ("foreground", True), ("WT", False), ("TC", False), ("ET", False)]
    wt_before = 2 * 384 / (384 + 392)  # 8x8x6 = 384 true voxels
    assert content["per_region"]["WT"] == {"before": pytest.approx(wt_before), "after": pytest.approx(1.0)}
    assert content["chosen"]["largest_component"] == [{"region": "foreground", "labels": None}]


def test_cross_validation_choice_is_written_with_what_was_tried(tmp_path):
    truth_1 = _tumour()
    prediction_1 = truth_1.copy()
    prediction_1[7:9, 7:9, 5:9] = 3
    truth_2 = _tumour(enhancing=[((6, 6, 5), (10, 10, 9))])
    model_dir = str(tmp_path / "cv")
    # The kept maps are cropped to the tumour's box: the choice must not depend on it.
    postprocessing.save_heldout(os.path.join(model_dir, "fold-0", "heldout"), "A", prediction_1, truth_1)
    postprocessing.save_heldout(os.path.join(model_dir, "fold-1", "heldout"), "B", truth_2.copy(), truth_2)
    with np.load(os.path.join(model_dir, "fold-0", "heldout", "A.npz")) as saved:
        assert saved["prediction"].shape == (8, 8, 6)
    messages = _Messages()
    content = postprocessing.choose_for_cross_validation(model_dir, {0: ["A"], 1: ["B"]}, GLIOMA, messages,
                                                         "brats2019")
    with open(os.path.join(model_dir, "postprocessing.json")) as handle:
        written = json.load(handle)
    assert written == json.loads(json.dumps(content))
    assert written["cases"] == 2 and written["folds"] == 2 and written["layout"] == "brats2019"
    assert written["dice_regions"] == ["WT", "TC", "ET"]
    assert written["chosen"] == {"et_volume_threshold": 20, "largest_component": []}
    assert [step.get("region", step["step"]) for step in written["tried"]] == [
        "et_volume_threshold", "foreground", "WT", "TC", "ET"]
    assert written["dice_before"] == pytest.approx(5 / 6) and written["dice_after"] == pytest.approx(1.0)
    assert any("0.8333 -> 1.0000  kept" in line for line in messages.lines)
    chosen = postprocessing.read_postprocessing(os.path.join(model_dir, "postprocessing.json"))
    assert chosen.et_volume_threshold == 20 and chosen.largest_component == ()
    # A fold folder finds its CV folder's choice; --postprocessing none ignores it.
    fold = os.path.join(model_dir, "fold-1")
    assert postprocessing.for_run(fold).et_volume_threshold == 20
    assert postprocessing.for_run(fold, "none") is None
    assert postprocessing.for_run(str(tmp_path / "elsewhere")) is None
    # report shows each step's pooled Dice before and after.
    from unet3d_core.evaluation.report import build_report

    with open(os.path.join(model_dir, "log.json"), "w"):
        pass
    with open(build_report(model_dir, cases=0)) as handle:
        index = handle.read()
    assert "### Post-processing chosen on cross-validation" in index
    assert "| ET < 20 voxels -> necrosis (best of 0..750) | 0.8333 | 1.0000 | yes |" in index
    assert "| largest component of foreground | 1.0000 | 1.0000 | no |" in index
    # A missing held-out map: no choice, and a message saying why.
    assert postprocessing.choose_for_cross_validation(model_dir, {0: ["A", "C"]}, GLIOMA, messages) is None
    assert "run the evaluation again" in messages.lines[-1]


def test_a_broken_choice_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "postprocessing.json"
    path.write_text("{\"chosen\": {\"et_volume_threshold\": \"many\"}}")
    with pytest.raises(ConfigError, match="postprocessing.json: not a post-processing choice"):
        postprocessing.for_run(str(tmp_path))


def _volume(path):
    return np.asanyarray(nibabel.load(path).dataobj)


def test_predict_applies_the_cross_validation_choice(records, tmp_path, capsys):
    """A fold of a CV folder predicts with the parent's postprocessing.json unless --postprocessing none."""
    from unet3d_core.data.layouts import map_labels

    cv_dir = tmp_path / "cv"
    fold_dir = str(cv_dir / "fold-0")
    run_cli(train_args(records, fold_dir, "--fold", "0", "--max_steps", "1", "--backend", "cpu"))
    choice = {"chosen": {"et_volume_threshold": 10 ** 6,
                         "largest_component": [{"region": "foreground", "labels": None}]}}
    (cv_dir / "postprocessing.json").write_text(json.dumps(choice))
    common = ["predict", "--data_dir", records, "--model_dir", fold_dir, "--predict_on", "all",
              "--backend", "cpu"] + TINY_MODEL
    raw, applied = str(tmp_path / "raw"), str(tmp_path / "applied")
    run_cli(common + ["--output_dir", raw, "--postprocessing", "none"])
    assert "post-processing from" not in capsys.readouterr().out
    run_cli(common + ["--output_dir", applied])
    assert "post-processing from {}".format(cv_dir / "postprocessing.json") in capsys.readouterr().out
    label_map = dict(LAYOUTS["brats2019"].label_map)
    chosen = postprocessing.read_postprocessing(str(cv_dir / "postprocessing.json"))
    changed = 0
    names = sorted(name for name in os.listdir(raw) if name.endswith(".nii.gz"))
    assert names
    for name in names:
        before = map_labels(_volume(os.path.join(raw, name)), label_map, name)
        after = map_labels(_volume(os.path.join(applied, name)), label_map, name)
        assert np.array_equal(after, chosen.apply(before)), name
        assert not np.any(after == 3)  # every case's ET is below a million voxels
        changed += int(not np.array_equal(after, before))
    assert changed  # the network's own labels had something to post-process
