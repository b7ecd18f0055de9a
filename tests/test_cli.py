"""The command line: documented flags, one-line errors, non-zero exits."""
import os

import pytest
from conftest import cli_subprocess, run_cli, train_args


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "synth", "validate", "preprocess", "backends",
                                     "demo", "score", "report", "npu"])
def test_every_command_documents_its_flags(command):
    result = cli_subprocess([command, "--help"], timeout=60)
    assert result.returncode == 0
    assert "usage: cli.py {}".format(command) in result.stdout


def test_train_help_lists_seed_flags_and_backend_options():
    text = cli_subprocess(["train", "--help"], timeout=60).stdout
    for flag in ("--data_dir", "--model_dir", "--exec_mode", "--max_steps", "--benchmark", "--fold",
                 "--batch_size", "--augment", "--learning_rate", "--log_every", "--warmup_steps",
                 "--cpu_threads"):
        assert flag in text, flag


def test_help_states_the_defaults_a_new_run_really_gets():
    """The run-bound flags' help takes its defaults from the table resolve() uses (run_flags.DEFAULTS)."""
    import argparse

    from cli import build_parser, load_backends
    from unet3d_core.engine.run_flags import DEFAULTS, shown

    parser = build_parser(load_backends())
    train = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    helps = {action.dest: action.help for action in train.choices["train"]._actions}
    for name in ("fold", "max_steps", "seed", "loss", "momentum", "lr_warmup_steps", "lr_scaling", "input_shape",
                 "base_filters", "max_filters", "depth", "norm", "elastic_probability"):
        assert "default {}".format(shown(DEFAULTS[name])) in " ".join(helps[name].split()), name


def test_bad_flag_value_is_an_argparse_error():
    result = cli_subprocess(["train", "--data_dir", "x", "--model_dir", "y", "--batch_size", "0"], timeout=60)
    assert result.returncode == 2
    assert "--batch_size: must be a positive integer" in result.stderr


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_missing_data_dir_is_one_line_error(tmp_path, capsys):
    code = run_cli(train_args(str(tmp_path / "nowhere"), str(tmp_path / "run")), check=False)
    assert code == 1
    assert "--data_dir" in _one_line_error(capsys)


def test_input_shape_must_fit_the_network(records, tmp_path, capsys):
    code = run_cli(train_args(records, str(tmp_path / "run"), "--input_shape", "18", "16", "16"), check=False)
    assert code == 1
    assert "--input_shape 18 16 16: every size must be a multiple of 4" in _one_line_error(capsys)
    assert not os.path.exists(str(tmp_path / "run"))


def test_unknown_and_unusable_backends_are_one_line_errors(records, tmp_path, capsys):
    assert run_cli(train_args(records, str(tmp_path / "run"), "--backend", "tpu"), check=False) == 1
    assert "installed: cpu, gpu, npu" in _one_line_error(capsys)
    assert run_cli(train_args(records, str(tmp_path / "run"), "--backend", "npu"), check=False) == 1
    assert "npu_bridge" in _one_line_error(capsys)


def test_fold_outside_the_data_set_is_refused(records, tmp_path, capsys):
    assert run_cli(train_args(records, str(tmp_path / "run"), "--fold", "7"), check=False) == 1
    assert "--fold 7: the data set has folds 0..4" in _one_line_error(capsys)


def test_backends_command_lists_each_backend_and_why(capsys):
    assert run_cli(["backends"]) == 0
    out = capsys.readouterr().out
    for name in ("cpu", "gpu", "npu"):
        assert "\n{} ".format(name) in out
    assert "hooks: " in out


def test_predictions_are_never_written_among_the_inputs(records, tmp_path, capsys):
    for output in (records, os.path.join(records, "predictions")):
        code = run_cli(["predict", "--data_dir", records, "--model_dir", str(tmp_path / "run"),
                        "--output_dir", output], check=False)
        assert code == 1
        assert "predictions are never written among the inputs" in capsys.readouterr().err
