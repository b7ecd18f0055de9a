"""Raw brain-tumour cases on disk: finding them, reading them, checking them.

Layouts understood (detected automatically, or forced with ``--layout``):

- ``brats2019`` (BraTS 2018 and 2019): ``HGG/`` and ``LGG/`` folders of case
  folders, each holding ``<case>_{t1,t1ce,t2,flair,seg}.nii(.gz)``; labels
  {0, 1, 2, 4}.
- ``brats2020`` (BraTS 2020 and 2021): one folder of case folders with the same
  file names. BraTS 2020's ``name_mapping.csv``, when present, gives the grade.
  A segmentation with another name is accepted when it is the case folder's
  only other NIfTI file with "seg" in its name (BraTS20_Training_355 ships
  ``W39_1998.09.19_Segm.nii``).
- ``brats2023`` (BraTS 2023 and later, e.g. GLI): one folder of case folders
  holding ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; labels {0, 1, 2, 3}, 3
  being enhancing tumour.
- ``msd`` (Medical Segmentation Decathlon, Task01_BrainTumour): 4-D images
  (FLAIR, T1w, T1gd, T2w along the 4th axis, or the order ``dataset.json``
  gives) in ``imagesTr/`` and ``imagesTs/``, 3-D label maps in ``labelsTr/``;
  labels 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.

Any case may lack its segmentation: such cases are kept for prediction.

Internally every case uses the channel order t1, t1ce, t2, flair and the
labels 0 background, 1 necrotic / non-enhancing core, 2 oedema,
3 enhancing tumour. Each layout's ``label_map`` (source label -> internal
label) travels with the data, so predictions are written in the user's labels.

Every check failure is a :class:`CaseProblem`: one line naming the case, the
file and what is wrong with it.
"""
from __future__ import annotations

import csv
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from unet3d_core.errors import DataError

CHANNELS = ("t1", "t1ce", "t2", "flair")
INTERNAL_LABELS = (0, 1, 2, 3)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
AUTO = "auto"
# Folders that archive tools leave behind and that never hold cases.
IGNORED_FOLDERS = ("__MACOSX",)
AFFINE_TOLERANCE = 1e-3  # mm; co-registered modalities of one case share their header geometry


@dataclass(frozen=True)
class Layout:
    """How one data release names its files and numbers its labels."""

    name: str
    title: str  # for messages: "BraTS 2018/2019"
    label_map: Dict[int, int]  # source label -> internal label
    # Per-modality file layouts: "<case><separator><suffix>.nii.gz"
    separator: str = "_"
    suffixes: Dict[str, str] = field(default_factory=dict)  # internal channel -> file suffix
    segmentation_suffix: str = "seg"


_BRATS_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
LAYOUTS = {
    "brats2019": Layout("brats2019", "BraTS 2018/2019", {0: 0, 1: 1, 2: 2, 4: 3}, "_", _BRATS_SUFFIXES),
    "brats2020": Layout("brats2020", "BraTS 2020/2021", {0: 0, 1: 1, 2: 2, 4: 3}, "_", _BRATS_SUFFIXES),
    "brats2023": Layout("brats2023", "BraTS 2023+", {0: 0, 1: 1, 2: 2, 3: 3}, "-",
                        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}),
    # MSD numbers oedema 1 and non-enhancing tumour 2: the reverse of BraTS.
    "msd": Layout("msd", "MSD Task01_BrainTumour", {0: 0, 1: 2, 2: 1, 3: 3}),
}
LAYOUT_NAMES = tuple(LAYOUTS)
# Kept for callers of the first version: source label -> internal label per layout.
LABEL_MAPS = {name: dict(layout.label_map) for name, layout in LAYOUTS.items()}

# MSD's dataset.json names its 4th-axis volumes; these spellings map to our channels.
MSD_DEFAULT_ORDER = ("flair", "t1", "t1ce", "t2")
_MSD_MODALITY_NAMES = {"flair": "flair", "t2-flair": "flair", "t2f": "flair",
                       "t1": "t1", "t1w": "t1", "t1n": "t1",
                       "t1gd": "t1ce", "t1ce": "t1ce", "t1c": "t1ce",
                       "t2": "t2", "t2w": "t2"}
BRATS2020_NAME_MAPPING = "name_mapping.csv"


