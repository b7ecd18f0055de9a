"""cli.py export: SavedModel and frozen graph, each loaded in a fresh process and fed a window, give the
probabilities prediction computes for that window."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli

from unet3d_core.evaluation.inference import NetworkRunner, initialize_checkpoint
from unet3d_core.model.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Loads an export with nothing of unet3d and runs one window through it: python - FORMAT PATH IN.npy OUT.npy
LOADER = """
import sys
import numpy as np
import tensorflow as tf
fmt, path, given, wanted = sys.argv[1:5]
window = np.load(given)
tf1 = tf.compat.v1
if fmt == "onnx":
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    result = session.run(["probabilities:0"], {"images:0": window})[0]
elif fmt == "savedmodel-tf2":
    served = tf.saved_model.load(path).signatures["serving_default"]
    result = served(images=tf.constant(window))["probabilities"].numpy()
else:
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        if fmt == "savedmodel":
            meta = tf1.saved_model.loader.load(session, [tf1.saved_model.tag_constants.SERVING], path)
            signature = meta.signature_def["serving_default"]
            result = session.run(signature.outputs["probabilities"].name,
                                 {signature.inputs["images"].name: window})
        else:
            graph_def = tf1.GraphDef()
            with open(path, "rb") as handle:
                graph_def.ParseFromString(handle.read())
            tf1.import_graph_def(graph_def, name="")
            ops = {op.type for op in graph.get_operations()}
            assert not ops & {"VariableV2", "VarHandleOp", "Assign", "RestoreV2", "SaveV2"}, ops
            result = session.run("probabilities:0", {"images:0": window})
