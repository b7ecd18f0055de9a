"""Lesion-wise Dice, HD95 and NSD per region: components, matching and scores.

The challenge ranks by lesion-wise scores: each ground-truth lesion is scored
on its own, missed lesions and false positives are penalised, so a network that
finds the big tumour but misses three metastases no longer looks perfect.
:func:`lesion_scores` scores one case by a :class:`~unet3d_core.evaluation.lesion_rules.RuleSet`
(:mod:`unet3d_core.evaluation.lesion_rules` describes each year's rules): 2023-2025 find
lesions by dilation and take each lesion's Dice and HD95 against the predicted
components that reach it; 2026 matches 26-connected components one to one.

Normalised surface Dice (NSD), where the rules define it: the 2025 scripts
score ``LesionNSD05_<R>`` and ``LesionNSD10_<R>`` (tolerances 0.5 and 1.0 mm)
lesion by lesion exactly as their Dice (a miss and a false positive score 0);
the 2026 package scores ``LesionNSD_<R>`` per matched pair at a tolerance of
the smallest voxel spacing (1 mm on BraTS), a mean over matched pairs, no
match 0. Both use nnU-Net's definition, not DeepMind's surface Dice: the mean
of two fractions, the share of each mask's border voxels (voxels with a face
neighbour outside the mask) lying within the tolerance of the other's border.
DeepMind's ``compute_surface_dice_at_tolerance`` weights surface elements by
area and counts both surfaces together, so it gives other numbers.

Components and dilations are ``scipy.ndimage``; 2023-2025 HD95 is DeepMind's
``surface_distance`` (the package those scripts vendor) with the voxel
spacing; 2026 matching is ``scipy.optimize.linear_sum_assignment``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from unet3d_core.evaluation.distances import border_distances, dice
from unet3d_core.evaluation.lesion_rules import NO_MATCH_HD95_2026, RegionRule, RuleSet

# What keeps the NSD quotient finite: the 2025 scripts add 1e-8, panoptica the smallest positive float.
NSD_EPSILON_2025 = 1e-8
NSD_EPSILON_2026 = 2.2250738585072014e-308


@dataclass(frozen=True)
class LesionScore:
    """One region's lesion-wise result for one case."""

    dice: float
    hd95: float
    true_positives: int  # ground-truth lesions above the threshold that were found
    false_negatives: int  # ground-truth lesions above the threshold that were missed
    false_positives: int
    nsd: Tuple[float, ...] = ()  # normalised surface Dice at each of the rules' tolerances (RuleSet.nsd)


# ------------------------------------------------------------------ components
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def _dilation_structure():
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, 2)


def _occupied(mask: np.ndarray, margin: int):
    """The bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array), or None when empty."""
    from scipy import ndimage

    found = ndimage.find_objects(mask.astype(np.uint8))
    return _box(found[0], mask.shape, margin) if found else None


def _box(mask_slices, shape, margin):
    return tuple(slice(max(part.start - margin, 0), min(part.stop + margin, size))
                 for part, size in zip(mask_slices, shape))


def _union(boxes, shape, margin):
    """The smallest box holding all of ``boxes``, grown by ``margin``."""
    low = [min(box[axis].start for box in boxes) for axis in range(len(shape))]
    high = [max(box[axis].stop for box in boxes) for axis in range(len(shape))]
    return _box(tuple(slice(a, b) for a, b in zip(low, high)), shape, margin)


def components(mask: np.ndarray) -> np.ndarray:
    """26-connected components of ``mask``, numbered 1..n in the order the references number them.

    The challenge scripts label arrays read from NIfTI files, which are
    stored x fastest; numbering by a scan with x fastest gives the same
    numbers. The numbers matter only to the 2024 script's pairing rule.
    Work is done inside the mask's bounding box (a shift keeps the scan order).
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    labels = np.zeros(mask.shape, np.int32)
    box = _occupied(mask, 1)
    if box is not None:
        found, _ = ndimage.label(mask[box].T, structure=_STRUCTURE_26)
        labels[box] = found.T
    return labels


def merged_by_dilation(mask: np.ndarray, dilation: int) -> np.ndarray:
    """``mask``'s voxels labelled by the component of its ``dilation``-fold dilation they lie in."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    merged = np.zeros(mask.shape, np.int32)
    box = _occupied(mask, dilation + 1)  # the dilation stays inside
    if box is None:
        return merged
    dilated = ndimage.binary_dilation(mask[box], structure=_dilation_structure(), iterations=dilation)
    merged[box] = np.where(mask[box], components(dilated), 0)
    return merged


