"""`cli.py report RUN_DIR`: curves, case overlays and a Markdown summary people can open."""
import json
import os

import pytest
from conftest import run_cli, train_args

from unet3d_core import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predicted_run(records, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("report") / "run")
    run_cli(train_args(records, model_dir, "--exec_mode", "train_and_evaluate", "--max_steps", "3"))
    run_cli(["predict", "--data_dir", records, "--model_dir", model_dir, "--predict_on", "all",
             "--input_shape", "16", "16", "16", "--base_filters", "4", "--max_filters", "16", "--depth", "3"])
    return model_dir


def _is_png(path):
    with open(path, "rb") as handle:
        return handle.read(8) == PNG_SIGNATURE


def test_report_renders_curves_case_overlays_and_an_index(predicted_run, capsys):
    run_cli(["report", predicted_run, "--cases", "2"])
    out_dir = os.path.join(predicted_run, "report")
    assert "index.md" in capsys.readouterr().out
    pictures = sorted(name for name in os.listdir(out_dir) if name.endswith(".png"))
    assert "curves.png" in pictures and len([name for name in pictures if name.startswith("case-")]) == 2
    assert all(_is_png(os.path.join(out_dir, name)) for name in pictures)
    with open(os.path.join(out_dir, "index.md")) as handle:
        index = handle.read()
    for name in pictures:
        assert "({})".format(name) in index  # every picture is linked
    assert "| Dice_ET | brats |" in index and "| MeanDice | seed |" in index
    assert "whole-volume Dice (BraTS regions)" in index


def test_log_lines_become_curves(tmp_path):
    path = str(tmp_path / "log.json")
    lines = [
        {"type": "PARAMETER", "step": "PARAMETER", "data": {"data_dir": "/nowhere"}},
        {"type": "LOG", "step": 10, "data": {"loss": 1.5, "learning_rate": 0.001}},
        {"type": "LOG", "step": 20, "data": {"loss": 1.0, "learning_rate": 0.0005}},
        {"type": "LOG", "step": "eval", "data": {"MeanDice": 0.5, "Dice_WT": 0.8, "checkpoint_step": 20}},
        {"type": "LOG", "step": "eval", "data": {"MeanDice": 0.6}},  # older logs: no checkpoint_step
    ]
    with open(path, "w") as handle:
        for line in lines:
            handle.write("DLLL " + json.dumps(line) + "\n")
        handle.write("DLLL {\"cut short by a kill")
    parameters, records = report.read_log(path)
    assert parameters == {"data_dir": "/nowhere"}
    curves = report.curves_of(records)
    assert curves["steps"] == [10, 20] and curves["loss"] == [1.5, 1.0]
    assert curves["evaluations"] == [(20, {"MeanDice": 0.5, "Dice_WT": 0.8}), (20, {"MeanDice": 0.6})]


def test_report_on_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    assert run_cli(["report", str(tmp_path)], check=False) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: RUN_DIR") and "\n" not in err
