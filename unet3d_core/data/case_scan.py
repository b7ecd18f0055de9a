"""Finding a raw folder's cases: which files each case has, and what is wrong, without reading images.

The folder's layout (see :mod:`unet3d_core.data.layouts`) says where to look.
Any case may lack its segmentation: such cases are kept for prediction
unless a segmentation is required. Problems found here (a missing modality,
two files for one modality, a duplicate case id) are
:class:`~unet3d_core.errors.CaseProblem` lines; the images themselves are
read and checked by :func:`unet3d_core.data.cases.load_case`.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from unet3d_core.data.cases import RawCase
from unet3d_core.data.layouts import (
    AUTO,
    CHANNELS,
    LAYOUTS,
    Layout,
    case_folders,
    detect_layout,
    find_case_file,
    nifti_files,
    strip_nifti_suffix,
)
from unet3d_core.errors import CaseProblem, DataError, InvalidCaseError

# MSD's dataset.json names its 4th-axis volumes; these spellings map to our channels.
MSD_DEFAULT_ORDER = ("flair", "t1", "t1ce", "t2")
_MSD_MODALITY_NAMES = {"flair": "flair", "t2-flair": "flair", "t2f": "flair",
                       "t1": "t1", "t1w": "t1", "t1n": "t1",
                       "t1gd": "t1ce", "t1ce": "t1ce", "t1c": "t1ce",
                       "t2": "t2", "t2w": "t2"}
BRATS2020_NAME_MAPPING = "name_mapping.csv"


@dataclass
class CaseScan:
    """What a raw folder holds: its layout, usable-looking cases and problems found without reading images."""

    layout: str
    cases: List[RawCase]
    problems: List[CaseProblem]


def _brats2020_grades(input_dir: str) -> Dict[str, str]:
    """Grades from BraTS 2020's name_mapping.csv (columns Grade, BraTS_2020_subject_ID), if it is there."""
    path = os.path.join(input_dir, BRATS2020_NAME_MAPPING)
    if not os.path.isfile(path):
        return {}
    grades = {}
    try:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                case_id = (row.get("BraTS_2020_subject_ID") or "").strip()
                grade = (row.get("Grade") or "").strip().upper()
                if case_id and grade in ("HGG", "LGG"):
                    grades[case_id] = grade
    except (OSError, csv.Error, UnicodeDecodeError):
        return {}  # grades only balance the folds; an odd file must not stop preprocessing
    return grades


def _scan_case_folder(folder: str, case_id: str, grade: Optional[str], layout: Layout,
                      require_segmentation: bool, problems: List[CaseProblem]) -> Optional[RawCase]:
    files = nifti_files(folder)
    # Name a missing file with the extension its siblings use.
    extension = ".nii" if files and all(name.endswith(".nii") for name in files) else ".nii.gz"
    images = {}
    for channel in layout.channels:
        suffix = layout.suffixes[channel]
        path, reason = find_case_file(folder, case_id, suffix, layout.separator, files)
        if path is None:
            expected = os.path.join(folder, "{}{}{}{}".format(case_id, layout.separator, suffix, extension))
            problems.append(CaseProblem(case_id, expected, reason or "missing {} image".format(channel)))
            return None
        images[channel] = path
    segmentation, reason = find_case_file(folder, case_id, layout.segmentation_suffix, layout.separator, files)
    if segmentation is None and reason is None:
        # A segmentation under another name: the one remaining NIfTI file with "seg" in its name.
        used = {os.path.basename(path) for path in images.values()}
        others = [name for name in files if name not in used and "seg" in name.lower()]
        if len(others) == 1:
            segmentation = os.path.join(folder, others[0])
        elif others:
            reason = "several candidate segmentations: {}".format(", ".join(others))
    expected_seg = os.path.join(folder, "{}{}{}{}".format(case_id, layout.separator, layout.segmentation_suffix,
                                                          extension))
    if reason is not None:
        problems.append(CaseProblem(case_id, expected_seg, reason))
        return None
    if segmentation is None and require_segmentation:
        problems.append(CaseProblem(case_id, expected_seg, "missing segmentation"))
        return None
    return RawCase(case_id, grade, images, segmentation, layout.name)


