"""Every raw layout: detection, channel order, labels both ways, unlabelled cases, MSD prediction geometry."""
import json
import os

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli
from raw_trees import (
    AFFINE,
    CHANNELS,
    SHAPE,
    WRITERS,
    preprocess_tree,
    save,
    write_brats2019,
    write_brats2020,
    write_brats2023,
    write_msd,
)

from unet3d_core.data.case_scan import discover_cases
from unet3d_core.data.layouts import LABEL_MAPS, detect_layout, inverse_label_map
from unet3d_core.data.preprocess import scale_intensities
from unet3d_core.data.records import Manifest, read_record
from unet3d_core.errors import DataError

# What each release's label values mean, written out here (from the releases' documentation, as
# unet3d_core/data/layouts.py quotes it) rather than taken from the code under test:
# BraTS 2018-2021: 1 necrotic / non-enhancing tumour core (NCR/NET), 2 peritumoral oedema (ED), 4 enhancing (ET);
# BraTS 2023: the same with ET numbered 3; MSD Task01_BrainTumour: 1 edema, 2 non-enhancing tumor, 3 enhancing tumour.
MEANINGS = {
    "brats2019": {0: "background", 1: "core", 2: "oedema", 4: "enhancing"},
    "brats2020": {0: "background", 1: "core", 2: "oedema", 4: "enhancing"},
    "brats2023": {0: "background", 1: "core", 2: "oedema", 3: "enhancing"},
    "msd": {0: "background", 1: "oedema", 2: "core", 3: "enhancing"},
}
# The internal numbering (BraTS 2019's, ET moved to 3): what the network learns and the metrics read.
INTERNAL = {"background": 0, "core": 1, "oedema": 2, "enhancing": 3}
EXPECTED_MAPS = {layout: {source: INTERNAL[meaning] for source, meaning in meanings.items()}
                 for layout, meanings in MEANINGS.items()}
SOURCE_LABELS = {layout: set(meanings) for layout, meanings in MEANINGS.items()}


_preprocess = preprocess_tree


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_is_detected_and_found_whole(layout, tmp_path):
    raw = str(tmp_path / layout)
    written = WRITERS[layout](raw)
    assert detect_layout(raw) == layout
    cases = discover_cases(raw, require_segmentation=False)
    assert [case.case_id for case in cases] == sorted(written)
    assert all(case.layout == layout and set(case.images) == set(CHANNELS) for case in cases)


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_channels_and_labels_map_to_internal_and_back(layout, tmp_path):
    raw = str(tmp_path / layout)
    written = WRITERS[layout](raw)
    records = _preprocess(raw, tmp_path)
    manifest = Manifest(records)
    assert manifest.layout == layout and manifest.label_map == LABEL_MAPS[layout] == EXPECTED_MAPS[layout]
    back = {internal: source for source, internal in EXPECTED_MAPS[layout].items()}
    assert inverse_label_map(manifest.label_map) == back
    for case in manifest.cases:
        source = written[case["id"]]
        record = read_record(manifest.record_path(case))
        expected = scale_intensities(np.stack([source.images[c] for c in CHANNELS], axis=-1).astype(np.float32))
        assert np.array_equal(record["image"], expected)  # channel order t1, t1ce, t2, flair
        if source.seg is None:
            assert record["label"] is None and not case["has_label"]
            continue
        assert set(np.unique(record["label"]).tolist()) == {0, 1, 2, 3}
        assert set(np.unique(source.seg).tolist()) == SOURCE_LABELS[layout]
        internal = np.vectorize(EXPECTED_MAPS[layout].get)(source.seg)
        assert np.array_equal(record["label"], internal)
        assert np.array_equal(np.vectorize(back.get)(record["label"]), source.seg)


def _msd_label_volume(seed=7):
    """An MSD label map holding each label at voxels of its own (23 oedema, 11 NET, 5 ET voxels, spread
    over the brain): a swap of any two labels changes the labels found at those voxels and their counts."""
    rng = np.random.RandomState(seed)
    inside = np.zeros(SHAPE, bool)
    inside[2:-2, 2:-2, 1:-1] = True  # where raw_trees' images are non-zero
    chosen = rng.permutation(np.flatnonzero(inside))[:23 + 11 + 5]
    voxels = {1: chosen[:23], 2: chosen[23:34], 3: chosen[34:]}
    seg = np.zeros(SHAPE, np.uint8)
    for label, flat in voxels.items():
        seg.flat[flat] = label
    return seg, {label: np.unravel_index(flat, SHAPE) for label, flat in voxels.items()}


