"""Data releases' layouts: how each names its files and numbers its labels, and which one a folder holds.

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

Internally every case uses the channel order t1, t1ce, t2, flair and the
labels 0 background, 1 necrotic / non-enhancing core, 2 oedema,
3 enhancing tumour. Each layout's ``label_map`` (source label -> internal
label) travels with the data, so predictions are written in the user's labels.

Finding a folder's cases is :mod:`unet3d_core.case_scan`; reading and
checking one is :mod:`unet3d_core.cases`.
"""
from __future__ import annotations

import os
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


# ------------------------------------------------------------------ file names
def _visible(names):
    return sorted(name for name in names if not name.startswith(".") and name not in IGNORED_FOLDERS)


def case_folders(parent: str) -> List[str]:
    """Names of the sub-folders of ``parent`` that may hold cases (hidden and archive folders left out), sorted."""
    return [name for name in _visible(os.listdir(parent)) if os.path.isdir(os.path.join(parent, name))]


def nifti_files(folder: str) -> List[str]:
    """Names of the visible ``.nii`` / ``.nii.gz`` files in ``folder``, sorted."""
    return [name for name in _visible(os.listdir(folder))
            if name.endswith(NIFTI_SUFFIXES) and os.path.isfile(os.path.join(folder, name))]


def strip_nifti_suffix(name: str) -> str:
    """``name`` without its ``.nii`` / ``.nii.gz`` ending (unchanged when it has neither)."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def find_case_file(folder: str, case_id: str, suffix: str, separator: str = "_",
                   files: Optional[List[str]] = None) -> Tuple[Optional[str], Optional[str]]:
    """Find ``<case><separator><suffix>.nii(.gz)`` in ``folder``.

    Falls back to the one file whose name ends with ``<separator><suffix>.nii(.gz)``
    (a renamed case folder). Returns (path, None) or (None, reason).
    """
    files = nifti_files(folder) if files is None else files
    exact = [name for name in files if strip_nifti_suffix(name) == case_id + separator + suffix]
    if len(exact) == 1:
        return os.path.join(folder, exact[0]), None
    if len(exact) > 1:
        return None, "both {} exist; keep one".format(" and ".join(exact))
    ending = [name for name in files if strip_nifti_suffix(name).endswith(separator + suffix)]
    if len(ending) == 1:
        return os.path.join(folder, ending[0]), None
    if len(ending) > 1:
        return None, "several files end with {}{}: {}".format(separator, suffix, ", ".join(ending))
    return None, None


def _has_case_files(folder: str, case_id: str, layout: Layout) -> bool:
    path, _ = find_case_file(folder, case_id, layout.suffixes["flair"], layout.separator)
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
    for name in case_folders(input_dir):
        folder = os.path.join(input_dir, name)
        for candidate in ("brats2020", "brats2023"):
            if _has_case_files(folder, name, LAYOUTS[candidate]):
                found.add(candidate)
    if len(found) == 1:
        return found.pop()
    if found:
        raise DataError("{}: holds case folders of both BraTS 2020 (<case>_flair.nii.gz) and BraTS 2023 "
                        "(<case>-t2f.nii.gz) naming; choose one with --layout".format(input_dir))
    folders = case_folders(input_dir)
    hint = "; did you mean -i {}?".format(os.path.join(input_dir, folders[0])) if len(folders) == 1 else ""
    raise DataError("{}: no cases found. Expected HGG/ and LGG/ folders (BraTS 2018/2019), case folders holding "
                    "<case>_flair.nii.gz (BraTS 2020/2021) or <case>-t2f.nii.gz (BraTS 2023+), or imagesTr/ "
                    "with dataset.json (MSD Task01_BrainTumour){}".format(input_dir, hint))


# ------------------------------------------------------------------ label values
def label_problem(labels: np.ndarray, mapping: Dict[int, int], source: str = "") -> Optional[str]:
    """Why ``labels`` cannot be mapped through ``mapping``, or None; ``source`` names the layout in the reason."""
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


def apply_label_map(labels: np.ndarray, mapping: Dict[int, int]) -> np.ndarray:
    """uint8 internal labels of ``labels``, whose values :func:`label_problem` has accepted."""
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels.astype(np.intp)]


def map_labels(labels: np.ndarray, mapping: Dict[int, int], where: str) -> np.ndarray:
    """Map label values through ``mapping``; any value not in it is a DataError naming ``where``."""
    reason = label_problem(labels, mapping)
    if reason is not None:
        raise DataError("{}: {}".format(where, reason))
    return apply_label_map(labels, mapping)


def inverse_label_map(mapping: Dict[int, int]) -> Dict[int, int]:
    """Internal label -> source label, for writing predictions in the source's convention."""
    return {target: source for source, target in mapping.items()}
