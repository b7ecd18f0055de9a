"""Strict checks before anything is written: one-line errors, --skip-invalid, the validate command."""
import gzip
import os
import shutil

import nibabel
import numpy as np
import pytest
from conftest import run_cli
from raw_trees import AFFINE, SHAPE, save, write_brats2019, write_brats2020, write_msd

from unet3d_core.data.preprocess import preprocess, validate
from unet3d_core.data.records import Manifest
from unet3d_core.errors import DataError, InvalidCaseError

BROKEN = "BraTS20_Training_002"


def _path(raw, case_id, suffix, extension=".nii"):
    return os.path.join(raw, case_id, "{}_{}{}".format(case_id, suffix, extension))


def _rewrite(path, transform):
    image = nibabel.load(path)
    array = transform(np.asanyarray(image.dataobj).copy())
    nibabel.save(nibabel.Nifti1Image(array, image.affine), path)


def _missing_modality(raw):
    os.remove(_path(raw, BROKEN, "t1ce"))
    return _path(raw, BROKEN, "t1ce"), "missing t1ce image"


def _unreadable(raw):
    with open(_path(raw, BROKEN, "t2"), "wb") as handle:
        handle.write(b"this is not a NIfTI file at all" * 20)
    return _path(raw, BROKEN, "t2"), "cannot read"


def _truncated_nii(raw):
    path = _path(raw, BROKEN, "flair")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    return path, "cannot read voxels"


def _truncated_gz(raw):
    path = _path(raw, BROKEN, "flair")
    with open(path, "rb") as source, gzip.open(path + ".gz", "wb") as target:
        target.write(source.read())
    os.remove(path)
    with open(path + ".gz", "r+b") as handle:
        handle.truncate(os.path.getsize(path + ".gz") * 2 // 3)
    return path + ".gz", "cannot read voxels"


def _four_d(raw):
    _rewrite(_path(raw, BROKEN, "t1"), lambda data: np.stack([data, data], axis=-1))
    return _path(raw, BROKEN, "t1"), "is 4-D with shape (24, 24, 16, 2); expected a 3-D volume"


def _shape_mismatch(raw):
    _rewrite(_path(raw, BROKEN, "t2"), lambda data: data[:-2])
    return _path(raw, BROKEN, "t2"), "has shape (22, 24, 16) but {}_t1.nii has (24, 24, 16)".format(BROKEN)


def _affine_mismatch(raw):
    path = _path(raw, BROKEN, "t1ce")
    image = nibabel.load(path)
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    nibabel.save(nibabel.Nifti1Image(np.array(image.dataobj), shifted), path)  # a copy: the file is mapped
    return path, "has a different affine from {}_t1.nii".format(BROKEN)


def _seg_shape_mismatch(raw):
    _rewrite(_path(raw, BROKEN, "seg"), lambda data: data[:, :, :-1])
    return _path(raw, BROKEN, "seg"), "has shape (24, 24, 15) but the images have (24, 24, 16)"


def _unknown_label(raw):
    def add_three(data):
        data[5, 5, 5] = 3  # BraTS 2020 has no label 3
        return data

    _rewrite(_path(raw, BROKEN, "seg"), add_three)
    return _path(raw, BROKEN, "seg"), "unknown label value(s) 3 (BraTS 2020/2021 uses 0, 1, 2, 4)"


def _poison(value):
    def damage(raw):
        def poisoned(data):
            data = data.astype(np.float32)
            data[3, 4, 5] = value
            return data

        _rewrite(_path(raw, BROKEN, "flair"), poisoned)
        return _path(raw, BROKEN, "flair"), "the flair image has 1 NaN or infinite voxels"

    return damage


def _all_zero(raw):
    _rewrite(_path(raw, BROKEN, "t1"), np.zeros_like)
    return _path(raw, BROKEN, "t1"), "the t1 image is all zero"


def _empty(raw):
    _rewrite(_path(raw, BROKEN, "t2"), lambda data: data[:, :, :0])
    return _path(raw, BROKEN, "t2"), "is empty (shape (24, 24, 0))"


def _two_files_for_one_modality(raw):
    shutil.copy(_path(raw, BROKEN, "t1"), _path(raw, BROKEN, "t1", ".nii.gz"))
    return _path(raw, BROKEN, "t1", ".nii.gz"), "both {0}_t1.nii and {0}_t1.nii.gz exist".format(BROKEN)


DAMAGE = {
    "missing modality": _missing_modality,
    "unreadable file": _unreadable,
    "truncated .nii": _truncated_nii,
    "truncated .nii.gz": _truncated_gz,
    "4-D image": _four_d,
    "shape mismatch": _shape_mismatch,
    "affine mismatch": _affine_mismatch,
    "segmentation shape mismatch": _seg_shape_mismatch,
    "label outside the release": _unknown_label,
    "NaN voxel": _poison(np.nan),
    "infinite voxel": _poison(np.inf),
    "all-zero image": _all_zero,
    "empty image": _empty,
    "two files for one modality": _two_files_for_one_modality,
}


@pytest.fixture
def brats2020(tmp_path):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=4)
    return raw


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_each_invalid_input_is_one_line_naming_case_and_file(damage, brats2020, tmp_path):
    path, reason = DAMAGE[damage](brats2020)
    # ``validate`` finds it, and only it ...
    report = validate(brats2020, show_progress=False)
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.case_id == BROKEN and problem.path == path and problem.reason.startswith(reason)
    assert str(problem) == "case {}: {}: {}".format(BROKEN, path, problem.reason) and "\n" not in str(problem)
    assert len(report.valid) == 3
    # ... and preprocess stops on it before writing anything.
    out = str(tmp_path / "records")
    with pytest.raises(InvalidCaseError) as raised:
        preprocess(brats2020, out, folds=2, show_progress=False)
    assert str(raised.value).startswith(str(problem)) and "--skip-invalid" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not os.path.exists(out)
    assert not [name for name in os.listdir(str(tmp_path)) if name.startswith(".unet3d")]


