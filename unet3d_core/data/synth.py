"""A synthetic BraTS-2019-style dataset: plausible brains with one glioma each.

Real BraTS data needs a registration with the challenge, so the demo and the
tests use cases generated here. Each models a skull-stripped, co-registered scan:

* a brain: a randomly deformed ellipsoid with a folded grey-matter shell, white
  matter, deep grey nuclei, lateral ventricles and a midline fissure; exactly 0
  outside it in every modality, as after skull stripping;
* one tumour inside it: oedema (label 2) around a core that is an enhancing rim
  (label 4) around necrosis (label 1) in HGG cases, and mostly non-enhancing
  tumour (label 1) in LGG cases;
* MR-like contrasts for T1, T1ce, T2 and FLAIR, partial-volume edges, a smooth
  bias field and noise: clear enough for a small 3D U-Net to learn quickly, yet
  no single intensity threshold segments the tumour exactly.

Files follow BraTS 2019's layout, dtypes and headers, so one pipeline reads both.
Harder, template-based brains (``--anatomical``) live in :mod:`unet3d_core.data.synth_anatomy`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from unet3d_core.data import synth_anatomy
from unet3d_core.errors import ConfigError, DataError

MODALITIES = ("t1", "t1ce", "t2", "flair")

_CSF, _GM, _WM, _NECROSIS, _ENHANCING, _NON_ENHANCING, _OEDEMA = range(1, 8)
# Scanner-like units per tissue (columns: background, CSF, grey matter, white
# matter, necrosis, enhancing, non-enhancing tumour, oedema). T1: white > grey >
# fluid; T1ce: gadolinium lights up the enhancing rim; T2: fluid brightest;
# FLAIR: fluid suppressed, so oedema stands out.
_INTENSITY = np.array([
    [0, 250, 620, 880, 280, 650, 430, 560],
    [0, 260, 680, 940, 300, 1600, 480, 610],
    [0, 1450, 720, 480, 1350, 900, 1100, 1150],
    [0, 180, 560, 470, 650, 820, 900, 1050],
], dtype=np.float32)


def _check_shape(shape) -> tuple[int, int, int]:
    return synth_anatomy.check_shape(shape, example="64,64,48")


def _waves(rng, count, amplitude, frequency):
    """Random low-frequency sinusoids over the unit sphere of directions."""
    return (rng.normal(0.0, frequency, (count, 3)).astype(np.float32),
            rng.uniform(0.0, 2 * np.pi, count).astype(np.float32),
            (rng.uniform(0.5, 1.0, count) * amplitude).astype(np.float32))


def _radial(dx, dy, dz, radii, waves):
    """Distance from the centre in units of a wobbly ellipsoid's radius (< 1 is inside)."""
    ux, uy, uz = dx / radii[0], dy / radii[1], dz / radii[2]
    rho = np.sqrt(ux * ux + uy * uy + uz * uz)
    inverse = 1.0 / np.maximum(rho, 1e-6)
    scale = np.ones_like(rho)
    for freq, phase, amplitude in zip(*waves):
        scale += amplitude * np.sin((freq[0] * ux + freq[1] * uy + freq[2] * uz) * inverse + phase)
    return rho / scale


def _inside(ux, uy, uz, centre, radii):
    return ((ux - centre[0]) / radii[0]) ** 2 + ((uy - centre[1]) / radii[1]) ** 2 \
        + ((uz - centre[2]) / radii[2]) ** 2 < 1.0


def _dilate(mask, steps):
    """Binary dilation with the 6-neighbourhood (scipy-free)."""
    for _ in range(steps):
        grown = mask.copy()
        for axis in range(3):
            low, high = [slice(None)] * 3, [slice(None)] * 3
            low[axis], high[axis] = slice(None, -1), slice(1, None)
            grown[tuple(high)] |= mask[tuple(low)]
            grown[tuple(low)] |= mask[tuple(high)]
        mask = grown
    return mask


