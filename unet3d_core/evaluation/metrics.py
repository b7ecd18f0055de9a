"""Segmentation metrics: whole-volume Dice and HD95 per region, lesion-wise scores, and the reference port's
legacy table.

A :class:`LabelScheme` says what is measured; it comes from the data's layout
(:mod:`unet3d_core.data.layouts`), so each cohort is scored on its own regions:

- ``Dice_<R>`` and ``HD95_<R>`` for each region R of the cohort (glioma: ``WT``
  = {1, 2, 3}, ``TC`` = {1, 3}, ``ET`` = {3}; PED, GLI post-treatment and
  MEN-RT have their own, see the layouts). HD95 is the 95th-percentile
  symmetric Hausdorff distance between the two surfaces, in millimetres, using
  the voxel spacing. Both empty -> Dice 1 and HD95 0; exactly one empty ->
  Dice 0 and HD95 373.13 mm (the diagonal of a 240x240x155 mm box). Dice and
  the surface distances are computed by :mod:`unet3d_core.evaluation.distances`.
- ``LesionDice_<R>`` and ``LesionHD95_<R>``: the challenge's lesion-wise scores,
  by the rules of the year ``--lesion_rules`` picks (:mod:`unet3d_core.evaluation.lesion_rules`,
  scored by :mod:`unet3d_core.evaluation.lesions`),
  and the normalised surface Dice where those rules define it
  (``LesionNSD05_<R>`` and ``LesionNSD10_<R>`` in 2025, ``LesionNSD_<R>`` in 2026).
- The seed's scheme (kept for continuity with its result table), Dice only, for
  the four-label glioma layouts: ``TumorCore`` = label 1 alone,
  ``PeritumoralEdema`` = label 2, ``EnhancingTumor`` = label 3, ``MeanDice`` =
  mean of those three, ``WholeTumor`` = labels {1, 2, 3}.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from unet3d_core.data.layouts import layout_of
from unet3d_core.evaluation.distances import dice, pooled_hd95
from unet3d_core.evaluation.lesion_rules import rules_for
from unet3d_core.evaluation.lesions import lesion_scores
from unet3d_core.folders import atomic_text_file

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
HD95_ONE_EMPTY_MM = 373.13
LESION_PREFIX = "Lesion"

_SEED_DESCRIPTION = ("the reference port's table, legacy names (Dice), not the BraTS regions: TumorCore = label 1 "
                     "alone (BraTS TC is 1 and 4), PeritumoralEdema = label 2, EnhancingTumor = label 4, MeanDice = "
                     "mean of those three, WholeTumor = labels 1,2,4")


@dataclass(frozen=True)
class LabelScheme:
    """What is measured on one cohort's label maps (internal labels)."""

    layout: str
    cohort: str
    regions: "OrderedDict[str, tuple]"  # whole-volume regions
    lesion_regions: "OrderedDict[str, tuple]"  # every region the lesion rules may need
    seed_table: bool
    lesion_rules: Optional[object] = None  # a lesion_rules.RuleSet, or None for whole-volume metrics only
    label_names: Optional[Dict[int, str]] = None  # source label -> name, for descriptions

    @classmethod
    def for_layout(cls, layout: str, lesion_rules: Optional[str] = "auto") -> "LabelScheme":
        """The scheme of a layout; ``lesion_rules`` a year, ``auto`` (the layout's release) or None (none)."""
        spec = layout_of(layout)
        rules = None
        if lesion_rules is not None:
            rules = rules_for(lesion_rules, spec.cohort, list(spec.lesion_regions), spec.name)
        return cls(spec.name, spec.cohort, OrderedDict(spec.regions), OrderedDict(spec.lesion_regions),
                   spec.seed_table, rules, dict(spec.label_names))

    @property
    def names(self) -> List[str]:
        """Every metric this scheme reports, in table order."""
        # The BraTS regions first; the reference port's legacy names after them, never the first column read.
        names = ["Dice_" + region for region in self.regions] + ["HD95_" + region for region in self.regions]
        names += list(SEED_NAMES) if self.seed_table else []
        if self.lesion_rules is not None:
            scored = list(self.lesion_rules.regions)
            names += [LESION_PREFIX + "Dice_" + region for region in scored]
            names += [LESION_PREFIX + "HD95_" + region for region in scored]
            for nsd in self.lesion_rules.nsd_names:
                names += [LESION_PREFIX + nsd + "_" + region for region in scored]
        return names

    def descriptions(self) -> "OrderedDict[str, str]":
        """Scheme name -> what its numbers mean, written next to every report."""
        text = OrderedDict()
        regions = "; ".join("{} = label{} {}".format(name, "s" if len(labels) > 1 else "",
                                                     ",".join(str(label) for label in labels))
                            for name, labels in self.regions.items())
        text["brats"] = ("BraTS challenge regions ({} {}, internal labels): {}; whole-volume Dice, and HD95 = "
                         "95th-percentile Hausdorff distance in mm (both empty: 0, one empty: 373.13)".format(
                             self.cohort, self.layout, regions))
        if self.seed_table:
            text["legacy"] = _SEED_DESCRIPTION
        if self.lesion_rules is not None:
            text["lesion"] = "lesion-wise Dice{} HD95 (mm): ".format(
                ", NSD and" if self.lesion_rules.nsd else " and") + self.lesion_rules.describe()
        return text


def scheme_of(name: str) -> str:
    """Which scheme a metric name belongs to: ``brats``, ``legacy`` (the reference port's names) or ``lesion``."""
    if name.startswith(LESION_PREFIX):
        return "lesion"
    if name in SEED_NAMES:
        return "legacy"
    return "brats"


