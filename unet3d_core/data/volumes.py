"""Whole volumes in and out of inference: cases ready for the network, label maps and probabilities written back.

In: :func:`raw_folder_cases` reads a raw folder (any layout of
:mod:`unet3d_core.data.layouts`, segmentations optional) and :func:`record_cases`
a preprocessed data set's records. Either way a case's inputs are normalised
exactly as the training records are read: the run's intensity storage
(uint16 or the reference's uint8 clip, unet3d_core.data.preprocess) then a z-score
of voxels > 0 with the case's foreground statistics.

Out: label maps (:func:`write_label_map`, in the source's label values and
the segmentation's dtype) and softmax probabilities
(:func:`write_probabilities`) land in each case's own geometry, copying the
header of its segmentation (or an image) when that file is at hand; every
file is written atomically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from unet3d_core.data.case_scan import discover_cases
from unet3d_core.data.cases import load_case
from unet3d_core.data.layouts import LAYOUTS, NIFTI_SUFFIXES, SEGMENTATION_ENDINGS, detect_layout, inverse_label_map
from unet3d_core.data.preprocess import foreground_statistics, scale_intensities
from unet3d_core.data.records import DEFAULT_INTENSITY, parse_case
from unet3d_core.errors import DataError

NORMALIZE_EPSILON = 1e-8  # as unet3d_core.data.input_pipeline.normalize
PROBABILITIES_SUFFIX = "_probabilities"


# ------------------------------------------------------------------ cases in
def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Z-score voxels > 0 per channel (float32 arithmetic, as the records are read); zeros stay zero."""
    image = image.astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return np.where(image > 0, (image - mean) / (std + np.float32(NORMALIZE_EPSILON)), image).astype(np.float32)


@dataclass
class OutputGeometry:
    """Where a case's outputs must land: its shape, affine, and the NIfTI whose header they copy."""

    shape: Tuple[int, int, int]
    affine: np.ndarray
    spacing: List[float]
    header_source: Optional[str] = None  # the segmentation if there is one, else an image
    label_dtype: str = "uint8"  # label maps are written in the case's segmentation dtype when it has one


@dataclass
class InferenceCase:
    """One case ready for the network."""

    case_id: str
    image: np.ndarray  # float32 [x, y, z, 4], normalised
    label: Optional[np.ndarray]  # internal labels, or None
    geometry: OutputGeometry
    to_source_labels: Dict[int, int] = field(default_factory=dict)  # internal -> source label


def raw_folder_cases(input_dir: str, shard: Callable[[List], List] = list,
                     intensity: str = DEFAULT_INTENSITY,
                     skipped: Optional[List[Tuple[str, str]]] = None) -> Tuple[List[str], Iterator[InferenceCase]]:
    """Cases of a raw BraTS folder (segmentations optional), preprocessed like the records: ``intensity`` is
    the storage of the data set the network trained on (its run's ``RunConfig.intensity``). With a
    ``skipped`` list, a case that fails to load (DataError) is appended to it as (case id, reason) and left
    out instead of stopping the iteration.

    Returns:
        (ids of this worker's cases, iterator loading them one at a time).
    Raises:
        DataError: an unknown layout or a broken case (see unet3d_core.data.case_scan and unet3d_core.data.cases).
    """
    folder_layout = detect_layout(input_dir)
    raw_cases = shard(discover_cases(input_dir, require_segmentation=False))

    def load() -> Iterator[InferenceCase]:
        for raw in raw_cases:
            layout = getattr(raw, "layout", None) or folder_layout
            try:
                loaded = load_case(raw, layout)
            except DataError as error:
                if skipped is None:
                    raise
                skipped.append((raw.case_id, str(error)))
                continue
            scaled = scale_intensities(loaded.image, intensity)
            loaded.image = None  # free the float copy before normalising
            mean, std = foreground_statistics(scaled)
            yield InferenceCase(
                raw.case_id, normalize(scaled, mean, std), loaded.label,
                OutputGeometry(tuple(scaled.shape[:3]), loaded.affine, loaded.spacing,
                               raw.segmentation or raw.images[LAYOUTS[layout].channels[-1]],
                               segmentation_dtype(raw.segmentation)),
                inverse_label_map(LAYOUTS[layout].label_map))

    return [raw.case_id for raw in raw_cases], load()


def segmentation_beside(image_path: str, case_id: str) -> Optional[str]:
    """The ``<case>_seg``, ``<case>-seg`` or ``<case>_gtv`` (.nii[.gz]) next to one of a case's images, if present."""
    folder = os.path.dirname(image_path)
    for name in SEGMENTATION_ENDINGS:
        for extension in NIFTI_SUFFIXES:
            path = os.path.join(folder, "{}{}{}".format(case_id, name, extension))
            if os.path.isfile(path):
                return path
    return None


