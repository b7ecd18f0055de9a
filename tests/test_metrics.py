import numpy as np
import pytest

from unet3d_core import metrics


def test_dice_of_hand_computed_masks():
    prediction = np.zeros((4, 4, 4), bool)
    truth = np.zeros((4, 4, 4), bool)
    prediction[0, 0, :3] = True  # 3 voxels
    truth[0, 0, 1:] = True  # 3 voxels, 2 shared
    assert metrics.dice(prediction, truth) == pytest.approx(2 * 2 / 6)


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(one, empty) == 0.0
    assert metrics.dice(empty, one) == 0.0


def test_regions_follow_both_naming_schemes():
    truth = np.zeros((2, 2, 3), np.uint8)
    truth[0, 0] = [1, 2, 3]  # core, oedema, enhancing
    prediction = truth.copy()
    prediction[0, 0, 0] = 3  # core voxel predicted as enhancing
    values = metrics.case_metrics(prediction, truth)
    assert values["TumorCore"] == 0.0  # seed: label 1 alone
    assert values["PeritumoralEdema"] == 1.0
    assert values["EnhancingTumor"] == pytest.approx(2 * 1 / 3)
    assert values["MeanDice"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert values["WholeTumor"] == 1.0 and values["Dice_WT"] == 1.0
    assert values["Dice_TC"] == 1.0  # BraTS TC = {1, 3}: unchanged by the swap
    assert values["Dice_ET"] == pytest.approx(2 / 3)


def test_summary_counts_each_case_once():
    first = {name: 1.0 for name in metrics.METRIC_NAMES}
    second = {name: 0.0 for name in metrics.METRIC_NAMES}
    assert metrics.summarize([first, second])["WholeTumor"] == 0.5
