"""Raw NIfTI cases -> TFRecords + manifest, with seeded case-level folds.

Intensities (``--intensity``): ``uint16`` (the default) scales each modality's
[0, max] to [0, 65535] and clips nothing, as nnU-Net keeps MRI intensities
whole; ``uint8`` is the reference's: values clipped to [0, 0.85 x max] and
scaled to [0, 255], half the bytes but the brightest 15 % of the range (where
enhancing tumour lies on T1ce) flattened. Either way the per-channel mean and
standard deviation over voxels > 0 are stored with the record for z-score
normalisation at load time, so the scale itself cancels out. Labels are
stored in the internal convention.

Every case is checked (see ``unet3d_core.data.cases``) before anything of it is
written. Worker processes read, check, scale and encode cases without
TensorFlow (light to start); the parent writes the records in case order, so
the output is byte-for-byte the same for the same input whatever ``workers``
is. The output is complete or absent: everything goes into a hidden folder
next to the output, renamed into place at the end.
"""
from __future__ import annotations

import collections
import functools
import itertools
import multiprocessing
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from unet3d_core import __version__
from unet3d_core.data.case_scan import scan_cases
from unet3d_core.data.cases import LoadedCase, RawCase, load_case
from unet3d_core.data.layouts import AUTO, LAYOUTS
from unet3d_core.data.records import (
    DEFAULT_INTENSITY,
    FOREGROUND_SAMPLES,
    FORMAT_VERSION,
    INTENSITY_FORMATS,
    RECORD_SUFFIX,
    assemble_record,
    encode_case_features,
    foreground_locations,
    write_manifest,
)
from unet3d_core.errors import CaseProblem, ConfigError, DataError, InvalidCaseError
from unet3d_core.folders import published_folder
from unet3d_core.progress import Progress

CLIP_FRACTION = 0.85  # uint8: the reference's clip
STAGING_PREFIX = ".unet3d-preprocess-"
# Per storage: (share of each channel's maximum kept, largest stored value).
_SCALES = {"uint8": (CLIP_FRACTION, 255), "uint16": (1.0, 65535)}


def intensity_description(intensity: str) -> str:
    """How ``intensity`` storage scales a modality, in words (manifest, export.json)."""
    share, top = _SCALES[intensity]
    if share == 1.0:
        return "scale [0, max] per modality to {} [0, {}], no clipping".format(intensity, top)
    return "clip [0, {} x max] per modality, scale to {} [0, {}]".format(share, intensity, top)


def scale_intensities(image: np.ndarray, intensity: str = DEFAULT_INTENSITY) -> np.ndarray:
    """Per channel: negatives to 0, then [0, share x max] scaled to ``intensity``'s range (see ``_SCALES``)."""
    share, largest = _SCALES[intensity]
    scaled = np.empty(image.shape, dtype=intensity)
    for channel in range(image.shape[-1]):
        volume = image[..., channel]
        top = float(volume.max()) * share
        if top <= 0:
            scaled[..., channel] = 0
            continue
        clipped = np.clip(volume, 0.0, top)
        scaled[..., channel] = np.round(clipped * (largest / top)).astype(intensity)
    return scaled


def foreground_statistics(image: np.ndarray):
    """Mean and standard deviation per channel over voxels > 0."""
    means, stds = [], []
    for channel in range(image.shape[-1]):
        values = image[..., channel][image[..., channel] > 0].astype(np.float64)
        means.append(float(values.mean()) if values.size else 0.0)
        stds.append(float(values.std()) if values.size else 1.0)
    return means, stds


def assign_folds(cases: List[RawCase], folds: int, seed: int) -> Dict[str, int]:
    """Seeded, case-level folds, stratified by grade where the layout gives it.

    Cases are grouped by (has a segmentation, grade); each group is shuffled
    with ``seed`` and dealt round-robin, continuing where the previous group
    stopped, so every fold gets a near-equal share of HGG, LGG and unlabelled
    cases. The same case ids and seed always give the same folds, whatever
    the file system's order.
    """
    def group(case):
        return (case.segmentation is None, case.grade or "")

    assignment = {}
    offset = 0
    for key in sorted({group(case) for case in cases}):
        ids = sorted(case.case_id for case in cases if group(case) == key)
        order = np.random.RandomState(seed).permutation(len(ids))
        for position, index in enumerate(order):
            assignment[ids[index]] = (position + offset) % folds
        offset += len(ids)
    return assignment


