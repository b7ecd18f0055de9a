"""Data releases' layouts: how each names its files, which images and labels it has, which one a folder holds.

Layouts understood (detected automatically, or forced with ``--layout``):

- ``brats2019`` (BraTS 2018 and 2019): ``HGG/`` and ``LGG/`` folders of case
  folders, each holding ``<case>_{t1,t1ce,t2,flair,seg}.nii(.gz)``; labels
  {0, 1, 2, 4}.
- ``brats2020`` (BraTS 2020 and 2021): one folder of case folders with the same
  file names. BraTS 2020's ``name_mapping.csv``, when present, gives the grade.
  A segmentation with another name is accepted when it is the case folder's
  only other NIfTI file with "seg" in its name (BraTS20_Training_355 ships
  ``W39_1998.09.19_Segm.nii``).
- BraTS 2023 and later: one folder of case folders
  ``BraTS-<COHORT>-NNNNN-TTT`` holding ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
  The cohort in the folder names picks the layout (:data:`COHORT_LAYOUTS`):
  ``brats2023`` (GLI, adult glioma before treatment; folders that do not name
  a cohort), ``brats2024-gli`` (GLI with timepoints 100 and up: the 2024/2025
  pre- and post-treatment release, adding 4 resection cavity), ``brats-ssa``,
  ``brats-men``, ``brats-goat`` (labels 1 NETC, 2 SNFH, 3 ET), ``brats-met``
  (the same, plus 4 RC where a release has it), ``brats-ped`` (the 2024/2025
  paediatric labels 1 ET, 2 NETC, 3 CC, 4 ED; ``brats2023-ped`` forces the
  2023 release's glioma labels), and ``brats-men-rt``
  (``BraTS-MEN-RT-NNNN-N/<case>_t1c.nii.gz`` and ``<case>_gtv.nii.gz``: one
  image, one label, GTV).
- ``msd`` (Medical Segmentation Decathlon, Task01_BrainTumour): 4-D images
  (FLAIR, T1w, T1gd, T2w along the 4th axis, or the order ``dataset.json``
  gives) in ``imagesTr/`` and ``imagesTs/``, 3-D label maps in ``labelsTr/``;
  labels 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.

Internally a case has the layout's channels (of t1, t1ce, t2, flair, in that
order) and labels 0..K-1. The four-channel glioma layouts number them 0
background, 1 necrotic / non-enhancing core, 2 oedema, 3 enhancing tumour,
4 resection cavity where present; the paediatric and MEN-RT layouts keep their
own numbers. Each layout's ``label_map`` (source label -> internal label) and
``regions`` (the challenge's scored regions, as internal labels) travel with
the data in the manifest, so the network's channels and classes, the metrics
and the predictions' label values all follow the data.

Finding a folder's cases is :mod:`unet3d_core.data.case_scan`; reading and
checking one is :mod:`unet3d_core.data.cases`.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from unet3d_core.errors import DataError
from unet3d_core.folders import NIFTI_SUFFIXES

CHANNELS = ("t1", "t1ce", "t2", "flair")
AUTO = "auto"
# Folders that archive tools leave behind and that never hold cases.
IGNORED_FOLDERS = ("__MACOSX",)


@dataclass(frozen=True)
class Layout:
    """How one data release names its files, which images it has and what its labels mean."""

    name: str
    title: str  # for messages: "BraTS 2018/2019"
    label_map: Dict[int, int]  # source label -> internal label
    # Per-modality file layouts: "<case><separator><suffix>.nii.gz"
    separator: str = "_"
    suffixes: Dict[str, str] = field(default_factory=dict)  # internal channel -> file suffix
    segmentation_suffix: str = "seg"
    channels: Tuple[str, ...] = CHANNELS  # the images a case has, in network input order
    # The challenge cohort whose regions and lesion-wise rules apply (unet3d_core.evaluation.lesions).
    cohort: str = "GLI"
    # Named label sets, in internal labels: the whole-volume regions scored, in report order...
    regions: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    # ... and every region the cohort's lesion-wise rules may need (scored or only merged with).
    lesion_regions: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    label_names: Dict[int, str] = field(default_factory=dict)  # source label -> name
    seed_table: bool = False  # internal labels 0..3 as the seed's table reads them
    # --target regions: the overlapping regions the network learns (one sigmoid each); nested or disjoint,
    # each with exactly one label of its own (not in a region inside it). Empty: the scored regions.
    training_regions: Dict[str, Tuple[int, ...]] = field(default_factory=dict)

    @property
    def target_regions(self) -> Dict[str, Tuple[int, ...]]:
        return self.training_regions or self.regions

    @property
    def num_classes(self) -> int:
        return max(self.label_map.values()) + 1

    def describe_labels(self) -> str:
        """``0 background, 1 NETC, ...`` in source labels."""
        return ", ".join("{} {}".format(value, self.label_names.get(value, "?")) for value in sorted(self.label_map))


def _regions(*pairs):
    return OrderedDict((name, tuple(labels)) for name, labels in pairs)


_BRATS_SUFFIXES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
_BRATS2023_SUFFIXES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
_GLIOMA_MAP = {0: 0, 1: 1, 2: 2, 3: 3}
_GLIOMA_REGIONS = _regions(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)))
_GLIOMA_LESION_REGIONS = _regions(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)), ("NETC", (1,)), ("SNFH", (2,)))
_WITH_RC_LESION_REGIONS = _regions(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)), ("NETC", (1,)), ("SNFH", (2,)),
                                   ("RC", (4,)))
_GLIOMA_NAMES = {0: "background", 1: "NETC", 2: "SNFH", 3: "ET"}
_WITH_RC_NAMES = {0: "background", 1: "NETC", 2: "SNFH", 3: "ET", 4: "RC"}
_OLD_NAMES = {0: "background", 1: "NCR/NET", 2: "ED", 4: "ET"}


def _brats2023(name, title, cohort, label_map=None, regions=None, lesion_regions=None, names=None, seed=True,
               training=None):
    return Layout(name, title, dict(label_map or _GLIOMA_MAP), "-", dict(_BRATS2023_SUFFIXES), "seg", CHANNELS,
                  cohort, regions or _GLIOMA_REGIONS, lesion_regions or _GLIOMA_LESION_REGIONS,
                  names or _GLIOMA_NAMES, seed, training or {})


_WITH_RC_TRAINING = _regions(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)), ("RC", (4,)))


LAYOUTS = OrderedDict([
    ("brats2019", Layout("brats2019", "BraTS 2018/2019", {0: 0, 1: 1, 2: 2, 4: 3}, "_", _BRATS_SUFFIXES,
                         regions=_GLIOMA_REGIONS, lesion_regions=_GLIOMA_LESION_REGIONS, label_names=_OLD_NAMES,
                         seed_table=True)),
    ("brats2020", Layout("brats2020", "BraTS 2020/2021", {0: 0, 1: 1, 2: 2, 4: 3}, "_", _BRATS_SUFFIXES,
                         regions=_GLIOMA_REGIONS, lesion_regions=_GLIOMA_LESION_REGIONS, label_names=_OLD_NAMES,
                         seed_table=True)),
    ("brats2023", _brats2023("brats2023", "BraTS 2023+ GLI (adult glioma, pre-treatment)", "GLI")),
    ("brats2024-gli", _brats2023(
        "brats2024-gli", "BraTS 2024/2025 GLI (pre- and post-treatment)", "GLI", {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
        _regions(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)), ("NETC", (1,)), ("SNFH", (2,)), ("RC", (4,))),
        _WITH_RC_LESION_REGIONS, _WITH_RC_NAMES, seed=False, training=_WITH_RC_TRAINING)),
    ("brats-ssa", _brats2023("brats-ssa", "BraTS 2023+ SSA (glioma, Sub-Saharan Africa)", "SSA")),
    ("brats-men", _brats2023("brats-men", "BraTS 2023+ MEN (meningioma, pre-operative)", "MEN")),
    ("brats-met", _brats2023(
        "brats-met", "BraTS 2023+ MET (brain metastases)", "MET", {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
        _GLIOMA_REGIONS, _WITH_RC_LESION_REGIONS, _WITH_RC_NAMES, seed=False, training=_WITH_RC_TRAINING)),
    ("brats-goat", _brats2023("brats-goat", "BraTS 2024 GoAT (generalisability across tumours)", "GoAT")),
    ("brats-ped", _brats2023(
        "brats-ped", "BraTS 2024/2025 PED (paediatric tumours)", "PED", {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
        _regions(("WT", (1, 2, 3, 4)), ("TC", (1, 2, 3)), ("ET", (1,))),
        _regions(("WT", (1, 2, 3, 4)), ("TC", (1, 2, 3)), ("ET", (1,)), ("NETC", (2,)), ("CC", (3,)), ("ED", (4,))),
        {0: "background", 1: "ET", 2: "NETC", 3: "CC", 4: "ED"}, seed=False,
        training=_regions(("WT", (1, 2, 3, 4)), ("TC", (1, 2, 3)), ("ET", (1,)), ("CC", (3,))))),
    ("brats2023-ped", _brats2023("brats2023-ped", "BraTS 2023 PED (paediatric, glioma labels)", "PED")),
    ("brats-men-rt", Layout(
        "brats-men-rt", "BraTS 2024 MEN-RT (meningioma radiotherapy)", {0: 0, 1: 1}, "_", {"t1ce": "t1c"}, "gtv",
        ("t1ce",), "MEN-RT", _regions(("GTV", (1,))), _regions(("GTV", (1,))), {0: "background", 1: "GTV"})),
    # MSD numbers oedema 1 and non-enhancing tumour 2: the reverse of BraTS.
    ("msd", Layout("msd", "MSD Task01_BrainTumour", {0: 0, 1: 2, 2: 1, 3: 3}, regions=_GLIOMA_REGIONS,
                   lesion_regions=_GLIOMA_LESION_REGIONS,
                   label_names={0: "background", 1: "edema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
                   seed_table=True)),
])
LAYOUT_NAMES = tuple(LAYOUTS)
# Other names users give a layout: BraTS 2021's release (RSNA-ASNR-MICCAI) uses the 2020 file layout and labels.
LAYOUT_ALIASES = {"brats2021": "brats2020"}
# Kept for callers of the first version: source label -> internal label per layout.
LABEL_MAPS = {name: dict(layout.label_map) for name, layout in LAYOUTS.items()}
# How a segmentation file's name ends after its case id, over every layout: "_seg", "-seg", "_gtv".
SEGMENTATION_ENDINGS = tuple(OrderedDict.fromkeys(layout.separator + layout.segmentation_suffix
                                                  for layout in LAYOUTS.values()))
# BraTS 2023+ case folders: BraTS-<COHORT>-NNNNN-TTT (MEN-RT: BraTS-MEN-RT-NNNN-N).
CASE_NAME = re.compile(r"^BraTS-(GLI|SSA|MEN-RT|MEN|MET|PED|GoAT)-(\d{4,5})-(\d{1,3})$")
COHORT_LAYOUTS = {"SSA": "brats-ssa", "MEN": "brats-men", "MET": "brats-met", "PED": "brats-ped",
                  "GoAT": "brats-goat", "MEN-RT": "brats-men-rt"}
# The first timepoint number of the 2024 GLI release (pre- and post-treatment): BraTS-GLI-NNNNN-100.
GLI_POST_TREATMENT_TIMEPOINT = 100


def region_painting(regions) -> List[Tuple[int, int]]:
    """How region outputs become labels: (region index, its own label) pairs, outermost first.

    A voxel takes the label of the innermost region above 0.5: painting the
    regions from the largest to the smallest gives exactly that. Each region's
    own label is the one label it holds that no region inside it holds.
    Raises:
        DataError: two regions that overlap without one holding the other, or a region without exactly one
            label of its own (the regions cannot be turned back into labels).
    """
    sets = [(name, frozenset(labels)) for name, labels in regions]
    painting = []
    for index, (name, labels) in enumerate(sets):
        inner = set()
        for other, other_labels in sets:
            if other == name:
                continue
            if labels & other_labels and not (other_labels <= labels or labels <= other_labels):
                raise DataError("--target regions: regions {} and {} overlap without one holding the other".format(
                    name, other))
            if other_labels < labels:
                inner |= other_labels
        own = sorted(labels - inner)
        if len(own) != 1:
            raise DataError("--target regions: region {} has {} labels of its own ({}); each needs exactly one to "
                            "be turned back into labels".format(name, len(own), own))
        painting.append((index, own[0]))
    painting.sort(key=lambda pair: -len(sets[pair[0]][1]))
    return painting


def layout_for_case_name(name: str) -> Optional[str]:
    """The layout a BraTS 2023+ case folder name implies (``BraTS-PED-00012-000`` -> ``brats-ped``), or None."""
    match = CASE_NAME.match(name)
    if match is None:
        return None
    cohort, _, timepoint = match.groups()
    if cohort == "GLI":
        return "brats2024-gli" if int(timepoint) >= GLI_POST_TREATMENT_TIMEPOINT else "brats2023"
    return COHORT_LAYOUTS[cohort]


def layout_of(name: str) -> Layout:
    """The layout called ``name``; an unknown name is a DataError listing the known ones."""
    name = LAYOUT_ALIASES.get(name, name)
    if name not in LAYOUTS:
        raise DataError("layout {}: unknown; known layouts: {}".format(name, ", ".join(LAYOUT_NAMES)))
    return LAYOUTS[name]


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
    path, _ = find_case_file(folder, case_id, layout.suffixes[layout.channels[-1]], layout.separator)
    return path is not None


def _folder_layout(folder: str, name: str) -> Optional[str]:
    """The layout one case folder's files follow, or None."""
    named = layout_for_case_name(name)
    if named is not None and _has_case_files(folder, name, LAYOUTS[named]):
        return named
    for candidate in ("brats2020", "brats2023"):
        if _has_case_files(folder, name, LAYOUTS[candidate]):
            return candidate
    return None


