"""Anatomical synthetic brains: the MNI ICBM152 2009 template, deformed per subject, with a grown glioma.

The disc phantoms of :mod:`unet3d_core.data.synth` are easy: every recipe scores 0.9+
on them. These cases are harder in the ways real BraTS scans are hard:

* anatomy: nilearn's copy of the MNI ICBM152 2009 template (grey- and
  white-matter probability maps at 1 mm; fluid is the rest of the brain mask),
  warped by a smooth random displacement of a few mm and a random global scale;
* tumour: seeded deep in white matter and grown from thresholded smooth noise,
  with oedema (label 2) creeping along white matter, and in HGG cases a core of
  necrosis (1) inside an enhancing rim (4) that may be thin, broken or patchy,
  sometimes with extra small enhancing foci or a second focus; LGG cases are
  mostly non-enhancing tumour (1), some with fluid-like cysts, now and then
  with a small enhancing spot;
* contrasts: T1, T1ce, T2 and FLAIR mixed from the tissue probabilities (partial
  volume for free), with look-alikes of the tumour in normal tissue (bright
  vessels and choroid in T1ce, white-matter hyperintensities in T2/FLAIR, fluid
  as bright as oedema in T2), a smooth bias field and Rician noise;
* two acquisition domains (``scanner``): "b" changes the contrast weights and
  gamma, raises the noise, acquires 3 mm slices along z (interpolated back to
  the grid) and stores the x axis flipped, its affine saying so.

A subject (anatomy and tumour) depends only on the seed, so the same seed on
scanner "a" and "b" is the same patient scanned twice.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from unet3d_core.errors import ConfigError

SCANNERS = ("a", "b")
DEFAULT_SHAPE = (80, 96, 80)  # 2 mm voxels over the brain's field of view (see grid_geometry)
MODALITIES = ("t1", "t1ce", "t2", "flair")

# Columns: fluid, grey matter, white matter, necrosis, enhancing, non-enhancing tumour, oedema.
# Relative MR signal per contrast (arbitrary scanner units). T1: white > grey > fluid; T1ce: the
# enhancing rim lights up; T2: fluid brightest and oedema close to it; FLAIR: fluid suppressed.
_TABLES = {
    "a": np.array([[300, 620, 850, 330, 640, 470, 560],
                   [320, 660, 900, 360, 1650, 520, 610],
                   [1500, 830, 580, 1350, 950, 1150, 1200],
                   [220, 720, 520, 650, 820, 860, 900]], np.float32),
    # Scanner b: flatter grey/white contrast in T1, weaker enhancement, incomplete fluid
    # suppression in FLAIR.
    "b": np.array([[380, 640, 800, 400, 660, 520, 590],
                   [400, 680, 840, 430, 1400, 560, 640],
                   [1350, 860, 640, 1250, 950, 1120, 1160],
                   [380, 690, 560, 650, 800, 880, 930]], np.float32),
}
_GAMMA = {"a": (1.0, 1.0, 1.0, 1.0), "b": (0.85, 1.1, 0.9, 1.2)}  # per contrast, on intensity / white matter
_NOISE = {"a": (0.03, 0.045), "b": (0.06, 0.08)}  # Rician sigma as a fraction of white matter
_SLICE_MM = {"a": None, "b": 3.0}  # acquired slice thickness along z; None: as the grid
_MARGIN_MM = 2.0  # background around the largest brain a subject's scaling can make
_MAX_SCALE = 1.04
_BRAINSTEM_CUT_MM = 6.0  # the lowest brainstem lies below the field of view, as in many clinical scans


def check_shape(shape, example: str = "80 96 80") -> tuple[int, int, int]:
    """``--shape``: three integers >= 16, else a ConfigError showing ``example``."""
    try:
        dims = tuple(int(n) for n in shape)
        if len(dims) == 3 and min(dims) >= 16 and dims == tuple(shape):
            return dims
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"--shape must be three integers >= 16 (e.g. {example}), got {shape!r}")


def _nilearn_datasets():
    try:
        from nilearn import datasets
    except ImportError:
        raise ConfigError("--anatomical needs the MNI152 template that nilearn ships: pip install nilearn "
                          "(or pip install unet3d[anatomy])") from None
    return datasets


def require_template() -> None:
    """Raise ConfigError (one line, says what to install) when nilearn is not importable."""
    _nilearn_datasets()


@functools.lru_cache(maxsize=1)
def _template():
    """Fluid, grey and white matter probabilities (3, X, Y, Z) at 1 mm, their affine and the brain's box in mm."""
    from scipy import ndimage

    datasets = _nilearn_datasets()
    gm_image = datasets.load_mni152_gm_template(resolution=1)
    affine = np.asarray(gm_image.affine, np.float64)
    gm = np.asarray(gm_image.get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    gm, wm = gm / max(float(gm.max()), 1e-6), wm / max(float(wm.max()), 1e-6)
    # The template ships no fluid map: fluid is what the filled brain holds besides grey and white matter.
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(gm + wm > 0.3, iterations=3))
    csf = np.clip(brain - gm - wm, 0.0, 1.0) * brain
    tissue = np.stack([csf, gm * brain, wm * brain]).astype(np.float32)
    index = np.argwhere(brain)
    low, high = index.min(0), index.max(0)
    box_mm = np.sort(np.stack([affine[:3, :3] @ low + affine[:3, 3], affine[:3, :3] @ high + affine[:3, 3]]), 0)
    box_mm[0, 2] += _BRAINSTEM_CUT_MM
    return tissue, affine, box_mm


