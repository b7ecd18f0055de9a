"""Raw BraTS cases on disk: finding them, reading them, checking them.

Layouts understood (detected automatically):

- ``brats2019``: ``HGG/`` and ``LGG/`` folders of case folders, each holding
  ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (or ``.nii``), labels {0,1,2,4}.
- ``brats2020``: one folder of case folders with the same file names.

Internally every case uses the channel order t1, t1ce, t2, flair and the
labels 0 background, 1 necrotic / non-enhancing core, 2 oedema,
3 enhancing tumour; the mapping back to the source's labels travels with
the data so predictions are written in the user's convention.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from unet3d_core.errors import DataError

CHANNELS = ("t1", "t1ce", "t2", "flair")
INTERNAL_LABELS = (0, 1, 2, 3)
# source label -> internal label, per layout
LABEL_MAPS = {
    "brats2019": {0: 0, 1: 1, 2: 2, 4: 3},
    "brats2020": {0: 0, 1: 1, 2: 2, 4: 3},
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class RawCase:
    """Where one case's files are."""

    case_id: str
    grade: Optional[str]  # "HGG", "LGG" or None when the layout does not say
    images: Dict[str, str]  # channel -> path
    segmentation: Optional[str]


@dataclass
class LoadedCase:
    """One case in memory, in the internal convention."""

    case_id: str
    grade: Optional[str]
    image: np.ndarray  # float32 [x, y, z, 4], channel order CHANNELS
    label: Optional[np.ndarray]  # uint8 [x, y, z], internal labels
    affine: np.ndarray  # 4x4
    spacing: List[float]  # mm per voxel along x, y, z


def _find_file(folder: str, case_id: str, suffix: str) -> Optional[str]:
    for extension in NIFTI_SUFFIXES:
        path = os.path.join(folder, "{}_{}{}".format(case_id, suffix, extension))
        if os.path.isfile(path):
            return path
    return None


def _case_folders(parent: str) -> List[str]:
    return sorted(name for name in os.listdir(parent)
                  if os.path.isdir(os.path.join(parent, name)) and not name.startswith("."))


def detect_layout(input_dir: str) -> str:
    """Return the layout name of a raw data folder, or raise DataError."""
    if not os.path.isdir(input_dir):
        raise DataError("{}: no such directory".format(input_dir))
    if any(os.path.isdir(os.path.join(input_dir, grade)) for grade in ("HGG", "LGG")):
        return "brats2019"
    for name in _case_folders(input_dir):
        if _find_file(os.path.join(input_dir, name), name, "flair"):
            return "brats2020"
    raise DataError("{}: no BraTS cases found (expected HGG/ and LGG/ folders, or case folders holding "
                    "<case>_flair.nii.gz and the other modalities)".format(input_dir))


def discover_cases(input_dir: str, require_segmentation: bool = True) -> List[RawCase]:
    """List the cases of a raw BraTS folder, sorted by case id.

    Raises:
        DataError: unknown layout, a missing modality or segmentation, or a
            duplicate case id; the message names the case and the file.
    """
    layout = detect_layout(input_dir)
    if layout == "brats2019":
        parents = [(os.path.join(input_dir, grade), grade) for grade in ("HGG", "LGG")
                   if os.path.isdir(os.path.join(input_dir, grade))]
    else:
        parents = [(input_dir, None)]
    cases = {}
    for parent, grade in parents:
        for case_id in _case_folders(parent):
            folder = os.path.join(parent, case_id)
            images = {}
            for channel in CHANNELS:
                path = _find_file(folder, case_id, channel)
                if path is None:
                    raise DataError("case {}: missing {} image ({}_{}.nii.gz in {})".format(
                        case_id, channel, case_id, channel, folder))
                images[channel] = path
            segmentation = _find_file(folder, case_id, "seg")
            if segmentation is None and require_segmentation:
                raise DataError("case {}: missing segmentation ({}_seg.nii.gz in {})".format(
                    case_id, case_id, folder))
            if case_id in cases:
                raise DataError("case {}: appears twice ({} and {})".format(
                    case_id, os.path.dirname(cases[case_id].images["flair"]), folder))
            cases[case_id] = RawCase(case_id, grade, images, segmentation)
    if not cases:
        raise DataError("{}: no cases found".format(input_dir))
    return [cases[case_id] for case_id in sorted(cases)]


def _read_nifti(path: str, case_id: str):
    import nibabel

    try:
        image = nibabel.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DataError("case {}: cannot read {}: {}".format(case_id, path, error)) from None
    if data.ndim != 3:
        raise DataError("case {}: {} is {}-D with shape {}; expected a 3-D volume".format(
            case_id, path, data.ndim, tuple(data.shape)))
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise DataError("case {}: {} contains NaN or infinite voxels".format(case_id, path))
    return image, data


def load_case(raw: RawCase, layout: str = "brats2019") -> LoadedCase:
    """Read and check one case; map labels to the internal convention.

    Raises:
        DataError: unreadable file, non-3-D volume, modalities of different
            shapes or affines, non-finite voxels, an all-zero image, or
            labels outside the layout's set.
    """
    volumes = []
    reference = None
    for channel in CHANNELS:
        image, data = _read_nifti(raw.images[channel], raw.case_id)
        if reference is None:
            reference = image
        elif data.shape != reference.shape:
            raise DataError("case {}: {} has shape {} but {} has {}".format(
                raw.case_id, raw.images[channel], tuple(data.shape), raw.images[CHANNELS[0]],
                tuple(reference.shape)))
        elif not np.allclose(image.affine, reference.affine, atol=1e-3):
            raise DataError("case {}: {} and {} have different affines".format(
                raw.case_id, raw.images[channel], raw.images[CHANNELS[0]]))
        if not np.any(data):
            raise DataError("case {}: {} is all zero".format(raw.case_id, raw.images[channel]))
        volumes.append(np.asarray(data, dtype=np.float32))
    label = None
    if raw.segmentation is not None:
        seg_image, seg = _read_nifti(raw.segmentation, raw.case_id)
        if seg.shape != reference.shape:
            raise DataError("case {}: {} has shape {} but the images have {}".format(
                raw.case_id, raw.segmentation, tuple(seg.shape), tuple(reference.shape)))
        label = map_labels(np.asarray(seg), LABEL_MAPS[layout], "case {}: {}".format(
            raw.case_id, raw.segmentation))
    spacing = [float(size) for size in reference.header.get_zooms()[:3]]
    return LoadedCase(raw.case_id, raw.grade, np.stack(volumes, axis=-1), label,
                      np.asarray(reference.affine, dtype=np.float64), spacing)


def map_labels(labels: np.ndarray, mapping: Dict[int, int], where: str) -> np.ndarray:
    """Map label values through ``mapping``; any value not in it is a DataError naming ``where``."""
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError("{}: segmentation holds non-integer values".format(where))
    labels = labels.astype(np.int64)
    found = np.unique(labels)
    unknown = sorted(set(found.tolist()) - set(mapping))
    if unknown:
        raise DataError("{}: unknown label value(s) {} (expected {})".format(
            where, ", ".join(str(v) for v in unknown), ", ".join(str(v) for v in sorted(mapping))))
    lookup = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        lookup[source] = target
    return lookup[labels]


def inverse_label_map(mapping: Dict[int, int]) -> Dict[int, int]:
    return {target: source for source, target in mapping.items()}
