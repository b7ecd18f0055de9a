"""Raw cases -> records: layout, validation errors, intensities, folds, atomic output."""
import json
import os
import shutil

import nibabel
import numpy as np
import pytest

from unet3d_core.data.case_scan import discover_cases
from unet3d_core.data.cases import load_case
from unet3d_core.data.layouts import map_labels
from unet3d_core.data.preprocess import assign_folds, foreground_statistics, preprocess, scale_intensities
from unet3d_core.data.records import Manifest
from unet3d_core.errors import DataError


def _copy(raw_dataset, tmp_path):
    target = str(tmp_path / "raw")
    shutil.copytree(raw_dataset, target)
    return target


def _first_case_folder(raw):
    return os.path.join(raw, "HGG", sorted(os.listdir(os.path.join(raw, "HGG")))[0])


def test_brats_2019_layout_is_discovered_with_grades(raw_dataset):
    cases = discover_cases(raw_dataset)
    assert len(cases) == 10
    assert {case.grade for case in cases} == {"HGG", "LGG"}
    assert all(set(case.images) == {"t1", "t1ce", "t2", "flair"} for case in cases)


def test_labels_map_to_internal_and_unknown_labels_are_refused():
    labels = np.array([[[0, 1, 2, 4]]])
    assert map_labels(labels, {0: 0, 1: 1, 2: 2, 4: 3}, "x").tolist() == [[[0, 1, 2, 3]]]
    with pytest.raises(DataError, match=r"case A: seg.nii.gz: unknown label value\(s\) 3") as refused:
        map_labels(np.array([0, 1, 3]), {0: 0, 1: 1, 2: 2, 4: 3}, "case A: seg.nii.gz")
    # Labels 0-3 in a 2019-style file: ET was renumbered 4 -> 3 by a conversion; the error says so.
    assert "looks relabelled already (enhancing tumour 4 -> 3" in str(refused.value)
    with pytest.raises(DataError) as refused:  # a 3 beside a 4 is not a renumbered ET: no such guess
        map_labels(np.array([0, 3, 4]), {0: 0, 1: 1, 2: 2, 4: 3}, "case A: seg.nii.gz")
    assert "unknown label value(s) 3" in str(refused.value) and "relabelled" not in str(refused.value)


def test_missing_modality_names_case_and_file(raw_dataset, tmp_path):
    raw = _copy(raw_dataset, tmp_path)
    folder = _first_case_folder(raw)
    case_id = os.path.basename(folder)
    os.remove(os.path.join(folder, case_id + "_t1ce.nii.gz"))
    with pytest.raises(DataError, match="^case {}: .*/{}_t1ce.nii.gz: missing t1ce image$".format(case_id, case_id)):
        discover_cases(raw)


def test_corrupt_nifti_names_the_file(raw_dataset, tmp_path):
    raw = _copy(raw_dataset, tmp_path)
    folder = _first_case_folder(raw)
    case_id = os.path.basename(folder)
    path = os.path.join(folder, case_id + "_flair.nii.gz")
    with open(path, "r+b") as handle:
        handle.truncate(100)
    out = str(tmp_path / "records")
    with pytest.raises(DataError, match="case {}: .*_flair.nii.gz: cannot read".format(case_id)):
        preprocess(raw, out, show_progress=False)
    # Nothing half-written: no output and no staging folder left behind.
    assert not os.path.exists(out)
    assert not [name for name in os.listdir(str(tmp_path)) if name.startswith(".unet3d")]


def test_failure_while_writing_leaves_no_output(raw_dataset, tmp_path, monkeypatch):
    import unet3d_core.data.preprocess as preprocess_module

    written = []

    def failing_entry(case, file_name):
        written.append(file_name)
        if len(written) == 3:
            raise RuntimeError("disk full")
        return original(case, file_name)

    original = preprocess_module._manifest_entry
    monkeypatch.setattr(preprocess_module, "_manifest_entry", failing_entry)
    out = str(tmp_path / "records")
    with pytest.raises(RuntimeError, match="disk full"):
        preprocess(raw_dataset, out, show_progress=False)
    assert len(written) == 3 and not os.path.exists(out)
    assert not [name for name in os.listdir(str(tmp_path)) if name.startswith(".unet3d")]


def test_shape_mismatch_is_refused(raw_dataset, tmp_path):
    raw = _copy(raw_dataset, tmp_path)
    folder = _first_case_folder(raw)
    case_id = os.path.basename(folder)
    path = os.path.join(folder, case_id + "_t2.nii.gz")
    image = nibabel.load(path)
    nibabel.save(nibabel.Nifti1Image(np.asanyarray(image.dataobj)[:-2], image.affine), path)
    case = [c for c in discover_cases(raw) if c.case_id == case_id][0]
    with pytest.raises(DataError, match="_t2.nii.gz: has shape"):
        load_case(case)


