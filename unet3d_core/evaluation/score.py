"""Score a folder of predicted label maps against ground truth, whoever made the predictions.

Predictions: a flat folder of ``<case>.nii.gz`` (or ``.nii``); files ending in
``_probabilities`` and hidden files are skipped. Ground truth: a raw BraTS
folder (``<case>/<case>_seg.nii.gz``, ``<case>-seg.nii.gz`` or, for MEN-RT,
``<case>_gtv.nii.gz``, with or without ``HGG/``/``LGG/``) or a flat folder of
``<case>.nii.gz`` (a ``_seg``, ``-seg`` or ``_gtv`` suffix is dropped from the
id). Both are in the labels of one layout (``--labels``, detected from the
truth folder by default), mapped to the internal labels before scoring, and
scored on that cohort's regions with its lesion-wise rules; voxel spacing
comes from the truth's header. Cases are matched by id; a prediction without truth, or with
a different shape or affine, is an error naming both files.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

import numpy as np

from unet3d_core.data.layouts import (
    AUTO,
    LAYOUT_NAMES,
    LAYOUTS,
    NIFTI_SUFFIXES,
    SEGMENTATION_ENDINGS,
    detect_layout,
    layout_for_case_name,
    map_labels,
)
from unet3d_core.data.volumes import PROBABILITIES_SUFFIX
from unet3d_core.errors import DataError
from unet3d_core.evaluation import metrics as metrics_lib
from unet3d_core.evaluation.lesion_rules import rules_year
from unet3d_core.folders import write_json_atomic
from unet3d_core.progress import Progress

AFFINE_TOLERANCE = 1e-3  # mm / direction-cosine units; other tools round headers to float32


def _strip_suffix(name: str) -> Optional[str]:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return None


def find_predictions(folder: str) -> Dict[str, str]:
    """Case id -> file for a flat folder of ``<case>.nii[.gz]`` label maps."""
    if not os.path.isdir(folder):
        raise DataError("--pred {}: no such directory".format(folder))
    found: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        case_id = _strip_suffix(name)
        path = os.path.join(folder, name)
        if case_id is None or name.startswith(".") or case_id.endswith(PROBABILITIES_SUFFIX) \
                or not os.path.isfile(path):
            continue
        if case_id in found:
            raise DataError("--pred {}: case {} appears twice ({} and {})".format(
                folder, case_id, found[case_id], name))
        found[case_id] = path
    if not found:
        raise DataError("--pred {}: no <case>.nii.gz label maps found".format(folder))
    return found


def find_truth(folder: str) -> Dict[str, str]:
    """Case id -> segmentation file, for a raw BraTS folder or a flat folder of label maps."""
    if not os.path.isdir(folder):
        raise DataError("--truth {}: no such directory".format(folder))
    found: Dict[str, str] = {}

    def add(case_id: str, path: str) -> None:
        if case_id in found:
            raise DataError("--truth {}: case {} appears twice ({} and {})".format(
                folder, case_id, found[case_id], path))
        found[case_id] = path

    def visit(directory: str, depth: int) -> None:
        for name in sorted(os.listdir(directory)):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                segmentation = [os.path.join(path, name + ending + suffix) for ending in SEGMENTATION_ENDINGS
                                for suffix in NIFTI_SUFFIXES]
                segmentation = [candidate for candidate in segmentation if os.path.isfile(candidate)]
                if segmentation:
                    add(name, segmentation[0])
                elif depth < 1:  # HGG/ and LGG/ hold the case folders one level down
                    visit(path, depth + 1)
            elif depth == 0:
                case_id = _strip_suffix(name)
                if case_id is not None:
                    for ending in SEGMENTATION_ENDINGS:
                        if case_id.endswith(ending):
                            case_id = case_id[:-len(ending)]
                            break
                    add(case_id, path)

    visit(folder, 0)
    if not found:
        raise DataError("--truth {}: no ground truth found (expected <case>/<case>_seg.nii.gz case folders, "
                        "or <case>.nii.gz files)".format(folder))
    return found


def _load(path: str, what: str):
    import nibabel

    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DataError("{} {}: cannot read: {}".format(what, path, error)) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError("{} {}: is {}-D with shape {}; expected a 3-D label map".format(
            what, path, data.ndim, tuple(data.shape)))
    return image, data


def score_case(prediction_path: str, truth_path: str, case_id: str, label_map: Dict[int, int],
               scheme=None) -> Dict[str, float]:
    """Metrics of one case from two label-map files in the source convention.

    Raises:
        DataError: unreadable file, different shape or affine, unknown label values.
    """
    truth_image, truth = _load(truth_path, "truth")
    prediction_image, prediction = _load(prediction_path, "prediction")
    if prediction.shape != truth.shape:
        raise DataError("case {}: prediction {} has shape {} but truth {} has {}".format(
            case_id, prediction_path, tuple(prediction.shape), truth_path, tuple(truth.shape)))
    if not np.allclose(prediction_image.affine, truth_image.affine, atol=AFFINE_TOLERANCE):
        difference = float(np.max(np.abs(prediction_image.affine - truth_image.affine)))
        raise DataError("case {}: prediction {} and truth {} have different affines (largest element difference "
                        "{:.4g}): the prediction is not in the truth's geometry".format(
                            case_id, prediction_path, truth_path, difference))
    spacing = [float(size) for size in truth_image.header.get_zooms()[:3]]
    return metrics_lib.case_metrics(map_labels(prediction, label_map, "case {}: prediction {}".format(
                                        case_id, prediction_path)),
                                    map_labels(truth, label_map, "case {}: truth {}".format(case_id, truth_path)),
                                    spacing, scheme)


def truth_layout(truth_dir: str, case_ids) -> str:
    """The layout of a truth folder: detected from its case folders, else from BraTS 2023+ case names, else
    brats2019."""
    try:
        return detect_layout(truth_dir)
    except DataError:
        named = {layout_for_case_name(case_id) for case_id in case_ids}
        if len(named) == 1 and None not in named:
            return named.pop()
        return "brats2019"


def score_folders(pred_dir: str, truth_dir: str, *, labels: str = AUTO, require_all: bool = False,
                  progress=None, lesion_rules: str = "auto"):
    """Score every prediction in ``pred_dir`` against its truth in ``truth_dir``.

    Returns:
        (case id -> metrics, ids of truth cases that have no prediction, the LabelScheme scored with, and for
        ``--lesion_rules auto`` the line saying which rules it chose and why, else None).
    Raises:
        DataError: a prediction without truth, missing predictions when
            ``require_all``, or a bad file (see :func:`score_case`).
    """
    if labels != AUTO and labels not in LAYOUT_NAMES:
        raise DataError("--labels {}: unknown layout (known: auto, {})".format(labels, ", ".join(LAYOUT_NAMES)))
    predictions = find_predictions(pred_dir)
    truth = find_truth(truth_dir)
    layout = truth_layout(truth_dir, truth) if labels == AUTO else labels
    lesion_rules, reason = rules_year(lesion_rules, layout, lambda: _labels_in(truth, LAYOUTS[layout].label_map),
                                      "--truth {}".format(truth_dir))
    scheme = metrics_lib.LabelScheme.for_layout(layout, lesion_rules)
    orphans = sorted(set(predictions) - set(truth))
    if orphans:
        raise DataError("--pred {}: {} prediction(s) have no ground truth in {}: {}{}".format(
            pred_dir, len(orphans), truth_dir, ", ".join(orphans[:5]), " ..." if len(orphans) > 5 else ""))
    unpredicted = sorted(set(truth) - set(predictions))
    if unpredicted and require_all:
        raise DataError("--truth {}: {} case(s) have no prediction in {}: {}{}".format(
            truth_dir, len(unpredicted), pred_dir, ", ".join(unpredicted[:5]), " ..." if len(unpredicted) > 5 else ""))
    per_case: "OrderedDict[str, Dict[str, float]]" = OrderedDict()
    for number, case_id in enumerate(sorted(predictions), start=1):
        per_case[case_id] = score_case(predictions[case_id], truth[case_id], case_id,
                                       dict(LAYOUTS[layout].label_map), scheme)
        if progress is not None:
            progress(number, len(predictions), case_id)
    return per_case, unpredicted, scheme, reason


def _labels_in(truth: Dict[str, str], label_map: Dict[int, int]) -> Iterator[int]:
    """The internal labels of every truth file, case after case (read lazily: ``auto`` stops at a cavity)."""
    for case_id, path in sorted(truth.items()):
        _, labels = _load(path, "truth")
        yield from map_labels(np.unique(labels), label_map, "case {}: truth {}".format(case_id, path)).tolist()


def write_score_outputs(out_csv: str, per_case: Dict[str, Dict[str, float]], details: Dict, scheme=None) -> str:
    """Write the per-case CSV and, beside it, the JSON summary; returns the JSON's path."""
    folder = os.path.dirname(os.path.abspath(out_csv))
    os.makedirs(folder, exist_ok=True)
    metrics_lib.write_case_table(out_csv, per_case)
    summary_path = (out_csv[:-4] if out_csv.endswith(".csv") else out_csv) + ".json"
    content = OrderedDict(details)
    content["cases"] = len(per_case)
    content["naming"] = dict((scheme or metrics_lib.default_scheme()).descriptions())
    content["metrics"] = metrics_lib.describe(list(per_case.values()))
    write_json_atomic(summary_path, content)
    return summary_path


