"""Promises of the synthetic BraTS generator: layout, determinism, anatomy, contrasts."""
import os

import nibabel as nib
import numpy as np
import pytest

from unet3d_core.data.synth import MODALITIES, make_synthetic_case, write_synthetic_dataset
from unet3d_core.errors import ConfigError, DataError

SHAPE = (32, 32, 24)
SEEDS = range(6)


def _grow(mask):
    """One step of 6-neighbour dilation."""
    grown = mask.copy()
    for axis in range(3):
        grown |= np.roll(mask, 1, axis) | np.roll(mask, -1, axis)
    return grown


def _load(path):
    image = nib.load(str(path))
    return image, np.asanyarray(image.dataobj)


@pytest.fixture(scope="module")
def cases():
    return {(grade, seed): make_synthetic_case(SHAPE, seed, grade) for grade in ("HGG", "LGG") for seed in SEEDS}


def test_case_has_four_int16_modalities_uint8_seg_and_affine(cases):
    case = cases["HGG", 0]
    assert set(case) == set(MODALITIES) | {"seg", "affine"}
    for modality in MODALITIES:
        assert case[modality].shape == SHAPE and case[modality].dtype == np.int16
    assert case["seg"].shape == SHAPE and case["seg"].dtype == np.uint8
    assert case["affine"].shape == (4, 4) and case["affine"].dtype == np.float64


def test_same_seed_gives_identical_cases():
    first, second = make_synthetic_case(SHAPE, 7, "LGG"), make_synthetic_case(SHAPE, 7, "LGG")
    for key in first:
        assert first[key].tobytes() == second[key].tobytes()


def test_different_seeds_differ(cases):
    assert not np.array_equal(cases["HGG", 0]["seg"], cases["HGG", 1]["seg"])
    assert not np.array_equal(cases["HGG", 0]["flair"], cases["HGG", 1]["flair"])


def test_background_is_zero_outside_brain(cases):
    for case in cases.values():
        brain = case["t1"] != 0
        for modality in MODALITIES:
            assert np.array_equal(case[modality] != 0, brain), "modalities share one skull-stripped mask"
            assert case[modality].min() >= 0
        assert 0.25 < brain.mean() < 0.6, "the brain fills a large part of the volume"
        for axis in range(3):
            assert not brain.take([0, -1], axis).any(), "a background border surrounds the brain"
        assert not (case["seg"] > 0)[~brain].any()


def test_tumour_lies_fully_inside_brain(cases):
    for case in cases.values():
        assert not (_grow(case["seg"] > 0) & (case["t1"] == 0)).any()


def test_labels_are_brats_2019_set_and_nested(cases):
    for (grade, seed), case in cases.items():
        seg = case["seg"]
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        core = (seg == 1) | (seg == 4)
        assert (seg == 2).any() and core.any()
        assert not (_grow(core) & (seg == 0)).any(), f"oedema envelops the core ({grade} {seed})"
        if grade == "HGG":
            assert (seg == 4).any() and (seg == 1).any()
        else:
            assert (seg == 1).sum() > 4 * (seg == 4).sum(), "LGG cores are mostly non-enhancing"


def test_whole_tumour_is_a_few_percent_of_brain_and_varies(cases):
    fractions = [(case["seg"] > 0).sum() / (case["t1"] > 0).sum() for case in cases.values()]
    assert min(fractions) > 0.015 and max(fractions) < 0.12
    assert max(fractions) > 1.3 * min(fractions)


def test_contrasts_look_like_mr(cases):
    for (grade, _), case in cases.items():
        seg, brain = case["seg"], case["t1"] > 0
        normal, oedema, core = brain & (seg == 0), seg == 2, (seg == 1) | (seg == 4)
        image = {m: case[m].astype(np.float64) for m in MODALITIES}
        assert image["flair"][oedema].mean() > 1.3 * image["flair"][normal].mean()
        assert image["t2"][oedema].mean() > 1.2 * image["t2"][normal].mean()
        assert image["t1"][core].mean() < image["t1"][normal].mean()
        if grade == "HGG":
            enhancing, necrosis = seg == 4, seg == 1
            assert image["t1ce"][enhancing].mean() > 1.2 * image["t1ce"][normal].mean()
            assert image["t1ce"][necrosis].mean() < 0.85 * image["t1ce"][enhancing].mean(), "ring enhancement"
            assert image["t1"][necrosis].mean() < image["t1"][normal].mean()
            assert image["t2"][necrosis].mean() > image["t2"][normal].mean()


