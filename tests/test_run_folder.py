"""The run folder remembers itself: run.json, flags bound to the run, checkpoints kept across restarts."""
import json
import os
import shutil

import pytest
from conftest import TINY_MODEL, cli_subprocess, run_cli, train_args

# Non-default widths, so a command that forgot them would build another network.
NETWORK = {"base_filters": 4, "max_filters": 16, "depth": 3, "norm": "instancenorm", "input_shape": [16, 16, 16]}


def _error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _index_files(model_dir):
    return sorted(name for name in os.listdir(model_dir) if name.endswith(".index"))


@pytest.fixture(scope="module")
def run_dir(records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("remembered") / "run")
    run_cli(train_args(records, model_dir, "--max_steps", "2", "--learning_rate", "0.001", "--lr_schedule", "constant"))
    return model_dir


@pytest.fixture
def copied_run(run_dir, tmp_path):
    """A copy of the trained run that a test may change."""
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    return copy


def test_first_train_writes_the_network_data_and_options(run_dir, records):
    from unet3d_core.data.records import Manifest

    with open(os.path.join(run_dir, "run.json")) as handle:
        content = json.load(handle)
    assert {name: content["network"][name] for name in NETWORK} == NETWORK
    assert content["network"]["in_channels"] == 4 and content["network"]["num_classes"] == 4
    assert content["data"] == {"data_dir": os.path.abspath(records), "fingerprint": Manifest(records).fingerprint(),
                               "fold": 0, "intensity": "uint16"}
    assert content["training"]["learning_rate"] == 0.001 and content["training"]["batch_size"] == 2
    assert content["backend"] == "cpu" and content["versions"]["tensorflow"]


def test_evaluate_and_predict_need_no_model_flags(copied_run, records, tmp_path, capsys):
    run_cli(["evaluate", "--data_dir", records, "--model_dir", copied_run])
    with open(os.path.join(copied_run, "eval_results.json")) as handle:
        assert json.load(handle)["checkpoint_step"] == 2
    out = str(tmp_path / "predictions")
    run_cli(["predict", "--data_dir", records, "--model_dir", copied_run, "--output_dir", out])
    assert len(os.listdir(out)) == 2  # the two cases of fold 0
    assert "window_shape [16, 16, 16]" in capsys.readouterr().out  # the run's training crop


@pytest.mark.parametrize("flag, value, recorded", [("--base_filters", "8", "4"), ("--depth", "4", "3"),
                                                    ("--norm", "groupnorm", "instancenorm"), ("--fold", "1", "0")])
def test_a_flag_that_conflicts_with_the_run_is_one_line_naming_both_values(copied_run, records, capsys, flag, value,
                                                                           recorded):
    code = run_cli(["evaluate", "--data_dir", records, "--model_dir", copied_run, flag, value], check=False)
    assert code == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1
    assert "{} {} conflicts with the run in {}, made with {} {}".format(flag, value, copied_run, flag,
                                                                       recorded) in lines[0]


def test_resuming_with_another_architecture_is_refused_and_changes_nothing(copied_run, records, capsys):
    before = sorted(os.listdir(copied_run))
    code = run_cli(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "4",
                    "--base_filters", "8"], check=False)
    assert code == 1
    assert "--base_filters 8 conflicts with the run" in _error_lines(capsys)[0]
    assert sorted(os.listdir(copied_run)) == before


def test_a_resumed_train_keeps_its_learning_rate_unless_told(copied_run, records, capsys):
    run_cli(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "3", "--log_every", "1"])
    output = capsys.readouterr().out
    assert "Resuming from" in output and "(learning rate 0.001)" in output
    assert "step 3/3" in output and "lr 0.001" in output
    run_cli(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "4",
             "--learning_rate", "0.0005"])
    assert "note: --learning_rate 0.0005 (the run used 0.001 so far)" in capsys.readouterr().out
    with open(os.path.join(copied_run, "run.json")) as handle:
        assert json.load(handle)["training"]["learning_rate"] == 0.0005


