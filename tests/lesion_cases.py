"""Small prediction / truth pairs that exercise every lesion-wise rule, shared by the cross-check tests.

Each case is built from boxes placed at fixed positions (no random numbers, so
every numpy version builds the same voxels), in the source labels of its
cohort. Together they cover: several lesions, lesions merged by dilation, lesions
under the volume threshold, false positives only, missed lesions, empty truth,
empty prediction, both empty, anisotropic spacing, a resection cavity, a lesion
split into two predicted components, small predicted specks, and regions that
touch each other (the 2024 script's cross-region merging).

``tests/brats_reference_values.json`` holds what the challenge's own 2023 and
2024 scripts computed for these cases (``tools/brats_reference_values.py``
regenerates it from checkouts of those scripts).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Tuple

import numpy as np

SHAPE = (40, 40, 28)


@dataclass(frozen=True)
class LesionCase:
    name: str
    cohort: str  # GLI, SSA, MEN, MET, PED, MEN-RT (the challenge's cohort names)
    truth: np.ndarray  # uint8, source labels
    prediction: np.ndarray
    spacing: Tuple[float, float, float]
    what: str  # the rules the case exercises


def _blank():
    return np.zeros(SHAPE, np.uint8)


def _box(volume, low, high, label):
    volume[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = label
    return volume


def _tumour(volume, corner, size=10, shift=(0, 0, 0)):
    """A glioma-like blob: oedema (2) around a core (1) around enhancing tumour (3)."""
    x, y, z = (c + s for c, s in zip(corner, shift))
    _box(volume, (x, y, z), (x + size, y + size, z + size - 2), 2)
    _box(volume, (x + 2, y + 2, z + 2), (x + size - 2, y + size - 2, z + size - 4), 1)
    _box(volume, (x + 3, y + 3, z + 3), (x + size - 4, y + size - 4, z + size - 5), 3)
    return volume


def cases():
    """Every case, in a fixed order."""
    built = OrderedDict()

    def add(name, cohort, truth, prediction, what, spacing=(1.0, 1.0, 1.0)):
        built[name] = LesionCase(name, cohort, truth, prediction, tuple(float(s) for s in spacing), what)

    truth = _tumour(_tumour(_blank(), (2, 2, 2)), (24, 24, 14))
    prediction = _tumour(_tumour(_blank(), (2, 2, 2), shift=(1, 0, 0)), (24, 24, 14), size=9)
    add("several_lesions", "GLI", truth, prediction, "two tumours, both found with small shifts")

    truth = _box(_box(_blank(), (4, 4, 4), (10, 10, 10), 3), (12, 4, 4), (18, 10, 10), 3)
    prediction = _box(_blank(), (5, 4, 4), (17, 10, 10), 3)
    add("merged_by_dilation", "GLI", truth, prediction, "two ET islands 2 voxels apart: one lesion when d >= 1")

    truth = _box(_box(_blank(), (4, 4, 4), (12, 12, 12), 3), (24, 24, 10), (27, 27, 13), 3)
    prediction = _box(_box(_blank(), (4, 4, 5), (12, 12, 12), 3), (24, 24, 10), (26, 27, 13), 3)
    add("under_threshold", "GLI", truth, prediction, "a 27-voxel ET lesion, found: dropped from the score")

    truth = _box(_box(_blank(), (4, 4, 4), (12, 12, 12), 3), (30, 30, 10), (33, 33, 13), 3)
    prediction = _box(_blank(), (4, 4, 4), (12, 12, 12), 3)
    add("missed_small", "GLI", truth, prediction, "a 27-voxel ET lesion missed: dropped, not a false negative")

    prediction = _tumour(_box(_blank(), (30, 30, 20), (36, 36, 26), 3), (3, 3, 3))
    add("false_positives_only", "GLI", _blank(), prediction, "empty truth, two predicted tumours")

    truth = _tumour(_tumour(_blank(), (2, 2, 2)), (26, 4, 14))
    add("missed_lesions", "GLI", truth, _blank(), "empty prediction, two tumours")

    add("both_empty", "GLI", _blank(), _blank(), "empty truth and prediction")

    truth = _tumour(_blank(), (6, 6, 4), size=12)
    prediction = _tumour(_blank(), (7, 6, 4), size=12)
    add("anisotropic", "GLI", truth, prediction, "1 x 1.2 x 2.5 mm voxels: volumes and distances in mm",
        spacing=(1.0, 1.2, 2.5))

    truth = _box(_tumour(_blank(), (2, 2, 2), size=12), (20, 20, 6), (30, 30, 16), 4)
    prediction = _box(_tumour(_blank(), (3, 2, 2), size=12), (21, 20, 6), (30, 29, 16), 4)
    add("resection_cavity", "GLI", truth, prediction, "post-treatment labels: a resection cavity (4)")

    truth = _box(_blank(), (4, 4, 4), (24, 12, 12), 3)
    prediction = _box(_box(_blank(), (4, 4, 4), (12, 12, 12), 3), (16, 4, 4), (24, 12, 12), 3)
    add("split_prediction", "GLI", truth, prediction, "one lesion predicted as two components")

    truth = _box(_blank(), (4, 4, 4), (14, 14, 14), 3)
    prediction = _box(_box(_box(_blank(), (4, 4, 4), (14, 14, 14), 3), (30, 30, 20), (32, 32, 22), 3),
                      (30, 4, 20), (33, 7, 23), 3)
    add("small_specks", "GLI", truth, prediction, "8- and 27-voxel predicted specks far from any lesion")

    truth = _box(_box(_box(_blank(), (4, 4, 4), (10, 10, 10), 3), (11, 4, 4), (17, 10, 10), 1),
                 (18, 4, 4), (24, 10, 10), 3)
    prediction = _box(_box(_box(_blank(), (4, 4, 4), (10, 10, 10), 3), (11, 4, 4), (17, 10, 10), 1),
                      (18, 5, 4), (24, 10, 10), 3)
    truth = _box(truth, (26, 26, 12), (32, 32, 18), 4)
    truth[23:26, 26:32, 12:18] = 1
    prediction = _box(prediction, (26, 26, 12), (32, 32, 18), 4)
    add("touching_regions", "GLI", truth, prediction,
        "two ET islands touching one NETC lesion, NETC touching a resection cavity")

    truth = _box(_box(_box(_box(_blank(), (4, 4, 4), (22, 22, 20), 4), (7, 7, 7), (19, 19, 17), 2),
                      (9, 9, 9), (17, 17, 15), 1), (26, 26, 8), (34, 34, 16), 3)
    prediction = _box(_box(_box(_box(_blank(), (5, 4, 4), (22, 22, 20), 4), (7, 7, 7), (19, 18, 17), 2),
                           (9, 9, 9), (16, 17, 15), 1), (26, 27, 8), (34, 34, 15), 3)
    add("paediatric", "PED", truth, prediction, "PED labels: 1 ET, 2 NETC, 3 CC, 4 ED")

    truth = _box(_box(_blank(), (4, 4, 4), (14, 12, 12), 1), (24, 24, 16), (30, 30, 22), 1)
    prediction = _box(_box(_blank(), (5, 4, 4), (14, 12, 12), 1), (2, 30, 2), (8, 36, 8), 1)
    add("radiotherapy", "MEN-RT", truth, prediction, "one GTV found, one missed, one false positive, "
        "1 x 1 x 3 mm voxels", spacing=(1.0, 1.0, 3.0))

    truth = _box(_box(_tumour(_blank(), (2, 2, 2)), (26, 26, 10), (28, 28, 12), 3), (30, 4, 4), (33, 6, 6), 3)
    prediction = _box(_tumour(_blank(), (2, 2, 3)), (26, 26, 10), (28, 29, 12), 3)
    add("metastases", "MET", truth, prediction, "metastases: lesions of 8 and 12 voxels around the 2 mm3 threshold")

    truth = _tumour(_blank(), (10, 10, 6), size=14)
    prediction = _box(_tumour(_blank(), (11, 10, 6), size=13), (32, 32, 20), (36, 36, 24), 2)
    add("meningioma", "MEN", truth, prediction, "pre-operative meningioma, one oedema false positive")

    truth = _tumour(_tumour(_blank(), (4, 4, 4)), (22, 4, 4))
    prediction = _tumour(_blank(), (4, 4, 4), shift=(0, 1, 0))
    add("sub_saharan", "SSA", truth, prediction, "two tumours 8 voxels apart, one missed")
    return built