def test_intensities_are_clipped_at_85_percent_of_max_and_scaled_to_uint8():
    image = np.zeros((2, 2, 2, 1), np.float32)
    image[0, 0, 0, 0] = 1000.0  # the maximum: clipped to 850 -> 255
    image[1, 0, 0, 0] = 425.0  # half of 850 -> 128 (rounded)
    scaled = scale_intensities(image, "uint8")
    assert scaled.dtype == np.uint8
    assert scaled[0, 0, 0, 0] == 255 and scaled[1, 0, 0, 0] == 128 and scaled[1, 1, 1, 0] == 0
    mean, std = foreground_statistics(scaled)
    assert mean[0] == pytest.approx((255 + 128) / 2) and std[0] == pytest.approx((255 - 128) / 2)


def test_uint16_storage_keeps_the_whole_range_unclipped():
    image = np.zeros((2, 2, 2, 2), np.float32)
    image[0, 0, 0, 0], image[1, 0, 0, 0], image[0, 1, 0, 0] = 1000.0, 900.0, 500.0  # 900 is above uint8's clip
    image[..., 1] = 7.0  # a flat channel: every voxel at its maximum
    scaled = scale_intensities(image, "uint16")
    assert scaled.dtype == np.uint16
    assert scaled[0, 0, 0, 0] == 65535 and scaled[1, 0, 0, 0] == round(0.9 * 65535)
    assert scaled[0, 1, 0, 0] == round(0.5 * 65535) and scaled[1, 1, 1, 0] == 0
    assert (scaled[..., 1] == 65535).all()
    as_uint8 = scale_intensities(image, "uint8")
    assert as_uint8[0, 0, 0, 0] == as_uint8[1, 0, 0, 0] == 255  # the reference's clip flattens what uint16 keeps


def test_uint16_records_read_back_and_train_inputs_match_the_raw_volume(raw_dataset, records, tmp_path):
    """The default storage is uint16; a record decodes (numpy and graph) to the scaled volume, and its z-scored
    voxels are the raw volume's z-scores within 16-bit rounding, where uint8's clip moves the bright ones."""
    import tensorflow as tf

    from unet3d_core.data.input_pipeline import normalize
    from unet3d_core.data.records import parse_case, read_record

    manifest = Manifest(records)
    assert manifest.intensity_format == "uint16" and manifest.content["format_version"] == 3
    assert "no clipping" in manifest.content["intensity"]
    case = manifest.cases[0]
    stored = read_record(manifest.record_path(case))
    assert stored["image"].dtype == np.uint16
    loaded = load_case(discover_cases(raw_dataset)[[c.case_id for c in discover_cases(raw_dataset)].index(
        case["id"])])
    assert np.array_equal(stored["image"], scale_intensities(loaded.image, "uint16"))
    graph = tf.Graph()
    with graph.as_default():
        serialized = next(iter(tf.compat.v1.io.tf_record_iterator(manifest.record_path(case))))
        parsed = parse_case(tf.constant(serialized), 4, manifest.intensity_format)
        normalised = normalize(tf.cast(parsed["image"], tf.float32), parsed["mean"], parsed["std"])
        with tf.compat.v1.Session(graph=graph) as session:
            image, values = session.run([parsed["image"], normalised])
    assert np.array_equal(image, stored["image"])
    raw = np.where(loaded.image > 0, loaded.image, 0).astype(np.float64)
    for channel in range(4):
        inside = raw[..., channel] > 0
        reference = (raw[..., channel] - raw[..., channel][inside].mean()) / raw[..., channel][inside].std()
        assert np.abs(values[..., channel][inside] - reference[inside]).max() < 2e-3
    uint8 = scale_intensities(loaded.image, "uint8").astype(np.float64)
    mean, std = foreground_statistics(uint8)
    inside = raw[..., 1] > 0
    reference = (raw[..., 1] - raw[..., 1][inside].mean()) / raw[..., 1][inside].std()
    assert np.abs((uint8[..., 1] - mean[1]) / std[1] - reference)[inside].max() > 0.05