@functools.lru_cache(maxsize=4)
def _smoothed_template(spacing: float):
    """The template blurred to the output voxel size, so that sampling it does not alias."""
    from scipy import ndimage

    tissue, affine, box = _template()
    sigma = np.sqrt(max(spacing * spacing - 1.0, 0.0)) / 2.355  # FWHM of the wider voxel, in 1 mm voxels
    if sigma < 0.3:
        return tissue, affine, box
    return np.stack([ndimage.gaussian_filter(part, sigma, truncate=2.5) for part in tissue]), affine, box


def grid_geometry(shape: Sequence[int]) -> tuple[float, np.ndarray]:
    """The isotropic voxel size (mm) and scanner "a" affine that fit the brain into `shape`.

    The brain's box in the template (144 x 180 x 144 mm), grown by the largest
    subject scaling and a margin, fits along its tightest axis, the voxel size
    rounded up to 0.05 mm; the other axes are padded, as BraTS pads its grid:
    240 x 240 x 155 gives 1 mm voxels, 80 x 96 x 80 gives 2 mm.
    """
    _, _, box = _template()
    extent = (box[1] - box[0]) * _MAX_SCALE + 2.0 * _MARGIN_MM
    spacing = float(np.ceil(np.max(extent / np.asarray(shape, np.float64)) * 20.0 - 1e-6) / 20.0)
    centre = box.mean(0)
    # BraTS's orientation: x and y run towards decreasing world coordinates.
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape, np.float64) - 1.0) / 2.0)
    return spacing, affine


def _smooth_field(rng, shape, nodes, std):
    """A random field of `std` made smooth by Gaussian interpolation of `nodes` random values per axis."""
    values = rng.normal(0.0, 1.0, nodes).astype(np.float32)
    weights = []
    for size, count in zip(shape, nodes):
        position = np.linspace(0.0, count - 1.0, size, dtype=np.float32)[:, None]
        kernel = np.exp(-0.5 * ((position - np.arange(count, dtype=np.float32)[None, :]) / 0.7) ** 2)
        weights.append(kernel / kernel.sum(1, keepdims=True))
    field = np.einsum("ia,abc->ibc", weights[0], values)
    field = np.einsum("jb,ibc->ijc", weights[1], field)
    field = np.einsum("kc,ijc->ijk", weights[2], field)
    return field * np.float32(std / max(float(field.std()), 1e-6))