def _anatomy(rng, shape, grid):
    """Tissue classes and brain mask of a healthy brain."""
    gx, gy, gz = grid
    radii = np.asarray(shape, np.float32) * rng.uniform(0.43, 0.47, 3).astype(np.float32)
    # A flatter base and rounder vertex, as the brain sits on the skull base.
    r = _radial(gx, gy, np.where(gz < 0, gz * np.float32(1.15), gz), radii, _waves(rng, 4, 0.012, 2.5))
    brain = r < 1.0
    brain[[0, -1]], brain[:, [0, -1]], brain[:, :, [0, -1]] = False, False, False  # a background border
    ux, uy, uz = gx / radii[0], gy / radii[1], gz / radii[2]
    folds = np.zeros_like(r)
    for freq, phase, amplitude in zip(*_waves(rng, 5, 0.04, 12.0)):
        folds += amplitude * np.cos(freq[0] * ux + freq[1] * uy + freq[2] * uz + phase)
    tissue = np.where(r > 0.8 + folds, _GM, _WM).astype(np.uint8)
    ventricle_size = rng.uniform(0.8, 1.25)  # ventricles widen with age
    for side in (-1, 1):
        tissue[_inside(ux, uy, uz, (0.2 * side, -0.1, 0.0), (0.1, 0.14, 0.1))] = _GM
        tissue[_inside(ux, uy, uz, (0.09 * side, 0.05, 0.15),
                       (0.07 * ventricle_size, 0.35, 0.12 * ventricle_size))] = _CSF
    tissue[(np.abs(gx) <= 0.5) & (uz > -0.1) & (r > 0.6)] = _CSF
    tissue[~brain] = 0
    return tissue, brain


