"""Tiny raw data trees in every layout unet3d reads, written with nibabel for the tests.

Each writer returns {case_id: FakeCase} so a test can compare what preprocessing
made of a case with what was written. Volumes are 24x24x16: a border of zeros
(background, as after skull stripping) around random positive intensities, and a
segmentation holding every label of the release in its own block.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import nibabel
import numpy as np

SHAPE = (24, 24, 16)
CHANNELS = ("t1", "t1ce", "t2", "flair")
# 1 mm voxels, x and y flipped, as BraTS headers are.
AFFINE = np.array([[-1.0, 0, 0, 23.0], [0, -1.0, 0, 23.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
BRATS_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2023_SUFFIXES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_ORDER = ("flair", "t1", "t1ce", "t2")  # Task01_BrainTumour's 4th-axis order: FLAIR, T1w, T1gd, T2w
MSD_MODALITY_NAMES = {"flair": "FLAIR", "t1": "T1w", "t1ce": "t1gd", "t2": "T2w"}
MSD_LABEL_NAMES = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


@dataclass
class FakeCase:
    case_id: str
    images: Dict[str, np.ndarray]  # channel -> int16 volume as written
    seg: Optional[np.ndarray]  # source labels as written, or None
    folder: str


def make_arrays(seed: int, labels: Sequence[int], shape=SHAPE):
    """Random images (distinct per channel) and a segmentation with each of ``labels`` in a block."""
    rng = np.random.RandomState(seed)
    inside = np.zeros(shape, bool)
    inside[2:-2, 2:-2, 1:-1] = True
    images = {}
    for index, channel in enumerate(CHANNELS):
        volume = rng.randint(1, 200 * (index + 2), size=shape).astype(np.int16)
        volume[~inside] = 0
        images[channel] = volume
    seg = np.zeros(shape, np.uint8)
    for position, label in enumerate(labels):
        seg[4 + 4 * position:8 + 4 * position, 6:14, 4:10] = label
    return images, seg


def save(path: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, affine), path)
    return path


def _write_folder_case(folder, case_id, separator, suffixes, seg_labels, seed, extension=".nii.gz",
                       with_seg=True, seg_name=None):
    images, seg = make_arrays(seed, seg_labels)
    for channel in CHANNELS:
        save(os.path.join(folder, "{}{}{}{}".format(case_id, separator, suffixes[channel], extension)), images[channel])
    if with_seg:
        save(os.path.join(folder, seg_name or "{}{}seg{}".format(case_id, separator, extension)), seg)
    return FakeCase(case_id, images, seg if with_seg else None, folder)


def write_brats2019(root: str, hgg: int = 4, lgg: int = 2, seed: int = 0) -> Dict[str, FakeCase]:
    cases = {}
    for grade, count in (("HGG", hgg), ("LGG", lgg)):
        for number in range(count):
            case_id = "BraTS19_{}_{:03d}_1".format(grade, number)
            folder = os.path.join(root, grade, case_id)
            cases[case_id] = _write_folder_case(folder, case_id, "_", BRATS_SUFFIXES, (1, 2, 4),
                                                seed * 1000 + len(cases))
    return cases


def write_brats2020(root: str, count: int = 6, seed: int = 0, extension: str = ".nii",
                    odd_segmentation: bool = False, grades: Optional[Dict[str, str]] = None,
                    unlabelled: Sequence[int] = ()) -> Dict[str, FakeCase]:
    """BraTS 2020 style (uncompressed .nii, as the 2020 download ships them).

    ``odd_segmentation`` names the last case's segmentation as BraTS20_Training_355's is
    named in the release; ``grades`` writes a name_mapping.csv.
    """
    cases = {}
    for number in range(count):
        case_id = "BraTS20_Training_{:03d}".format(number + 1)
        seg_name = "W39_1998.09.19_Segm.nii" if odd_segmentation and number == count - 1 else None
        cases[case_id] = _write_folder_case(os.path.join(root, case_id), case_id, "_", BRATS_SUFFIXES, (1, 2, 4),
                                            seed * 1000 + number, extension, number not in unlabelled, seg_name)
    if grades is not None:
        with open(os.path.join(root, "name_mapping.csv"), "w") as handle:
            handle.write("Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
                         "BraTS_2019_subject_ID,BraTS_2020_subject_ID\n")
            for case_id, grade in sorted(grades.items()):
                handle.write("{},NA,NA,NA,NA,{}\n".format(grade, case_id))
    return cases


def write_brats2023(root: str, count: int = 5, seed: int = 0, unlabelled: Sequence[int] = ()) -> Dict[str, FakeCase]:
    cases = {}
    for number in range(count):
        case_id = "BraTS-GLI-{:05d}-000".format(number)
        cases[case_id] = _write_folder_case(os.path.join(root, case_id), case_id, "-", BRATS2023_SUFFIXES, (1, 2, 3),
                                            seed * 1000 + number, with_seg=number not in unlabelled)
    return cases


# BraTS 2023+ cohorts: the labels each release's segmentations hold (MEN-RT: its one label, GTV).
COHORT_LABELS = {"GLI": (1, 2, 3), "GLI-post": (1, 2, 3, 4), "SSA": (1, 2, 3), "MEN": (1, 2, 3), "MET": (1, 2, 3, 4),
                 "PED": (1, 2, 3, 4), "GoAT": (1, 2, 3), "MEN-RT": (1,)}


def write_cohort(root: str, cohort: str, count: int = 5, seed: int = 0, unlabelled: Sequence[int] = (),
                 labels: Optional[Sequence[int]] = None) -> Dict[str, FakeCase]:
    """A BraTS 2023+ release of one cohort: ``BraTS-<COHORT>-NNNNN-TTT/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``
    (``GLI-post``: the 2024 GLI release, timepoints 100+; ``MEN-RT``: ``BraTS-MEN-RT-NNNN-1/<case>_t1c.nii.gz``
    and ``<case>_gtv.nii.gz``)."""
    cases = {}
    labels = tuple(labels or COHORT_LABELS[cohort])
    for number in range(count):
        with_seg = number not in unlabelled
        if cohort == "MEN-RT":
            case_id = "BraTS-MEN-RT-{:04d}-1".format(number)
            folder = os.path.join(root, case_id)
            images, seg = make_arrays(seed * 1000 + number, labels)
            save(os.path.join(folder, case_id + "_t1c.nii.gz"), images["t1ce"])
            if with_seg:
                save(os.path.join(folder, case_id + "_gtv.nii.gz"), seg)
            cases[case_id] = FakeCase(case_id, {"t1ce": images["t1ce"]}, seg if with_seg else None, folder)
            continue
        name = "GLI" if cohort == "GLI-post" else cohort
        case_id = "BraTS-{}-{:05d}-{:03d}".format(name, number, 100 if cohort == "GLI-post" else 0)
        cases[case_id] = _write_folder_case(os.path.join(root, case_id), case_id, "-", BRATS2023_SUFFIXES, labels,
                                            seed * 1000 + number, with_seg=with_seg)
    return cases


def preprocess_tree(raw: str, tmp_path, name: str = "records", **kwargs) -> str:
    """Preprocess ``raw`` into ``tmp_path/name`` (2 folds unless given), quietly; returns the records folder."""
    from unet3d_core.data.preprocess import preprocess

    out = str(tmp_path / name)
    kwargs.setdefault("folds", 2)
    preprocess(raw, out, show_progress=False, **kwargs)
    return out


def write_msd(root: str, training: int = 5, test: int = 1, seed: int = 0, order: Sequence[str] = MSD_ORDER,
              dataset_json: bool = True, labels: Optional[Dict[str, str]] = None) -> Dict[str, FakeCase]:
    """Task01_BrainTumour style: 4-D float32 images with volumes in ``order``, labels 1 oedema, 2 NET, 3 ET."""
    cases = {}
    for number in range(training + test):
        case_id = "BRATS_{:03d}".format(number + 1)
        images, seg = make_arrays(seed * 1000 + number, (1, 2, 3))
        stacked = np.stack([images[channel] for channel in order], axis=-1).astype(np.float32)
        folder = "imagesTr" if number < training else "imagesTs"
        save(os.path.join(root, folder, case_id + ".nii.gz"), stacked)
        if number < training:
            save(os.path.join(root, "labelsTr", case_id + ".nii.gz"), seg)
        cases[case_id] = FakeCase(case_id, images, seg if number < training else None, os.path.join(root, folder))
    if dataset_json:
        description = {
            "name": "BRATS", "tensorImageSize": "4D",
            "modality": {str(index): MSD_MODALITY_NAMES[channel] for index, channel in enumerate(order)},
            "labels": labels or MSD_LABEL_NAMES,
            "numTraining": training, "numTest": test,
            "training": [{"image": "./imagesTr/BRATS_{:03d}.nii.gz".format(n + 1),
                          "label": "./labelsTr/BRATS_{:03d}.nii.gz".format(n + 1)} for n in range(training)],
            "test": ["./imagesTs/BRATS_{:03d}.nii.gz".format(n + 1) for n in range(training, training + test)],
        }
        with open(os.path.join(root, "dataset.json"), "w") as handle:
            json.dump(description, handle, indent=1)
    return cases


WRITERS = {"brats2019": write_brats2019, "brats2020": write_brats2020, "brats2023": write_brats2023,
           "msd": write_msd}
