"""Fault injection: kills, signals, bad numbers, full disks and damaged records never cost finished work."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli_subprocess, pid_with, run_cli, train_args

from unet3d_core.data.records import Manifest
from unet3d_core.model import checkpoints

KILL_POINTS = 6  # random SIGKILLs in the kill-and-resume loop
KILL_SEED = 20261125


def _steps_logged(model_dir):
    path = os.path.join(model_dir, "log.json")
    if not os.path.isfile(path):
        return 0
    with open(path) as handle:
        return sum(1 for line in handle if '"type": "LOG"' in line and '"step": "' not in line)


def _start(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py")] + [str(a) for a in args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def _wait_for_steps(process, model_dir, count, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if _steps_logged(model_dir) >= count:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_killed_at_random_points_always_finishes_with_the_requested_steps(records, tmp_path):
    """SIGKILL at KILL_POINTS random moments (checkpoints are written every step, so many kills land
    during a write); each restart resumes from a complete checkpoint and the run ends at step 200 with
    exactly the two newest checkpoints on disk."""
    model_dir = str(tmp_path / "run")
    args = train_args(records, model_dir, "--max_steps", "200", "--checkpoint_every", "1", "--keep_checkpoints", "2")
    chooser = random.Random(KILL_SEED)
    killed_while_running = 0
    for _ in range(KILL_POINTS):
        process = _start(args)
        before = _steps_logged(model_dir)
        _wait_for_steps(process, model_dir, before + 1)
        time.sleep(chooser.uniform(0.0, 0.6))
        if process.poll() is None:
            killed_while_running += 1
        process.kill()
        process.communicate()
        prefix, step = checkpoints.latest_checkpoint(model_dir)
        assert prefix is None or checkpoints.is_complete(prefix)
    assert killed_while_running >= KILL_POINTS - 1
    result = cli_subprocess(args)
    assert result.returncode == 0, result.stderr[-2000:]
    prefix, step = checkpoints.latest_checkpoint(model_dir)
    assert step == 200 and checkpoints.is_complete(prefix)
    assert "Resuming from" in result.stdout or "already finished" in result.stdout
    assert sorted(name for name in os.listdir(model_dir) if name.endswith(".index")) == [
        "model.ckpt-199.index", "model.ckpt-200.index"]


def test_an_incomplete_newest_checkpoint_is_skipped(records, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    run_cli(train_args(records, model_dir, "--max_steps", "4", "--checkpoint_every", "2"))
    newest = os.path.join(model_dir, "model.ckpt-4.data-00000-of-00001")
    with open(newest, "r+b") as handle:
        handle.truncate(os.path.getsize(newest) // 2)
    messages = []
    prefix, step = checkpoints.latest_checkpoint(model_dir, report=messages.append)
    assert step == 2 and prefix.endswith("model.ckpt-2")
    assert "Skipping incomplete checkpoint" in messages[0] and "model.ckpt-4" in messages[0]
    capsys.readouterr()
    run_cli(train_args(records, model_dir, "--max_steps", "6", "--checkpoint_every", "2"))
    assert "Resuming from" in capsys.readouterr().out
    assert checkpoints.latest_checkpoint(model_dir)[1] == 6


def test_sigterm_finishes_the_step_saves_and_exits_zero(records, tmp_path):
    model_dir = str(tmp_path / "run")
    process = _start(train_args(records, model_dir, "--max_steps", "100000", "--checkpoint_every", "100000"))
    assert _wait_for_steps(process, model_dir, 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-2000:]
    assert "Stopped by SIGTERM after step" in out and "Run the same command again to resume" in out
    stopped_at = checkpoints.latest_checkpoint(model_dir)[1]
    assert stopped_at >= 2 and "after step {} ".format(stopped_at) in out
    result = cli_subprocess(train_args(records, model_dir, "--max_steps", str(stopped_at + 1)))
    assert result.returncode == 0 and "at step {}".format(stopped_at) in result.stdout


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_ranks_together(records, tmp_path):
    model_dir = str(tmp_path / "run")
    process = _start(train_args(records, model_dir, "--np", "2", "--batch_size", "1", "--max_steps", "100000",
                                "--checkpoint_every", "100000"))
    assert _wait_for_steps(process, model_dir, 2)
    os.kill(pid_with("HOROVOD_RANK=1", model_dir), signal.SIGTERM)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-2000:]
    assert "Stopped by another rank after step" in out
    assert checkpoints.latest_checkpoint(model_dir)[1] >= 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(records, tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    code = run_cli(train_args(records, model_dir, "--max_steps", "30", "--checkpoint_every", "1",
                              "--learning_rate", "1e30", "--loss", "ce"), check=False)
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: loss is nan at step") or error.startswith("error: loss is inf at step")
    failed_at = int(error.split("at step ")[1].split(";")[0])
    prefix, step = checkpoints.latest_checkpoint(model_dir)
    assert step == failed_at - 1 and checkpoints.is_complete(prefix)


def test_unwritable_model_dir_is_refused_before_training(records, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = run_cli(train_args(records, str(blocker / "run")), check=False)
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model_dir") and "\n" not in err


def test_too_little_disk_space_is_refused_before_training(records, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1000))
    model_dir = str(tmp_path / "run")
    assert run_cli(train_args(records, model_dir), check=False) == 1
    assert "MB free, but 4 checkpoints" in capsys.readouterr().err
    assert checkpoints.latest_checkpoint(model_dir)[0] is None


def test_a_failed_checkpoint_write_keeps_the_previous_one(records, tmp_path, capsys, monkeypatch):
    import tensorflow as tf

    real_save = tf.compat.v1.train.Saver.save
    calls = []

    def failing_save(self, session, path, global_step=None, **kwargs):
        calls.append(global_step)
        if len(calls) == 2:
            raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
        return real_save(self, session, path, global_step=global_step, **kwargs)

    monkeypatch.setattr(tf.compat.v1.train.Saver, "save", failing_save)
    model_dir = str(tmp_path / "run")
    assert run_cli(train_args(records, model_dir, "--max_steps", "6", "--checkpoint_every", "2"), check=False) == 1
    err = capsys.readouterr().err
    assert "could not write the step 4 checkpoint" in err and "No space left on device" in err
    assert "the previous checkpoint (step 2) is intact" in err
    prefix, step = checkpoints.latest_checkpoint(model_dir)
    assert step == 2 and checkpoints.is_complete(prefix)


def _copy_records(records, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(records, data)
    return data, Manifest(data)


def test_a_damaged_record_is_named(records, tmp_path, capsys):
    data, manifest = _copy_records(records, tmp_path)
    training, _ = manifest.split(0)
    damaged = manifest.record_path(training[0])
    with open(damaged, "r+b") as handle:  # same size, flipped bytes: only the CRC can tell
        handle.seek(os.path.getsize(damaged) // 2)
        handle.write(b"\xff" * 64)
    assert run_cli(train_args(data, str(tmp_path / "run"), "--max_steps", "40"), check=False) == 1
    err = capsys.readouterr().err
    assert damaged in err and "damaged" in err


def test_truncated_record_empty_or_outdated_data_sets_are_refused(records, tmp_path, capsys):
    import json

    data, manifest = _copy_records(records, tmp_path)
    path = manifest.record_path(manifest.cases[3])
    with open(path, "r+b") as handle:
        handle.truncate(100)
    assert run_cli(train_args(data, str(tmp_path / "run")), check=False) == 1
    assert "{}: 100 bytes, but the manifest says".format(path) in capsys.readouterr().err
    manifest_path = os.path.join(data, "manifest.json")
    with open(manifest_path) as handle:
        content = json.load(handle)
    content["format_version"] = 0
    with open(manifest_path, "w") as handle:
        json.dump(content, handle)
    assert run_cli(train_args(data, str(tmp_path / "run")), check=False) == 1
    assert "run 'python cli.py preprocess' again" in capsys.readouterr().err
    content["format_version"], content["cases"] = Manifest(records).content["format_version"], []
    with open(manifest_path, "w") as handle:
        json.dump(content, handle)
    assert run_cli(train_args(data, str(tmp_path / "run")), check=False) == 1
    assert "the data set has no cases" in capsys.readouterr().err


def test_no_shell_strings_pickle_or_eval_in_the_code():
    forbidden = ("shell=True", "os.system(", "os.popen(", "pickle", "eval(", "exec(", "yaml.load(")
    for folder in ("unet3d_core", "backends"):
        for directory, _, names in os.walk(os.path.join(ROOT, folder)):
            for name in names:
                if name.endswith(".py"):
                    with open(os.path.join(directory, name)) as handle:
                        source = handle.read()
                    for word in forbidden:
                        assert word not in source, (name, word)
    with open(os.path.join(ROOT, "cli.py")) as handle:
        assert not any(word in handle.read() for word in forbidden)


def test_an_atomic_file_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    from unet3d_core.folders import atomic_text_file, write_json_atomic

    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_text_file(str(path)) as handle:
            handle.write('{"step": 2')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(str(tmp_path)) == ["state.json"]