# ------------------------------------------------------------------ per-case work (runs in worker processes)
@dataclass
class ConvertedCase:
    """A checked case, scaled to its storage type and encoded, ready to be written."""

    raw: RawCase
    features: bytes  # records.encode_case_features: the record but for its case_index
    shape: List[int]
    has_label: bool
    mean: List[float]
    std: List[float]
    affine: np.ndarray
    spacing: List[float]
    labels_present: List[int]  # the internal foreground labels the truth holds (empty without a truth)


def _convert_case(raw: RawCase, intensity: str = DEFAULT_INTENSITY):
    """Check, scale and encode one case; returns a ConvertedCase or the CaseProblem that stopped it."""
    try:
        case: LoadedCase = load_case(raw)
    except InvalidCaseError as error:
        return error.problem
    image = scale_intensities(case.image, intensity)
    del case.image  # the float copy is 2-4x the stored one; free it early
    mean, std = foreground_statistics(image)
    foreground = foreground_locations(case.label, LAYOUTS[raw.layout].num_classes, raw.case_id)
    present = [klass for klass, count in enumerate(foreground[0], start=1) if count > 0]
    return ConvertedCase(raw, encode_case_features(image, case.label, mean, std, foreground), list(image.shape[:3]),
                         case.label is not None, mean, std, case.affine, case.spacing, present)


def _check_case(raw: RawCase) -> Optional[CaseProblem]:
    try:
        load_case(raw)
    except InvalidCaseError as error:
        return error.problem
    return None


class _CaseRunner:
    """Runs a per-case function over cases, in order, in ``workers`` processes."""

    def __init__(self, function: Callable, workers: int):
        self.function = function
        self.workers = workers
        self.pool = None

    def __enter__(self):
        if self.workers > 1:
            # spawn, not fork: the parent may hold TensorFlow's thread pools, which
            # a forked child inherits in an undefined state.
            self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
        return self

    def map(self, cases: Sequence[RawCase]) -> Iterator:
        if self.pool is None:
            yield from map(self.function, cases)
            return
        # A few cases in flight per worker, not all of them: results are whole
        # volumes, and the parent may write them more slowly than workers read.
        remaining = iter(cases)
        pending = collections.deque(self.pool.apply_async(self.function, (case,))
                                    for case in itertools.islice(remaining, 2 * self.workers))
        while pending:
            result = pending.popleft().get()
            for case in itertools.islice(remaining, 1):
                pending.append(self.pool.apply_async(self.function, (case,)))
            yield result

    def __exit__(self, *exc_info):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _check_options(folds: Optional[int], workers: int, intensity: str = DEFAULT_INTENSITY) -> None:
    if intensity not in INTENSITY_FORMATS:
        raise ConfigError("--intensity {}: choose one of {}".format(intensity, ", ".join(INTENSITY_FORMATS)))
    if folds is not None and folds < 2:
        raise ConfigError("--folds must be at least 2, got {}".format(folds))
    if workers < 1:
        raise ConfigError("--workers must be at least 1, got {}".format(workers))


INVALID_HINT = "'python cli.py validate -i {}' lists every invalid case; --skip-invalid leaves them out"