@dataclass
class RawCase:
    """Where one case's files are."""

    case_id: str
    grade: Optional[str]  # "HGG", "LGG" or None when the layout does not say
    images: Dict[str, str]  # channel -> path (for MSD all four are the same 4-D file)
    segmentation: Optional[str]
    layout: str = "brats2019"
    volume_index: Optional[Dict[str, int]] = None  # channel -> index along a 4-D image's 4th axis


@dataclass
class LoadedCase:
    """One case in memory, in the internal convention."""

    case_id: str
    grade: Optional[str]
    image: np.ndarray  # float32 [x, y, z, 4], channel order CHANNELS
    label: Optional[np.ndarray]  # uint8 [x, y, z], internal labels
    affine: np.ndarray  # 4x4, the spatial affine of the images
    spacing: List[float]  # mm per voxel along x, y, z


@dataclass(frozen=True)
class CaseProblem:
    """Why one case cannot be used; ``str()`` is the one-line error."""

    case_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return "case {}: {}: {}".format(self.case_id, self.path, self.reason)


class InvalidCaseError(DataError):
    """A case failed a check; ``problem`` says which case, file and why."""

    def __init__(self, problem: CaseProblem, hint: str = ""):
        super().__init__(str(problem) + (" ({})".format(hint) if hint else ""))
        self.problem = problem


@dataclass
class CaseScan:
    """What a raw folder holds: its layout, usable-looking cases and problems found without reading images."""

    layout: str
    cases: List[RawCase]
    problems: List[CaseProblem]


# ------------------------------------------------------------------ finding files
def _visible(names):
    return sorted(name for name in names if not name.startswith(".") and name not in IGNORED_FOLDERS)


def _case_folders(parent: str) -> List[str]:
    return [name for name in _visible(os.listdir(parent)) if os.path.isdir(os.path.join(parent, name))]


def _nifti_files(folder: str) -> List[str]:
    return [name for name in _visible(os.listdir(folder))
            if name.endswith(NIFTI_SUFFIXES) and os.path.isfile(os.path.join(folder, name))]


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _find_file(folder: str, case_id: str, suffix: str, separator: str = "_",
               files: Optional[List[str]] = None) -> Tuple[Optional[str], Optional[str]]:
    """Find ``<case><separator><suffix>.nii(.gz)`` in ``folder``.

    Falls back to the one file whose name ends with ``<separator><suffix>.nii(.gz)``
    (a renamed case folder). Returns (path, None) or (None, reason).
    """
    files = _nifti_files(folder) if files is None else files
    exact = [name for name in files if _strip_nifti_suffix(name) == case_id + separator + suffix]
    if len(exact) == 1:
        return os.path.join(folder, exact[0]), None
    if len(exact) > 1:
        return None, "both {} exist; keep one".format(" and ".join(exact))
    ending = [name for name in files if _strip_nifti_suffix(name).endswith(separator + suffix)]
    if len(ending) == 1:
        return os.path.join(folder, ending[0]), None
    if len(ending) > 1:
        return None, "several files end with {}{}: {}".format(separator, suffix, ", ".join(ending))
    return None, None


def _has_case_files(folder: str, case_id: str, layout: Layout) -> bool:
    path, _ = _find_file(folder, case_id, layout.suffixes["flair"], layout.separator)
    return path is not None