def _msd_channel_order(input_dir: str) -> Tuple[str, ...]:
    """The internal channel of each 4th-axis volume, from dataset.json when present."""
    path = os.path.join(input_dir, "dataset.json")
    if not os.path.isfile(path):
        return MSD_DEFAULT_ORDER
    try:
        with open(path) as handle:
            description = json.load(handle)
    except (OSError, ValueError) as error:
        raise DataError("{}: unreadable: {}".format(path, error)) from None
    if not isinstance(description, dict):
        raise DataError("{}: expected a JSON object".format(path))
    labels = description.get("labels")
    if isinstance(labels, dict):
        names = {str(key): str(value).lower() for key, value in labels.items()}
        expected = ("edema" in names.get("1", "") or "oedema" in names.get("1", "")) \
            and "non-enhancing" in names.get("2", "") and "enhancing" in names.get("3", "") \
            and "non" not in names.get("3", "") and set(names) <= {"0", "1", "2", "3"}
        if not expected:
            raise DataError("{}: labels {} are not Task01_BrainTumour's (1 edema, 2 non-enhancing tumor, "
                            "3 enhancing tumour); this data set cannot be read as --layout msd".format(
                                path, json.dumps(labels, sort_keys=True)))
    modality = description.get("modality")
    if modality is None:
        return MSD_DEFAULT_ORDER
    try:
        order = tuple(_MSD_MODALITY_NAMES[str(modality[key]).strip().lower()]
                      for key in sorted(modality, key=int))
    except (KeyError, ValueError, TypeError, AttributeError):
        order = ()
    if sorted(order) != sorted(CHANNELS):
        raise DataError("{}: modality {} must name FLAIR, T1w, T1gd and T2w once each".format(
            path, json.dumps(modality, sort_keys=True)))
    return order


def _scan_msd(input_dir: str, require_segmentation: bool, problems: List[CaseProblem]) -> List[RawCase]:
    order = _msd_channel_order(input_dir)
    volume_index = {channel: order.index(channel) for channel in CHANNELS}
    cases = []
    for images_folder, labels_folder in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        folder = os.path.join(input_dir, images_folder)
        if not os.path.isdir(folder):
            continue
        for name in nifti_files(folder):
            case_id = strip_nifti_suffix(name)
            path = os.path.join(folder, name)
            segmentation = None
            if labels_folder is not None:
                candidate = os.path.join(input_dir, labels_folder, name)
                segmentation = candidate if os.path.isfile(candidate) else None
                if segmentation is None and require_segmentation:
                    problems.append(CaseProblem(case_id, candidate, "missing segmentation"))
                    continue
            cases.append(RawCase(case_id, None, {channel: path for channel in CHANNELS}, segmentation, "msd",
                                 dict(volume_index)))
    return cases


def scan_cases(input_dir: str, layout: str = AUTO, require_segmentation: bool = False) -> CaseScan:
    """List a raw folder's cases, collecting problems found without reading images.

    Problems: a missing modality (or segmentation, if required), two files
    for one modality, a duplicate case id. Cases with a problem are left out
    of ``cases``; every copy of a duplicate id is left out.
    Raises:
        DataError: the folder does not exist or its layout is unknown.
    """
    layout = detect_layout(input_dir, layout)
    spec = LAYOUTS[layout]
    problems: List[CaseProblem] = []
    if layout == "msd":
        found = _scan_msd(input_dir, require_segmentation, problems)
    else:
        if layout == "brats2019":
            parents = [(os.path.join(input_dir, grade), grade) for grade in ("HGG", "LGG")
                       if os.path.isdir(os.path.join(input_dir, grade))]
            grades: Dict[str, str] = {}
        else:
            parents = [(input_dir, None)]
            grades = _brats2020_grades(input_dir) if layout == "brats2020" else {}
        found = []
        for parent, grade in parents:
            for case_id in case_folders(parent):
                case = _scan_case_folder(os.path.join(parent, case_id), case_id, grade or grades.get(case_id), spec,
                                         require_segmentation, problems)
                if case is not None:
                    found.append(case)
    by_id: Dict[str, List[RawCase]] = {}
    for case in found:
        by_id.setdefault(case.case_id, []).append(case)
    cases = []
    for case_id in sorted(by_id):
        copies = by_id[case_id]
        if len(copies) == 1:
            cases.append(copies[0])
            continue
        places = [copy.images["flair"] for copy in copies]
        problems.append(CaseProblem(case_id, places[1], "duplicate case id: also {}".format(
            ", ".join(place for place in places if place != places[1]))))
    problems.sort(key=lambda problem: (problem.case_id, problem.path))
    return CaseScan(layout, cases, problems)


def discover_cases(input_dir: str, require_segmentation: bool = True, layout: str = AUTO) -> List[RawCase]:
    """List the cases of a raw folder, sorted by case id.

    Raises:
        DataError: unknown layout or no cases.
        InvalidCaseError: a missing modality or segmentation, two files for one
            modality, or a duplicate case id; the message names the case and the file.
    """
    scan = scan_cases(input_dir, layout, require_segmentation)
    if scan.problems:
        raise InvalidCaseError(scan.problems[0])
    if not scan.cases:
        raise DataError("{}: no cases found".format(input_dir))
    return scan.cases
