"""Whole-volume inference: window placement and blending, mirroring, post-processing, NIfTI round trips."""
import os

import nibabel
import numpy as np
import pytest
from conftest import run_cli

from unet3d_core.data import volumes
from unet3d_core.evaluation import inference
from unet3d_core.model.config import ModelConfig

TINY_CONFIG = ModelConfig(base_filters=4, max_filters=16, depth=3)
TINY_NETWORK = ["--base_filters", "4", "--max_filters", "16", "--depth", "3", "--input_shape", "16", "16", "16"]


def pointwise_network(batch):
    """A stand-in network whose softmax at a voxel depends only on that voxel's input.

    Blending and mirroring must then give exactly the pointwise answer, so any
    window misplaced or output not flipped back shows up.
    """
    value = batch[..., 0]
    logits = np.stack([value, -value, 0.5 * value, np.sin(3 * value)], axis=-1)
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (exponentials / exponentials.sum(axis=-1, keepdims=True)).astype(np.float32)


def _settings(**changes):
    values = dict(window_shape=(16, 16, 16), overlap=0.5, batch_size=3, divisor=4)
    values.update(changes)
    return inference.InferenceSettings(**values)


def test_windows_cover_every_axis_and_end_flush():
    assert inference.window_starts(240, 128, 0.5) == [0, 56, 112]
    assert inference.window_starts(155, 128, 0.5) == [0, 27]
    assert inference.window_starts(128, 128, 0.5) == [0]
    assert inference.window_starts(100, 128, 0.5) == [0]
    starts = inference.window_starts(37, 16, 0.25)
    assert starts[0] == 0 and starts[-1] == 37 - 16
    assert max(b - a for a, b in zip(starts, starts[1:])) <= 12


def test_gaussian_importance_peaks_in_the_centre_and_is_never_zero():
    weights = inference.gaussian_importance((16, 12, 9))
    assert weights.shape == (16, 12, 9) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    assert weights[8, 6, 4] > weights[4, 6, 4] > weights[0, 6, 4]
    assert weights[7, 5, 4] == pytest.approx(weights[8, 6, 4])  # even sizes: the peak spans the middle two
    assert np.allclose(weights, weights[::-1, ::-1, ::-1])


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("mirror", [False, True])
def test_sliding_windows_reproduce_a_pointwise_network_on_an_odd_volume(blend, mirror):
    rng = np.random.RandomState(0)
    image = rng.randn(37, 29, 11, 4).astype(np.float32)  # z smaller than the window: padded
    probabilities = inference.predict_probabilities(image, pointwise_network, _settings(blend=blend, mirror=mirror))
    assert probabilities.shape == (37, 29, 11, 4)
    np.testing.assert_allclose(probabilities, pointwise_network(image[np.newaxis])[0], atol=1e-5)


def test_mirroring_runs_all_eight_flips_and_flips_outputs_back():
    calls = []

    def position_network(batch):
        calls.append(batch.shape)
        return pointwise_network(batch)

    image = np.random.RandomState(1).randn(16, 16, 16, 4).astype(np.float32)
    inference.predict_probabilities(image, position_network, _settings(mirror=True))
    assert len(calls) == 8
    assert len(inference.mirror_axes(True)) == 8 and inference.mirror_axes(False) == [()]


def test_crop_mode_scores_the_centre_and_leaves_the_rest_background():
    image = np.random.RandomState(2).randn(30, 26, 10, 4).astype(np.float32)
    settings = _settings(mode="crop", eval_crop=(20, 26, 7))
    probabilities = inference.predict_probabilities(image, pointwise_network, settings)
    expected = pointwise_network(image[np.newaxis])[0]
    np.testing.assert_allclose(probabilities[5:25, :, 1:8], expected[5:25, :, 1:8], atol=1e-6)
    assert np.all(probabilities[:5, :, :, 0] == 1.0) and np.all(probabilities[:, :, 0, 0] == 1.0)


def test_settings_refuse_windows_the_network_cannot_take():
    from unet3d_core.errors import ConfigError

    with pytest.raises(ConfigError, match="--window_shape 16 18 16: every size must be a multiple of 4"):
        _settings(window_shape=(16, 18, 16)).validate()
    with pytest.raises(ConfigError, match="--overlap"):
        _settings(overlap=1.0).validate()