def test_another_data_set_cannot_resume_the_run(copied_run, records, tmp_path, capsys):
    other = str(tmp_path / "other")
    shutil.copytree(records, other)
    with open(os.path.join(other, "manifest.json")) as handle:
        manifest = json.load(handle)
    manifest["cases"][0]["fold"], manifest["cases"][1]["fold"] = manifest["cases"][1]["fold"], \
        manifest["cases"][0]["fold"]
    if manifest["cases"][0]["fold"] == manifest["cases"][1]["fold"]:
        manifest["cases"][0]["fold"] = (manifest["cases"][0]["fold"] + 1) % 5
    with open(os.path.join(other, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    code = run_cli(["train", "--data_dir", other, "--model_dir", copied_run, "--max_steps", "4"], check=False)
    assert code == 1
    assert "is not the data set the run was trained on" in _error_lines(capsys)[0]


def test_an_older_folder_without_run_json_asks_for_the_flags(copied_run, records, capsys):
    os.remove(os.path.join(copied_run, "run.json"))
    code = run_cli(["evaluate", "--data_dir", records, "--model_dir", copied_run, "--depth", "3"], check=False)
    assert code == 1
    lines = _error_lines(capsys)
    assert len(lines) == 1
    assert "has checkpoints but no run.json" in lines[0]
    assert "--base_filters, --max_filters, --norm, --input_shape" in lines[0]
    run_cli(["evaluate", "--data_dir", records, "--model_dir", copied_run, "--norm", "instancenorm",
             "--target", "regions"] + TINY_MODEL)  # a folder without run.json is taken as the seed recipe's: labels


def test_a_checkpoint_of_another_network_is_one_line_not_a_traceback(copied_run, records, capsys):
    path = os.path.join(copied_run, "run.json")
    with open(path) as handle:
        content = json.load(handle)
    content["network"]["base_filters"] = 8  # run.json and checkpoint disagree (edited by hand)
    with open(path, "w") as handle:
        json.dump(content, handle)
    result = cli_subprocess(["evaluate", "--data_dir", records, "--model_dir", copied_run])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "unet3d/input_block/conv1/kernel has shape [3, 3, 3, 4, 4] there but [3, 3, 3, 4, 8]" in errors[0]


def test_keep_checkpoints_holds_across_restarts(records, tmp_path):
    model_dir = str(tmp_path / "run")
    for restart, steps in enumerate((6, 12, 18, 24)):
        run_cli(train_args(records, model_dir, "--max_steps", str(steps), "--checkpoint_every", "2",
                           "--keep_checkpoints", "2"))
        assert _index_files(model_dir) == ["model.ckpt-{}.index".format(steps - 2),
                                           "model.ckpt-{}.index".format(steps)], "after restart {}".format(restart)
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(model_dir)
    assert [os.path.basename(path) for path in state.all_model_checkpoint_paths] == ["model.ckpt-22", "model.ckpt-24"]
    assert not any(name.endswith(".meta") for name in os.listdir(model_dir))
    # Fewer to keep than are on disk: the extra ones go at the next save.
    run_cli(train_args(records, model_dir, "--max_steps", "26", "--checkpoint_every", "2", "--keep_checkpoints", "1"))
    assert _index_files(model_dir) == ["model.ckpt-26.index"]


def test_a_copied_run_folder_restores_its_own_checkpoints(run_dir, tmp_path, records, capsys):
    copy = str(tmp_path / "moved")
    shutil.copytree(run_dir, copy)
    run_cli(["evaluate", "--data_dir", records, "--model_dir", copy])
    assert "Restored {}".format(os.path.join(copy, "model.ckpt-2")) in capsys.readouterr().out


def _resolved(args):
    """The RunConfig a command line resolves to (nothing is run)."""
    import cli
    from unet3d_core.engine.run_config import resolve
    from unet3d_core.engine.run_flags import CommandFlags

    options = cli.build_parser(cli.load_backends()).parse_args([str(arg) for arg in args])
    return resolve(CommandFlags(vars(options)))[1]


def test_new_runs_use_the_nnunet_recipe_and_record_every_resolved_value(run_dir):
    from unet3d_core.engine.recipes import RECIPES

    with open(os.path.join(run_dir, "run.json")) as handle:
        content = json.load(handle)
    training, network = content["training"], content["network"]
    assert training["recipe"] == "nnunet"
    for name, value in RECIPES["nnunet"].items():
        recorded = network[name] if name in ("target", "deep_supervision") else training[name]
        expected = {"learning_rate": 0.001, "lr_schedule": "constant"}.get(name, value)  # the fixture's flags
        assert recorded == expected, name


def test_the_seed_recipe_is_the_reference_ports_and_single_flags_override_it(records, tmp_path):
    config = _resolved(["train", "--data_dir", records, "--model_dir", str(tmp_path / "seed"), "--recipe", "seed"])
    assert (config.training.optimizer, config.training.learning_rate, config.training.lr_schedule) == (
        "adam", 0.0002, "constant")
    assert (config.training.batch_size, config.training.augmentation, config.training.oversample_foreground) == (
        1, "none", 0.0)
    assert (config.network.target, config.network.deep_supervision) == ("labels", False)
    config = _resolved(["train", "--data_dir", records, "--model_dir", str(tmp_path / "seed"), "--recipe", "seed",
                        "--augment", "--optimizer", "sgd", "--oversample_foreground", "0.5"])
    assert (config.training.augmentation, config.training.optimizer, config.training.oversample_foreground,
            config.training.learning_rate) == ("seed", "sgd", 0.5, 0.0002)
    config = _resolved(["train", "--data_dir", records, "--model_dir", str(tmp_path / "new"),
                        "--no_deep_supervision", "--target", "labels"])
    assert config.training.recipe == "nnunet" and config.training.optimizer == "sgd"
    assert (config.network.target, config.network.deep_supervision) == ("labels", False)


def test_a_run_keeps_its_recipe_and_refuses_another(copied_run, records, capsys):
    code = run_cli(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "3",
                    "--recipe", "seed"], check=False)
    assert code == 1
    line = _error_lines(capsys)[0]
    assert "--recipe seed conflicts with the run" in line and "trained with --recipe nnunet" in line
    config = _resolved(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "3"])
    assert config.training.recipe == "nnunet" and config.training.learning_rate == 0.001