def test_msd_labels_land_on_the_internal_label_of_the_same_tissue_voxel_by_voxel(tmp_path):
    from unet3d_core.data.volumes import raw_folder_cases, write_label_map

    raw = str(tmp_path / "msd")
    write_msd(raw, training=2, test=0)
    seg, at = _msd_label_volume()
    save(os.path.join(raw, "labelsTr", "BRATS_001.nii.gz"), seg, AFFINE)
    manifest = Manifest(_preprocess(raw, tmp_path))
    (case,) = [case for case in manifest.cases if case["id"] == "BRATS_001"]
    label = read_record(manifest.record_path(case))["label"]
    assert label.shape == SHAPE
    # MSD 1 (edema) -> internal 2 (oedema), MSD 2 (non-enhancing tumour) -> internal 1 (tumour core),
    # MSD 3 (enhancing) -> internal 3, at exactly the voxels that held them; nothing else is tumour.
    assert (label[at[1]] == INTERNAL["oedema"]).all() and (label[at[1]] == 2).all()
    assert (label[at[2]] == INTERNAL["core"]).all() and (label[at[2]] == 1).all()
    assert (label[at[3]] == INTERNAL["enhancing"]).all() and (label[at[3]] == 3).all()
    assert np.count_nonzero(label) == 23 + 11 + 5 and np.count_nonzero(label == 1) == 11
    # Predicting straight from the raw folder reads the labels the same way ...
    ids, loaded = raw_folder_cases(raw)
    inference_case = dict(zip(ids, loaded))["BRATS_001"]
    assert np.array_equal(inference_case.label, label)
    # ... and a prediction of internal labels is written back in MSD's numbering, voxel by voxel.
    written = str(tmp_path / "BRATS_001_prediction.nii.gz")
    write_label_map(written, label, inference_case)
    back = np.asanyarray(nibabel.load(written).dataobj)
    assert np.array_equal(back, seg)
    assert (back[at[1]] == 1).all() and (back[at[2]] == 2).all() and (back[at[3]] == 3).all()


def test_msd_channel_order_follows_dataset_json(tmp_path):
    raw = str(tmp_path / "msd")
    order = ("t1", "t2", "flair", "t1ce")
    written = write_msd(raw, training=2, test=0, order=order)
    records = _preprocess(raw, tmp_path)
    manifest = Manifest(records)
    case = manifest.cases[0]
    assert case["source_volume_index"] == {channel: order.index(channel) for channel in CHANNELS}
    record = read_record(manifest.record_path(case))
    source = written[case["id"]]
    assert np.array_equal(record["image"], scale_intensities(
        np.stack([source.images[c] for c in CHANNELS], axis=-1).astype(np.float32)))


def test_msd_with_other_labels_is_refused(tmp_path):
    raw = str(tmp_path / "msd")
    write_msd(raw, training=2, test=0, labels={"0": "background", "1": "tumour"})
    with pytest.raises(DataError, match="dataset.json: labels .* are not Task01_BrainTumour's"):
        discover_cases(raw)