def segmentation_dtype(path: Optional[str]) -> str:
    """The integer dtype a segmentation file stores its labels in; uint8 when there is none (or it is float)."""
    if path is None:
        return "uint8"
    import nibabel

    dtype = np.dtype(nibabel.load(path).header.get_data_dtype())
    return dtype.name if dtype.kind in "iu" else "uint8"


def record_cases(manifest, cases: List[Dict], session_config=None) -> Iterator[InferenceCase]:
    """Cases of a preprocessed data set, read from their records and normalised in a tf.data graph."""
    import tensorflow as tf

    from unet3d_core.data.input_pipeline import normalize as normalize_tensor

    tf1 = tf.compat.v1
    to_source = {target: source for source, target in manifest.label_map.items()}
    graph = tf.Graph()
    with graph.as_default():
        def transform(record):
            case = parse_case(record, len(manifest.channels), manifest.intensity_format)
            return normalize_tensor(tf.cast(case["image"], tf.float32), case["mean"], case["std"]), case["label"]

        dataset = tf.data.TFRecordDataset([manifest.record_path(case) for case in cases])
        dataset = dataset.map(transform).prefetch(1)
        iterator = tf1.data.make_initializable_iterator(dataset)
        next_case = iterator.get_next()
    with tf1.Session(graph=graph, config=session_config) as session:
        session.run(iterator.initializer)
        for case in cases:
            image, label = session.run(next_case)
            flair = next(iter(sorted(case.get("source_images", {}).items())), (None, None))[1]
            header_source = None
            segmentation = case.get("source_segmentation")
            if not segmentation or not os.path.isfile(segmentation):
                segmentation = segmentation_beside(flair, case["id"]) if flair and os.path.isfile(flair) else None
            if segmentation or (flair and os.path.isfile(flair)):
                header_source = segmentation or flair
            geometry = OutputGeometry(tuple(case["shape"]), np.asarray(case["affine"], dtype=np.float64),
                                      [float(size) for size in case["spacing"]], header_source,
                                      segmentation_dtype(segmentation))
            yield InferenceCase(case["id"], image, label if case.get("has_label") else None, geometry, to_source)


# ------------------------------------------------------------------ label maps out
def _reference_header(geometry: OutputGeometry):
    import nibabel

    if not geometry.header_source or not os.path.isfile(geometry.header_source):
        return None
    reference = nibabel.load(geometry.header_source)
    if tuple(reference.shape[:3]) != tuple(geometry.shape):
        return None
    return reference.header


def _save_nifti(path: str, data: np.ndarray, geometry: OutputGeometry, dtype) -> None:
    """Save ``data`` in the case's geometry, copying the reference header; atomic (temporary file + rename)."""
    import nibabel

    header = _reference_header(geometry)
    if header is not None:
        header = header.copy()
        header.set_data_dtype(dtype)
        image = nibabel.Nifti1Image(data.astype(dtype), geometry.affine, header=header)
        qform_code = int(header["qform_code"]) or 1
        sform_code = int(header["sform_code"]) or 1
    else:
        image = nibabel.Nifti1Image(data.astype(dtype), geometry.affine)
        image.header.set_xyzt_units("mm")
        qform_code = sform_code = 1  # "scanner", as BraTS files
    image.set_qform(geometry.affine, code=qform_code)
    image.set_sform(geometry.affine, code=sform_code)
    image.header.set_zooms(tuple(geometry.spacing) + tuple(image.header.get_zooms()[3:]))
    image.set_data_dtype(dtype)
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, "." + name.replace(".nii", ".partial.nii", 1))
    nibabel.save(image, temporary)
    os.replace(temporary, path)


def write_label_map(path: str, labels: np.ndarray, case: InferenceCase) -> None:
    """Write internal ``labels`` as a NIfTI in the case's geometry and its source's label values."""
    if tuple(labels.shape) != tuple(case.geometry.shape):
        raise DataError("case {}: prediction shape {} differs from the case's {}".format(
            case.case_id, labels.shape, case.geometry.shape))
    lookup = np.arange(256, dtype=np.int64)  # internal labels are uint8
    for internal, source in case.to_source_labels.items():
        lookup[internal] = source
    _save_nifti(path, lookup[labels], case.geometry, np.dtype(case.geometry.label_dtype))


def write_probabilities(path: str, probabilities: np.ndarray, case: InferenceCase) -> None:
    """Write softmax probabilities as a 4-D float32 NIfTI in the case's geometry.

    Channel k is internal class k: 0 background, 1 necrotic / non-enhancing
    core, 2 oedema, 3 enhancing tumour (label 4 in BraTS 2019 files).
    """
    _save_nifti(path, probabilities, case.geometry, np.dtype(np.float32))


def output_paths(output_dir: str, case_id: str, save_probabilities: bool) -> List[str]:
    """Where a case's label map goes, then (when asked for) its probabilities."""
    paths = [os.path.join(output_dir, case_id + ".nii.gz")]
    if save_probabilities:
        paths.append(os.path.join(output_dir, case_id + PROBABILITIES_SUFFIX + ".nii.gz"))
    return paths
