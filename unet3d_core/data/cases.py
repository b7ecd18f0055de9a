"""One raw case: where its files are, and reading and checking it into the internal convention.

:func:`load_case` reads a case that :mod:`unet3d_core.data.case_scan` found, checks
every file (readable, 3-D or MSD's 4-D, same shape and affine, finite,
not all zero, labels the layout knows) and maps its labels to the internal
ones (see :mod:`unet3d_core.data.layouts`).

Every check failure is a :class:`~unet3d_core.errors.CaseProblem`: one line naming the case, the
file and what is wrong with it.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from unet3d_core.data.layouts import LAYOUTS, apply_label_map, label_problem
from unet3d_core.errors import CaseProblem, InvalidCaseError

AFFINE_TOLERANCE = 1e-3  # mm; co-registered modalities of one case share their header geometry


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
    image: np.ndarray  # float32 [x, y, z, channels], the layout's channel order
    label: Optional[np.ndarray]  # uint8 [x, y, z], internal labels
    affine: np.ndarray  # 4x4, the spatial affine of the images
    spacing: List[float]  # mm per voxel along x, y, z


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
    channels = spec.channels
    four_d = raw.volume_index is not None
    paths = [raw.images[channels[0]]] if four_d else [raw.images[channel] for channel in channels]
    headers = [_header(raw, path) for path in paths]
    # Geometry from the headers first: cheap, and it names the odd file out.
    shapes = [_spatial_shape(raw, path, image, len(channels) if four_d else None)
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

    image = np.empty(shapes[0] + (len(channels),), dtype=np.float32)
    if four_d:
        volumes = _voxels(raw, reference_path, reference, as_float=True).reshape(shapes[0] + (len(channels),))
        for index, channel in enumerate(channels):
            position = raw.volume_index[channel]
            _check_image_volume(raw, reference_path, volumes[..., position],
                                "volume {} ({})".format(position, channel))
            image[..., index] = volumes[..., position]
        del volumes
    else:
        for index, (channel, path, header) in enumerate(zip(channels, paths, headers)):
            volume = _voxels(raw, path, header, as_float=True).reshape(shapes[0])
            _check_image_volume(raw, path, volume, "the {} image".format(channel))
            image[..., index] = volume
    label = None
    if seg_header is not None:
        seg = _voxels(raw, raw.segmentation, seg_header, as_float=False).reshape(shapes[0])
        reason = label_problem(seg, spec.label_map, spec.title)
        if reason is not None and spec.name == "brats2023" and np.any(seg == 4):
            reason += "; label 4 is the 2024 release's resection cavity: use --layout brats2024-gli"
        if reason is not None:
            raise InvalidCaseError(CaseProblem(raw.case_id, raw.segmentation, reason))
        label = apply_label_map(seg, spec.label_map)
    spacing = [float(size) for size in reference.header.get_zooms()[:3]]
    return LoadedCase(raw.case_id, raw.grade, image, label, np.asarray(reference.affine, dtype=np.float64), spacing)
