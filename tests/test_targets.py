"""--target regions: one sigmoid per region of the cohort, its loss, its conversion back to labels, and a run
that trains, evaluates and predicts with it (the run remembering the target)."""
import json
import os

import nibabel
import numpy as np
import pytest
from conftest import TINY_MODEL, run_cli

from unet3d_core.data.layouts import LAYOUTS, region_painting
from unet3d_core.errors import DataError
from unet3d_core.evaluation.inference import labels_of

GLIOMA = (("WT", (1, 2, 3)), ("TC", (1, 3)), ("ET", (3,)))


def test_regions_turn_back_into_the_innermost_regions_label():
    painting = region_painting(GLIOMA)
    assert painting == [(0, 2), (1, 1), (2, 3)]  # WT alone is oedema, TC without ET core, ET enhancing
    # voxels: nothing; WT; WT+TC; WT+TC+ET; ET above 0.5 but TC not (still ET); WT at exactly 0.5 (not above)
    probabilities = np.array([[0.1, 0.2, 0.3], [0.9, 0.2, 0.1], [0.9, 0.8, 0.1], [0.9, 0.8, 0.7],
                              [0.9, 0.4, 0.6], [0.5, 0.0, 0.0]], np.float32)
    assert labels_of(probabilities, painting).tolist() == [0, 2, 1, 3, 3, 0]
    ped = region_painting(list(LAYOUTS["brats-ped"].target_regions.items()))
    assert ped == [(0, 4), (1, 2), (2, 1), (3, 3)]  # ED, NETC, ET, CC
    with pytest.raises(DataError, match="regions A and B overlap without one holding the other"):
        region_painting((("A", (1, 2)), ("B", (2, 3))))
    with pytest.raises(DataError, match="region WT has 0 labels of its own"):
        region_painting((("WT", (1, 2)), ("X", (1,)), ("Y", (2,))))


def test_region_loss_is_dice_plus_binary_cross_entropy_per_region():
    import tensorflow as tf

    from unet3d_core.model.losses import region_loss, region_targets

    labels = np.array([0, 2, 1, 3]).reshape(2, 2, 1, 1).astype(np.int32)  # two samples: Dice over the batch
    logits = np.array([[-2.0, -1.0, 0.0], [1.0, -1.0, -2.0], [2.0, 1.0, -1.0], [3.0, 2.0, 1.0]],
                      np.float32).reshape(2, 2, 1, 1, 3)
    targets = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], np.float32).reshape(2, 2, 1, 1, 3)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    dice = (2 * (probabilities * targets).sum(axis=(0, 1, 2, 3)) + 1) / (
        probabilities.sum(axis=(0, 1, 2, 3)) + targets.sum(axis=(0, 1, 2, 3)) + 1)
    bce = -(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities)).mean()
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        built = region_targets(tf.constant(labels), GLIOMA, 4)
        losses = [region_loss(tf.constant(logits), tf.constant(labels), GLIOMA, 4, kind)
                  for kind in ("dice", "ce", "dice+ce")]
        got_targets, got = session.run([built, losses])
    assert np.array_equal(got_targets, targets)
    assert got[0] == pytest.approx(1 - dice.mean(), rel=1e-5)
    assert got[1] == pytest.approx(bce, rel=1e-5)
    assert got[2] == pytest.approx(1 - dice.mean() + bce, rel=1e-5)


