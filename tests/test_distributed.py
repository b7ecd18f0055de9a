"""Multi-process training through Horovod with Gloo, on the CPU."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, cli_subprocess, pid_with, train_args

from backends.horovod import _originating_rank, launch_with_horovodrun
from unet3d_core.data.records import Manifest
from unet3d_core.distributed import steps_per_worker

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))


def test_steps_are_shared_out_over_workers():
    assert steps_per_worker(16000, 8) == 2000
    assert steps_per_worker(16000, 1) == 16000
    assert steps_per_worker(5, 2) == 3


def test_two_processes_train_evaluate_and_end_with_identical_weights(records, tmp_path):
    model_dir = str(tmp_path / "run")
    result = cli_subprocess(train_args(records, model_dir, "--np", "2", "--batch_size", "1", "--max_steps", "6",
                                       "--checkpoint_every", "3", "--exec_mode", "train_and_evaluate"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "horovod (rank 0 of 2)" in result.stdout
    assert "steps 1..3 of 3 per worker" in result.stdout  # 6 steps shared by 2 workers
    assert "Weights identical on all 2 ranks" in result.stdout
    # Only the chief writes checkpoints and logs; each rank keeps its own output.
    checkpoints = sorted(name for name in os.listdir(model_dir) if name.endswith(".index"))
    assert checkpoints == ["model.ckpt-3.index"]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        report = json.load(handle)
    _, validation = Manifest(records).split(0)
    assert sorted(report["cases"]) == sorted(case["id"] for case in validation)
    # Rank 1 trained (its own output is kept) but wrote nothing into the run folder: one TensorBoard
    # file, each step logged once, and not one log line of its own.
    with open(os.path.join(model_dir, "logs", "rank.1", "stdout")) as handle:
        rank_1_output = handle.read()
    assert "Training on" not in rank_1_output and "step 3/3" not in rank_1_output
    assert len([name for name in os.listdir(model_dir) if name.startswith("events.out.tfevents")]) == 1
    with open(os.path.join(model_dir, "log.json")) as handle:
        steps = [json.loads(line[5:])["step"] for line in handle if line.startswith("DLLL ")]
    assert [step for step in steps if isinstance(step, int)] == [1, 2, 3]
    with open(os.path.join(model_dir, "run.json")) as handle:
        assert json.load(handle)["network"]["base_filters"] == 4


def test_two_workers_of_batch_one_make_the_update_of_one_worker_of_batch_two(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    subprocess.run([sys.executable, os.path.join(HERE, "horovod_step.py"), str(single)], check=True, cwd=ROOT)
    code = launch_with_horovodrun(2, [sys.executable, os.path.join(HERE, "horovod_step.py"), str(double)],
                                  log_dir=str(tmp_path / "logs"))
    assert code == 0
    reference = np.load(str(single / "rank-0-of-1.npz"))
    for rank in (0, 1):
        replica = np.load(str(double / "rank-{}-of-2.npz".format(rank)))
        assert sorted(replica.files) == sorted(reference.files)
        for name in reference.files:
            # float32 sums in a different order: agreement to ~1e-6 relative.
            np.testing.assert_allclose(replica[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_a_rank_that_raises_fails_the_job_and_is_named(records, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(records, data)
    manifest = Manifest(data)
    training, _ = manifest.split(0)
    for case in training[1::2]:  # rank 1's shard
        path = manifest.record_path(case)
        with open(path, "r+b") as handle:  # same size, damaged bytes: found only when rank 1 reads it
            handle.seek(os.path.getsize(path) // 2)
            handle.write(b"\xff" * 64)
    started = time.time()
    result = cli_subprocess(train_args(data, str(tmp_path / "run"), "--np", "2", "--batch_size", "1",
                                       "--max_steps", "40"), timeout=240)
    assert result.returncode != 0
    assert "error: rank 1 failed" in result.stderr
    assert "the record is damaged" in result.stderr  # rank 1's own last lines
    assert time.time() - started < 200


def test_a_killed_rank_stops_the_whole_job_quickly(records, tmp_path):
    model_dir = str(tmp_path / "killed-run")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "cli.py")] + train_args(
        records, model_dir, "--np", "2", "--batch_size", "1", "--max_steps", "100000", "--checkpoint_every", "1000"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        deadline = time.time() + 180
        victim = None
        log = os.path.join(model_dir, "logs", "rank.0", "stdout")
        while time.time() < deadline:
            if os.path.isfile(log) and "step 2/" in open(log).read():
                victim = pid_with("HOROVOD_RANK=1", model_dir)
                if victim:
                    break
            time.sleep(0.5)
        assert victim, "rank 1 never started training"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        out, err = process.communicate(timeout=120)
        assert time.time() - killed_at < 120
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert "rank 1 failed" in err


def _write_rank_stderr(log_dir, logs):
    """The launcher's per-rank log folders, as horovodrun --output-filename writes them."""
    for rank, text in logs.items():
        (log_dir / "rank.{}".format(rank)).mkdir()
        (log_dir / "rank.{}".format(rank) / "stderr").write_text(text)


def test_the_rank_with_its_own_error_is_named_not_one_stopped_by_the_shutdown(tmp_path):
    """horovodrun names whichever rank exited first; after rank 1's exception that is sometimes rank 0."""
    logs = {0: "Traceback ...\nUnknownError: Graph execution error:\nHorovod has been shut down. This was caused by "
               "an exception on one of the ranks\n",
            1: "error: record data/BraTS_003.tfrecord: the record is damaged\n",
            2: "W tensorflow: a warning only\n"}
    _write_rank_stderr(tmp_path, logs)
    assert _originating_rank(str(tmp_path), 0, 3) == 1
    assert _originating_rank(str(tmp_path), 1, 3) == 1
    # No rank with an error of its own: keep what horovodrun said.
    (tmp_path / "rank.1" / "stderr").write_text("")
    assert _originating_rank(str(tmp_path), 0, 3) == 0


def test_the_shutdown_message_is_found_above_a_long_traceback(tmp_path):
    """TensorFlow 1.15 prints where the failed op was created after its message: 50 lines and more."""
    created_at = "".join("[0]<stderr>:  File \"horovod/tensorflow/__init__.py\", line {}, in allreduce\n".format(n)
                         for n in range(300))
    logs = {0: "[0]<stderr>:tensorflow.python.framework.errors_impl.UnknownError: Horovod has been shut down. "
               "This was caused by an exception on one of the ranks\n[0]<stderr>:Original stack trace for "
               "'HorovodAllreduce':\n" + created_at,
            1: "[1]<stderr>:error: data/BraTS19_SYN_0002.tfrecord: corrupted record at 12; the record is damaged\n"}
    _write_rank_stderr(tmp_path, logs)
    assert _originating_rank(str(tmp_path), 0, 2) == 1


def test_a_killed_rank_is_named_not_the_one_that_lost_its_connection(tmp_path):
    logs = {0: "UnknownError: Graph execution error:\n[gloo/transport/tcp/pair.cc:589] Read error "
               "[127.0.0.1]:35239: Connection reset by peer\nTerminated\n",
            1: "[1]<stderr>:Killed\n"}
    _write_rank_stderr(tmp_path, logs)
    assert _originating_rank(str(tmp_path), 0, 2) == 1
    assert _originating_rank(str(tmp_path), 1, 2) == 1