def test_duplicate_case_ids_are_refused(tmp_path):
    raw = str(tmp_path / "raw")
    write_brats2019(raw, hgg=2, lgg=1)
    shutil.copytree(os.path.join(raw, "HGG", "BraTS19_HGG_001_1"), os.path.join(raw, "LGG", "BraTS19_HGG_001_1"))
    report = validate(raw, show_progress=False)
    assert len(report.problems) == 1
    assert str(report.problems[0]).startswith("case BraTS19_HGG_001_1: {}: duplicate case id: also {}".format(
        os.path.join(raw, "LGG", "BraTS19_HGG_001_1", "BraTS19_HGG_001_1_flair.nii.gz"),
        os.path.join(raw, "HGG", "BraTS19_HGG_001_1", "BraTS19_HGG_001_1_flair.nii.gz")))
    assert report.valid == ["BraTS19_HGG_000_1", "BraTS19_LGG_000_1"]


def test_msd_images_must_be_4d_with_four_volumes(tmp_path):
    raw = str(tmp_path / "msd")
    write_msd(raw, training=3, test=0)
    path = os.path.join(raw, "imagesTr", "BRATS_002.nii.gz")
    save(path, np.ones(SHAPE, np.float32), AFFINE)
    report = validate(raw, show_progress=False)
    assert [str(problem) for problem in report.problems] == [
        "case BRATS_002: {}: has shape (24, 24, 16); expected a 4-D image with 4 volumes "
        "(FLAIR, T1w, T1gd, T2w)".format(path)]


def test_msd_all_zero_volume_names_the_volume(tmp_path):
    raw = str(tmp_path / "msd")
    write_msd(raw, training=3, test=0)
    path = os.path.join(raw, "imagesTr", "BRATS_003.nii.gz")
    image = nibabel.load(path)
    data = image.get_fdata(dtype=np.float32)
    data[..., 2] = 0  # T1gd
    save(path, data, image.affine)
    report = validate(raw, show_progress=False)
    assert str(report.problems[0]) == "case BRATS_003: {}: volume 2 (t1ce) is all zero".format(path)


