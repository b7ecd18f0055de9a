"""Post-processing chosen on cross-validation, saved with the run and applied by ``predict``.

After ``--fold all`` has evaluated every fold, the held-out label maps that
evaluation kept (``fold-N/heldout/<case>.npz``) are pooled and two kinds of
post-processing are tried, one step at a time, each on top of the steps kept
before it; a step is kept only if it raises the pooled mean whole-volume Dice
(over the regions WT, TC, ET, or the cohort's regions where it has none of
those, and over cases):

1. glioma label layouts only (ET = label 3, TC = labels 1 and 3): if a case's
   total predicted enhancing tumour is below T voxels, it becomes necrosis
   (label 1); T from 0 to 750 in steps of 10, the best T kept (the BraTS 2020
   winner's rule);
2. keep the largest 26-connected component, first of the whole foreground,
   then of each region in turn; the removed voxels become background (as
   nnU-Net's ``find_best_configuration`` tries it).

The choice, every candidate's pooled Dice before and after, and the
per-region means are written to ``MODEL_DIR/postprocessing.json``. ``predict``
applies it (``--postprocessing auto``, the default) when the run folder, or
the cross-validation folder above a ``fold-N`` run, holds that file;
``--postprocessing none`` writes the network's labels untouched.
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from unet3d_core.errors import ConfigError
from unet3d_core.evaluation.distances import dice
from unet3d_core.folders import write_json_atomic

POSTPROCESSING_FILE = "postprocessing.json"
HELDOUT_DIR = "heldout"  # in each fold folder: the evaluated label maps, for choosing post-processing
POSTPROCESSING_CHOICES = ("auto", "none")
ET_THRESHOLDS = tuple(range(0, 751, 10))  # voxels
ENHANCING, NECROSIS = 3, 1  # internal labels of glioma layouts
FOREGROUND = "foreground"
DICE_REGIONS = ("WT", "TC", "ET")
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
_FOLD_FOLDER = re.compile(r"^fold-\d+$")


# ------------------------------------------------------------------ the operations
def relabel_small_enhancing_volume(labels: np.ndarray, threshold: int) -> np.ndarray:
    """All enhancing tumour (3) relabelled necrosis (1) when there are fewer than ``threshold`` voxels of it."""
    if threshold <= 0:
        return labels
    enhancing = labels == ENHANCING
    count = int(np.count_nonzero(enhancing))
    if count == 0 or count >= threshold:
        return labels
    labels = labels.copy()
    labels[enhancing] = NECROSIS
    return labels


def keep_largest_component(labels: np.ndarray, region_labels: Optional[Sequence[int]]) -> np.ndarray:
    """``labels`` with every 26-connected component of the region but the largest set to background.

    ``region_labels`` None means the whole foreground (every label above 0).
    """
    from scipy import ndimage

    mask = labels > 0 if region_labels is None else np.isin(labels, list(region_labels))
    components, count = ndimage.label(mask, structure=_STRUCTURE_26)
    if count <= 1:
        return labels
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    labels = labels.copy()
    labels[mask & (components != int(np.argmax(sizes)))] = 0
    return labels


def glioma_labels(regions: Dict[str, Sequence[int]]) -> bool:
    """Whether the ET volume rule applies: ET is label 3 and TC labels 1 and 3 (the glioma numbering)."""
    return tuple(regions.get("ET", ())) == (ENHANCING,) and tuple(regions.get("TC", ())) == (NECROSIS, ENHANCING)


@dataclass(frozen=True)
class PostProcessing:
    """The post-processing a run chose: an ET volume threshold, then largest components in order."""

    et_volume_threshold: int = 0  # voxels; 0: off
    largest_component: Tuple[Tuple[str, Optional[Tuple[int, ...]]], ...] = ()  # (name, labels or None)
    source: str = ""  # the postprocessing.json it was read from

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Internal labels after the chosen steps, in the order they were chosen."""
        labels = relabel_small_enhancing_volume(labels, self.et_volume_threshold)
        for _, region_labels in self.largest_component:
            labels = keep_largest_component(labels, region_labels)
        return labels

    @property
    def does_something(self) -> bool:
        return self.et_volume_threshold > 0 or bool(self.largest_component)

    def describe(self) -> str:
        steps = []
        if self.et_volume_threshold:
            steps.append("ET below {} voxels becomes necrosis".format(self.et_volume_threshold))
        if self.largest_component:
            steps.append("largest component of " + ", ".join(name for name, _ in self.largest_component))
        return "; ".join(steps) or "nothing (no step raised the cross-validation Dice)"


# ------------------------------------------------------------------ held-out label maps
def save_heldout(folder: str, case_id: str, prediction: np.ndarray, truth: np.ndarray) -> str:
    """Keep one evaluated case's internal label maps, cropped to the box holding both, as ``<case>.npz``.

    Cropping changes neither Dice nor components: everything outside the box is background in both.
    """
    os.makedirs(folder, exist_ok=True)
    present = np.argwhere((prediction > 0) | (truth > 0))
    if present.size:
        low, high = present.min(axis=0), present.max(axis=0) + 1
    else:
        low, high = np.zeros(prediction.ndim, int), np.ones(prediction.ndim, int)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    path = os.path.join(folder, case_id + ".npz")
    temporary = path + ".partial.npz"
    np.savez_compressed(temporary, prediction=prediction[box].astype(np.uint8), truth=truth[box].astype(np.uint8))
    os.replace(temporary, path)
    return path