def detect_layout(input_dir: str, layout: str = AUTO) -> str:
    """Return the layout name of a raw data folder (``layout`` forces one), or raise DataError."""
    if not os.path.isdir(input_dir):
        raise DataError("{}: no such directory".format(input_dir))
    if layout != AUTO:
        if layout not in LAYOUTS:
            raise DataError("--layout {}: unknown; choose auto, {}".format(layout, ", ".join(LAYOUT_NAMES)))
        return layout
    if any(os.path.exists(os.path.join(input_dir, name)) for name in ("dataset.json", "imagesTr", "imagesTs")):
        return "msd"
    if any(os.path.isdir(os.path.join(input_dir, grade)) for grade in ("HGG", "LGG")):
        return "brats2019"
    found = set()
    for name in _case_folders(input_dir):
        folder = os.path.join(input_dir, name)
        for candidate in ("brats2020", "brats2023"):
            if _has_case_files(folder, name, LAYOUTS[candidate]):
                found.add(candidate)
    if len(found) == 1:
        return found.pop()
    if found:
        raise DataError("{}: holds case folders of both BraTS 2020 (<case>_flair.nii.gz) and BraTS 2023 "
                        "(<case>-t2f.nii.gz) naming; choose one with --layout".format(input_dir))
    folders = _case_folders(input_dir)
    hint = "; did you mean -i {}?".format(os.path.join(input_dir, folders[0])) if len(folders) == 1 else ""
    raise DataError("{}: no cases found. Expected HGG/ and LGG/ folders (BraTS 2018/2019), case folders holding "
                    "<case>_flair.nii.gz (BraTS 2020/2021) or <case>-t2f.nii.gz (BraTS 2023+), or imagesTr/ "
                    "with dataset.json (MSD Task01_BrainTumour){}".format(input_dir, hint))


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
    files = _nifti_files(folder)
    # Name a missing file with the extension its siblings use.
    extension = ".nii" if files and all(name.endswith(".nii") for name in files) else ".nii.gz"
    images = {}
    for channel in CHANNELS:
        suffix = layout.suffixes[channel]
        path, reason = _find_file(folder, case_id, suffix, layout.separator, files)
        if path is None:
            expected = os.path.join(folder, "{}{}{}{}".format(case_id, layout.separator, suffix, extension))
            problems.append(CaseProblem(case_id, expected, reason or "missing {} image".format(channel)))
            return None
        images[channel] = path
    segmentation, reason = _find_file(folder, case_id, layout.segmentation_suffix, layout.separator, files)
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
        for name in _nifti_files(folder):
            case_id = _strip_nifti_suffix(name)
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
            for case_id in _case_folders(parent):
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


# ------------------------------------------------------------------ reading and checking
def _header(raw: RawCase, path: str):
    import nibabel

    try:
        return nibabel.load(path)
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "cannot read: {}".format(_describe(error)))) from None


def _describe(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return "{}{}".format(type(error).__name__, ": " + text[0] if text else "")


def _spatial_shape(raw: RawCase, path: str, image, volumes: Optional[int]) -> Tuple[int, ...]:
    """Check the header's dimensions; return the 3-D spatial shape."""
    shape = tuple(int(size) for size in image.shape)
    # A trailing axis of length 1 is still one 3-D volume.
    while len(shape) > 3 and shape[-1] == 1 and (volumes is None or len(shape) > 4):
        shape = shape[:-1]
    if volumes is None and len(shape) != 3:
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "is {}-D with shape {}; expected a 3-D volume".format(
            len(shape), shape)))
    if volumes is not None and (len(shape) != 4 or shape[3] != volumes):
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "has shape {}; expected a 4-D image with {} volumes "
                                                              "(FLAIR, T1w, T1gd, T2w)".format(shape, volumes)))
    if min(shape) == 0:
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "is empty (shape {})".format(shape)))
    return shape[:3]


def _voxels(raw: RawCase, path: str, image, as_float: bool) -> np.ndarray:
    try:
        if as_float:
            return image.get_fdata(dtype=np.float32)
        return np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, MemoryError) as error:
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "cannot read voxels (truncated or corrupt file?): "
                                                              "{}".format(_describe(error)))) from None


def _check_image_volume(raw: RawCase, path: str, volume: np.ndarray, what: str) -> None:
    finite = np.isfinite(volume)
    if not finite.all():
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "{} has {} NaN or infinite voxels".format(
            what, int(volume.size - np.count_nonzero(finite)))))
    if not volume.any():
        raise InvalidCaseError(CaseProblem(raw.case_id, path, "{} is all zero".format(what)))


