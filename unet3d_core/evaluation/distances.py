"""Overlap and surface distances of two boolean masks, shared by the whole-volume metrics
(:mod:`unet3d_core.evaluation.metrics`) and the lesion-wise ones (:mod:`unet3d_core.evaluation.lesions`).

- :func:`dice`: the Dice coefficient, 1 when both masks are empty.
- :func:`border_distances`: from each border voxel of one mask (a voxel with a
  face neighbour outside it) to the other mask's border, in mm, both ways.
- :func:`pooled_hd95`: the 95th percentile of those distances pooled (the
  whole-volume HD95 and panoptica's lesion-wise one).

Distance transforms are ``scipy.ndimage``'s, imported when first needed.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    predicted = int(np.count_nonzero(prediction))
    actual = int(np.count_nonzero(truth))
    if predicted + actual == 0:
        return 1.0
    overlap = int(np.count_nonzero(np.logical_and(prediction, truth)))
    return 2.0 * overlap / (predicted + actual)


def _border(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 1)
    return np.logical_xor(mask, ndimage.binary_erosion(mask, structure=structure, iterations=1))


def border_distances(truth: np.ndarray, prediction: np.ndarray,
                     spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each border voxel of ``truth`` to ``prediction``'s border, and the reverse.

    Borders are the voxels with a face neighbour outside the mask (medpy's and
    panoptica's surfaces); both masks must be non-empty. Only the box around
    both masks is transformed: every border voxel lies inside it.
    """
    from scipy import ndimage

    present = np.argwhere(np.logical_or(truth, prediction))
    low = np.maximum(present.min(axis=0) - 2, 0)
    high = np.minimum(present.max(axis=0) + 3, truth.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    truth_border, prediction_border = _border(truth[box]), _border(prediction[box])
    sampling = [float(size) for size in spacing]
    to_truth = ndimage.distance_transform_edt(~truth_border, sampling=sampling)
    to_prediction = ndimage.distance_transform_edt(~prediction_border, sampling=sampling)
    return to_prediction[truth_border], to_truth[prediction_border]


def pooled_hd95(truth: np.ndarray, prediction: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile of the surface distances of both directions pooled (panoptica's HD95, and the
    whole-volume HD95); both masks non-empty."""
    from_truth, from_prediction = border_distances(truth, prediction, spacing)
    return float(np.percentile(np.hstack((from_prediction, from_truth)), 95))