def heldout_complete(folder: str, case_ids: Sequence[str]) -> bool:
    """Whether ``folder`` holds the kept label maps of every one of ``case_ids``."""
    return all(os.path.isfile(os.path.join(folder, case_id + ".npz")) for case_id in case_ids)


def _heldout_files(model_dir: str, cases_by_fold: Dict[int, Sequence[str]]) -> Optional[List[str]]:
    """The kept label maps of the cases each fold evaluated, or None when one is missing."""
    files = [os.path.join(model_dir, "fold-{}".format(fold), HELDOUT_DIR, case_id + ".npz")
             for fold, case_ids in sorted(cases_by_fold.items()) for case_id in case_ids]
    return files if all(os.path.isfile(path) for path in files) else None


def _load(path: str) -> Tuple[np.ndarray, np.ndarray]:
    with np.load(path) as content:
        return content["prediction"], content["truth"]


# ------------------------------------------------------------------ choosing
def _dice_vector(prediction: np.ndarray, truth: np.ndarray, regions) -> np.ndarray:
    return np.asarray([dice(np.isin(prediction, labels), np.isin(truth, labels)) for labels in regions.values()])


def dice_regions(regions: Dict[str, Sequence[int]]) -> "OrderedDict[str, Tuple[int, ...]]":
    """The regions whose Dice is averaged: WT, TC, ET where the cohort has them, else all of its regions."""
    chosen = OrderedDict((name, tuple(regions[name])) for name in DICE_REGIONS if name in regions)
    return chosen or OrderedDict((name, tuple(labels)) for name, labels in regions.items())


def choose(load_cases, regions: Dict[str, Sequence[int]]) -> "OrderedDict[str, object]":
    """Try the steps greedily on pooled cases; returns what ``postprocessing.json`` holds.

    Args:
        load_cases: called once per pass, yields (prediction, truth) internal label maps.
        regions: the cohort's whole-volume regions (name -> labels).
    """
    scored = dice_regions(regions)
    chosen = PostProcessing()

    def pooled(candidate: PostProcessing) -> Tuple[float, np.ndarray, int]:
        total, count = np.zeros(len(scored)), 0
        for prediction, truth in load_cases():
            total += _dice_vector(candidate.apply(prediction), truth, scored)
            count += 1
        return float(total.mean() / count) if count else float("nan"), total / max(count, 1), count

    baseline, baseline_regions, cases = pooled(chosen)
    current = baseline
    tried: List[Dict] = []
    if glioma_labels(regions):
        # Each case's Dice with and without the relabelling, and its ET volume, give every T's score at once.
        volumes, without, relabelled = [], [], []
        for prediction, truth in load_cases():
            volumes.append(int(np.count_nonzero(prediction == ENHANCING)))
            without.append(_dice_vector(prediction, truth, scored).mean())
            changed = prediction.copy()
            changed[prediction == ENHANCING] = NECROSIS
            relabelled.append(_dice_vector(changed, truth, scored).mean())
        volumes, without, relabelled = np.asarray(volumes), np.asarray(without), np.asarray(relabelled)
        curve = OrderedDict((str(threshold), float(np.where(volumes < threshold, relabelled, without).mean())
                                                if cases else float("nan")) for threshold in ET_THRESHOLDS)
        best = max(ET_THRESHOLDS, key=lambda threshold: (curve[str(threshold)], -threshold))  # ties: smallest T
        # Compared with T = 0 (nothing relabelled), summed the same way, so rounding cannot keep a no-op.
        kept = curve[str(best)] > curve["0"]
        tried.append(OrderedDict([("step", "et_volume_threshold"), ("threshold_voxels", best),
                                  ("dice_before", curve["0"]), ("dice_after", curve[str(best)]), ("kept", kept),
                                  ("dice_by_threshold", curve)]))
        if kept:
            chosen = PostProcessing(best)
            current = pooled(chosen)[0]
    candidates = [(FOREGROUND, None)] + list(scored.items())
    for name, labels in candidates:
        candidate = PostProcessing(chosen.et_volume_threshold, chosen.largest_component + ((name, labels),))
        after = pooled(candidate)[0]
        kept = after > current
        tried.append(OrderedDict([("step", "largest_component"), ("region", name),
                                  ("labels", list(labels) if labels is not None else "all above 0"),
                                  ("dice_before", current), ("dice_after", after), ("kept", kept)]))
        if kept:
            chosen, current = candidate, after
    _, final_regions, _ = pooled(chosen)
    return OrderedDict([
        ("about", "post-processing chosen on the pooled held-out cases of the cross-validation; a step is kept "
                  "only if it raises the mean whole-volume Dice over {} and cases".format("/".join(scored))),
        ("cases", cases),
        ("dice_regions", list(scored)),
        ("dice_before", baseline),
        ("dice_after", current),
        ("per_region", OrderedDict((name, OrderedDict([("before", float(before)), ("after", float(after))]))
                                   for name, before, after in zip(scored, baseline_regions, final_regions))),
        ("tried", tried),
        ("chosen", OrderedDict([("et_volume_threshold", chosen.et_volume_threshold),
                                ("largest_component", [OrderedDict([("region", name), ("labels", list(labels)
                                                                    if labels is not None else None)])
                                                       for name, labels in chosen.largest_component])])),
        ("description", chosen.describe()),
    ])


