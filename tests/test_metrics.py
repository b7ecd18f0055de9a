import numpy as np
import pytest

from unet3d_core.evaluation import distances, metrics


def test_dice_of_hand_computed_masks():
    prediction = np.zeros((4, 4, 4), bool)
    truth = np.zeros((4, 4, 4), bool)
    prediction[0, 0, :3] = True  # 3 voxels
    truth[0, 0, 1:] = True  # 3 voxels, 2 shared
    assert distances.dice(prediction, truth) == pytest.approx(2 * 2 / 6)


def test_both_empty_is_perfect_and_one_empty_is_zero():
    empty = np.zeros((3, 3, 3), bool)
    one = empty.copy()
    one[1, 1, 1] = True
    assert distances.dice(empty, empty) == 1.0
    assert distances.dice(one, empty) == 0.0
    assert distances.dice(empty, one) == 0.0


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
    first = {name: 1.0 for name in metrics.default_scheme().names}
    second = {name: 0.0 for name in metrics.default_scheme().names}
    assert metrics.summarize([first, second])["WholeTumor"] == 0.5


# ---------------------------------------------------------------- HD95 and empty cases
def _mask(shape, *voxels):
    mask = np.zeros(shape, bool)
    for voxel in voxels:
        mask[voxel] = True
    return mask


def test_empty_cases_follow_the_challenge_in_every_brats_region():
    empty = np.zeros((5, 5, 5), np.uint8)
    both_empty = metrics.case_metrics(empty, empty, spacing=(1, 1, 1))
    for region in ("WT", "TC", "ET"):
        assert both_empty["Dice_" + region] == 1.0
        assert both_empty["HD95_" + region] == 0.0
    assert both_empty["MeanDice"] == 1.0 and both_empty["WholeTumor"] == 1.0

    truth = empty.copy()
    truth[2, 2, 2] = 2  # oedema only: WT present, TC and ET empty on both sides
    one_empty = metrics.case_metrics(empty, truth, spacing=(1, 1, 1))
    assert one_empty["Dice_WT"] == 0.0 and one_empty["HD95_WT"] == 373.13
    assert one_empty["Dice_TC"] == 1.0 and one_empty["HD95_TC"] == 0.0
    assert one_empty["Dice_ET"] == 1.0 and one_empty["HD95_ET"] == 0.0
    # ... and the other way round: a prediction where the truth is empty.
    assert metrics.hd95(truth > 0, empty > 0) == 373.13


def test_single_voxels_are_their_distance_apart():
    prediction = _mask((6, 6, 9), (2, 2, 2))
    truth = _mask((6, 6, 9), (2, 2, 5))
    assert metrics.hd95(prediction, truth) == pytest.approx(3.0)
    assert metrics.hd95(prediction, prediction) == 0.0


def test_anisotropic_spacing_is_used_per_axis():
    spacing = (0.5, 2.0, 3.0)  # mm along x, y, z
    centre = (3, 3, 3)
    assert metrics.hd95(_mask((7, 7, 7), centre), _mask((7, 7, 7), (5, 3, 3)), spacing) == pytest.approx(1.0)
    assert metrics.hd95(_mask((7, 7, 7), centre), _mask((7, 7, 7), (3, 5, 3)), spacing) == pytest.approx(4.0)
    assert metrics.hd95(_mask((7, 7, 7), centre), _mask((7, 7, 7), (3, 3, 5)), spacing) == pytest.approx(6.0)
    # Diagonal: sqrt(1^2 + 4^2 + 6^2) mm.
    assert metrics.hd95(_mask((7, 7, 7), centre), _mask((7, 7, 7), (5, 5, 5)), spacing) == pytest.approx(
        np.sqrt(1 + 16 + 36))


def test_hd95_is_the_95th_percentile_of_both_directions_pooled():
    truth = _mask((3, 3, 14), (1, 1, 1))
    prediction = _mask((3, 3, 14), (1, 1, 1), (1, 1, 11))  # one voxel right, one 10 voxels away
    # Distances pooled: prediction->truth [0, 10], truth->prediction [0]; the
    # 95th percentile of [0, 0, 10] by linear interpolation is 0.9 x 10.
    assert metrics.hd95(prediction, truth) == pytest.approx(9.0)
    assert metrics.hd95(truth, prediction) == pytest.approx(9.0)  # symmetric


def test_only_surfaces_count_not_interiors():
    truth = np.zeros((9, 9, 9), bool)
    truth[2:7, 2:7, 2:7] = True  # a 5^3 cube
    prediction = np.zeros((9, 9, 9), bool)
    prediction[2:7, 2:7, 2:8] = True  # the same cube one voxel longer along z
    # Surface voxels of either cube lie at most 1 voxel from the other's surface.
    assert metrics.hd95(prediction, truth) == pytest.approx(1.0)
    assert distances.dice(prediction, truth) == pytest.approx(2 * 125 / (125 + 150))


def _brute_force_hd95(prediction, truth, spacing):
    from scipy import ndimage

    def surface(mask):
        return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))

    a = np.argwhere(surface(prediction)) * np.asarray(spacing)
    b = np.argwhere(surface(truth)) * np.asarray(spacing)
    pairwise = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1))
    return float(np.percentile(np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)]), 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_a_brute_force_computation(seed):
    from scipy import ndimage

    rng = np.random.RandomState(seed)
    shape = (14, 11, 9)
    # Smoothed noise gives blobs, some touching the border of the array.
    prediction = ndimage.uniform_filter(rng.rand(*shape), 3) > 0.55
    truth = ndimage.uniform_filter(rng.rand(*shape), 3) > 0.55
    assert prediction.any() and truth.any()
    spacing = (0.9, 1.3, 2.5)
    assert metrics.hd95(prediction, truth, spacing) == pytest.approx(_brute_force_hd95(prediction, truth, spacing))


def test_case_metrics_pass_spacing_to_every_region():
    truth = np.zeros((4, 4, 8), np.uint8)
    truth[1, 1, 1] = 3  # enhancing: in WT, TC and ET
    prediction = np.zeros((4, 4, 8), np.uint8)
    prediction[1, 1, 5] = 3
    values = metrics.case_metrics(prediction, truth, spacing=(1.0, 1.0, 2.5))
    for region in ("WT", "TC", "ET"):
        assert values["HD95_" + region] == pytest.approx(10.0)
        assert values["Dice_" + region] == 0.0


def test_describe_names_the_scheme_and_gives_mean_median_std():
    cases = []
    for value in (0.2, 0.4, 0.9):
        case = {name: value for name in metrics.default_scheme().names}
        cases.append(case)
    statistics = metrics.describe(cases)
    assert statistics["MeanDice"]["scheme"] == "legacy"
    assert statistics["Dice_ET"]["scheme"] == "brats" and statistics["HD95_WT"]["scheme"] == "brats"
    assert statistics["Dice_WT"]["mean"] == pytest.approx(0.5)
    assert statistics["Dice_WT"]["median"] == pytest.approx(0.4)
    assert statistics["Dice_WT"]["std"] == pytest.approx(np.std([0.2, 0.4, 0.9]))
    table = metrics.format_table(statistics, 3)
    assert "HD95_ET" in table and "brats" in table and "legacy" in table
    assert table.index("Dice_WT") < table.index("TumorCore")  # the BraTS regions first