@dataclass(frozen=True)
class ScoreResult:
    """What :func:`run_score` computed and wrote."""

    statistics: Dict  # metric name -> summary over the cases, as metrics.describe returns
    cases: int  # how many predictions were scored
    unpredicted: List[str]  # truth case ids without a prediction, not scored
    csv_path: str  # the per-case table
    summary_path: str  # the JSON summary beside it
    descriptions: Dict  # scheme -> what its numbers mean (regions, lesion-wise rules)
    lesion_rules_chosen: Optional[str] = None  # --lesion_rules auto: which rules it chose and why


def run_score(pred_dir: str, truth_dir: str, *, out_csv: Optional[str] = None, labels: str = AUTO,
              require_all: bool = False, show_progress: bool = True, lesion_rules: str = "auto") -> ScoreResult:
    """The ``score`` command: score every prediction, write the CSV + JSON, return what was computed and written.

    ``out_csv`` defaults to ``metrics.csv`` in ``pred_dir``. Raises DataError as :func:`score_folders`.
    """
    out_csv = out_csv or os.path.join(pred_dir, "metrics.csv")
    bar = [None]

    def progress(done, total, case_id):
        if show_progress:
            if bar[0] is None:
                bar[0] = Progress("score", total)
            bar[0].update(done, case_id)

    per_case, unpredicted, scheme, reason = score_folders(pred_dir, truth_dir, labels=labels,
                                                          require_all=require_all, progress=progress,
                                                          lesion_rules=lesion_rules)
    summary_path = write_score_outputs(out_csv, per_case, OrderedDict([
        ("pred_dir", os.path.abspath(pred_dir)), ("truth_dir", os.path.abspath(truth_dir)),
        ("labels", scheme.layout), ("cohort", scheme.cohort),
        ("lesion_rules", scheme.lesion_rules.year if scheme.lesion_rules else lesion_rules),
        ("lesion_rules_chosen", reason),
        ("truth_cases_without_prediction", unpredicted)]), scheme)
    return ScoreResult(metrics_lib.describe(list(per_case.values())), len(per_case), unpredicted, out_csv,
                       summary_path, scheme.descriptions(), reason)