# ------------------------------------------------------------------ preprocess
def preprocess(input_dir: str, output_dir: str, *, folds: int = 5, seed: int = 0, workers: int = 1,
               show_progress: bool = True, layout: str = AUTO, skip_invalid: bool = False,
               intensity: str = DEFAULT_INTENSITY) -> Dict:
    """Convert a raw folder (any layout of ``unet3d_core.data.layouts``) into records and a manifest.

    Args:
        layout: ``auto`` or a name from ``unet3d_core.data.layouts.LAYOUTS``.
        skip_invalid: leave invalid cases out (listed under ``skipped`` in
            the manifest) instead of stopping at the first.
        intensity: how images are stored, ``uint16`` or ``uint8`` (see the module's docstring).
    Returns:
        the manifest dict.
    Raises:
        InvalidCaseError: a case failed a check (without ``skip_invalid``);
            nothing is written.
        DataError: unknown layout, too few valid cases, or an existing output folder.
        ConfigError: bad ``folds``, ``workers`` or ``intensity``.
    """
    _check_options(folds, workers, intensity)
    if os.path.exists(output_dir) and (not os.path.isdir(output_dir) or os.listdir(output_dir)):
        raise DataError("{}: already exists and is not empty; choose another -o or remove it".format(output_dir))
    if (os.path.realpath(output_dir) + os.sep).startswith(os.path.realpath(input_dir) + os.sep):
        raise DataError("-o {} is inside -i {}: records among the raw cases would be read as cases later (validate, "
                        "a second preprocess); choose a folder outside it".format(output_dir, input_dir))
    scan = scan_cases(input_dir, layout)
    hint = INVALID_HINT.format(input_dir)
    if scan.problems and not skip_invalid:
        raise InvalidCaseError(scan.problems[0], hint)
    if len(scan.cases) < folds:
        raise DataError("{}: {} usable cases cannot be split into {} folds".format(input_dir, len(scan.cases), folds))

    with published_folder(output_dir, STAGING_PREFIX) as staging:
        entries, written, skipped = _convert_all(scan.cases, staging, workers, show_progress, skip_invalid, hint,
                                                 intensity)
        skipped = sorted(scan.problems + skipped, key=lambda problem: problem.case_id)
        if len(written) < folds:
            raise DataError("{}: only {} valid cases ({} skipped); {} folds need at least {}".format(
                input_dir, len(written), len(skipped), folds, folds))
        fold_of = assign_folds(written, folds, seed)
        for entry in entries:
            entry["fold"] = fold_of[entry["id"]]
        spec = LAYOUTS[scan.layout]
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": "unet3d {}".format(__version__),
            "source": os.path.abspath(input_dir),
            "source_layout": scan.layout,
            "source_description": spec.title,
            "channels": list(spec.channels),
            "label_map": {str(source): target for source, target in sorted(spec.label_map.items())},
            "cohort": spec.cohort,
            "label_names": {str(source): name for source, name in sorted(spec.label_names.items())},
            "regions": {name: list(labels) for name, labels in spec.regions.items()},
            "folds": folds,
            "fold_seed": seed,
            "intensity_format": intensity,
            "intensity": intensity_description(intensity),
            # Sampled once here for foreground-oversampled crops (records.foreground_locations).
            "foreground_locations": {"per_class": FOREGROUND_SAMPLES},
            "cases": entries,
            "skipped": [{"id": problem.case_id, "file": problem.path, "reason": problem.reason}
                        for problem in skipped],
        }
        write_manifest(staging, manifest)
    return manifest


def _convert_all(cases: List[RawCase], staging: str, workers: int, show_progress: bool, skip_invalid: bool,
                 hint: str, intensity: str):
    """Check, scale and write every case; returns (manifest entries, written cases, problems)."""
    import tensorflow as tf

    entries: List[Dict] = []
    written: List[RawCase] = []
    problems: List[CaseProblem] = []
    progress = Progress("preprocess", len(cases)) if show_progress else None
    with _CaseRunner(functools.partial(_convert_case, intensity=intensity), min(workers, len(cases))) as runner:
        for done, outcome in enumerate(runner.map(cases), start=1):
            if isinstance(outcome, CaseProblem):
                if not skip_invalid:
                    raise InvalidCaseError(outcome, hint)
                problems.append(outcome)
                if progress is not None:
                    progress.update(done, "{} (skipped)".format(outcome.case_id))
                continue
            raw = outcome.raw
            # The record's case_index is its position in the manifest, known here
            # because results arrive in case order.
            file_name = raw.case_id + RECORD_SUFFIX
            record_path = os.path.join(staging, file_name)
            with tf.io.TFRecordWriter(record_path) as writer:
                writer.write(assemble_record(len(entries), outcome.features))
            entries.append(_manifest_entry(outcome, file_name))
            # Lets the reader spot a truncated or replaced record without reading it.
            entries[-1]["record_bytes"] = os.path.getsize(record_path)
            written.append(raw)
            if progress is not None:
                progress.update(done, raw.case_id)
    return entries, written, problems