def test_normal_brain_has_inner_structure(cases):
    case = cases["HGG", 0]
    normal = (case["t1"] > 0) & (case["seg"] == 0)
    t1, t2 = case["t1"][normal].astype(np.float64), case["t2"][normal].astype(np.float64)
    assert np.corrcoef(t1, t2)[0, 1] < -0.3, "grey/white matter and fluid swap brightness between T1 and T2"
    assert np.percentile(t2, 99.5) > 1.5 * np.median(t2), "ventricles are bright in T2"


def test_intensities_are_scanner_like_and_differ_by_modality(cases):
    case = cases["HGG", 0]
    brain = case["t1"] > 0
    medians = [np.median(case[m][brain]) for m in MODALITIES]
    assert all(100 < median < 2000 for median in medians)
    assert max(case[m].max() for m in MODALITIES) < 4000
    assert len(set(medians)) == len(MODALITIES)


def test_whole_tumour_is_learnable_but_not_one_threshold(cases):
    for seed in SEEDS:
        case = cases["HGG", seed]
        brain, whole = case["t1"] > 0, case["seg"] > 0
        flair, truth = case["flair"][brain], whole[brain]
        dices = [2.0 * (truth & (flair > t)).sum() / (truth.sum() + (flair > t).sum()) for t in np.unique(flair)]
        assert 0.6 < max(dices) < 0.995


def test_layout_matches_brats_2019(tmp_path):
    out = tmp_path / "brats"
    ids = write_synthetic_dataset(out, cases=4, shape=SHAPE, seed=3)
    assert ids == [f"BraTS19_SYN_{i:04d}" for i in range(1, 5)]
    assert sorted(os.listdir(str(out))) == ["HGG", "LGG"]
    expected = {f"{case_id}_{name}.nii.gz" for case_id in ids for name in (*MODALITIES, "seg")}
    found = set()
    for grade in ("HGG", "LGG"):
        for case_id in os.listdir(str(out / grade)):
            assert case_id in ids
            names = set(os.listdir(str(out / grade / case_id)))
            assert names == {f"{case_id}_{n}.nii.gz" for n in (*MODALITIES, "seg")}
            found |= names
    assert found == expected
    case_dir = next(p for p in (out / "HGG").iterdir())
    for name in (*MODALITIES, "seg"):
        image, data = _load(case_dir / f"{case_dir.name}_{name}.nii.gz")
        assert data.shape == SHAPE
        assert data.dtype == (np.uint8 if name == "seg" else np.int16)
        assert image.header.get_xyzt_units()[0] == "mm"
        assert np.allclose(image.header.get_zooms(), 1.0)
        assert np.allclose(image.affine[:3, :3], np.diag([-1.0, -1.0, 1.0]))
        assert np.any(image.affine[:3, 3] != 0)


def test_same_seed_gives_identical_datasets(tmp_path):
    write_synthetic_dataset(tmp_path / "a", cases=2, shape=SHAPE, seed=5)
    write_synthetic_dataset(tmp_path / "b", cases=2, shape=SHAPE, seed=5)
    write_synthetic_dataset(tmp_path / "c", cases=2, shape=SHAPE, seed=6)
    relative = "HGG/BraTS19_SYN_0002/BraTS19_SYN_0002_flair.nii.gz"
    a, b, c = (_load(tmp_path / name / relative)[1] for name in "abc")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("cases_count, fraction, expected", [(4, 0.25, 1), (8, 0.25, 2), (5, 0.01, 1), (3, 0.0, 0)])
