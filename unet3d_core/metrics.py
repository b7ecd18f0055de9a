"""Segmentation metrics in both naming schemes users compare.

Internal labels: 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing
(BraTS 2019's label 4).

- The seed's scheme (kept for continuity with its result table):
  ``TumorCore`` = label 1 alone, ``PeritumoralEdema`` = label 2,
  ``EnhancingTumor`` = label 3, ``MeanDice`` = mean of those three,
  ``WholeTumor`` = labels {1, 2, 3}.
- The BraTS challenge regions every paper reports: ``WT`` = {1, 2, 3},
  ``TC`` = {1, 3}, ``ET`` = {3}, as ``Dice_WT`` etc.

Empty regions follow the challenge: both empty -> Dice 1; one empty -> 0.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List

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
METRIC_NAMES = list(SEED_REGIONS) + ["MeanDice", "WholeTumor"] + ["Dice_" + name for name in BRATS_REGIONS]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    predicted = int(np.count_nonzero(prediction))
    actual = int(np.count_nonzero(truth))
    if predicted + actual == 0:
        return 1.0
    overlap = int(np.count_nonzero(np.logical_and(prediction, truth)))
    return 2.0 * overlap / (predicted + actual)


def case_metrics(prediction: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """All metrics of one case from two internal label maps of equal shape."""
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    values = OrderedDict()
    for name, labels in SEED_REGIONS.items():
        values[name] = dice(np.isin(prediction, labels), np.isin(truth, labels))
    values["MeanDice"] = float(np.mean([values[name] for name in SEED_REGIONS]))
    values["WholeTumor"] = dice(prediction > 0, truth > 0)
    for name, labels in BRATS_REGIONS.items():
        values["Dice_" + name] = dice(np.isin(prediction, labels), np.isin(truth, labels))
    return values


def summarize(per_case: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of every metric over cases (each case counts once)."""
    if not per_case:
        return {}
    return OrderedDict((name, float(np.mean([case[name] for case in per_case]))) for name in METRIC_NAMES)