def detect_layout(input_dir: str, layout: str = AUTO) -> str:
    """Return the layout name of a raw data folder (``layout`` forces one), or raise DataError."""
    if not os.path.isdir(input_dir):
        raise DataError("{}: no such directory".format(input_dir))
    if layout != AUTO:
        layout = LAYOUT_ALIASES.get(layout, layout)
        if layout not in LAYOUTS:
            raise DataError("--layout {}: unknown; choose auto, {}".format(layout, ", ".join(LAYOUT_NAMES)))
        return layout
    if any(os.path.exists(os.path.join(input_dir, name)) for name in ("dataset.json", "imagesTr", "imagesTs")):
        return "msd"
    if any(os.path.isdir(os.path.join(input_dir, grade)) for grade in ("HGG", "LGG")):
        return "brats2019"
    found: Dict[str, str] = {}  # layout -> an example case folder
    for name in case_folders(input_dir):
        detected = _folder_layout(os.path.join(input_dir, name), name)
        if detected is not None:
            found.setdefault(detected, name)
    if len(found) == 1:
        return next(iter(found))
    if found:
        raise DataError("{}: holds case folders of several layouts ({}); keep one cohort per folder or choose "
                        "one with --layout".format(input_dir, ", ".join(
                            "{} e.g. {}".format(name, example) for name, example in sorted(found.items()))))
    folders = case_folders(input_dir)
    hint = "; did you mean -i {}?".format(os.path.join(input_dir, folders[0])) if len(folders) == 1 else ""
    raise DataError("{}: no cases found. Expected HGG/ and LGG/ folders (BraTS 2018/2019), case folders holding "
                    "<case>_flair.nii.gz (BraTS 2020/2021), <case>-t2f.nii.gz (BraTS 2023+) or "
                    "<case>_t1c.nii.gz (BraTS-MEN-RT), or imagesTr/ with dataset.json (MSD Task01_BrainTumour)"
                    "{}".format(input_dir, hint))


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
        reason = "unknown label value(s) {} ({} {})".format(
            ", ".join(str(v) for v in unknown), source + " uses" if source else "expected",
            ", ".join(str(v) for v in sorted(mapping)))
        if sorted(mapping) == [0, 1, 2, 4] and unknown == [3] and 4 not in found:
            reason += ("; it looks relabelled already (enhancing tumour 4 -> 3, as nnU-Net's and MONAI's BraTS "
                       "conversions write it): give the release's own segmentation, with ET as 4")
        return reason
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