def default_scheme() -> LabelScheme:
    """The glioma scheme of the BraTS 2018-2021 layouts (internal labels 1 NETC, 2 oedema, 3 ET)."""
    return LabelScheme.for_layout("brats2019")


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric surface distance of two boolean masks, in the unit of ``spacing`` (mm).

    The distances from every surface voxel of each mask to the nearest surface
    voxel of the other are pooled and their 95th percentile taken. Both masks
    empty gives 0, exactly one empty gives 373.13.
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    has_prediction, has_truth = bool(prediction.any()), bool(truth.any())
    if not has_prediction and not has_truth:
        return 0.0
    if has_prediction != has_truth:
        return HD95_ONE_EMPTY_MM
    return pooled_hd95(truth, prediction, spacing)


def case_metrics(prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 scheme: Optional[LabelScheme] = None) -> Dict[str, float]:
    """All metrics of one case from two internal label maps of equal shape.

    Args:
        prediction, truth: integer arrays of internal labels.
        spacing: voxel size in mm along each axis (from the NIfTI header), for HD95 and lesion volumes.
        scheme: what to measure; the BraTS 2018-2021 glioma scheme by default.
    Returns:
        an ordered dict over ``scheme.names``.
    """
    scheme = scheme or default_scheme()
    if prediction.shape != truth.shape:
        raise ValueError("prediction shape {} differs from truth shape {}".format(prediction.shape, truth.shape))
    values = OrderedDict()
    masks = OrderedDict((name, (np.isin(prediction, labels), np.isin(truth, labels)))
                        for name, labels in scheme.regions.items())
    for name, (predicted, actual) in masks.items():
        values["Dice_" + name] = dice(predicted, actual)
    for name, (predicted, actual) in masks.items():
        values["HD95_" + name] = hd95(predicted, actual, spacing)
    if scheme.seed_table:  # after the BraTS regions (scheme.names' order)
        for name, labels in SEED_REGIONS.items():
            values[name] = dice(np.isin(prediction, labels), np.isin(truth, labels))
        values["MeanDice"] = float(np.mean([values[name] for name in SEED_REGIONS]))
        values["WholeTumor"] = dice(prediction > 0, truth > 0)
    if scheme.lesion_rules is not None:
        scores = lesion_scores(prediction, truth, spacing, scheme.lesion_regions, scheme.lesion_rules)
        for name, score in scores.items():
            values[LESION_PREFIX + "Dice_" + name] = score.dice
        for name, score in scores.items():
            values[LESION_PREFIX + "HD95_" + name] = score.hd95
        for index, nsd in enumerate(scheme.lesion_rules.nsd_names):
            for name, score in scores.items():
                values[LESION_PREFIX + nsd + "_" + name] = score.nsd[index]
    return values


def metric_names(per_case) -> List[str]:
    """The metric names of a list (or dict) of per-case results, in the first case's order."""
    cases = list(per_case.values()) if isinstance(per_case, dict) else list(per_case)
    return list(cases[0]) if cases else []


def summarize(per_case: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of every metric over cases (each case counts once)."""
    if not per_case:
        return {}
    return OrderedDict((name, float(np.mean([case[name] for case in per_case]))) for name in metric_names(per_case))


def describe(per_case: List[Dict[str, float]]) -> Dict[str, Dict]:
    """Per metric: its scheme and the mean, median, standard deviation, minimum and maximum over cases."""
    statistics = OrderedDict()
    for name in metric_names(per_case):
        values = np.asarray([case[name] for case in per_case], dtype=np.float64)
        statistics[name] = OrderedDict([
            ("scheme", scheme_of(name)),
            ("mean", float(values.mean())),
            ("median", float(np.median(values))),
            ("std", float(values.std())),
            ("min", float(values.min())),
            ("max", float(values.max())),
        ])
    return statistics


def format_table(statistics: Dict[str, Dict], cases: int, descriptions: Optional[Dict[str, str]] = None) -> str:
    """A plain-text table of :func:`describe`'s output, one metric per line, scheme named.

    ``descriptions`` (scheme -> meaning, :meth:`LabelScheme.descriptions`) are printed below it.
    """
    if descriptions is None:
        descriptions = default_scheme().descriptions()
    lines = ["{:<18} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}   ({} case{})".format(
        "metric", "scheme", "mean", "median", "std", "min", "max", cases, "" if cases == 1 else "s")]
    for name, row in statistics.items():
        lines.append("{:<18} {:<6} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f} {:>9.4f}".format(
            name, row["scheme"], row["mean"], row["median"], row["std"], row["min"], row["max"]))
    lines.append("HD95 in mm; NSD = normalised surface Dice. Schemes:")
    lines.extend("  {}: {}".format(scheme, text) for scheme, text in descriptions.items())
    return "\n".join(lines)


def write_case_table(path: str, per_case: Dict[str, Dict[str, float]],
                     folds: Optional[Dict[str, int]] = None) -> None:
    """Write per-case metrics as CSV (``case``, the ``fold`` that scored it when ``folds`` maps cases to folds,
    then every metric name), atomically."""
    import csv

    names = metric_names(per_case)
    with atomic_text_file(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case"] + (["fold"] if folds is not None else []) + names)
        for case_id, values in per_case.items():
            writer.writerow([case_id] + ([folds[case_id]] if folds is not None else [])
                            + ["{:.6g}".format(values[name]) for name in names])
