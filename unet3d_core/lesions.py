"""Lesion-wise Dice and HD95 per region, by the rules the BraTS challenge scored each year with.

The challenge ranks by lesion-wise scores: each ground-truth lesion is scored
on its own, missed lesions and false positives are penalised, so a network that
finds the big tumour but misses three metastases no longer looks perfect.
Three families of rules are offered (``--lesion_rules``); the cohort picks the
parameters:

``2023`` (``rachitsaluja/BraTS-2023-Metrics`` @ 43c9052, ``metrics.py``)
    Ground-truth components (26-connected) whose ``d``-fold dilations (3-D
    cross of connectivity 2) touch are one lesion. A predicted component is a
    true positive of every lesion whose dilation it meets; each lesion's Dice
    and HD95 are taken against the union of its true positives. Lesions of
    volume <= threshold (mm^3) are left out; every predicted component meeting
    no lesion is a false positive scoring Dice 0 and HD95 374. Score = sum over
    kept lesions / (kept lesions + false positives); nothing to score gives
    Dice 1 and HD95 0. ``d`` and the threshold: GLI, SSA, PED 3 and 50; MEN 1
    and 50; MET 1 and 2.
``2024`` / ``2025`` (``rachitsaluja/BraTS-2024-Metrics`` @ 9a0ab9c / 9e8879a,
    ``metrics_<COHORT>.py``, the commits the 2024 and 2025 leaderboards used)
    As 2023, plus: predicted components are merged by dilation like the
    truth's and merged predictions of at most ``threshold`` voxels are dropped
    (MEN-RT: mm^3); lesions of one region that touch the same lesion of a
    partner region become one (GLI: NETC, ET, RC and SNFH with each other;
    SSA and MET: ET through NETC), with the scripts' own pairing rule.
    GLI: ``d`` 5 for NETC and RC, 3 otherwise (the script's SNFH check is
    misspelt, so SNFH stays at 3), threshold 10 for ET and 20 otherwise, HD95
    penalty 337 (the diagonal of its 182x218x182 grid). PED: 5 and 10, 374.
    SSA: 3 and 50, 374. MET: 1 and 2; 2025 adds RC and takes the image
    diagonal as penalty. MEN-RT: 1 and 50 mm^3, penalty the image diagonal,
    false positives not counted. MEN follows the 2023 rules.
``2026`` (``BraTS-evaluation`` 0.0.8 on PyPI, built on panoptica)
    Lesions are plain 26-connected components, matched one to one by maximum
    bipartite matching on Dice (any overlap qualifies). Lesion-wise Dice and
    HD95 are the means over matched pairs (panoptica's ``sq_dsc`` and
    ``sq_hd95``); HD95 is the 95th percentile of the pooled surface distances
    of both directions. No match gives Dice 0 and HD95 373 (the package
    reports infinity, its parsers 373); no lesion on either side gives Dice 1
    and HD95 0 (the package reports NaN, which its parsers leave out).

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
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from unet3d_core.config import LESION_RULE_CHOICES
from unet3d_core.distances import border_distances, dice
from unet3d_core.errors import ConfigError

YEARS = tuple(choice for choice in LESION_RULE_CHOICES if choice != "auto")
AUTO = "auto"
DIAGONAL = None  # penalty: the diagonal of the image grid, in voxels
NO_MATCH_HD95_2026 = 373.0  # BraTS-evaluation's value for an infinite HD95
# NSD tolerances (mm) -> metric name; None is the smallest voxel spacing (the 2026 package's default).
NSD_2025 = ((0.5, "NSD05"), (1.0, "NSD10"))
NSD_2026 = ((None, "NSD"),)
# What keeps the NSD quotient finite: the 2025 scripts add 1e-8, panoptica the smallest positive float.
NSD_EPSILON_2025 = 1e-8
NSD_EPSILON_2026 = 2.2250738585072014e-308


@dataclass(frozen=True)
class RegionRule:
    """How one region's lesions are found and scored."""

    dilation: int  # d: dilations that merge nearby lesions and reach predicted ones
    threshold: float  # lesions of at most this volume (mm^3) are not scored
    merge_with: Tuple[str, ...] = ()  # partner regions, in the order the 2024 script merges through them