def _subject_tissue(rng, shape, spacing, affine):
    """Fluid, grey and white matter probabilities of one warped, scaled template brain on the output grid."""
    from scipy import ndimage

    tissue, template_affine, box = _smoothed_template(round(spacing, 3))
    centre = box.mean(0)
    # A global size and a little aspect, within what the field of view was sized for.
    scale = np.minimum(rng.uniform(0.92, _MAX_SCALE) * rng.uniform(0.97, 1.03, 3), _MAX_SCALE)
    to_template = np.linalg.inv(template_affine)
    # Template voxel = T^-1 (centre + (world - centre) / scale + displacement); world is affine @ index.
    linear = to_template[:3, :3] @ np.diag(1.0 / scale) @ affine[:3, :3]
    offset = to_template[:3, :3] @ (centre + (affine[:3, 3] - centre) / scale) + to_template[:3, 3]
    displacement_mm = rng.uniform(2.0, 4.0)
    coordinates = np.empty((3,) + tuple(shape), np.float32)
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    for axis in range(3):
        # The affines are diagonal, so each template axis depends on one output axis.
        along = np.float32(linear[axis, axis]) * axes[axis] + np.float32(offset[axis])
        coordinates[axis] = along.reshape([-1 if a == axis else 1 for a in range(3)])
        coordinates[axis] += _smooth_field(rng, shape, (5, 6, 5), displacement_mm) / np.float32(
            abs(template_affine[axis, axis]))
    sampled = np.stack([ndimage.map_coordinates(part, coordinates, order=1, mode="constant", cval=0.0,
                                                output=np.float32) for part in tissue])
    total = sampled.sum(0)
    brain = total > 0.5
    brain[[0, -1]], brain[:, [0, -1]], brain[:, :, [0, -1]] = False, False, False
    sampled *= (brain / np.maximum(total, 1e-6))[None]  # partial volume sums to 1 inside the brain
    return sampled, brain


def _noise(rng, shape, sigma_voxels):
    """Smooth Gaussian noise with unit standard deviation."""
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_voxels, truncate=2.5)
    return field / np.float32(max(float(field.std()), 1e-6))