def _add_tumour(rng, grade, brain, tissue, seg, grid):
    """Draw one tumour fully inside the brain into `seg` and `tissue`; return oedema strength."""
    shape = np.array(brain.shape)
    aspect = rng.uniform(0.8, 1.25, 3)
    fraction = np.exp(rng.uniform(np.log(0.025), np.log(0.085)))  # of brain volume, log-uniform
    size = (3.0 * fraction * brain.sum() / (4.0 * np.pi)) ** (1.0 / 3.0) / aspect.prod() ** (1.0 / 3.0)
    edge_waves, core_waves = _waves(rng, 5, 0.09, 3.0), _waves(rng, 4, 0.08, 2.5)
    core_scale, core_shift = rng.uniform(0.55, 0.8), np.clip(rng.normal(0.0, 0.12, 3), -0.25, 0.25)
    lobe = rng.normal(0.0, 1.0, 3) if rng.random() < 0.25 else None  # a second, smaller oedema lobe
    necrosis, focus = rng.uniform(0.55, 0.8), rng.random() < 0.35
    oedema_peak = rng.uniform(0.7, 1.0)
    for attempt in range(48):
        # Later attempts sit nearer the middle and shrink, so placement always succeeds.
        radii = (size * aspect * 0.88 ** (attempt // 8)).astype(np.float32)
        centre = rng.uniform(-1.0, 1.0, 3) * shape * 0.3 * (1.0 - attempt / 48.0)  # from the volume's centre
        index, reach = centre + (shape - 1) / 2.0, 2.0 * radii.max() + 4.0  # reach bounds the wobbly shapes
        box = tuple(slice(max(int(i - reach), 0), min(int(i + reach) + 2, n)) for i, n in zip(index, shape))
        # Offsets from the tumour centre over the box only: a tumour costs little even at 240x240x155.
        dx, dy, dz = (g[(slice(None),) * a + (box[a],)] - np.float32(centre[a]) for a, g in enumerate(grid))
        edge = _radial(dx, dy, dz, radii, edge_waves)
        oedema = edge < 1.0
        if lobe is not None:
            offset = 0.8 * radii * lobe / np.linalg.norm(lobe)
            oedema |= _radial(dx - offset[0], dy - offset[1], dz - offset[2], radii * 0.5, edge_waves) < 1.0
        oedema &= tissue[box] == _WM  # vasogenic oedema spreads in white matter, sparing cortex
        shift = core_shift * radii
        depth = _radial(dx - shift[0], dy - shift[1], dz - shift[2], radii * core_scale, core_waves)
        core = depth < 1.0
        whole = oedema | _dilate(core, 2)  # the core always has an oedema envelope
        if core.any() and not (_dilate(whole, 1) & ~brain[box]).any():
            break
    else:
        raise RuntimeError("could not place a tumour inside the brain")  # unreachable in practice
    labels, classes = seg[box], tissue[box]
    labels[whole] = 2
    if grade == "HGG":
        labels[core], classes[core] = 4, _ENHANCING
        dead = core & (depth < necrosis)
        if (core & ~dead).any():  # a core too small for both keeps only its rim
            labels[dead], classes[dead] = 1, _NECROSIS
    else:
        labels[core], classes[core] = 1, _NON_ENHANCING
        if focus:
            spot = core & (depth < 0.35) & (dx - shift[0] > 0)
            labels[spot], classes[spot] = 4, _ENHANCING
    # Oedema fades towards its outer edge, so its boundary is not a sharp step.
    strength = oedema_peak * (1.0 - 0.6 * np.clip(edge, 0.0, 1.0) ** 2) * (whole & ~core)
    return box, strength.astype(np.float32)


def _bias_field(rng, ux, uy, uz):
    """exp of a random quadratic polynomial, within about +-15%."""
    c = rng.normal(0.0, 1.0, 9).astype(np.float32)
    poly = (c[0] * ux + c[1] * ux * ux + c[2] * uy + c[3] * uy * uy + c[4] * ux * uy) \
        + (c[5] * uz + c[6] * uz * uz + c[7] * ux * uz + c[8] * uy * uz)
    poly *= np.float32(rng.uniform(0.1, 0.15)) / max(float(np.abs(poly).max()), 1e-6)
    return np.exp(poly)


def _blur(image):
    """One [1, 4, 1] / 6 pass per axis: partial-volume edges instead of hard steps."""
    for axis in range(3):
        a = np.moveaxis(image, axis, 0)
        padded = np.concatenate([a[:1], a, a[-1:]])
        image = np.moveaxis((padded[:-2] + 4 * a + padded[2:]) * np.float32(1.0 / 6.0), 0, axis)
    return image


def make_synthetic_case(shape: Sequence[int] = (64, 64, 48), seed: int = 0,
                        grade: str = "HGG") -> dict[str, np.ndarray]:
    """Generate one case; the same (shape, seed, grade) always gives the same arrays.

    Returns 't1', 't1ce', 't2', 'flair' (int16 arrays of `shape`, 0 outside the
    brain), 'seg' (uint8, labels {0, 1, 2, 4}) and 'affine' (4x4 float64, mm).
    Raises ConfigError for a bad shape or grade.
    """
    shape = _check_shape(shape)
    if grade not in ("HGG", "LGG"):
        raise ConfigError(f"grade must be 'HGG' or 'LGG', got {grade!r}")
    rng = np.random.default_rng(seed)
    axes = [np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2.0) for n in shape]
    grid = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    tissue, brain = _anatomy(rng, shape, grid)
    seg = np.zeros(shape, np.uint8)
    box, oedema = _add_tumour(rng, grade, brain, tissue, seg, grid)
    half = [np.float32(n / 2.0) for n in shape]
    case = {}
    for index, modality in enumerate(MODALITIES):
        table = _INTENSITY[index] * np.float32(rng.uniform(0.85, 1.15))  # per-scan gain
        image = table[tissue]
        region = image[box]
        region += oedema * (table[_OEDEMA] - region)
        image = _blur(image) * _bias_field(rng, grid[0] / half[0], grid[1] / half[1], grid[2] / half[2])
        noise_level = np.float32(rng.uniform(0.025, 0.05)) * table[_GM]
        image += rng.standard_normal(shape, dtype=np.float32) * noise_level
        image = np.clip(np.rint(image), 1, 32767)  # 1, not 0: zero means "outside the brain"
        image[~brain] = 0
        case[modality] = image.astype(np.int16)
    # BraTS 2019 headers: 1 mm voxels, x and y flipped, origin at voxel (0, ny - 1, 0).
    case["seg"], case["affine"] = seg, np.diag([-1.0, -1.0, 1.0, 1.0])
    case["affine"][1, 3] = shape[1] - 1
    return case


def _grades(cases, seed, lgg_fraction):
    count = int(cases * lgg_fraction + 0.5)
    if lgg_fraction > 0 and cases >= 4:
        count = max(count, 1)
    low_grade = set(np.random.default_rng([seed, cases, 1]).permutation(cases)[:count].tolist())
    return ["LGG" if i in low_grade else "HGG" for i in range(cases)]


def _refuse_non_empty(out_dir, shown):
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DataError(f"{shown}: already exists and is not empty; choose another --out or remove it")


def _save(array, affine, path):
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)  # "scanner", as in BraTS files
    image.set_sform(affine, code=1)
    nib.save(image, path)