def test_small_enhancing_components_become_core():
    labels = np.zeros((12, 12, 12), np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = labels[3, 3, 3] = 3  # 3 voxels, touching diagonally: one component
    labels[6:9, 6:9, 6:8] = 3  # 18 voxels
    labels[6, 6, 9] = 2
    processed = inference.remove_small_enhancing(labels, 5)
    assert processed[1, 1, 1] == processed[2, 2, 2] == processed[3, 3, 3] == 1
    assert np.all(processed[6:9, 6:9, 6:8] == 3) and processed[6, 6, 9] == 2
    assert np.array_equal(inference.remove_small_enhancing(labels, 0), labels)  # off by default


def test_numpy_normalisation_matches_the_record_pipeline():
    import tensorflow as tf

    from unet3d_core.data.input_pipeline import normalize

    image = np.random.RandomState(3).randint(0, 256, size=(6, 5, 4, 4)).astype(np.uint8)
    mean, std = [10.5, 40.0, 80.25, 3.0], [2.0, 9.5, 30.0, 1.5]
    graph = tf.Graph()
    with graph.as_default():
        tensor = normalize(tf.cast(tf.constant(image), tf.float32), tf.constant(mean), tf.constant(std))
        with tf.compat.v1.Session(graph=graph) as session:
            expected = session.run(tensor)
    np.testing.assert_allclose(volumes.normalize(image, mean, std), expected, rtol=1e-6)


# ------------------------------------------------------------------ round trips through predict
def _write_odd_case(folder, case_id, with_segmentation=True):
    """One BraTS 2020-style case: odd shape, rotated and anisotropic affine, int16 segmentation."""
    shape = (33, 27, 19)
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    affine[:3, 3] = [12.5, -30.0, 7.0]
    rng = np.random.RandomState(4)
    os.makedirs(os.path.join(folder, case_id))
    for channel in ("t1", "t1ce", "t2", "flair"):
        data = (rng.rand(*shape) * 900).astype(np.int16)
        data[:2] = 0
        image = nibabel.Nifti1Image(data, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        nibabel.save(image, os.path.join(folder, case_id, "{}_{}.nii.gz".format(case_id, channel)))
    if with_segmentation:
        segmentation = np.zeros(shape, np.int16)
        segmentation[10:20, 10:18, 5:12] = 2
        segmentation[13:17, 12:16, 7:10] = 4
        segmentation[14, 13, 8] = 1
        image = nibabel.Nifti1Image(segmentation, affine)
        image.set_data_dtype(np.int16)
        nibabel.save(image, os.path.join(folder, case_id, "{}_seg.nii.gz".format(case_id)))
    return shape, affine


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("tiny") / "model")
    inference.initialize_checkpoint(model_dir, TINY_CONFIG, seed=5)
    return model_dir


def test_raw_case_round_trip_keeps_shape_affine_dtype_and_labels(tiny_checkpoint, tmp_path):
    raw = str(tmp_path / "raw")
    shape, affine = _write_odd_case(raw, "Odd_001")
    _write_odd_case(raw, "Odd_002", with_segmentation=False)
    out = str(tmp_path / "out")
    run_cli(["predict", "--input_dir", raw, "--model_dir", tiny_checkpoint, "--output_dir", out,
             "--save_probabilities", "--overlap", "0.25"] + TINY_NETWORK)
    assert sorted(os.listdir(out)) == ["Odd_001.nii.gz", "Odd_001_probabilities.nii.gz",
                                       "Odd_002.nii.gz", "Odd_002_probabilities.nii.gz"]
    for case_id, dtype in (("Odd_001", np.int16), ("Odd_002", np.uint8)):
        predicted = nibabel.load(os.path.join(out, case_id + ".nii.gz"))
        labels = np.asanyarray(predicted.dataobj)
        assert predicted.shape == shape
        assert np.allclose(predicted.affine, affine, atol=1e-5)
        assert predicted.header.get_data_dtype() == dtype and labels.dtype == dtype
        assert np.allclose(predicted.header.get_zooms(), (0.9, 1.1, 2.5), atol=1e-5)
        assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
        probabilities = nibabel.load(os.path.join(out, case_id + "_probabilities.nii.gz"))
        values = np.asanyarray(probabilities.dataobj)
        assert values.shape == shape + (4,) and values.dtype == np.float32
        assert np.allclose(probabilities.affine, affine, atol=1e-5)
        np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=1e-4)
        assert np.array_equal(np.array([0, 1, 2, 4])[np.argmax(values, axis=-1)], labels)