def test_a_region_run_trains_evaluates_and_predicts_region_probabilities(records, tmp_path, capsys):
    model_dir, out = str(tmp_path / "run"), str(tmp_path / "out")
    common = ["--data_dir", records, "--model_dir", model_dir, "--fold", "0", "--backend", "cpu"]
    run_cli(["train", "--exec_mode", "train_and_evaluate", "--target", "regions", "--max_steps", "3",
             "--inference_mode", "crop"] + common + TINY_MODEL)
    with open(os.path.join(model_dir, "run.json")) as handle:
        network = json.load(handle)["network"]
    assert network["target"] == "regions"
    assert network["regions"] == [["WT", [1, 2, 3]], ["TC", [1, 3]], ["ET", [3]]]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        evaluated = json.load(handle)
    assert evaluated["inference"]["target"] == "regions" and "Dice_WT" in evaluated["mean"]
    # predict needs no --target: the run remembers it; the probabilities are one sigmoid per region.
    run_cli(["predict", "--output_dir", out, "--save_probabilities", "--tta", "--overlap", "0.25"] + common)
    names = sorted(name for name in os.listdir(out) if name.endswith("_probabilities.nii.gz"))
    assert names
    probabilities = np.asanyarray(nibabel.load(os.path.join(out, names[0])).dataobj)
    labels = np.asanyarray(nibabel.load(os.path.join(out, names[0].replace("_probabilities", ""))).dataobj)
    assert probabilities.shape[-1] == 3 and probabilities.min() >= 0 and probabilities.max() <= 1
    assert not np.allclose(probabilities.sum(axis=-1), 1.0)  # overlapping regions, not a softmax
    # The written labels (source convention: ET is 4) are the painting of those probabilities.
    internal = labels_of(probabilities, region_painting(GLIOMA))
    assert np.array_equal(np.where(internal == 3, 4, internal), labels)
    capsys.readouterr()
    assert run_cli(["predict", "--target", "labels"] + common, check=False) == 1
    assert "--target labels conflicts with the run" in capsys.readouterr().err


def test_deep_supervision_weights_halve_per_level_and_sum_to_one():
    from unet3d_core.model.network import deep_supervision_weights

    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert sum(deep_supervision_weights(5)) == pytest.approx(1.0)


def test_deep_supervision_loss_is_the_weighted_sum_over_resolutions():
    import tensorflow as tf

    from unet3d_core.engine.training_graph import supervised_loss
    from unet3d_core.model.config import ModelConfig
    from unet3d_core.model.losses import segmentation_loss
    from unet3d_core.model.network import build_unet3d, count_parameters, deep_supervision_weights

    config = ModelConfig(base_filters=4, max_filters=16, depth=4, deep_supervision=True)
    rng = np.random.RandomState(0)
    images = rng.standard_normal((1, 16, 16, 16, 4)).astype(np.float32)
    labels = rng.randint(0, 4, size=(1, 16, 16, 16)).astype(np.int32)
    tf1 = tf.compat.v1
    with tf.Graph().as_default() as graph:
        logits, auxiliary = build_unet3d(tf.constant(images), config, training=True, auxiliary=True)
        assert [head.shape.as_list() for head in auxiliary] == [[1, 8, 8, 8, 4], [1, 4, 4, 4, 4]]
        total = supervised_loss(logits, auxiliary, tf.constant(labels), config, "dice+ce")
        parts = [segmentation_loss(logits, labels, 4)] + [
            segmentation_loss(head, labels[:, ::2 ** level, ::2 ** level, ::2 ** level], 4)
            for level, head in enumerate(auxiliary, start=1)]
        heads = [v for v in tf1.global_variables() if "deep_supervision" in v.name]
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            got_total, got_parts = session.run([total, parts])
    weights = deep_supervision_weights(3)
    assert got_total == pytest.approx(sum(w * p for w, p in zip(weights, got_parts)), rel=1e-6)
    assert len(heads) == 4  # a kernel and a bias at half and quarter resolution
    # The inference graph is the plain network: the same parameters with or without deep supervision.
    counts = []
    for flag in (True, False):
        with tf.Graph().as_default():
            build_unet3d(tf1.placeholder(tf.float32, [None, None, None, None, 4]),
                         ModelConfig(base_filters=4, max_filters=16, depth=4, deep_supervision=flag), training=False)
            counts.append(count_parameters(tf1.trainable_variables()))
    assert counts[0] == counts[1]


def test_a_deep_supervision_run_is_remembered_and_its_checkpoints_predict(records, tmp_path):
    import tensorflow as tf

    model_dir, out = str(tmp_path / "run"), str(tmp_path / "out")
    common = ["--data_dir", records, "--model_dir", model_dir, "--fold", "0", "--backend", "cpu"]
    run_cli(["train", "--deep_supervision", "--max_steps", "2"] + common + TINY_MODEL)
    with open(os.path.join(model_dir, "run.json")) as handle:
        assert json.load(handle)["network"]["deep_supervision"] is True
    checkpoint = tf.train.latest_checkpoint(model_dir)
    names = [name for name, _ in tf.train.list_variables(checkpoint)]
    assert any(name.startswith("unet3d/deep_supervision/level1/") for name in names)
    run_cli(["predict", "--output_dir", out, "--inference_mode", "crop"] + common)
    assert any(name.endswith(".nii.gz") for name in os.listdir(out))