np.save(wanted, result)
"""
CONFIGS = {
    "labels": ModelConfig(base_filters=4, max_filters=16, depth=3),
    "regions": ModelConfig(base_filters=4, max_filters=16, depth=3, target="regions",
                           regions=(("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)))),
}


def _load_in_fresh_process(python, fmt, path, window, tmp_path):
    given, wanted = str(tmp_path / "window.npy"), str(tmp_path / "out.npy")
    np.save(given, window)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    done = subprocess.run([python, "-c", LOADER, fmt, path, given, wanted], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(wanted)


@pytest.fixture(params=sorted(CONFIGS))
def run_folder(request, tmp_path):
    config = CONFIGS[request.param]
    model_dir = str(tmp_path / "run")
    checkpoint = initialize_checkpoint(model_dir, config, seed=5, input_shape=(16, 16, 16))
    window = np.random.RandomState(1).standard_normal((1, 16, 16, 16, 4)).astype(np.float32)
    runner = NetworkRunner(config, checkpoint)
    try:
        expected = runner(window)
    finally:
        runner.close()
    return config, model_dir, window, expected


@pytest.mark.parametrize("fmt", ["savedmodel", "frozen"])
def test_an_export_loaded_elsewhere_gives_predicts_probabilities(run_folder, fmt, tmp_path):
    config, model_dir, window, expected = run_folder
    out = str(tmp_path / "export")
    run_cli(["export", "--model_dir", model_dir, "--format", fmt, "--out", out])
    with open(os.path.join(out, "export.json")) as handle:
        described = json.load(handle)
    assert described["output"]["channels"] == config.outputs and os.path.isfile(os.path.join(out, "run.json"))
    path = os.path.join(out, described["model"])
    loaders = [fmt] + (["savedmodel-tf2"] if fmt == "savedmodel" and _tensorflow_major() >= 2 else [])
    for loader in loaders:
        got = _load_in_fresh_process(sys.executable, loader, path, window, tmp_path)
        assert got.shape == expected.shape
        assert np.allclose(got, expected, atol=1e-5), (loader, float(np.abs(got - expected).max()))
    if fmt == "frozen":
        assert described["input"]["shape"] == [1, 16, 16, 16, 4]
        assert described["atc"].startswith("atc --framework=3 --model=model.pb")
        assert '--input_shape="images:1,16,16,16,4"' in described["atc"]
    if config.target == "regions":
        assert not np.allclose(expected.sum(axis=-1), 1.0)  # sigmoids, not a softmax


def test_an_onnx_export_runs_in_onnxruntime(run_folder, tmp_path):
    pytest.importorskip("tf2onnx", reason="the onnx extra is installed in .venv-tf2")
    config, model_dir, window, expected = run_folder
    out = str(tmp_path / "export")
    run_cli(["export", "--model_dir", model_dir, "--format", "onnx", "--out", out])
    got = _load_in_fresh_process(sys.executable, "onnx", os.path.join(out, "model.onnx"), window, tmp_path)
    assert np.allclose(got, expected, atol=1e-5), float(np.abs(got - expected).max())
    # Any size: a window twice as wide in x runs too.
    wide = np.concatenate([window, window[:, ::-1]], axis=1)
    assert _load_in_fresh_process(sys.executable, "onnx", os.path.join(out, "model.onnx"), wide,
                                  tmp_path).shape == (1, 32, 16, 16, config.outputs)


def test_a_tensorflow_1_export_loads_in_the_other_environment(tmp_path):
    """A SavedModel written by this environment's TensorFlow, read by the other environment's."""
    other = os.path.join(ROOT, ".venv-tf2" if _tensorflow_major() == 1 else ".venv-tf1", "bin", "python")
    if _tensorflow_major() != 1 or not os.path.isfile(other):
        pytest.skip("runs in the TensorFlow 1.15 environment, with .venv-tf2 beside it")
    config = CONFIGS["labels"]
    model_dir = str(tmp_path / "run")
    checkpoint = initialize_checkpoint(model_dir, config, seed=5, input_shape=(16, 16, 16))
    window = np.random.RandomState(2).standard_normal((1, 16, 16, 16, 4)).astype(np.float32)
    runner = NetworkRunner(config, checkpoint)
    expected = runner(window)
    runner.close()
    out = str(tmp_path / "export")
    run_cli(["export", "--model_dir", model_dir, "--out", out])
    for loader in ("savedmodel", "savedmodel-tf2"):
        got = _load_in_fresh_process(other, loader, os.path.join(out, "savedmodel"), window, tmp_path)
        assert np.allclose(got, expected, atol=1e-5)


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    initialize_checkpoint(model_dir, CONFIGS["labels"], seed=5, input_shape=(16, 16, 16))
    assert run_cli(["export", "--model_dir", str(tmp_path / "none"), "--out", str(tmp_path / "a")], check=False) == 1
    assert "none: does not exist" in capsys.readouterr().err
    os.makedirs(str(tmp_path / "other"))
    with open(str(tmp_path / "other" / "notes.txt"), "w") as handle:
        handle.write("not a run")
    assert run_cli(["export", "--model_dir", str(tmp_path / "other"), "--out", str(tmp_path / "a")],
                   check=False) == 1
    assert "other: not a run folder (no run.json)" in capsys.readouterr().err
    assert run_cli(["export", "--model_dir", model_dir, "--format", "frozen", "--window", "16", "16", "15",
                    "--out", str(tmp_path / "b")], check=False) == 1
    assert "--window 16 16 15: every size must be a positive multiple of 4" in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / "b"))
    os.makedirs(str(tmp_path / "c" / "x"))
    assert run_cli(["export", "--model_dir", model_dir, "--out", str(tmp_path / "c")], check=False) == 1
    assert "already exists and is not empty" in capsys.readouterr().err


def _tensorflow_major():
    import tensorflow as tf

    return int(tf.__version__.split(".")[0])


def test_export_json_says_how_to_scale_inputs_as_the_run_was_trained():
    from unet3d_core.evaluation.export import normalisation

    assert "uint16 [0, 65535], no clipping" in normalisation({"data": {"intensity": "uint16"}})
    assert "clip [0, 0.85 x max] per modality, scale to uint8 [0, 255]" in normalisation({"data": {}})  # older runs


@pytest.mark.parametrize("fmt", ["onnx", "savedmodel"])
def test_the_export_predictor_segments_raw_cases_as_predict_does(run_folder, fmt, raw_dataset, tmp_path, capsys):
    """python -m unet3d_core.evaluation.exported: the export folder alone (no run folder) gives predict's
    probabilities and label maps for raw cases: same normalisation, windows, blending and labels."""
    import nibabel

    from unet3d_core.data.volumes import PROBABILITIES_SUFFIX, raw_folder_cases
    from unet3d_core.evaluation import exported

    if fmt == "onnx":
        pytest.importorskip("tf2onnx", reason="the onnx extra is installed in .venv-tf2")
    elif _tensorflow_major() < 2:
        pytest.skip("the predictor runs SavedModels under TensorFlow 2")
    config, model_dir, _, _ = run_folder
    out, predicted, segmented = (str(tmp_path / name) for name in ("export", "predicted", "segmented"))
    run_cli(["export", "--model_dir", model_dir, "--format", fmt, "--out", out])
    assert "python -m unet3d_core.evaluation.exported {} --input_dir RAW".format(out) in capsys.readouterr().out
    run_cli(["predict", "--model_dir", model_dir, "--input_dir", raw_dataset, "--output_dir", predicted,
             "--save_probabilities", "--backend", "cpu"])
    shutil.rmtree(model_dir)  # the export alone from here on
    assert exported.main([out, "--input_dir", raw_dataset, "--output_dir", segmented]) == 0
    model = exported.ExportedModel(out)
    case_ids, cases = raw_folder_cases(raw_dataset, intensity=model.intensity)
    assert sorted(os.listdir(segmented)) == sorted(case_id + ".nii.gz" for case_id in case_ids)
    for case in cases:
        expected = np.asarray(nibabel.load(os.path.join(predicted, case.case_id + PROBABILITIES_SUFFIX
                                                        + ".nii.gz")).dataobj)
        got = model.probabilities(case.image)
        assert np.allclose(got, expected, atol=1e-4), float(np.abs(got - expected).max())
        ours = nibabel.load(os.path.join(segmented, case.case_id + ".nii.gz"))
        theirs = nibabel.load(os.path.join(predicted, case.case_id + ".nii.gz"))
        assert np.allclose(ours.affine, theirs.affine)
        agree = np.mean(np.asarray(ours.dataobj) == np.asarray(theirs.dataobj))
        assert agree > 0.999, (case.case_id, agree)  # arg-max ties may flip between runtimes
        assert set(np.unique(np.asarray(ours.dataobj))) <= {0, 1, 2, 4}  # the cases' own (2019) labels
    # A second run refuses to overwrite; a frozen export is for ATC; a folder without export.json is named.
    assert exported.main([out, "--input_dir", raw_dataset, "--output_dir", segmented]) == 1
    assert "exists; choose an empty --output_dir" in capsys.readouterr().err


def test_the_export_predictor_refuses_what_it_cannot_run(tmp_path, capsys):
    from unet3d_core.evaluation import exported

    assert exported.main([str(tmp_path), "--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: {}: no export.json (give a folder written by 'cli.py export')".format(tmp_path)
    (tmp_path / "export.json").write_text(json.dumps({"format": "frozen", "model": "model.pb"}))
    (tmp_path / "run.json").write_text(json.dumps({"network": {}}))
    assert exported.main([str(tmp_path), "--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 1
    assert "a 'frozen' export is for Ascend's ATC; export with --format onnx or savedmodel" in capsys.readouterr().err