@dataclass(frozen=True)
class RuleSet:
    """The lesion-wise rules of one year for one cohort."""

    year: str
    cohort: str
    method: str  # "dilation" (2023-2025) or "panoptica" (2026)
    regions: "OrderedDict[str, RegionRule]"  # the regions scored, in report order
    partners: "OrderedDict[str, RegionRule]"  # regions only merged with (not scored)
    penalty: Optional[float] = 374.0  # HD95 of a missed lesion and of a false positive; None: image diagonal
    merge_predictions: bool = False  # 2024+: predictions merged by dilation and small ones dropped
    prediction_threshold_in_mm3: bool = False  # MEN-RT: the prediction filter compares mm^3, not voxels
    count_false_positives: bool = True
    source: str = ""
    nsd: Tuple[Tuple[Optional[float], str], ...] = ()  # (tolerance in mm or None, metric name) the rules score

    @property
    def nsd_names(self) -> Tuple[str, ...]:
        """The NSD metric names of these rules (``NSD05``, ``NSD10`` or ``NSD``), empty when none."""
        return tuple(name for _, name in self.nsd)

    def _describe_nsd(self) -> str:
        if not self.nsd:
            return ""
        tolerances = ", ".join("{} at {}".format(name, "the smallest voxel spacing (1 mm on BraTS)"
                                                 if tolerance is None else "{:g} mm".format(tolerance))
                               for tolerance, name in self.nsd)
        return "; normalised surface Dice {} (border voxels within the tolerance)".format(tolerances)

    def describe(self) -> str:
        """One line naming the rules and their source, for reports."""
        if self.method == "panoptica":
            return ("BraTS {} rules for {} ({}): 26-connected lesions matched one to one on Dice; means over "
                    "matched lesions; no match: Dice 0, HD95 {:g}{}".format(
                        self.year, self.cohort, self.source, NO_MATCH_HD95_2026,
                        self._describe_nsd() + (", no match 0" if self.nsd else "")))
        parts = ", ".join("{} d={} >{:g} mm3".format(name, rule.dilation, rule.threshold)
                          for name, rule in self.regions.items())
        penalty = "image diagonal" if self.penalty is None else "{:g}".format(self.penalty)
        extras = []
        if self.merge_predictions:
            extras.append("predictions merged, small ones dropped")
        if any(rule.merge_with for rule in self.regions.values()):
            extras.append("touching regions merged")
        if not self.count_false_positives:
            extras.append("false positives not counted")
        return "BraTS {} rules for {} ({}): {}; HD95 penalty {}{}{}".format(
            self.year, self.cohort, self.source, parts, penalty, "; " + ", ".join(extras) if extras else "",
            self._describe_nsd())


def _rules(*entries):
    return OrderedDict((name, RegionRule(*values)) for name, *values in entries)


_R23 = "rachitsaluja/BraTS-2023-Metrics@43c9052 metrics.py"
_R24 = "rachitsaluja/BraTS-2024-Metrics@{} metrics_{}.py"
_PARAMETERS_2023 = {"GLI": (3, 50.0), "SSA": (3, 50.0), "PED": (3, 50.0), "MEN": (1, 50.0), "MET": (1, 2.0),
                    "GoAT": (3, 50.0)}
# The regions each BraTS-evaluation configuration scores (config_<name>.yaml), by cohort.
_PANOPTICA_REGIONS = {"GLI": ("WT", "TC", "ET", "NETC", "SNFH", "RC"), "SSA": ("WT", "TC", "ET", "NETC", "SNFH"),
                      "PED": ("WT", "TC", "ET", "NETC", "CC", "ED"), "MET": ("WT", "TC", "ET", "RC"),
                      "MEN-RT": ("GTV",), "MEN": ("WT", "TC", "ET"), "GoAT": ("WT", "TC", "ET")}
_PANOPTICA_CONFIG = {"GLI": "gli", "SSA": "gli", "PED": "ped", "MET": "mets", "MEN-RT": "MenRT", "MEN": "MenPre",
                     "GoAT": "GoAT"}
# The year each layout's own release was scored in, for --lesion_rules auto.
DEFAULT_YEAR = {"brats2024-gli": "2024", "brats-ped": "2024", "brats-men-rt": "2024", "brats-goat": "2024"}


def _rules_2023(cohort, regions) -> RuleSet:
    dilation, threshold = _PARAMETERS_2023[cohort]
    scored = [name for name in ("WT", "TC", "ET") if name in regions] or list(regions)[:1]
    return RuleSet("2023", cohort, "dilation", _rules(*[(name, dilation, threshold) for name in scored]),
                   OrderedDict(), 374.0, source=_R23)