def test_skip_invalid_continues_and_lists_what_was_skipped(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=6)
    _all_zero(raw)  # BraTS20_Training_002
    os.remove(_path(raw, "BraTS20_Training_005", "t2"))
    out = str(tmp_path / "records")
    run_cli(["preprocess", "-i", raw, "-o", out, "--folds", "2", "--skip-invalid"])
    printed = capsys.readouterr().out
    assert "skipped 2 invalid cases:" in printed
    assert "BraTS20_Training_002  BraTS20_Training_002/BraTS20_Training_002_t1.nii" in printed
    assert "the t1 image is all zero" in printed and "missing t2 image" in printed
    manifest = Manifest(out)
    assert [case["id"] for case in manifest.cases] == ["BraTS20_Training_001", "BraTS20_Training_003",
                                                       "BraTS20_Training_004", "BraTS20_Training_006"]
    assert [case["id"] for case in manifest.skipped] == ["BraTS20_Training_002", "BraTS20_Training_005"]
    assert sorted(os.listdir(out)) == sorted([case["file"] for case in manifest.cases] + ["manifest.json"])
    # Records are numbered by their place in the manifest, skipped cases leaving no gap.
    from unet3d_core.data.records import read_record

    assert [read_record(manifest.record_path(case))["case_index"] for case in manifest.cases] == [0, 1, 2, 3]


def test_skip_invalid_still_needs_enough_cases_for_the_folds(tmp_path):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=4)
    _all_zero(raw)
    with pytest.raises(DataError, match=r"only 3 valid cases \(1 skipped\); 4 folds need at least 4"):
        preprocess(raw, str(tmp_path / "records"), folds=4, skip_invalid=True, show_progress=False)
    assert not os.path.exists(str(tmp_path / "records"))


def test_validate_command_checks_everything_and_writes_nothing(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=4)
    before = sorted(os.listdir(raw))
    assert run_cli(["validate", "-i", raw]) == 0
    assert "layout brats2020 (BraTS 2020/2021), 4 cases checked, 4 valid, 0 invalid" in capsys.readouterr().out
    _unknown_label(raw)
    _missing_modality(raw)  # the same case: the first problem found is reported
    os.remove(_path(raw, "BraTS20_Training_004", "seg"))  # unlabelled: valid, for prediction
    assert run_cli(["validate", "-i", raw, "--workers", "2"], check=False) == 1
    out = capsys.readouterr().out
    assert "4 cases checked, 3 valid, 1 invalid" in out
    assert "missing t1ce image" in out
    assert sorted(os.listdir(raw)) == before


def test_validate_with_a_forced_layout(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=2)
    assert run_cli(["validate", "-i", raw, "--layout", "brats2023"], check=False) == 1
    out = capsys.readouterr().out
    assert "2 cases checked, 0 valid, 2 invalid" in out and "missing t1 image" in out


def test_folds_are_reproducible_and_seeded(tmp_path):
    raw = str(tmp_path / "raw")
    write_brats2019(raw, hgg=5, lgg=3)
    first = Manifest(_run(raw, tmp_path, "a", seed=3))
    again = Manifest(_run(raw, tmp_path, "b", seed=3, workers=2))
    other = Manifest(_run(raw, tmp_path, "c", seed=4))
    folds = {case["id"]: case["fold"] for case in first.cases}
    assert folds == {case["id"]: case["fold"] for case in again.cases}
    assert folds != {case["id"]: case["fold"] for case in other.cases}
    for case in first.cases:
        with open(first.record_path(case), "rb") as a, open(again.record_path(case), "rb") as b:
            assert a.read() == b.read()
    lgg = [case["fold"] for case in first.cases if case["grade"] == "LGG"]
    assert len(set(lgg)) == 3  # 3 LGG cases over 3 folds


def _run(raw, tmp_path, name, **kwargs):
    out = str(tmp_path / name)
    preprocess(raw, out, folds=3, show_progress=False, **kwargs)
    return out


def test_preprocess_command_stops_with_one_line_naming_case_and_file(tmp_path, capsys):
    raw = str(tmp_path / "raw")
    write_brats2020(raw, count=4)
    path, reason = _unknown_label(raw)
    out = str(tmp_path / "records")
    assert run_cli(["preprocess", "-i", raw, "-o", out, "--folds", "2"], check=False) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: case {}: {}: {}".format(BROKEN, path, reason)) and "\n" not in error
    assert not os.path.exists(out)


def test_validate_and_layout_flags_are_documented():
    from conftest import cli_subprocess

    for command in ("validate", "preprocess"):
        text = cli_subprocess([command, "--help"], timeout=120).stdout
        assert ("--layout {auto,brats2019,brats2020,brats2023,brats2024-gli,brats-ssa,brats-men,brats-met,"
                "brats-goat,brats-ped,brats2023-ped,brats-men-rt,msd}") in " ".join(text.split())
    assert "--skip-invalid" in cli_subprocess(["preprocess", "--help"], timeout=120).stdout