def _touching_pairs(labels: np.ndarray, partner: np.ndarray):
    """(label, partner label) pairs of lesions that touch: one dilation of either meets the other."""
    from scipy import ndimage

    structure = _dilation_structure()
    pairs = set()
    for index, found in enumerate(ndimage.find_objects(labels), start=1):
        if found is None:
            continue
        box = _box(found, labels.shape, 1)
        ring = ndimage.binary_dilation(labels[box] == index, structure=structure)
        for other in np.unique(partner[box][ring]):
            if other:
                pairs.add((index, int(other)))
    return pairs


def _relabel(labels: np.ndarray, pairs) -> np.ndarray:
    """The 2024 script's merge: lesions paired with the same partner lesion take one new number.

    New numbers start above the largest in use and go to the partner lesions
    in sorted order; each lesion takes the number of its smallest partner.
    """
    next_number = int(labels.max()) + 1
    number_of_partner: Dict[int, int] = {}
    for _, partner in sorted(pairs):
        if partner not in number_of_partner:
            number_of_partner[partner] = next_number
            next_number += 1
    renumbered = labels.copy()
    done = set()
    for lesion, partner in sorted(pairs):
        if lesion not in done:
            done.add(lesion)
            renumbered[labels == lesion] = number_of_partner[partner]
    return renumbered


def _drop_small(labels: np.ndarray, limit: float) -> np.ndarray:
    """``labels`` without the lesions of at most ``limit`` voxels."""
    counts = np.bincount(labels.ravel())
    small = np.flatnonzero((counts > 0) & (counts <= limit))
    small = small[small != 0]
    return np.where(np.isin(labels, small), 0, labels) if small.size else labels