def rules_for(year: str, cohort: str, regions: Sequence[str], layout: str = "") -> RuleSet:
    """The rule set of ``year`` for ``cohort``, restricted to the ``regions`` the data defines.

    Raises:
        ConfigError: a year the cohort was not scored in (MEN-RT before 2024) or an unknown year.
    """
    if year == AUTO:
        year = DEFAULT_YEAR.get(layout, "2023")
    if year not in YEARS:
        raise ConfigError("--lesion_rules {}: choose auto, {}".format(year, ", ".join(YEARS)))
    regions = list(regions)
    if year == "2026":
        names = [name for name in _PANOPTICA_REGIONS.get(cohort, ("WT", "TC", "ET")) if name in regions]
        source = "BraTS-evaluation 0.0.8 config_{}".format(_PANOPTICA_CONFIG.get(cohort, "gli"))
        return RuleSet(year, cohort, "panoptica", _rules(*[(name, 0, 0.0) for name in names]), OrderedDict(),
                       NO_MATCH_HD95_2026, source=source, nsd=NSD_2026)
    if cohort == "MEN-RT":
        if year == "2023":
            raise ConfigError("--lesion_rules 2023: the 2023 rules have no MEN-RT cohort (it started in 2024); "
                              "use 2024 or later")
        commit = "9a0ab9c" if year == "2024" else "9e8879a"
        return RuleSet(year, cohort, "dilation", _rules(("GTV", 1, 50.0)), OrderedDict(), DIAGONAL,
                       merge_predictions=True, prediction_threshold_in_mm3=True, count_false_positives=False,
                       source=_R24.format(commit, "MEN_RT"), nsd=NSD_2025 if year == "2025" else ())
    if year == "2023" or cohort in ("MEN", "GoAT"):
        rules = _rules_2023(cohort, regions)
        if year != "2023":
            source = (_R24.format("9e8879a", "MEN") if cohort == "MEN" and year == "2025"
                      else _R23 + " (no {} script in {})".format(cohort, year))
            # 2025's metrics_MEN.py adds NSD; GoAT has no script, so no NSD.
            nsd = NSD_2025 if cohort == "MEN" and year == "2025" else ()
            rules = RuleSet(year, cohort, "dilation", rules.regions, OrderedDict(), 374.0, source=source, nsd=nsd)
        return rules
    commit = "9a0ab9c" if year == "2024" else "9e8879a"
    if cohort == "GLI":
        table = _rules(("WT", 3, 20.0), ("TC", 3, 20.0), ("NETC", 5, 20.0, ("ET", "RC")),
                       ("SNFH", 3, 20.0, ("ET", "RC", "NETC")), ("ET", 3, 10.0, ("NETC", "RC")),
                       ("RC", 5, 20.0, ("ET", "NETC")))
        partners, penalty = OrderedDict(), 337.0
    elif cohort in ("SSA", "MET"):
        dilation, threshold = (3, 50.0) if cohort == "SSA" else (1, 2.0)
        names = ["WT", "TC", "ET"] + (["RC"] if cohort == "MET" and year == "2025" else [])
        table = _rules(*[(name, dilation, threshold, ("NETC",) if name == "ET" else ()) for name in names])
        partners = _rules(("NETC", dilation, threshold))
        penalty = DIAGONAL if cohort == "MET" and year == "2025" else 374.0
    elif cohort == "PED":
        table = _rules(*[(name, 5, 10.0) for name in ("WT", "TC", "ET", "NETC", "CC", "ED")])
        partners, penalty = OrderedDict(), 374.0
    else:
        raise ConfigError("--lesion_rules {}: no rules for cohort {}".format(year, cohort))
    table = OrderedDict((name, rule) for name, rule in table.items() if name in regions)
    for name, rule in table.items():
        missing = [partner for partner in rule.merge_with if partner not in regions]
        if missing:  # a partner region the data cannot have (no label 4): nothing to merge through
            table[name] = RegionRule(rule.dilation, rule.threshold,
                                     tuple(partner for partner in rule.merge_with if partner in regions))
    partners = OrderedDict((name, rule) for name, rule in partners.items() if name in regions)
    source = _R24.format(commit, cohort)
    return RuleSet(year, cohort, "dilation", table, partners, penalty, merge_predictions=True, source=source,
                   nsd=NSD_2025 if year == "2025" else ())


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
    """Normalised surface Dice from :func:`~unet3d_core.distances.border_distances`' output: the mean of
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