def load_case(raw: RawCase, layout: Optional[str] = None) -> LoadedCase:
    """Read and check one case; map labels to the internal convention.

    ``layout`` defaults to the one the case was found with.
    Raises:
        InvalidCaseError (a DataError): unreadable or truncated file, wrong
            number of dimensions, empty volume, modalities (or segmentation) of
            different shapes or affines, NaN or infinite voxels, an all-zero
            image, or labels outside the layout's set; the message names the
            case and the file.
    """
    spec = LAYOUTS[layout or raw.layout]
    four_d = raw.volume_index is not None
    paths = [raw.images[CHANNELS[0]]] if four_d else [raw.images[channel] for channel in CHANNELS]
    headers = [_header(raw, path) for path in paths]
    # Geometry from the headers first: cheap, and it names the odd file out.
    shapes = [_spatial_shape(raw, path, image, len(CHANNELS) if four_d else None)
              for path, image in zip(paths, headers)]
    reference_path, reference = paths[0], headers[0]
    for path, image, shape in zip(paths[1:], headers[1:], shapes[1:]):
        if shape != shapes[0]:
            raise InvalidCaseError(CaseProblem(raw.case_id, path, "has shape {} but {} has {}".format(
                shape, os.path.basename(reference_path), shapes[0])))
        if not np.allclose(image.affine, reference.affine, atol=AFFINE_TOLERANCE):
            raise InvalidCaseError(CaseProblem(raw.case_id, path, "has a different affine from {}".format(
                os.path.basename(reference_path))))
    seg_header = None
    if raw.segmentation is not None:
        seg_header = _header(raw, raw.segmentation)
        seg_shape = _spatial_shape(raw, raw.segmentation, seg_header, None)
        if seg_shape != shapes[0]:
            raise InvalidCaseError(CaseProblem(raw.case_id, raw.segmentation, "has shape {} but the images have "
                                                                              "{}".format(seg_shape, shapes[0])))
        if not np.allclose(seg_header.affine, reference.affine, atol=AFFINE_TOLERANCE):
            raise InvalidCaseError(CaseProblem(raw.case_id, raw.segmentation, "has a different affine from {}".format(
                os.path.basename(reference_path))))

    image = np.empty(shapes[0] + (len(CHANNELS),), dtype=np.float32)
    if four_d:
        volumes = _voxels(raw, reference_path, reference, as_float=True).reshape(shapes[0] + (len(CHANNELS),))
        for index, channel in enumerate(CHANNELS):
            position = raw.volume_index[channel]
            _check_image_volume(raw, reference_path, volumes[..., position],
                                "volume {} ({})".format(position, channel))
            image[..., index] = volumes[..., position]
        del volumes
    else:
        for index, (channel, path, header) in enumerate(zip(CHANNELS, paths, headers)):
            volume = _voxels(raw, path, header, as_float=True).reshape(shapes[0])
            _check_image_volume(raw, path, volume, "the {} image".format(channel))
            image[..., index] = volume
    label = None
    if seg_header is not None:
        seg = _voxels(raw, raw.segmentation, seg_header, as_float=False).reshape(shapes[0])
        reason = _label_problem(seg, spec.label_map, spec.title)
        if reason is not None:
            raise InvalidCaseError(CaseProblem(raw.case_id, raw.segmentation, reason))
        label = _apply_label_map(seg, spec.label_map)
    spacing = [float(size) for size in reference.header.get_zooms()[:3]]
    return LoadedCase(raw.case_id, raw.grade, image, label, np.asarray(reference.affine, dtype=np.float64), spacing)


def _label_problem(labels: np.ndarray, mapping: Dict[int, int], source: str = "") -> Optional[str]:
    """Why ``labels`` cannot be mapped through ``mapping``, or None."""
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        if not finite.all():
            return "segmentation has {} NaN or infinite voxels".format(int(labels.size - np.count_nonzero(finite)))
        if np.any(labels != np.round(labels)):
            return "segmentation holds non-integer values"
    elif labels.dtype.kind not in "iub":
        return "segmentation has data type {}; expected integers".format(labels.dtype)
    found = np.unique(labels).astype(np.int64)
    unknown = sorted(set(found.tolist()) - set(mapping))
    if unknown:
        return "unknown label value(s) {} ({} {})".format(
            ", ".join(str(v) for v in unknown), source + " uses" if source else "expected",
            ", ".join(str(v) for v in sorted(mapping)))
    return None


def _apply_label_map(labels: np.ndarray, mapping: Dict[int, int]) -> np.ndarray:
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels.astype(np.intp)]


def map_labels(labels: np.ndarray, mapping: Dict[int, int], where: str) -> np.ndarray:
    """Map label values through ``mapping``; any value not in it is a DataError naming ``where``."""
    reason = _label_problem(labels, mapping)
    if reason is not None:
        raise DataError("{}: {}".format(where, reason))
    return _apply_label_map(labels, mapping)


def inverse_label_map(mapping: Dict[int, int]) -> Dict[int, int]:
    """Internal label -> source label, for writing predictions in the source's convention."""
    return {target: source for source, target in mapping.items()}