def test_msd_without_dataset_json_uses_the_decathlon_order_and_ignores_macos_debris(tmp_path):
    raw = str(tmp_path / "msd")
    write_msd(raw, training=2, test=1, dataset_json=False)
    with open(os.path.join(raw, "imagesTr", "._BRATS_001.nii.gz"), "wb") as handle:
        handle.write(b"\x00\x05\x16\x07 AppleDouble resource fork")
    cases = discover_cases(raw, require_segmentation=False)
    assert [case.case_id for case in cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert cases[0].volume_index == {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}
    assert cases[2].segmentation is None  # imagesTs: for prediction


def test_brats2020_odd_segmentation_name_is_used(tmp_path):
    raw = str(tmp_path / "brats2020")
    written = write_brats2020(raw, count=3, odd_segmentation=True)
    case = discover_cases(raw)[-1]
    assert os.path.basename(case.segmentation) == "W39_1998.09.19_Segm.nii"
    records = _preprocess(raw, tmp_path)
    manifest = Manifest(records)
    entry = [c for c in manifest.cases if c["id"] == case.case_id][0]
    label = read_record(manifest.record_path(entry))["label"]
    assert np.array_equal(label, np.vectorize(LABEL_MAPS["brats2020"].get)(written[case.case_id].seg))


def test_brats2020_name_mapping_gives_grades_for_stratified_folds(tmp_path):
    raw = str(tmp_path / "brats2020")
    grades = {"BraTS20_Training_{:03d}".format(n + 1): "LGG" if n < 2 else "HGG" for n in range(6)}
    write_brats2020(raw, count=6, grades=grades)
    assert {case.case_id: case.grade for case in discover_cases(raw)} == grades
    manifest = Manifest(_preprocess(raw, tmp_path))
    lgg_folds = [case["fold"] for case in manifest.cases if case["grade"] == "LGG"]
    assert sorted(lgg_folds) == [0, 1]  # the two LGG cases land in different folds


def test_brats2019_uncompressed_files_are_read(tmp_path):
    raw = str(tmp_path / "brats2019")
    write_brats2019(raw, hgg=2, lgg=1)
    folder = os.path.join(raw, "HGG", "BraTS19_HGG_000_1")
    for name in os.listdir(folder):  # gunzip one case by rewriting it as .nii
        image = nibabel.load(os.path.join(folder, name))
        nibabel.save(nibabel.Nifti1Image(np.asanyarray(image.dataobj), image.affine),
                     os.path.join(folder, name[:-len(".gz")]))
        os.remove(os.path.join(folder, name))
    case = discover_cases(raw)[0]
    assert case.images["t1"].endswith("BraTS19_HGG_000_1_t1.nii") and case.grade == "HGG"


def test_layout_flag_forces_a_layout(tmp_path):
    raw = str(tmp_path / "brats2020")
    write_brats2020(raw, count=2)
    assert detect_layout(raw, "brats2020") == "brats2020"
    with pytest.raises(DataError, match="missing t1 image"):  # BraTS 2023 names are looked for, and absent
        discover_cases(raw, layout="brats2023")
    with pytest.raises(DataError, match="--layout brats2030: unknown"):
        detect_layout(raw, "brats2030")


def test_mixed_or_unknown_folders_ask_for_a_layout(tmp_path):
    raw = str(tmp_path / "mixed")
    write_brats2020(raw, count=2)
    write_brats2023(raw, count=2)
    with pytest.raises(DataError, match="choose one with --layout"):
        detect_layout(raw)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no cases found. Expected HGG/ and LGG/.*Task01_BrainTumour.$"):
        detect_layout(str(empty))
    wrapper = tmp_path / "download"
    write_brats2020(str(wrapper / "MICCAI_BraTS2020_TrainingData"), count=1)
    with pytest.raises(DataError, match="did you mean -i .*/download/MICCAI_BraTS2020_TrainingData"):
        detect_layout(str(wrapper))


def test_cases_without_segmentation_are_kept_for_prediction_only(tmp_path):
    raw = str(tmp_path / "brats2023")
    write_brats2023(raw, count=5, unlabelled=(1, 3))
    manifest = Manifest(_preprocess(raw, tmp_path))
    unlabelled = sorted(case["id"] for case in manifest.cases if not case["has_label"])
    assert unlabelled == ["BraTS-GLI-00001-000", "BraTS-GLI-00003-000"]
    training, validation = manifest.split(0)
    assert not {case["id"] for case in training + validation} & set(unlabelled)
    # Stratified by labelled / unlabelled: the two unlabelled cases are in different folds.
    assert sorted(case["fold"] for case in manifest.cases if not case["has_label"]) == [0, 1]


def test_msd_prediction_is_a_3d_label_map_in_msd_labels_and_the_image_geometry(tmp_path):
    raw = str(tmp_path / "msd")
    write_msd(raw, training=4, test=1)
    records = _preprocess(raw, tmp_path)
    model_dir, out = str(tmp_path / "run"), str(tmp_path / "predictions")
    run_cli(["train", "--data_dir", records, "--model_dir", model_dir, "--batch_size", "1", "--max_steps", "1",
             "--log_every", "1"] + TINY_MODEL)
    run_cli(["predict", "--data_dir", records, "--model_dir", model_dir, "--output_dir", out, "--predict_on", "all",
             "--base_filters", "4", "--max_filters", "16", "--depth", "3"])
    source = nibabel.load(os.path.join(raw, "imagesTs", "BRATS_005.nii.gz"))
    predicted = nibabel.load(os.path.join(out, "BRATS_005.nii.gz"))
    assert source.ndim == 4 and predicted.ndim == 3
    assert predicted.shape == source.shape[:3]
    assert np.allclose(predicted.affine, source.affine)
    assert set(np.unique(np.asanyarray(predicted.dataobj)).tolist()) <= {0, 1, 2, 3}
    with open(os.path.join(records, "manifest.json")) as handle:
        assert json.load(handle)["label_map"] == {"0": 0, "1": 2, "2": 1, "3": 3}