def write_synthetic_dataset(out_dir, cases: int = 12, shape: Sequence[int] = (64, 64, 48), seed: int = 0,
                            lgg_fraction: float = 0.25,
                            progress: Callable[[int, int, str], None] | None = None,
                            anatomical: bool = False, scanner: str | None = None) -> list[str]:
    """Write out_dir/{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz; return the ids.

    Ids run BraTS19_SYN_0001, ...; about `lgg_fraction` of the cases (at least one
    of 4 or more) are LGG. Case i depends only on (seed, i). The folder appears
    whole or not at all (written beside it, then renamed). `progress(done, total,
    case_id)` is called after each case. `anatomical` draws template-based brains
    (unet3d_core.data.synth_anatomy, needs nilearn) acquired on `scanner` ("a" unless
    given) instead of the disc phantoms. Raises ConfigError for a bad argument and
    DataError if out_dir exists and is not empty.
    """
    shape = _check_shape(shape)
    if scanner is not None and not anatomical:
        raise ConfigError("--scanner only applies to --anatomical cases; add --anatomical or drop --scanner")
    if anatomical:

        scanner = "a" if scanner is None else scanner
        if scanner not in synth_anatomy.SCANNERS:
            raise ConfigError(f"--scanner must be one of {', '.join(synth_anatomy.SCANNERS)}, got {scanner!r}")
        synth_anatomy.require_template()
    for flag, value, least in (("--cases", cases, 1), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"{flag} must be an integer >= {least}, got {value!r}")
    if not isinstance(lgg_fraction, (int, float, np.number)) or not 0.0 <= lgg_fraction <= 1.0:
        raise ConfigError(f"--lgg-fraction must be between 0 and 1, got {lgg_fraction!r}")
    shown = os.fspath(out_dir)
    out_dir = os.path.abspath(shown)
    _refuse_non_empty(out_dir, shown)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        case_ids = []
        for index, grade in enumerate(_grades(int(cases), int(seed), lgg_fraction)):
            case_id = f"BraTS19_SYN_{index + 1:04d}"
            case_seed = int(np.random.SeedSequence([int(seed), index]).generate_state(1)[0])
            if anatomical:
                case = synth_anatomy.make_anatomical_case(shape, case_seed, grade, scanner)
            else:
                case = make_synthetic_case(shape, case_seed, grade)
            folder = os.path.join(staging, grade, case_id)
            os.makedirs(folder)
            for name in (*MODALITIES, "seg"):
                _save(case[name], case["affine"], os.path.join(folder, f"{case_id}_{name}.nii.gz"))
            case_ids.append(case_id)
            if progress is not None:
                progress(index + 1, int(cases), case_id)
        _refuse_non_empty(out_dir, shown)  # someone may have written there meanwhile
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 is too strict for a dataset folder
        os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return case_ids
