"""predict with fold ensembles: the folds' probabilities averaged, the folds listed, CV data refused."""
import json
import os

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli


@pytest.fixture(scope="module")
def cross_validation(records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("cv") / "run")
    # The seed recipe's softmax outputs: the averaging checked below is of label probabilities.
    run_cli(["train", "--data_dir", records, "--model_dir", model_dir, "--fold", "all", "--max_steps", "1",
             "--backend", "cpu", "--recipe", "seed"] + TINY_MODEL)
    return model_dir


def _volume(path):
    return np.asanyarray(nibabel.load(path).dataobj)


def test_an_ensemble_averages_the_folds_probabilities(cross_validation, raw_dataset, tmp_path):
    flags = ["--input_dir", raw_dataset, "--inference_mode", "crop", "--save_probabilities", "--backend", "cpu"]
    ensemble = str(tmp_path / "ensemble")
    run_cli(["predict", "--model_dir", cross_validation, "--folds", "0,2,4", "--output_dir", ensemble] + flags)
    with open(os.path.join(ensemble, "ensemble.json")) as handle:
        described = json.load(handle)
    assert described["folds"] == [0, 2, 4] and [model["fold"] for model in described["models"]] == [0, 2, 4]
    assert "softmax" in described["combination"]
    singles = {}
    for fold in (0, 2, 4):
        singles[fold] = str(tmp_path / "fold{}".format(fold))
        run_cli(["predict", "--model_dir", os.path.join(cross_validation, "fold-{}".format(fold)),
                 "--output_dir", singles[fold]] + flags)
    case = sorted(name for name in os.listdir(ensemble) if name.endswith("_probabilities.nii.gz"))[0]
    mean = np.mean([_volume(os.path.join(singles[fold], case)) for fold in (0, 2, 4)], axis=0)
    averaged = _volume(os.path.join(ensemble, case))
    assert np.allclose(averaged, mean, atol=1e-5)
    labels = np.argmax(mean, axis=-1)
    written = _volume(os.path.join(ensemble, case.replace("_probabilities", "")))
    assert np.array_equal(written, np.where(labels == 3, 4, labels))  # BraTS 2019 labels: ET is 4
    # Not a copy of one fold: the folds disagree somewhere.
    assert not all(np.allclose(_volume(os.path.join(singles[fold], case)), averaged, atol=1e-4) for fold in (0, 2, 4))


def test_fold_all_with_new_cases_uses_every_fold(cross_validation, raw_dataset, tmp_path):
    out = str(tmp_path / "all")
    run_cli(["predict", "--model_dir", cross_validation, "--fold", "all", "--input_dir", raw_dataset,
             "--output_dir", out, "--inference_mode", "crop", "--backend", "cpu"])
    with open(os.path.join(out, "ensemble.json")) as handle:
        assert json.load(handle)["folds"] == [0, 1, 2, 3, 4]


def test_an_ensemble_of_the_cross_validation_data_is_refused(cross_validation, records, tmp_path, capsys):
    args = ["predict", "--model_dir", cross_validation, "--data_dir", records, "--backend", "cpu",
            "--output_dir", str(tmp_path / "out")]
    assert run_cli(args + ["--folds", "0,1"], check=False) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "every case of it was in some fold's training set" in err
    assert not os.path.exists(str(tmp_path / "out"))
    assert run_cli(args + ["--folds", "0,7"], check=False) == 1
    assert "fold-7 has no checkpoint" in capsys.readouterr().err
    assert run_cli(args + ["--folds", "0,x"], check=False) == 1
    assert "--folds 0,x: expected distinct fold numbers" in capsys.readouterr().err


def test_an_ensemble_of_another_data_set_predicts_every_case(cross_validation, tmp_path):
    from conftest import TINY_SHAPE

    from unet3d_core.data.preprocess import preprocess
    from unet3d_core.data.records import Manifest
    from unet3d_core.data.synth import write_synthetic_dataset

    raw, other = str(tmp_path / "raw"), str(tmp_path / "records")
    write_synthetic_dataset(raw, cases=4, shape=TINY_SHAPE, seed=9)
    preprocess(raw, other, folds=2, seed=0, show_progress=False)
    out = str(tmp_path / "out")
    run_cli(["predict", "--model_dir", cross_validation, "--folds", "1,3", "--data_dir", other, "--output_dir", out,
             "--inference_mode", "crop", "--backend", "cpu"])
    predicted = sorted(name[:-len(".nii.gz")] for name in os.listdir(out) if name.endswith(".nii.gz"))
    assert predicted == sorted(case["id"] for case in Manifest(other).cases)
    with open(os.path.join(out, "ensemble.json")) as handle:
        assert json.load(handle)["folds"] == [1, 3]


def test_an_ensemble_restores_the_checkpoint_asked_for(cross_validation, raw_dataset, tmp_path, capsys):
    args = ["predict", "--model_dir", cross_validation, "--folds", "0,1", "--input_dir", raw_dataset,
            "--inference_mode", "crop", "--backend", "cpu"]
    out = str(tmp_path / "step1")
    run_cli(args + ["--output_dir", out, "--checkpoint", "1"])
    with open(os.path.join(out, "ensemble.json")) as handle:
        models = json.load(handle)["models"]
    assert [(model["checkpoint"], model["checkpoint_step"]) for model in models] == [("model.ckpt-1", 1)] * 2
    capsys.readouterr()
    # --fold all trained with --exec_mode train: no fold has a best checkpoint to ask for.
    assert run_cli(args + ["--output_dir", str(tmp_path / "best"), "--checkpoint", "best"], check=False) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: --checkpoint best: ") and "it has: step 1" in error