def test_label_maps_are_written_in_the_source_convention(tmp_path):
    geometry = volumes.OutputGeometry((4, 1, 1), np.diag([2.0, 2.0, 2.0, 1.0]), [2.0, 2.0, 2.0])
    case = volumes.InferenceCase("c", None, None, geometry, {0: 0, 1: 1, 2: 2, 3: 4})
    path = str(tmp_path / "c.nii.gz")
    volumes.write_label_map(path, np.array([0, 1, 2, 3], np.uint8).reshape(4, 1, 1), case)
    written = nibabel.load(path)
    assert np.asanyarray(written.dataobj).ravel().tolist() == [0, 1, 2, 4]
    assert written.header.get_data_dtype() == np.uint8 and written.header.get_zooms() == (2.0, 2.0, 2.0)
    assert not [name for name in os.listdir(str(tmp_path)) if "partial" in name]


def test_records_and_raw_folder_give_the_same_predictions(tiny_checkpoint, raw_dataset, records, tmp_path):
    from_records, from_raw = str(tmp_path / "records"), str(tmp_path / "raw")
    common = ["--model_dir", tiny_checkpoint, "--tta", "--min_et_component_voxels", "3"] + TINY_NETWORK
    run_cli(["predict", "--data_dir", records, "--predict_on", "all", "--output_dir", from_records] + common)
    run_cli(["predict", "--input_dir", raw_dataset, "--output_dir", from_raw] + common)
    names = sorted(os.listdir(from_records))
    assert names == sorted(os.listdir(from_raw)) and len(names) == 10
    for name in names:
        first = nibabel.load(os.path.join(from_records, name))
        second = nibabel.load(os.path.join(from_raw, name))
        assert np.array_equal(np.asanyarray(first.dataobj), np.asanyarray(second.dataobj)), name
        assert np.allclose(first.affine, second.affine)


def test_predicting_over_existing_outputs_is_refused_before_any_work(tiny_checkpoint, tmp_path, capsys):
    raw = str(tmp_path / "raw")
    _write_odd_case(raw, "Odd_001")
    out = tmp_path / "out"
    out.mkdir()
    (out / "Odd_001.nii.gz").write_text("not ours")
    code = run_cli(["predict", "--input_dir", raw, "--model_dir", tiny_checkpoint, "--output_dir", str(out)]
                   + TINY_NETWORK, check=False)
    assert code == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "Odd_001.nii.gz").read_text() == "not ours"


def test_crop_mode_and_tta_run_through_evaluate(tiny_checkpoint, records, tmp_path):
    import json
    import shutil

    model_dir = str(tmp_path / "model")
    shutil.copytree(tiny_checkpoint, model_dir)
    run_cli(["evaluate", "--data_dir", records, "--model_dir", model_dir, "--inference_mode", "crop",
             "--eval_crop", "24", "24", "16", "--tta"] + TINY_NETWORK)
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        report = json.load(handle)
    assert report["inference"] == {"mode": "crop", "tta": True, "min_et_component_voxels": 0,
                                   "eval_crop": [24, 24, 16]}
    assert report["checkpoint_step"] == 0
    for values in report["cases"].values():
        assert 0.0 <= values["HD95_WT"] <= 373.13
    assert os.path.isfile(os.path.join(model_dir, "eval_results.csv"))


def test_bad_inference_flags_fail_before_any_work(records, tmp_path, capsys):
    code = run_cli(["train", "--data_dir", records, "--model_dir", str(tmp_path / "run"), "--window_shape", "16",
                    "16", "18"] + TINY_NETWORK, check=False)
    assert code == 1
    assert "--window_shape 16 16 18" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "run"))