def choose_for_cross_validation(model_dir: str, cases_by_fold: Dict[int, Sequence[str]],
                                regions: Dict[str, Sequence[int]], logger, layout: str = "") -> Optional[Dict]:
    """Choose on the label maps each fold kept of its evaluated cases (``fold-N/heldout``), write
    ``MODEL_DIR/postprocessing.json``; returns its content, or None (and says why) when some are missing."""
    files = _heldout_files(model_dir, cases_by_fold)
    if not files:
        logger.message("post-processing not chosen: some fold-N/{} is missing (evaluated before label maps were "
                       "kept); run the evaluation again".format(HELDOUT_DIR))
        return None

    def load_cases() -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        return (_load(path) for path in files)

    content = choose(load_cases, regions)
    content["folds"] = len(cases_by_fold)
    if layout:
        content["layout"] = layout
    path = os.path.join(model_dir, POSTPROCESSING_FILE)
    write_json_atomic(path, content)
    for line in summary_lines(content):
        logger.message(line)
    logger.message("wrote {}".format(path))
    return content


def summary_lines(content: Dict, markdown: bool = False) -> List[str]:
    """The steps tried with the pooled Dice before and after each, and the per-region before/after."""
    lines = []
    if markdown:
        lines += ["| step | pooled mean Dice before | after | kept |", "|---|---|---|---|"]
    else:
        lines.append("Post-processing on {} pooled held-out cases (mean Dice over {}):".format(
            content["cases"], "/".join(content["dice_regions"])))
    for step in content["tried"]:
        what = ("ET < {} voxels -> necrosis (best of 0..750)".format(step["threshold_voxels"])
                if step["step"] == "et_volume_threshold" else "largest component of {}".format(step["region"]))
        if markdown:
            lines.append("| {} | {:.4f} | {:.4f} | {} |".format(what, step["dice_before"], step["dice_after"],
                                                               "yes" if step["kept"] else "no"))
        else:
            lines.append("  {:<46} {:.4f} -> {:.4f}  {}".format(what, step["dice_before"], step["dice_after"],
                                                                "kept" if step["kept"] else "not kept"))
    regions = ", ".join("{} {:.4f} -> {:.4f}".format(name, values["before"], values["after"])
                        for name, values in content["per_region"].items())
    lines.append(("" if markdown else "  ") + "chosen: {}; Dice {}".format(content["description"], regions))
    return lines


# ------------------------------------------------------------------ applying
def find_postprocessing_file(model_dir: str) -> Optional[str]:
    """``postprocessing.json`` of a run folder, or of the cross-validation folder above a ``fold-N`` run."""
    here = os.path.join(model_dir, POSTPROCESSING_FILE)
    if os.path.isfile(here):
        return here
    folder = os.path.abspath(model_dir)
    if _FOLD_FOLDER.match(os.path.basename(folder)):
        parent = os.path.join(os.path.dirname(folder), POSTPROCESSING_FILE)
        if os.path.isfile(parent):
            return parent
    return None


def read_postprocessing(path: str) -> PostProcessing:
    """The choice written in ``path``.

    Raises:
        ConfigError: the file is unreadable or does not hold a choice.
    """
    try:
        with open(path) as handle:
            chosen = json.load(handle)["chosen"]
        threshold = int(chosen["et_volume_threshold"])
        largest = tuple((str(step["region"]), None if step["labels"] is None
                         else tuple(int(label) for label in step["labels"]))
                        for step in chosen["largest_component"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError("{}: not a post-processing choice ({}); delete it or pass --postprocessing none".format(
            path, error)) from None
    if threshold < 0:
        raise ConfigError("{}: et_volume_threshold {} is negative".format(path, threshold))
    return PostProcessing(threshold, largest, os.path.abspath(path))


def for_run(model_dir: str, mode: str = "auto", logger=None) -> Optional[PostProcessing]:
    """The post-processing ``predict`` applies for a run folder: its own or its CV folder's, unless ``none``."""
    if mode not in POSTPROCESSING_CHOICES:
        raise ConfigError("--postprocessing {}: choose {}".format(mode, " or ".join(POSTPROCESSING_CHOICES)))
    if mode == "none":
        return None
    path = find_postprocessing_file(model_dir)
    if path is None:
        return None
    chosen = read_postprocessing(path)
    if logger is not None:
        logger.message("post-processing from {}: {}".format(path, chosen.describe()))
    return chosen if chosen.does_something else None