def _ball(shape, centre, radii):
    """Ellipsoidal distance (1 on the surface) from `centre` over a box of `shape`, in voxels."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))).astype(np.float32)


def _tumour_box(rng, grade, tissue, depth_mm, spacing):
    """Where a tumour grows and how far it may reach.

    Returns the box (slices) around a seed voxel in deep white matter that holds
    all the tumour can reach, the seed's position in that box, and the core's and
    the oedema's sizes in mm.
    """
    shape = depth_mm.shape
    wm = tissue[2]
    candidates = np.flatnonzero((wm > 0.9) & (depth_mm > 18.0))
    if candidates.size == 0:  # a very coarse grid: any white matter will do
        candidates = np.flatnonzero(wm > 0.5)
    seed = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape))
    # Cores of 8-28 mm radius (2-92 cm3), oedema reaching 3-25 mm beyond them (less in LGG).
    core_mm = rng.uniform(8.0, 28.0)
    oedema_mm = rng.uniform(3.0, 25.0) * (1.0 if grade == "HGG" else 0.6)
    # The box holds all a tumour can reach: the core's wobbly edge stays within 1.5 of its largest radius
    # (1.3 x core_mm), a second focus within 2 x core_mm + 16 mm, the oedema within oedema_mm of them.
    reach = int(np.ceil((2.0 * core_mm + 16.0 + oedema_mm) / spacing)) + 3
    box = tuple(slice(max(s - reach, 0), min(s + reach + 1, n)) for s, n in zip(seed, shape))
    local = seed - np.array([b.start for b in box])
    return box, local, core_mm, oedema_mm


def _core_field(rng, box_shape, local, core_mm, spacing):
    """A wobbly ellipsoid around ``local``, sometimes with a second focus: the core is where it is > 0."""
    radii = core_mm / spacing * rng.uniform(0.75, 1.3, 3)
    rough = rng.uniform(0.2, 0.45)
    distance = _ball(box_shape, local, np.maximum(radii, 0.8))
    field = np.where(distance < 1.5, 1.0 - distance + rough * _noise(rng, box_shape, 4.0 / spacing), -1.0)
    if rng.random() < 0.2:  # multifocal: a smaller second focus in nearby white matter
        direction = rng.normal(0.0, 1.0, 3)
        second = local + direction / np.linalg.norm(direction) * (core_mm + rng.uniform(6.0, 16.0)) / spacing
        small = radii * rng.uniform(0.3, 0.5)
        distance = _ball(box_shape, second, np.maximum(small, 0.8))
        field = np.maximum(field, np.where(distance < 1.5, 1.0 - distance + rough * _noise(
            rng, box_shape, 3.0 / spacing), -1.0))
    return field


def _core_labels(rng, grade, core, field, texture, core_mm, spacing):
    """The core's labels and its fluid-like part (bool).

    HGG: an enhancing rim (4) around necrosis (1, fluid-like), partly non-enhancing
    (1). LGG: non-enhancing (1), some with cysts (fluid-like) or an enhancing focus.
    """
    labels = np.zeros(core.shape, np.uint8)
    if grade == "HGG":
        rim_mm = max(float(np.exp(rng.uniform(np.log(1.5), np.log(7.0)))), 1.1 * spacing)
        dead = core & (field > rim_mm / core_mm)
        fluid = dead.copy()
        labels[core] = 4
        labels[dead] = 1
        # Patchy enhancement: part of the rim is non-enhancing tumour (also label 1 in BraTS).
        patchy = core & ~dead & (texture > rng.uniform(0.6, 2.0))
        labels[patchy] = 1
        if not (labels == 4).any():  # a core too small for a rim enhances whole
            labels[core] = 4
    else:
        labels[core] = 1
        fluid = core & (texture < rng.uniform(-1.5, -0.3)) if rng.random() < 0.5 else np.zeros_like(core)
        if rng.random() < 0.3:
            focus = core & (texture > np.percentile(texture[core], 85.0)) if core.sum() > 8 else core
            labels[focus] = 4
    return labels, fluid


def _oedema_extent(rng, core, inside, csf, wm, oedema_mm, spacing):
    """The oedema around the core (bool) and each voxel's distance from the core (mm), over the core's box.

    Oedema creeps along white matter: a dilation that may only enter voxels rich in it, out to a
    wobbly distance from the core (a plain step count would leave flat, polyhedral fronts).
    """
    from scipy import ndimage

    box_shape = core.shape
    from_core_mm = ndimage.distance_transform_edt(~core) * np.float32(spacing)
    limit_mm = oedema_mm * (1.0 + 0.35 * _noise(rng, box_shape, 5.0 / spacing))
    allowed = inside & ((wm + 0.3 * _noise(rng, box_shape, 3.0 / spacing)) > 0.55) & (from_core_mm < limit_mm)
    steps = int(np.ceil(1.6 * oedema_mm / spacing)) + 1
    whole = ndimage.binary_dilation(core, ndimage.generate_binary_structure(3, 2), iterations=steps,
                                    mask=allowed | core)
    whole = ndimage.binary_closing(whole) & inside & (csf < 0.7) | core  # no pinholes, no fluid
    whole |= ndimage.binary_dilation(core) & inside  # the core always has an envelope
    return whole & ~core, from_core_mm


def _add_enhancing_spots(rng, labels, oedema, spacing):
    """Turn 1-3 small spots of the oedema into enhancing foci (label 4), in place."""
    for _ in range(int(rng.integers(1, 4))):
        spots = np.flatnonzero(oedema)
        if spots.size == 0:
            break
        centre = np.unravel_index(spots[rng.integers(spots.size)], labels.shape)
        spot = (_ball(labels.shape, centre, [max(rng.uniform(1.5, 3.0) / spacing, 0.6)] * 3) <= 1.0) & oedema
        labels[spot] = 4


def _grow_tumour(rng, grade, tissue, brain, depth_mm, spacing):
    """One tumour: labels {0, 1, 2, 4} (uint8), oedema strength (float32, 0..1) and its fluid-like part.

    The fluid-like part (bool) is the necrosis of HGG cores and the cysts of some
    LGG ones: both are label 1, but look like fluid rather than solid tumour.
    """
    shape = brain.shape
    csf, wm = tissue[0], tissue[2]
    box, local, core_mm, oedema_mm = _tumour_box(rng, grade, tissue, depth_mm, spacing)
    box_shape = tuple(b.stop - b.start for b in box)
    inside = brain[box]
    field = _core_field(rng, box_shape, local, core_mm, spacing)
    core = (field > 0.0) & inside & (csf[box] < 0.6)
    if not core.any():
        core[tuple(local)] = True
    texture = _noise(rng, box_shape, 2.5 / spacing)
    labels, fluid = _core_labels(rng, grade, core, field, texture, core_mm, spacing)
    oedema, from_core_mm = _oedema_extent(rng, core, inside, csf[box], wm[box], oedema_mm, spacing)
    labels[oedema] = 2
    if grade == "HGG" and rng.random() < 0.35:  # small separate enhancing foci within the oedema
        _add_enhancing_spots(rng, labels, oedema, spacing)
    # Oedema is strongest next to the core and fades towards its edge.
    fading = 1.0 - 0.6 * np.clip(from_core_mm / max(oedema_mm, spacing), 0.0, 1.0) ** 2
    strength = np.clip(fading * rng.uniform(0.7, 1.0) + 0.12 * texture, 0.2, 1.0) * (labels == 2)
    seg = np.zeros(shape, np.uint8)
    seg[box] = labels
    oedema_strength = np.zeros(shape, np.float32)
    oedema_strength[box] = strength
    fluid_like = np.zeros(shape, bool)
    fluid_like[box] = fluid & (labels == 1)
    return seg, oedema_strength, fluid_like


def _lookalikes(rng, tissue, brain, depth_mm, spacing):
    """Tumour look-alikes in normal tissue, as strengths 0..1.

    Returns vessels and choroid plexus (bright in T1ce, like enhancement) and
    white-matter hyperintensities: small spots plus caps around the ventricles
    (bright in T2 and FLAIR, like oedema), both more or less marked per subject.
    """
    from scipy import ndimage

    vessels, lesions = np.zeros(brain.shape, np.float32), np.zeros(brain.shape, np.float32)
    for target, where, count in ((vessels, (tissue[0] > 0.4) & brain, rng.integers(30, 90)),
                                 (lesions, (tissue[2] > 0.7) & brain, rng.integers(5, 40))):
        places = np.flatnonzero(where)
        if places.size:
            target.flat[places[rng.integers(places.size, size=int(count))]] = rng.uniform(0.6, 1.0, int(count))
    sigma = max(1.2 / spacing, 0.5)
    vessels = ndimage.gaussian_filter(vessels, sigma) * np.float32(2 * np.pi * sigma * sigma * 1.8)
    lesions = ndimage.gaussian_filter(lesions, 1.6 * sigma) * np.float32(2 * np.pi * (1.6 * sigma) ** 2 * 1.6)
    # Periventricular caps: white matter within a few mm of the ventricles (deep fluid).
    ventricles = ((tissue[0] > 0.7) & (depth_mm > 25.0)).astype(np.float32)
    halo = ndimage.gaussian_filter(ventricles, rng.uniform(2.0, 4.0) / spacing) * tissue[2] * (ventricles == 0)
    caps = np.clip(halo / max(float(halo.max()), 1e-6) * 2.0, 0.0, 1.0) * np.float32(rng.uniform(0.2, 0.8))
    return np.minimum(vessels, 1.0), np.minimum(np.maximum(lesions, caps), 1.0)


def _thick_slices(image, slice_voxels):
    """Acquire slices `slice_voxels` thick along z, then interpolate back to the grid."""
    from scipy import ndimage

    if slice_voxels <= 1.0:
        return image
    blurred = ndimage.gaussian_filter1d(image, slice_voxels / 2.355, axis=2, truncate=2.5)
    count = image.shape[2]
    acquired = np.arange(0.0, count - 1.0 + 1e-6, slice_voxels)
    acquired = np.append(acquired, count - 1.0) if acquired[-1] < count - 1.0 else acquired
    low = np.floor(acquired).astype(int)
    high = np.minimum(low + 1, count - 1)
    weight = (acquired - low).astype(np.float32)
    slices = blurred[:, :, low] * (1.0 - weight) + blurred[:, :, high] * weight
    position = np.arange(count, dtype=np.float64)
    upper = np.clip(np.searchsorted(acquired, position, side="right"), 1, acquired.size - 1)
    fraction = ((position - acquired[upper - 1]) / (acquired[upper] - acquired[upper - 1])).astype(np.float32)
    return slices[:, :, upper - 1] * (1.0 - fraction) + slices[:, :, upper] * fraction


def make_anatomical_case(shape: Sequence[int] = DEFAULT_SHAPE, seed: int = 0, grade: str = "HGG",
                         scanner: str = "a") -> dict[str, np.ndarray]:
    """Generate one anatomical case; the same (shape, seed, grade, scanner) gives the same arrays.

    Returns 't1', 't1ce', 't2', 'flair' (int16, 0 outside the brain), 'seg'
    (uint8, labels {0, 1, 2, 4}), 'affine' (4x4 float64, mm) and 'wm' (float32, the
    healthy white-matter probability, for checks), all in the written orientation.
    Raises ConfigError for a bad grade or scanner or when nilearn is missing.
    """
    from scipy import ndimage

    shape = check_shape(shape)
    if grade not in ("HGG", "LGG"):
        raise ConfigError(f"grade must be 'HGG' or 'LGG', got {grade!r}")
    if scanner not in SCANNERS:
        raise ConfigError(f"--scanner must be one of {', '.join(SCANNERS)}, got {scanner!r}")
    spacing, affine = grid_geometry(shape)
    subject = np.random.default_rng([int(seed), 0])  # the patient: the same on both scanners
    tissue, brain = _subject_tissue(subject, shape, spacing, affine)
    depth_mm = ndimage.distance_transform_edt(brain) * np.float32(spacing)  # to the brain's surface
    seg, oedema, fluid_like = _grow_tumour(subject, grade, tissue, brain, depth_mm, spacing)
    vessels, lesions = _lookalikes(subject, tissue, brain, depth_mm, spacing)
    variation = subject.uniform(0.94, 1.06, (len(MODALITIES), 7)).astype(np.float32)  # this patient's tissue
    variation[:, 6] = subject.uniform(0.92, 1.08)  # oedema: more or less water
    # Tumour compartments as partial-volume fractions: their edges are not hard steps either.
    compartments = [ndimage.gaussian_filter((seg == label).astype(np.float32), 0.5) * brain for label in (1, 4)]
    necrosis_like = compartments[0]
    enhancing = compartments[1]
    healthy = np.clip(1.0 - necrosis_like - enhancing, 0.0, 1.0)
    heterogeneity = 1.0 + 0.1 * _noise(subject, shape, 3.0 / spacing)  # tumour tissue is not uniform

    scan = np.random.default_rng([int(seed), 1 + SCANNERS.index(scanner)])  # this acquisition
    case = {}
    slice_mm = _SLICE_MM[scanner]
    for index, modality in enumerate(MODALITIES):
        table = _TABLES[scanner][index] * variation[index] * np.float32(scan.uniform(0.85, 1.15))
        normal = np.tensordot(table[:3], tissue, axes=1)
        normal += oedema * (table[6] * heterogeneity - normal)
        if modality == "t1ce":
            normal += vessels * (1.6 * table[4] - normal) * (normal < 1.6 * table[4])
        elif modality in ("t2", "flair"):
            normal += lesions * (table[6] * 1.05 - normal)
        # Label 1 holds necrosis and cysts (fluid-like) and solid non-enhancing tumour.
        label_one = np.where(fluid_like, table[3], table[5])
        image = healthy * normal + (necrosis_like * label_one + enhancing * table[4]) * heterogeneity
        reference = table[2]
        gamma = _GAMMA[scanner][index]
        if gamma != 1.0:
            image = reference * np.power(np.maximum(image, 0.0) / reference, gamma)
        # FLAIR's inversion pulse makes it the most inhomogeneous of the four.
        bias = scan.uniform(0.1, 0.16) if modality == "flair" else scan.uniform(0.05, 0.1)
        image = image * np.exp(_smooth_field(scan, shape, (3, 3, 3), bias))
        if slice_mm is not None:
            image = _thick_slices(image, slice_mm / spacing)
        sigma = np.float32(scan.uniform(*_NOISE[scanner]) * reference)
        real = image + sigma * scan.standard_normal(shape, dtype=np.float32)
        imaginary = sigma * scan.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(real * real + imaginary * imaginary)  # magnitude images: Rician noise
        image = np.clip(np.rint(image), 1, 32767)  # 1, not 0: zero means "outside the brain"
        image[~brain] = 0
        case[modality] = image.astype(np.int16)
    case["seg"], case["wm"] = seg, tissue[2].astype(np.float32)
    if scanner == "b":
        # Scanner b stores x the other way round; its affine says so, so world positions agree.
        for key in (*MODALITIES, "seg", "wm"):
            case[key] = np.ascontiguousarray(case[key][::-1])
        flipped = affine.copy()
        flipped[:3, 3] += affine[:3, 0] * (shape[0] - 1)
        flipped[:3, 0] = -affine[:3, 0]
        affine = flipped
    case["affine"] = affine
    return case
