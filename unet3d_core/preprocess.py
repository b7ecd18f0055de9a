"""Raw NIfTI cases -> uint8 TFRecords + manifest, with seeded case-level folds.

Intensity handling follows the reference: per modality, values are clipped to
[0, 0.85 x max] and scaled to uint8 [0, 255]; the per-channel mean and
standard deviation over voxels > 0 are stored with the record for z-score
normalisation at load time. Labels are stored in the internal convention.

The output is complete or absent: everything is written into a hidden
temporary folder next to the output and renamed into place at the end.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from typing import Dict, List, Optional

import numpy as np

from unet3d_core import __version__
from unet3d_core.cases import CHANNELS, LABEL_MAPS, RawCase, detect_layout, discover_cases, load_case
from unet3d_core.errors import ConfigError, DataError
from unet3d_core.progress import Progress
from unet3d_core.records import FORMAT_VERSION, RECORD_SUFFIX, serialize_case, write_manifest

CLIP_FRACTION = 0.85


def scale_intensities(image: np.ndarray) -> np.ndarray:
    """Per channel: clip to [0, 0.85 x max], scale to uint8 [0, 255]."""
    scaled = np.empty(image.shape, dtype=np.uint8)
    for channel in range(image.shape[-1]):
        volume = image[..., channel]
        top = float(volume.max()) * CLIP_FRACTION
        if top <= 0:
            scaled[..., channel] = 0
            continue
        clipped = np.clip(volume, 0.0, top)
        scaled[..., channel] = np.round(clipped * (255.0 / top)).astype(np.uint8)
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

    Cases of each grade are shuffled with ``seed`` and dealt round-robin, so
    every fold gets a near-equal share of HGG and LGG. The same case ids and
    seed always give the same folds, whatever the file system's order.
    """
    assignment = {}
    offset = 0
    for grade in sorted({case.grade or "" for case in cases}):
        ids = sorted(case.case_id for case in cases if (case.grade or "") == grade)
        order = np.random.RandomState(seed).permutation(len(ids))
        for position, index in enumerate(order):
            assignment[ids[index]] = (position + offset) % folds
        offset += len(ids)  # continue dealing where the previous grade stopped
    return assignment


def _process_case(job):
    raw, layout, case_index, output_dir = job
    case = load_case(raw, layout)
    image = scale_intensities(case.image)
    mean, std = foreground_statistics(image)
    file_name = raw.case_id + RECORD_SUFFIX
    import tensorflow as tf

    with tf.io.TFRecordWriter(os.path.join(output_dir, file_name)) as writer:
        writer.write(serialize_case(image, case.label, mean, std, case_index))
    shape = list(image.shape[:3])
    return {
        "id": raw.case_id,
        "grade": raw.grade,
        "file": file_name,
        "shape": shape,
        "affine": case.affine.tolist(),
        "spacing": case.spacing,
        "crop_box": [[0, size] for size in shape],
        "mean": mean,
        "std": std,
        "has_label": case.label is not None,
        "source_images": {channel: os.path.abspath(raw.images[channel]) for channel in CHANNELS},
    }


def preprocess(input_dir: str, output_dir: str, *, folds: int = 5, seed: int = 0, workers: int = 1,
               show_progress: bool = True) -> Dict:
    """Convert a raw BraTS folder into records and a manifest.

    Returns:
        the manifest dict.
    Raises:
        DataError: bad input (nothing is written) or an existing output folder.
        ConfigError: bad ``folds`` or ``workers``.
    """
    if folds < 2:
        raise ConfigError("--folds must be at least 2, got {}".format(folds))
    if workers < 1:
        raise ConfigError("--workers must be at least 1, got {}".format(workers))
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise DataError("{}: already exists and is not empty; choose another -o or remove it".format(output_dir))
    layout = detect_layout(input_dir)
    raw_cases = discover_cases(input_dir, require_segmentation=False)
    if len(raw_cases) < folds:
        raise DataError("{}: {} cases cannot be split into {} folds".format(input_dir, len(raw_cases), folds))
    fold_of = assign_folds(raw_cases, folds, seed)

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".unet3d-preprocess-", dir=parent)
    try:
        jobs = [(raw, layout, index, staging) for index, raw in enumerate(raw_cases)]
        entries: List[Optional[Dict]] = [None] * len(jobs)
        progress = Progress("preprocess", len(jobs)) if show_progress else None
        if workers == 1:
            results = map(_process_case, jobs)
            pool = None
        else:
            # spawn: the workers import TensorFlow themselves; forking a process
            # that holds TensorFlow's thread pools can deadlock.
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap(_process_case, jobs)
        try:
            for done, entry in enumerate(results, start=1):
                entries[done - 1] = entry
                if progress is not None:
                    progress.update(done, entry["id"])
        finally:
            if pool is not None:
                pool.terminate()
        for entry in entries:
            entry["fold"] = fold_of[entry["id"]]
        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": "unet3d {}".format(__version__),
            "source": os.path.abspath(input_dir),
            "source_layout": layout,
            "channels": list(CHANNELS),
            "label_map": {str(k): v for k, v in LABEL_MAPS[layout].items()},
            "folds": folds,
            "fold_seed": seed,
            "intensity": "clip [0, {} x max] per modality, scale to uint8".format(CLIP_FRACTION),
            "cases": entries,
        }
        write_manifest(staging, manifest)
        if os.path.isdir(output_dir):
            os.rmdir(output_dir)  # empty, checked above
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
