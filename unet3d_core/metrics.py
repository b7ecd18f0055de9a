"""Segmentation metrics in both naming schemes users compare.

Internal labels: 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing
(BraTS 2019's label 4).

- The seed's scheme (kept for continuity with its result table), Dice only:
  ``TumorCore`` = label 1 alone, ``PeritumoralEdema`` = label 2,
  ``EnhancingTumor`` = label 3, ``MeanDice`` = mean of those three,
  ``WholeTumor`` = labels {1, 2, 3}.
- The BraTS challenge regions every paper reports: ``WT`` = {1, 2, 3},
  ``TC`` = {1, 3}, ``ET`` = {3}, as ``Dice_WT`` ... and ``HD95_WT`` ... (the
  95th-percentile symmetric Hausdorff distance between the two surfaces, in
  millimetres, using the voxel spacing).

Empty regions follow the challenge: both empty -> Dice 1 and HD95 0; exactly
one empty -> Dice 0 and HD95 373.13 mm (the diagonal of a 240x240x155 mm
box, the cap the BraTS evaluation uses).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence

import numpy as np

SEED_REGIONS = OrderedDict([
    ("TumorCore", (1,)),
    ("PeritumoralEdema", (2,)),
    ("EnhancingTumor", (3,)),
])
BRATS_REGIONS = OrderedDict([
    ("WT", (1, 2, 3)),
    ("TC", (1, 3)),
    ("ET", (3,)),
])
SEED_NAMES = list(SEED_REGIONS) + ["MeanDice", "WholeTumor"]
BRATS_NAMES = ["Dice_" + name for name in BRATS_REGIONS] + ["HD95_" + name for name in BRATS_REGIONS]
METRIC_NAMES = SEED_NAMES + BRATS_NAMES
HD95_ONE_EMPTY_MM = 373.13

# Which scheme each number belongs to, written next to every report.
SCHEME_OF = OrderedDict([(name, "seed") for name in SEED_NAMES] + [(name, "brats") for name in BRATS_NAMES])
SCHEME_DESCRIPTIONS = OrderedDict([
    ("seed", "the seed's table (Dice): TumorCore = label 1 alone, PeritumoralEdema = label 2, "
             "EnhancingTumor = label 4, MeanDice = mean of those three, WholeTumor = labels 1,2,4"),
    ("brats", "BraTS challenge regions: WT = labels 1,2,4; TC = labels 1,4; ET = label 4; "
              "Dice, and HD95 = 95th-percentile Hausdorff distance in mm (both empty: 0, one empty: 373.13)"),
])


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    predicted = int(np.count_nonzero(prediction))
    actual = int(np.count_nonzero(truth))
    if predicted + actual == 0:
        return 1.0
    overlap = int(np.count_nonzero(np.logical_and(prediction, truth)))
    return 2.0 * overlap / (predicted + actual)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array's edge counts as outside)."""
    from scipy import ndimage

    interior = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)
    return np.logical_and(mask, np.logical_not(interior))


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric surface distance of two boolean masks, in the unit of ``spacing`` (mm).

    The distances from every surface voxel of each mask to the nearest surface
    voxel of the other are pooled and their 95th percentile taken. Both masks
    empty gives 0, exactly one empty gives 373.13.
    """
    from scipy import ndimage

    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    has_prediction, has_truth = bool(prediction.any()), bool(truth.any())
    if not has_prediction and not has_truth:
        return 0.0
    if has_prediction != has_truth:
        return HD95_ONE_EMPTY_MM
    # Work inside the bounding box of both masks plus one voxel: every surface
    # voxel lies inside it, so the distances are exactly those of the full volume.
    present = np.argwhere(np.logical_or(prediction, truth))
    low = np.maximum(present.min(axis=0) - 1, 0)
    high = np.minimum(present.max(axis=0) + 2, prediction.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    predicted_surface, true_surface = _surface(prediction[box]), _surface(truth[box])
    spacing = [float(size) for size in spacing]
    to_truth = ndimage.distance_transform_edt(np.logical_not(true_surface), sampling=spacing)
    to_prediction = ndimage.distance_transform_edt(np.logical_not(predicted_surface), sampling=spacing)
    distances = np.concatenate([to_truth[predicted_surface], to_prediction[true_surface]])
    return float(np.percentile(distances, 95))


def case_metrics(prediction: np.ndarray, truth: np.ndarray,
                 spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Dict[str, float]:
    """All metrics of one case from two internal label maps of equal shape.

    Args:
        prediction, truth: integer arrays of internal labels 0..3.
        spacing: voxel size in mm along each axis (from the NIfTI header), for HD95.
    Returns:
        an ordered dict over :data:`METRIC_NAMES`.
    """
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    values = OrderedDict()
    for name, labels in SEED_REGIONS.items():
        values[name] = dice(np.isin(prediction, labels), np.isin(truth, labels))
    values["MeanDice"] = float(np.mean([values[name] for name in SEED_REGIONS]))
    values["WholeTumor"] = dice(prediction > 0, truth > 0)
    masks = OrderedDict((name, (np.isin(prediction, labels), np.isin(truth, labels)))
                        for name, labels in BRATS_REGIONS.items())
    for name, (predicted, actual) in masks.items():
        values["Dice_" + name] = dice(predicted, actual)
    for name, (predicted, actual) in masks.items():
        values["HD95_" + name] = hd95(predicted, actual, spacing)
    return values


def summarize(per_case: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of every metric over cases (each case counts once)."""
    if not per_case:
        return {}
    return OrderedDict((name, float(np.mean([case[name] for case in per_case]))) for name in METRIC_NAMES)


def describe(per_case: List[Dict[str, float]]) -> Dict[str, Dict]:
    """Per metric: its scheme and the mean, median, standard deviation, minimum and maximum over cases."""
    statistics = OrderedDict()
    for name in METRIC_NAMES:
        values = np.asarray([case[name] for case in per_case], dtype=np.float64)
        if values.size == 0:
            continue
        statistics[name] = OrderedDict([
            ("scheme", SCHEME_OF[name]),
            ("mean", float(values.mean())),
            ("median", float(np.median(values))),
            ("std", float(values.std())),
            ("min", float(values.min())),
            ("max", float(values.max())),
        ])
    return statistics


def format_table(statistics: Dict[str, Dict], cases: int) -> str:
    """A plain-text table of :func:`describe`'s output, one metric per line, scheme named."""
    lines = ["{:<18} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}   ({} case{})".format(
        "metric", "scheme", "mean", "median", "std", "min", "max", cases, "" if cases == 1 else "s")]
    for name, row in statistics.items():
        lines.append("{:<18} {:<6} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f}".format(
            name, row["scheme"], row["mean"], row["median"], row["std"], row["min"], row["max"]))
    lines.append("HD95 in mm. Schemes:")
    lines.extend("  {}: {}".format(scheme, text) for scheme, text in SCHEME_DESCRIPTIONS.items())
    return "\n".join(lines)


def write_case_table(path: str, per_case: Dict[str, Dict[str, float]]) -> None:
    """Write per-case metrics as CSV (``case`` then :data:`METRIC_NAMES`), atomically."""
    import csv
    import os

    temporary = path + ".partial"
    with open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case"] + METRIC_NAMES)
        for case_id, values in per_case.items():
            writer.writerow([case_id] + ["{:.6g}".format(values[name]) for name in METRIC_NAMES])
    os.replace(temporary, path)