# ------------------------------------------------------------------ distances
def surface_hd95(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance as DeepMind's surface_distance computes it (inf when one is empty)."""
    import surface_distance

    distances = surface_distance.compute_surface_distances(np.asarray(truth, dtype=bool),
                                                           np.asarray(prediction, dtype=bool),
                                                           [float(size) for size in spacing])
    return float(surface_distance.compute_robust_hausdorff(distances, 95))


def nsd_of_distances(from_truth: np.ndarray, from_prediction: np.ndarray, tolerance: float,
                     epsilon: float = NSD_EPSILON_2025) -> float:
    """Normalised surface Dice from :func:`~unet3d_core.evaluation.distances.border_distances`' output: the mean of
    the shares of each border within ``tolerance`` mm of the other (nnU-Net's definition, which the challenge
    uses)."""
    within_truth = np.count_nonzero(from_truth <= tolerance) / from_truth.size
    within_prediction = np.count_nonzero(from_prediction <= tolerance) / from_prediction.size
    outside_truth = np.count_nonzero(from_truth > tolerance) / from_truth.size
    outside_prediction = np.count_nonzero(from_prediction > tolerance) / from_prediction.size
    # The references' own quotient (it is 2 in exact arithmetic); the epsilon is theirs.
    return float((within_truth + within_prediction)
                 / (within_truth + within_prediction + outside_truth + outside_prediction + epsilon))


def normalized_surface_dice(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                            tolerance: float, epsilon: float = NSD_EPSILON_2025) -> float:
    """Normalised surface Dice of two boolean masks at ``tolerance`` mm: 1 when both are empty, 0 when
    exactly one is (the 2025 scripts' and panoptica's edge cases)."""
    truth = np.asarray(truth, dtype=bool)
    prediction = np.asarray(prediction, dtype=bool)
    has_truth, has_prediction = bool(truth.any()), bool(prediction.any())
    if not has_truth and not has_prediction:
        return 1.0
    if has_truth != has_prediction:
        return 0.0
    return nsd_of_distances(*border_distances(truth, prediction, spacing), tolerance, epsilon)


# ------------------------------------------------------------------ scoring
def _score_dilation(truth_lesions, predicted_lesions, rule: RegionRule, rules: RuleSet, spacing, penalty):
    from scipy import ndimage

    shape = truth_lesions.shape
    voxel = float(np.prod(spacing))
    structure = _dilation_structure()
    predicted_boxes = ndimage.find_objects(predicted_lesions)
    found = set()
    kept_dice, kept_hd95 = [], []
    kept_nsd = []  # per kept lesion, one value per tolerance of rules.nsd
    true_positives = false_negatives = 0
    for number, lesion_box in enumerate(ndimage.find_objects(truth_lesions), start=1):
        if lesion_box is None:
            continue
        box = _box(lesion_box, shape, rule.dilation + 1)
        lesion = truth_lesions[box] == number
        reach = ndimage.binary_dilation(lesion, structure=structure, iterations=rule.dilation)
        hits = np.unique(predicted_lesions[box][reach])
        hits = hits[hits != 0]
        found.update(int(hit) for hit in hits)
        if int(np.count_nonzero(lesion)) * voxel <= rule.threshold:
            continue
        if not hits.size:
            false_negatives += 1
            kept_dice.append(0.0)
            kept_hd95.append(penalty)
            kept_nsd.append([0.0] * len(rules.nsd))
            continue
        true_positives += 1
        # Everything of the lesion and of its true positives lies in this box, and a voxel of margin
        # keeps their surfaces as in the whole volume.
        both = _union([lesion_box] + [predicted_boxes[hit - 1] for hit in hits], shape, 1)
        lesion, matched = truth_lesions[both] == number, np.isin(predicted_lesions[both], hits)
        kept_dice.append(dice(matched, lesion))
        distance = surface_hd95(lesion, matched, spacing)
        kept_hd95.append(penalty if math.isinf(distance) else distance)
        if rules.nsd:
            distances = border_distances(lesion, matched, spacing)
            kept_nsd.append([nsd_of_distances(*distances, tolerance) for tolerance, _ in rules.nsd])
    present = set(int(n) for n in np.flatnonzero(np.bincount(predicted_lesions.ravel())) if n)
    false_positives = len(present - found)
    counted = false_positives if rules.count_false_positives else 0
    denominator = len(kept_dice) + counted
    if denominator == 0:
        return LesionScore(1.0, 0.0, 0, 0, false_positives, (1.0,) * len(rules.nsd))
    # A false positive adds 0 to the NSD sum, as to the Dice sum.
    nsd = tuple(sum(values[index] for values in kept_nsd) / denominator for index in range(len(rules.nsd)))
    return LesionScore(sum(kept_dice) / denominator, (sum(kept_hd95) + counted * penalty) / denominator,
                       true_positives, false_negatives, false_positives, nsd)


def _dilation_scores(prediction, truth, spacing, regions, rules: RuleSet):
    shape = truth.shape
    penalty = rules.penalty if rules.penalty is not None else math.sqrt(sum(size * size for size in shape))
    voxel = float(np.prod(spacing))
    every = OrderedDict(list(rules.regions.items()) + list(rules.partners.items()))
    truth_lesions, predicted_lesions = {}, {}
    for name, rule in every.items():
        labels = regions[name]
        truth_mask, predicted_mask = np.isin(truth, labels), np.isin(prediction, labels)
        truth_lesions[name] = merged_by_dilation(truth_mask, rule.dilation)
        if rules.merge_predictions:
            limit = rule.threshold / voxel if rules.prediction_threshold_in_mm3 else rule.threshold
            predicted_lesions[name] = _drop_small(merged_by_dilation(predicted_mask, rule.dilation), limit)
        else:
            predicted_lesions[name] = components(predicted_mask)
    results = OrderedDict()
    for name, rule in rules.regions.items():
        truth_labels, predicted_labels = truth_lesions[name], predicted_lesions[name]
        for partner in rule.merge_with:
            pairs = _touching_pairs(truth_labels, truth_lesions[partner])
            if len(pairs) > 1:
                truth_labels = _relabel(truth_labels, pairs)
            pairs = _touching_pairs(predicted_labels, predicted_lesions[partner])
            if len(pairs) > 1:
                predicted_labels = _relabel(predicted_labels, pairs)
        results[name] = _score_dilation(truth_labels, predicted_labels, rule, rules, spacing, penalty)
    return results


def _panoptica_scores(prediction, truth, spacing, regions, rules: RuleSet):
    from scipy import ndimage
    from scipy.optimize import linear_sum_assignment

    results = OrderedDict()
    for name in rules.regions:
        labels = regions[name]
        truth_lesions = components(np.isin(truth, labels))
        predicted_lesions = components(np.isin(prediction, labels))
        n_truth, n_predicted = int(truth_lesions.max()), int(predicted_lesions.max())
        if n_truth == 0 and n_predicted == 0:
            results[name] = LesionScore(1.0, 0.0, 0, 0, 0, (1.0,) * len(rules.nsd))
            continue
        pairs = []
        if n_truth and n_predicted:
            both = (truth_lesions > 0) & (predicted_lesions > 0)
            key = truth_lesions[both].astype(np.int64) * (n_predicted + 1) + predicted_lesions[both]
            keys, overlaps = np.unique(key, return_counts=True)
            truth_sizes = np.bincount(truth_lesions.ravel(), minlength=n_truth + 1)
            predicted_sizes = np.bincount(predicted_lesions.ravel(), minlength=n_predicted + 1)
            cost = np.full((n_truth, n_predicted), 1.0 + 1e-6)
            for pair_key, overlap in zip(keys, overlaps):
                t, p = divmod(int(pair_key), n_predicted + 1)
                cost[t - 1, p - 1] = 1.0 - 2.0 * overlap / (truth_sizes[t] + predicted_sizes[p])
            rows, columns = linear_sum_assignment(cost)
            pairs = [(row + 1, column + 1) for row, column in zip(rows, columns) if cost[row, column] < 1.0]
        if not pairs:
            results[name] = LesionScore(0.0, NO_MATCH_HD95_2026, 0, n_truth, n_predicted, (0.0,) * len(rules.nsd))
            continue
        dices, distances, surface_dices = [], [], []
        # panoptica's default tolerance: the smallest voxel spacing
        tolerances = [min(spacing) if tolerance is None else tolerance for tolerance, _ in rules.nsd]
        truth_boxes, predicted_boxes = ndimage.find_objects(truth_lesions), ndimage.find_objects(predicted_lesions)
        for t, p in pairs:
            both = _union([truth_boxes[t - 1], predicted_boxes[p - 1]], truth.shape, 1)
            lesion, match = truth_lesions[both] == t, predicted_lesions[both] == p
            dices.append(dice(match, lesion))
            from_truth, from_prediction = border_distances(lesion, match, spacing)
            distances.append(float(np.percentile(np.hstack((from_prediction, from_truth)), 95)))
            surface_dices.append([nsd_of_distances(from_truth, from_prediction, tolerance, NSD_EPSILON_2026)
                                  for tolerance in tolerances])
        nsd = tuple(float(np.mean([values[index] for values in surface_dices])) for index in range(len(tolerances)))
        results[name] = LesionScore(float(np.mean(dices)), float(np.mean(distances)), len(pairs),
                                    n_truth - len(pairs), n_predicted - len(pairs), nsd)
    return results


def lesion_scores(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                  regions: Dict[str, Tuple[int, ...]], rules: RuleSet) -> "OrderedDict[str, LesionScore]":
    """Lesion-wise scores of one case, per region of ``rules``.

    Args:
        prediction, truth: integer label maps of equal shape (internal labels).
        spacing: voxel size in mm along each axis.
        regions: region name -> labels, for every region ``rules`` scores or merges with.
    """
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    spacing = tuple(float(size) for size in spacing)
    if rules.method == "panoptica":
        return _panoptica_scores(prediction, truth, spacing, regions, rules)
    return _dilation_scores(prediction, truth, spacing, regions, rules)