def test_a_run_made_before_recipes_resumes_with_the_seeds_values(copied_run, records):
    path = os.path.join(copied_run, "run.json")
    with open(path) as handle:
        content = json.load(handle)
    # What run.json held before recipes: no recipe, the --augment flag, no optimiser keys.
    for name in ("recipe", "augmentation", "oversample_foreground", "optimizer", "momentum", "weight_decay",
                 "grad_clip"):
        del content["training"][name]
    content["training"]["augment"] = True
    with open(path, "w") as handle:
        json.dump(content, handle)
    config = _resolved(["train", "--data_dir", records, "--model_dir", copied_run, "--max_steps", "3"])
    assert config.training.recipe == "seed"
    assert (config.training.augmentation, config.training.optimizer, config.training.weight_decay,
            config.training.grad_clip, config.training.oversample_foreground) == ("seed", "adam", 0.0, 0.0, 0.0)
    assert config.training.learning_rate == 0.001  # recorded values still win over the recipe's


def test_raw_inputs_are_scaled_as_the_runs_training_data_was(copied_run, raw_dataset, tmp_path):
    """predict --input_dir scales raw images with the storage the network learnt from: the run's data set's
    (uint16 here), uint8 for runs recorded before the choice; another data set's storage does not change it."""
    predict = ["predict", "--model_dir", copied_run, "--input_dir", raw_dataset, "--output_dir", str(tmp_path / "p")]
    assert _resolved(predict).intensity == "uint16"
    path = os.path.join(copied_run, "run.json")
    with open(path) as handle:
        content = json.load(handle)
    del content["data"]["intensity"]
    with open(path, "w") as handle:
        json.dump(content, handle)
    assert _resolved(predict).intensity == "uint8"
    from unet3d_core.data.preprocess import preprocess

    other = str(tmp_path / "other")
    preprocess(raw_dataset, other, folds=5, seed=1, show_progress=False)  # uint16, another fingerprint
    assert _resolved(["evaluate", "--model_dir", copied_run, "--data_dir", other]).intensity == "uint8"


@pytest.mark.parametrize("flag, value, message", [
    ("--oversample_foreground", "1.5", "--oversample_foreground 1.5: a share of the batch, between 0 and 1"),
    ("--elastic_probability", "-0.1", "--elastic_probability -0.1: a probability, between 0 and 1"),
    ("--grad_clip", "-1", "--grad_clip -1.0: must be >= 0 (0 = off)"),
    ("--weight_decay", "-3e-5", "--weight_decay -3e-05: must be >= 0 (0 = off)"),
    ("--momentum", "1", "--momentum 1.0: must be in [0, 1)"),
])
def test_a_recipe_value_out_of_range_is_one_line_naming_the_flag(records, tmp_path, capsys, flag, value, message):
    model_dir = str(tmp_path / "run")
    code = run_cli(["train", "--data_dir", records, "--model_dir", model_dir, flag + "=" + value], check=False)
    assert code == 1 and _error_lines(capsys) == ["error: " + message]
    assert not os.path.exists(model_dir)
