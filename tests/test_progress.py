"""Progress output: a tqdm bar on a terminal, a few readable lines in logs, always on standard error."""
import gc
import io
import os
import types

from conftest import run_cli

from unet3d_core import progress
from unet3d_core.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def _clocked(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(time=clock.time))
    return clock


def test_progress_goes_to_stderr_and_a_quick_job_writes_one_line(capsys):
    bar = Progress("preprocess", 1000)
    for done in range(1, 1001):
        bar.update(done, "case-{:04d}".format(done))
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "\r" not in err
    assert err.startswith("preprocess: 1000/1000 (100%) [") and err.endswith(", case-1000]\n")


def test_a_long_job_in_a_log_writes_a_line_per_tenth_at_most(monkeypatch):
    clock = _clocked(monkeypatch)
    stream = io.StringIO()
    bar = Progress("synth", 200, stream=stream)
    for done in range(1, 201):
        clock.now += 3.0  # 600 s in all: tenths 60 s apart, each later than LOG_INTERVAL
        bar.update(done, "BraTS19_SYN_{:04d}".format(done))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in stream.getvalue()
    assert lines[0] == "synth: 20/200 (10%) [01:00<09:00,  3.00s/case, BraTS19_SYN_0020]"
    assert lines[4].startswith("synth: 100/200 (50%) [05:00<05:00,")
    assert lines[-1] == "synth: 200/200 (100%) [10:00<00:00,  3.00s/case, BraTS19_SYN_0200]"


def test_lines_are_never_closer_than_the_log_interval(monkeypatch):
    clock = _clocked(monkeypatch)
    stream = io.StringIO()
    bar = Progress("score", 10, stream=stream)
    for done in range(1, 11):
        clock.now += progress.LOG_INTERVAL / 4  # a tenth every quarter interval: one line in four
        bar.update(done, str(done))
    assert [line.split(" ")[1] for line in stream.getvalue().splitlines()] == ["4/10", "8/10", "10/10"]


def test_a_job_that_stops_early_leaves_no_partial_lines(monkeypatch):
    clock = _clocked(monkeypatch)
    stream = io.StringIO()
    bar = Progress("preprocess", 4, stream=stream)
    clock.now += 1.0
    bar.update(1, "BraTS20_Training_001")  # then an error: its message stays the only line on stderr
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_redrawn_in_place_that_stays_when_done():
    stream = _Terminal()
    bar = Progress("validate", 5, stream=stream)
    assert bar.interactive
    for done in range(1, 6):
        bar.update(done, "case-{}".format(done))
    text = stream.getvalue()
    assert text.startswith("\rvalidate:   0%") and text.endswith("\n") and text.count("\n") == 1
    final = text.rstrip("\n").split("\r")[-1]
    assert final.startswith("validate: 100%|") and "| 5/5 [" in final and final.endswith(", case-5]")


def test_an_unfinished_terminal_bar_is_cleared_not_redrawn_after_an_error():
    stream = _Terminal()
    bar = Progress("preprocess", 5, stream=stream)
    bar.update(2, "BraTS20_Training_002")
    del bar
    gc.collect()
    text = stream.getvalue()
    assert "\n" not in text and text.split("\r")[-1] == "" and text.split("\r")[-2].strip() == ""


def test_synth_command_prints_its_result_on_stdout_and_progress_on_stderr(tmp_path, capsys):
    out_dir = str(tmp_path / "brats")
    run_cli(["synth", "--out", out_dir, "--cases", "3", "--shape", "16", "16", "16"])
    out, err = capsys.readouterr()
    assert out == "wrote 3 cases to {}\n".format(out_dir)
    assert err.startswith("synth: 3/3 (100%) [") and err.count("\n") == 1
    assert os.path.isdir(out_dir)