def test_some_cases_are_lgg(tmp_path, cases_count, fraction, expected):
    out = tmp_path / "brats"
    ids = write_synthetic_dataset(out, cases=cases_count, shape=(16, 16, 16), lgg_fraction=fraction)
    lgg = sorted(os.listdir(str(out / "LGG"))) if (out / "LGG").exists() else []
    hgg = sorted(os.listdir(str(out / "HGG"))) if (out / "HGG").exists() else []
    assert len(lgg) == expected
    assert sorted(lgg + hgg) == ids


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "brats"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty; choose another --out"):
        write_synthetic_dataset(out, cases=1, shape=(16, 16, 16))
    assert sorted(os.listdir(str(tmp_path))) == ["brats"]
    assert os.listdir(str(out)) == ["keep.txt"]


def test_fills_an_existing_empty_out_dir(tmp_path):
    (tmp_path / "brats").mkdir()
    assert write_synthetic_dataset(tmp_path / "brats", cases=1, shape=(16, 16, 16)) == ["BraTS19_SYN_0001"]


def test_interrupted_run_leaves_nothing_behind(tmp_path):
    def stop(done, total, case_id):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path / "brats", cases=2, shape=(16, 16, 16), progress=stop)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("shape", [(15, 32, 32), (32, 32), (32, 32, 32, 1), (32, 32, 24.5), (0, 32, 32), "abc", None])
def test_bad_shape_is_config_error(tmp_path, shape):
    with pytest.raises(ConfigError, match="--shape"):
        make_synthetic_case(shape)
    with pytest.raises(ConfigError, match="--shape"):
        write_synthetic_dataset(tmp_path / "brats", cases=1, shape=shape)
    assert not (tmp_path / "brats").exists()


@pytest.mark.parametrize("count", [0, -1, 2.5, "3"])
def test_bad_case_count_is_config_error(tmp_path, count):
    with pytest.raises(ConfigError, match="--cases"):
        write_synthetic_dataset(tmp_path / "brats", cases=count, shape=(16, 16, 16))


def test_progress_called(tmp_path):
    calls = []
    ids = write_synthetic_dataset(tmp_path / "brats", cases=3, shape=(16, 16, 16),
                                  progress=lambda done, total, case_id: calls.append((done, total, case_id)))
    assert calls == [(1, 3, ids[0]), (2, 3, ids[1]), (3, 3, ids[2])]


# Anatomical mode (--anatomical): template brains with grown gliomas. They need nilearn, which only the
# TF 2.15 environment installs; each fixture skips without it.
ANATOMY_SHAPE = (80, 96, 80)  # the default grid: 2 mm voxels
ANATOMY_CASES = [("HGG", seed) for seed in range(4)] + [("LGG", seed) for seed in range(3)]


def _best_threshold_dice(image, truth):
    """The best Dice any single threshold (above or below, over 200 quantiles) reaches against `truth`."""
    levels = np.unique(np.percentile(image, np.linspace(0.0, 100.0, 201)))
    best = 0.0
    for level in levels:
        for guess in (image > level, image < level):
            best = max(best, 2.0 * (truth & guess).sum() / (truth.sum() + guess.sum()))
    return best


@pytest.fixture(scope="module")
def anatomy():
    pytest.importorskip("nilearn")
    from unet3d_core.data import synth_anatomy

    return synth_anatomy


@pytest.fixture(scope="module")
def anatomical_cases(anatomy):
    return {(grade, seed): anatomy.make_anatomical_case(ANATOMY_SHAPE, seed, grade) for grade, seed in ANATOMY_CASES}


def test_anatomical_case_has_brats_dtypes_labels_and_one_brain_mask(anatomical_cases):
    for (grade, seed), case in anatomical_cases.items():
        brain = case["t1"] != 0
        for modality in MODALITIES:
            assert case[modality].shape == ANATOMY_SHAPE and case[modality].dtype == np.int16
            assert np.array_equal(case[modality] != 0, brain), "skull-stripped: one mask for all four"
            assert case[modality].min() >= 0
        assert case["seg"].dtype == np.uint8 and set(np.unique(case["seg"])) <= {0, 1, 2, 4}
        assert 0.1 < brain.mean() < 0.5, (grade, seed, brain.mean())
        for axis in range(3):
            assert not brain.take([0, -1], axis).any()


