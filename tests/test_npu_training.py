"""`cli.py train --backend npu --npus 2` end to end on the CPU, through the fake adapter."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_MODEL, pid_with

pytestmark = pytest.mark.slow
FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_npu")


def _environment(tmp_path):
    return dict(os.environ, PYTHONPATH=FAKE, FAKE_NPU_CALLS=str(tmp_path / "calls.jsonl"),
                FAKE_HCCL_DIR=str(tmp_path / "hccl"), HCCL_CONNECT_TIMEOUT="60")


def _hccn_conf(tmp_path):
    path = tmp_path / "hccn.conf"
    path.write_text("".join("address_{0}=192.168.10{0}.101\nnetmask_{0}=255.255.255.0\n".format(i) for i in range(8)))
    return str(path)


def _command(records, model_dir, tmp_path, *extra):
    return [sys.executable, os.path.join(ROOT, "cli.py"), "train", "--backend", "npu", "--npus", "2",
            "--data_dir", records, "--model_dir", model_dir, "--hccn_conf", _hccn_conf(tmp_path),
            "--server_id", "127.0.0.1", "--batch_size", "1", "--log_every", "1", "--seed", "1"
            ] + TINY_MODEL + list(extra)


def _calls(tmp_path):
    with open(str(tmp_path / "calls.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_two_devices_train_with_hccl_and_write_one_checkpoint_set(records, tmp_path):
    model_dir = str(tmp_path / "run")
    result = subprocess.run(_command(records, model_dir, tmp_path, "--max_steps", "8", "--checkpoint_every", "4",
                                     "--exec_mode", "train_and_evaluate"),
                            env=_environment(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "starting 2 rank(s) on server 127.0.0.1 (devices 0,1)" in out
    assert "hccl (rank 0 of 2)" in out  # rank 0's log is streamed
    assert "steps 1..4 of 4 per worker" in out
    assert "Weights identical on all 2 ranks" in out
    assert "overflow_steps 0" in out and "loss_scale" in out
    # One checkpoint set, written by rank 0 only; one log folder per device.
    assert sorted(n for n in os.listdir(model_dir) if n.endswith(".index")) == ["model.ckpt-4.index"]
    assert os.path.isfile(os.path.join(model_dir, "Device-0", "train.log"))
    assert os.path.isfile(os.path.join(model_dir, "Device-1", "train.log"))
    with open(os.path.join(model_dir, "rank_table.json")) as handle:
        table = json.load(handle)
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == ["192.168.100.101", "192.168.101.101"]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        assert len(json.load(handle)["cases"]) == 2
    calls = _calls(tmp_path)
    by_rank = {rank: [c["call"] for c in calls if c["rank"] == rank] for rank in ("0", "1")}
    for names in by_rank.values():
        assert "initialize_system" in names and "shutdown_system" in names
        assert names.index("NPUDistributedOptimizer") < names.index("NPULossScaleOptimizer")
        assert "broadcast" in names
    loss_scale = [c for c in calls if c["call"] == "NPULossScaleOptimizer"]
    assert all(c["args"]["is_distributed"] for c in loss_scale)


def test_killed_device_process_stops_the_job_and_is_named(records, tmp_path):
    model_dir = str(tmp_path / "run")
    process = subprocess.Popen(_command(records, model_dir, tmp_path, "--max_steps", "100000",
                                        "--checkpoint_every", "100000"),
                               env=_environment(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
    try:
        log = os.path.join(model_dir, "Device-0", "train.log")  # only rank 0 logs steps
        deadline = time.time() + 180
        victim = None
        while time.time() < deadline and victim is None:
            time.sleep(0.5)
            if os.path.isfile(log) and "step 2/" in open(log).read():
                victim = pid_with("RANK_ID=1", model_dir)
        assert victim, "device 1 never started training"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        out, err = process.communicate(timeout=120)
        assert time.time() - killed_at < 60
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    assert "error: rank 1 (device 1) exited with status" in err
    assert "stopped the other ranks" in err
    assert pid_with("RANK_ID=0", model_dir) is None  # rank 0 did not linger


def test_one_device_with_iterations_per_loop_counts_steps_and_throughput(records, tmp_path):
    model_dir = str(tmp_path / "one")
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "train", "--backend", "npu", "--data_dir", records,
               "--model_dir", model_dir, "--batch_size", "2", "--log_every", "2", "--max_steps", "6",
               "--iterations_per_loop", "2", "--npu_loss_scale", "0", "--seed", "1"] + TINY_MODEL
    result = subprocess.run(command, env=_environment(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ")] == [
        "2/6", "4/6", "6/6"]
    assert "vol/s" in result.stdout
    calls = [c for c in _calls(tmp_path) if c["call"] == "set_iteration_per_loop"]
    assert calls and calls[0]["args"] == {"iterations_per_loop": 2}
    assert not [c for c in _calls(tmp_path) if c["call"] == "NPULossScaleOptimizer"]  # --npu_loss_scale 0