def _manifest_entry(case: ConvertedCase, file_name: str) -> Dict:
    raw = case.raw
    shape = [int(size) for size in case.shape]
    entry = {
        "id": raw.case_id,
        "grade": raw.grade,
        "file": file_name,
        "shape": shape,
        "affine": case.affine.tolist(),
        "spacing": case.spacing,
        "crop_box": [[0, size] for size in shape],
        "mean": case.mean,
        "std": case.std,
        "has_label": case.has_label,
        # Which labels the truth holds: --lesion_rules auto reads them (a resection cavity moves MET to 2025).
        "labels_present": case.labels_present if case.has_label else None,
        "source_images": {channel: os.path.abspath(path) for channel, path in raw.images.items()},
        "source_segmentation": os.path.abspath(raw.segmentation) if raw.segmentation else None,
    }
    if raw.volume_index is not None:
        entry["source_volume_index"] = dict(raw.volume_index)
    return entry


# ------------------------------------------------------------------ validate
@dataclass
class ValidationReport:
    """What ``validate`` found: the layout, the valid case ids and every problem."""

    input_dir: str
    layout: str
    valid: List[str]
    problems: List[CaseProblem]

    @property
    def checked(self) -> int:
        return len(self.valid) + len({problem.case_id for problem in self.problems})

    def summary(self) -> str:
        lines = ["{}: layout {} ({}), {} cases checked, {} valid, {} invalid".format(
            self.input_dir, self.layout, LAYOUTS[self.layout].title, self.checked, len(self.valid),
            self.checked - len(self.valid))]
        if self.problems:
            lines.append(problems_table(self.problems, self.input_dir))
        return "\n".join(lines)


def validate(input_dir: str, *, layout: str = AUTO, workers: int = 1, show_progress: bool = True) -> ValidationReport:
    """Run every check of ``preprocess`` on every case and write nothing.

    Raises:
        DataError: the folder does not exist or its layout is unknown.
    """
    _check_options(None, workers)
    scan = scan_cases(input_dir, layout)
    problems = list(scan.problems)
    valid = []
    progress = Progress("validate", len(scan.cases)) if show_progress and scan.cases else None
    with _CaseRunner(_check_case, max(1, min(workers, len(scan.cases)))) as runner:
        for done, (raw, problem) in enumerate(zip(scan.cases, runner.map(scan.cases)), start=1):
            if problem is None:
                valid.append(raw.case_id)
            else:
                problems.append(problem)
            if progress is not None:
                progress.update(done, raw.case_id)
    problems.sort(key=lambda problem: problem.case_id)
    return ValidationReport(input_dir, scan.layout, valid, problems)


def problems_table(problems: Sequence[CaseProblem], root: str) -> str:
    """A plain-text table of invalid cases: case, file (relative to ``root``), problem."""
    rows = [("case", "file", "problem")]
    for problem in problems:
        path = problem.path
        try:
            relative = os.path.relpath(path, root)
            path = path if relative.startswith("..") else relative
        except ValueError:  # another drive on Windows
            pass
        rows.append((problem.case_id, path, problem.reason))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join("  {:<{}}  {:<{}}  {}".format(row[0], widths[0], row[1], widths[1], row[2]) for row in rows)


def skipped_summary(manifest: Dict) -> str:
    """The table of cases a ``--skip-invalid`` run left out, with a heading line."""
    problems = [CaseProblem(case["id"], case["file"], case["reason"]) for case in manifest.get("skipped", [])]
    return "skipped {} invalid case{}:\n{}".format(len(problems), "" if len(problems) == 1 else "s",
                                                   problems_table(problems, manifest["source"]))