def test_anatomical_tumour_lies_in_the_brain_mostly_in_white_matter(anatomical_cases):
    for (grade, seed), case in anatomical_cases.items():
        tumour, brain = case["seg"] > 0, case["t1"] > 0
        assert not (tumour & ~brain).any()
        assert (case["wm"][tumour] > 0.5).mean() > 0.5, (grade, seed)
        assert case["wm"][brain].mean() < 0.5, "white matter is well under half the brain"
        core = (case["seg"] == 1) | (case["seg"] == 4)
        assert core.any() and (case["seg"] == 2).any()


def test_anatomical_hgg_cases_enhance_and_lgg_cases_mostly_do_not(anatomical_cases):
    for (grade, seed), case in anatomical_cases.items():
        seg = case["seg"]
        if grade == "HGG":
            assert (seg == 4).any() and (seg == 1).any(), seed
            assert (seg == 4).sum() < 0.5 * (seg > 0).sum(), "enhancing tumour is a rim, not the whole tumour"
        else:
            assert (seg == 1).sum() > 3 * (seg == 4).sum(), seed


def test_anatomical_tumours_vary_in_size(anatomical_cases):
    fractions = [(case["seg"] > 0).sum() / (case["t1"] > 0).sum() for case in anatomical_cases.values()]
    assert min(fractions) > 0.002 and max(fractions) < 0.3
    assert max(fractions) > 3 * min(fractions)


def test_anatomical_contrasts_look_like_mr(anatomical_cases):
    for (grade, seed), case in anatomical_cases.items():
        seg, brain = case["seg"], case["t1"] > 0
        white = brain & (seg == 0) & (case["wm"] > 0.9)
        image = {m: case[m].astype(np.float64) for m in MODALITIES}
        assert np.median(image["t1"][white]) > np.median(image["t1"][brain & (seg == 0)]), "T1: white matter bright"
        assert np.median(image["t2"][white]) < np.median(image["t2"][brain & (seg == 0)]), "T2: white matter dark"
        assert image["flair"][seg == 2].mean() > 1.2 * image["flair"][white].mean(), (grade, seed)
        if grade == "HGG":
            assert image["t1ce"][seg == 4].mean() > 1.2 * image["t1ce"][white].mean(), seed


def test_no_single_contrast_threshold_segments_the_whole_tumour(anatomical_cases):
    for (grade, seed), case in anatomical_cases.items():
        brain = case["t1"] > 0
        truth = (case["seg"] > 0)[brain]
        for modality in MODALITIES:
            dice = _best_threshold_dice(case[modality][brain].astype(np.float64), truth)
            assert dice < 0.8, (grade, seed, modality, dice)


def test_anatomical_same_arguments_give_identical_arrays(anatomy):
    first = anatomy.make_anatomical_case((48, 56, 48), 11, "LGG", "b")
    second = anatomy.make_anatomical_case((48, 56, 48), 11, "LGG", "b")
    other = anatomy.make_anatomical_case((48, 56, 48), 12, "LGG", "b")
    for key in first:
        assert first[key].tobytes() == second[key].tobytes(), key
    assert not np.array_equal(first["flair"], other["flair"])


def test_grid_spacing_fits_the_brain_with_padding(anatomy):
    assert anatomy.grid_geometry((240, 240, 155))[0] == pytest.approx(1.0)
    assert anatomy.grid_geometry(anatomy.DEFAULT_SHAPE)[0] == pytest.approx(2.0)
    spacing, affine = anatomy.grid_geometry((96, 112, 96))
    assert np.allclose(np.abs(np.diag(affine)[:3]), spacing)


def _z_sharpness(image, brain):
    """Mean |step| along z over mean |step| along y, each smoothed across the other axes to quiet the noise."""
    from scipy import ndimage

    along_z = np.abs(np.diff(ndimage.gaussian_filter(image, (2.0, 2.0, 0.0)), axis=2))[brain[:, :, 1:]].mean()
    along_y = np.abs(np.diff(ndimage.gaussian_filter(image, (2.0, 0.0, 2.0)), axis=1))[brain[:, 1:, :]].mean()
    return along_z / along_y