def test_uint8_storage_and_older_data_sets_read_as_uint8(raw_dataset, tmp_path):
    folder = str(tmp_path / "uint8")
    preprocess(raw_dataset, folder, folds=5, seed=0, show_progress=False, intensity="uint8")
    manifest = Manifest(folder)
    assert manifest.intensity_format == "uint8"
    from unet3d_core.data.records import read_record

    assert read_record(manifest.record_path(manifest.cases[0]))["image"].dtype == np.uint8
    content = dict(manifest.content, format_version=2)
    del content["intensity_format"]  # a data set written before the choice existed
    with open(os.path.join(folder, "manifest.json"), "w") as handle:
        json.dump(content, handle)
    assert Manifest(folder).intensity_format == "uint8"
    content["intensity_format"] = "float8"
    with open(os.path.join(folder, "manifest.json"), "w") as handle:
        json.dump(content, handle)
    with pytest.raises(DataError, match="unknown intensity_format 'float8'"):
        Manifest(folder)
    with pytest.raises(Exception, match="--intensity int12"):
        preprocess(raw_dataset, str(tmp_path / "bad"), show_progress=False, intensity="int12")
    assert not os.path.exists(str(tmp_path / "bad"))


def test_folds_are_seeded_case_level_and_stratified(raw_dataset):
    cases = discover_cases(raw_dataset)
    first = assign_folds(cases, 5, seed=0)
    assert first == assign_folds(list(reversed(cases)), 5, seed=0)  # order of discovery does not matter
    assert first != assign_folds(cases, 5, seed=1)
    assert sorted(first) == sorted(case.case_id for case in cases)
    counts = np.bincount(list(first.values()), minlength=5)
    assert counts.max() - counts.min() <= 1
    lgg = [first[case.case_id] for case in cases if case.grade == "LGG"]
    assert len(set(lgg)) == len(lgg)  # LGG cases spread over different folds


def test_manifest_records_geometry_statistics_and_folds(records, raw_dataset):
    manifest = Manifest(records)
    assert manifest.num_folds == 5 and len(manifest.cases) == 10
    assert manifest.label_map == {0: 0, 1: 1, 2: 2, 4: 3}
    case = manifest.cases[0]
    raw = nibabel.load(case["source_images"]["flair"])
    assert case["shape"] == list(raw.shape)
    assert np.allclose(case["affine"], raw.affine)
    assert len(case["mean"]) == 4 and all(s > 0 for s in case["std"])
    training, validation = manifest.split(0)
    assert not {c["id"] for c in training} & {c["id"] for c in validation}
    assert len(training) + len(validation) == 10


def test_same_input_gives_identical_records(raw_dataset, records, tmp_path):
    again = str(tmp_path / "again")
    preprocess(raw_dataset, again, folds=5, seed=0, workers=2, show_progress=False)
    for case in Manifest(records).cases:
        with open(os.path.join(records, case["file"]), "rb") as a, open(os.path.join(again, case["file"]), "rb") as b:
            assert a.read() == b.read()
    with open(os.path.join(records, "manifest.json")) as a, open(os.path.join(again, "manifest.json")) as b:
        first, second = json.load(a), json.load(b)
    assert [c["fold"] for c in first["cases"]] == [c["fold"] for c in second["cases"]]


def test_existing_output_and_missing_records_are_refused(raw_dataset, records, tmp_path):
    with pytest.raises(DataError, match="already exists and is not empty"):
        preprocess(raw_dataset, records, show_progress=False)
    with pytest.raises(DataError, match="not a preprocessed data set"):
        Manifest(str(tmp_path))


@pytest.mark.parametrize("with_label", [True, False])
def test_hand_encoded_records_are_tensorflows_own_bytes(with_label):
    import tensorflow as tf

    from unet3d_core.data.records import serialize_case

    rng = np.random.RandomState(1)
    image = rng.randint(0, 256, size=(5, 4, 3, 4)).astype(np.uint8)
    label = rng.randint(0, 4, size=(5, 4, 3)).astype(np.uint8) if with_label else None
    mean, std = [10.5, 20.25, 30.0, 41.125], [1.5, 2.0, 3.25, 4.0]

    def feature(**kind):
        return tf.train.Feature(**kind)

    stored_label = label if with_label else np.zeros((5, 4, 3), np.uint8)
    expected = tf.train.Example(features=tf.train.Features(feature={
        "image": feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": feature(bytes_list=tf.train.BytesList(value=[stored_label.tobytes()])),
        "shape": feature(int64_list=tf.train.Int64List(value=[5, 4, 3])),
        "mean": feature(float_list=tf.train.FloatList(value=mean)),
        "std": feature(float_list=tf.train.FloatList(value=std)),
        "case_index": feature(int64_list=tf.train.Int64List(value=[300])),
        "has_label": feature(int64_list=tf.train.Int64List(value=[1 if with_label else 0])),
    })).SerializeToString(deterministic=True)
    assert serialize_case(image, label, mean, std, 300) == expected