def test_scanner_b_scans_the_same_patient_flipped_noisier_and_with_thick_slices(anatomy, anatomical_cases):
    from scipy import ndimage

    a, b = anatomical_cases["HGG", 0], anatomy.make_anatomical_case(ANATOMY_SHAPE, 0, "HGG", "b")
    # Same patient: b's arrays are a's with x reversed, and its affine says so (same world positions).
    assert np.array_equal(b["seg"][::-1], a["seg"]) and np.array_equal(b["t1"][::-1] > 0, a["t1"] > 0)
    corner = np.array([ANATOMY_SHAPE[0] - 1, 0, 0, 1.0])
    assert np.allclose(b["affine"] @ [0, 0, 0, 1.0], a["affine"] @ corner)
    assert np.sign(b["affine"][0, 0]) == -np.sign(a["affine"][0, 0])
    assert np.allclose(b["affine"][1:, 1:], a["affine"][1:, 1:])
    deep = ndimage.binary_erosion(a["t1"] > 0, iterations=3) & (a["seg"] == 0) & (a["wm"] > 0.95)
    brain = ndimage.binary_erosion(a["t1"] > 0, iterations=4)

    def noise(image):
        """Relative high-pass spread in deep white matter (some anatomy leaks in, so it overestimates)."""
        residual = image - ndimage.uniform_filter(image, 3)
        return residual[deep].std() / np.median(image[deep])

    noisier, sharpness = [], []
    for modality in MODALITIES:
        image_a, image_b = a[modality].astype(np.float64), b[modality][::-1].astype(np.float64)
        noisier.append(noise(image_b) / noise(image_a))
        sharpness.append(_z_sharpness(image_b, brain) / _z_sharpness(image_a, brain))
    assert min(noisier) > 1.15 and np.mean(noisier) > 1.4, noisier  # noise sigma about doubled
    assert max(sharpness) < 0.95 and np.mean(sharpness) < 0.92, sharpness  # 3 mm slices blur along z


@pytest.mark.parametrize("scanner", ["a", "b"])
def test_anatomical_dataset_has_brats_layout_and_preprocess_reads_it(anatomy, tmp_path, scanner):
    from unet3d_core.data.preprocess import preprocess

    raw = tmp_path / "raw"
    ids = write_synthetic_dataset(raw, cases=2, shape=(48, 56, 48), seed=1, lgg_fraction=0.5,
                                  anatomical=True, scanner=scanner)
    assert sorted(os.listdir(str(raw))) == ["HGG", "LGG"]
    case_dir = raw / "HGG" / ids[0] if (raw / "HGG" / ids[0]).exists() else raw / "HGG" / ids[1]
    spacing, _ = anatomy.grid_geometry((48, 56, 48))
    for name in (*MODALITIES, "seg"):
        image, data = _load(case_dir / f"{case_dir.name}_{name}.nii.gz")
        assert data.dtype == (np.uint8 if name == "seg" else np.int16)
        assert np.allclose(image.header.get_zooms(), spacing)
        assert np.sign(image.affine[0, 0]) == (-1 if scanner == "a" else 1)
    manifest = preprocess(str(raw), str(tmp_path / "records"), folds=2, show_progress=False)
    assert len(manifest["cases"]) == 2 and not manifest["skipped"]


def test_scanner_without_anatomical_is_refused(tmp_path, capsys):
    from conftest import run_cli

    assert run_cli(["synth", "--out", tmp_path / "raw", "--cases", "1", "--scanner", "b"], check=False) != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--scanner" in error and "--anatomical" in error
    assert not (tmp_path / "raw").exists()


def test_anatomical_without_nilearn_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys

    from conftest import run_cli

    for name in [name for name in sys.modules if name == "nilearn" or name.startswith("nilearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nilearn", None)  # "import nilearn" now raises ImportError
    assert run_cli(["synth", "--out", tmp_path / "raw", "--cases", "1", "--anatomical"], check=False) != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "pip install nilearn" in error
    assert not (tmp_path / "raw").exists()
