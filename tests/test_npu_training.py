"""`cli.py train --backend npu --npus 2` end to end on the CPU, through the fake adapter."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_MODEL, pid_with
from fake_npu_env import adapter_fake

pytestmark = pytest.mark.slow

FAKE = adapter_fake()
# TF Adapter 2.x (npu_device): its compat.v1 has no NPULossScaleOptimizer; TensorFlow's loss scaling is used.
TF2_ADAPTER = os.path.isdir(os.path.join(FAKE, "npu_device"))


def _environment(tmp_path, **extra):
    # HCCL_CONNECT_TIMEOUT must lie in HCCL's [120, 7200]; the fake's own file exchange gives up after
    # FAKE_HCCL_WAIT_SECONDS instead of HCCL's execution timeout (1836 s by default).
    return dict(os.environ, PYTHONPATH=FAKE, FAKE_NPU_CALLS=str(tmp_path / "calls.jsonl"),
                FAKE_HCCL_DIR=str(tmp_path / "hccl"), HCCL_CONNECT_TIMEOUT="120", FAKE_HCCL_WAIT_SECONDS="60",
                **extra)


def _hccn_conf(tmp_path):
    path = tmp_path / "hccn.conf"
    path.write_text("".join("address_{0}=192.168.10{0}.101\nnetmask_{0}=255.255.255.0\n".format(i) for i in range(8)))
    return str(path)


def _command(records, model_dir, tmp_path, *extra):
    return [sys.executable, os.path.join(ROOT, "cli.py"), "train", "--backend", "npu", "--npus", "2",
            "--data_dir", records, "--model_dir", model_dir, "--hccn_conf", _hccn_conf(tmp_path),
            "--server_id", "127.0.0.1", "--batch_size", "1", "--log_every", "1", "--seed", "1"
            ] + TINY_MODEL + list(extra)


def _one_device(records, model_dir, tmp_path, *flags):
    """``cli.py train --backend npu`` on one device with ``flags``; the finished process."""
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "train", "--backend", "npu", "--data_dir", records,
               "--model_dir", model_dir, "--npu_loss_scale", "0", "--seed", "1"] + list(flags) + TINY_MODEL
    result = subprocess.run(command, env=_environment(tmp_path), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _calls(tmp_path):
    with open(str(tmp_path / "calls.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_two_devices_train_with_hccl_and_write_one_checkpoint_set(records, tmp_path):
    model_dir = str(tmp_path / "run")
    profiles = tmp_path / "profiles"
    result = subprocess.run(_command(records, model_dir, tmp_path, "--max_steps", "8", "--checkpoint_every", "4",
                                     "--exec_mode", "train_and_evaluate", "--npu_profiling", str(profiles),
                                     "--npu_split_strategy", "idx:1,5"),
                            # The TF 2 adapter runs as on Atlas 910: the device saturates on overflow.
                            env=_environment(tmp_path, FAKE_NPU_SAT_MODE="0"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "starting 2 rank(s) on server 127.0.0.1 (devices 0,1)" in out
    # Each rank bound to its own share of the host's cores (--npu_cpu_binding auto).
    if len(os.sched_getaffinity(0)) >= 2:
        assert re.search(r"host cores: rank 0 on [\d,-]+, rank 1 on [\d,-]+", out), out[:2000]
    assert profiles.is_dir() and "--npu_profiling into {}".format(profiles) in out
    assert "hccl (rank 0 of 2)" in out  # rank 0's log is streamed
    assert "steps 1..4 of 4 per worker" in out
    assert "Weights identical on all 2 ranks" in out
    assert "skipped_steps 0" in out and "loss_scale" in out
    # One checkpoint set, written by rank 0 only; one log folder per device.
    assert sorted(n for n in os.listdir(model_dir) if n.endswith(".index")) == ["model.ckpt-4.index"]
    # The chief validated the last step on its own inference session while rank 1 waited, and kept it as best.
    assert "validation at step 4: pseudo-Dice" in out
    assert sorted(os.listdir(os.path.join(model_dir, "best"))) == ["model.ckpt-4.data-00000-of-00001",
                                                                  "model.ckpt-4.index"]
    assert os.path.isfile(os.path.join(model_dir, "Device-0", "train.log"))
    assert os.path.isfile(os.path.join(model_dir, "Device-1", "train.log"))
    with open(os.path.join(model_dir, "rank_table.json")) as handle:
        table = json.load(handle)
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == ["192.168.100.101", "192.168.101.101"]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        assert len(json.load(handle)["cases"]) == 2
    calls = _calls(tmp_path)
    by_rank = {rank: [c["call"] for c in calls if c["rank"] == rank] for rank in ("0", "1")}

    def calls_of(rank):
        return [c for c in calls if c["rank"] == rank]

    assert "gradient split by index 1,5" in out
    for rank, names in by_rank.items():
        assert "initialize_system" in names and "shutdown_system" in names
        # The split strategy goes to HCCL once it started (the fake refuses it before), before any allreduce.
        (split,) = [c for c in calls if c["rank"] == rank and c["call"] == "set_split_strategy"]
        assert (split["by"], split["values"], split["group"]) == ("idx", [1, 5], "hccl_world_group")
        assert names.index("set_split_strategy") < names.index("NPUDistributedOptimizer")
        assert "NPUDistributedOptimizer" in names and "broadcast" in names
        # One HcomBroadcast per data type (HCCL broadcasts one HcclDataType per call): weights and slots, step.
        dtypes = [c["dtypes"] for c in calls_of(rank) if c["call"] == "broadcast"]
        assert all(len(group) == 1 for group in dtypes) and len({group[0] for group in dtypes}) == len(dtypes)
        assert {"float32", "int64"} <= {group[0] for group in dtypes}
        if not TF2_ADAPTER:
            assert names.index("NPUDistributedOptimizer") < names.index("NPULossScaleOptimizer")
        else:  # the overflow flag is the device's float status, summed over the ranks in a collective of its own
            assert names.count("npu_get_float_status_v2") == 1 and names.count("npu_clear_float_status_v2") == 1
            after = calls_of(rank)[names.index("npu_get_float_status_v2"):]
            (reduced, *_) = [c for c in after if c["call"] == "allreduce"]
            assert reduced["fusion"] == 0
    # Profiling is on in every NPU session, the one that initialises HCCL (NPUInit) included.
    for rank in ("0", "1"):
        sessions = {c["session"]: c for c in calls if c["rank"] == rank and c["call"] == "session"}
        (init,) = [c["session"] for c in calls if c["rank"] == rank and c["call"] == "compile_graph"
                   and c["targets"] == ["NPUInit"]]
        assert sessions[init]["parameters"]["profiling_mode"] is True
        assert all(json.loads(c["parameters"]["profiling_options"])["output"] == str(profiles)
                   for c in sessions.values())
    loss_scale = [c for c in calls if c["call"] == "NPULossScaleOptimizer"]
    assert all(c["args"]["is_distributed"] for c in loss_scale) and len(loss_scale) == (0 if TF2_ADAPTER else 2)


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
            # One session.run may perform several steps (the device loop), so wait for any step line.
            if os.path.isfile(log) and re.search(r"^step \d+/", open(log).read(), re.M):
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
    result = _one_device(records, str(tmp_path / "one"), tmp_path, "--batch_size", "2", "--log_every", "2",
                         "--max_steps", "6", "--iterations_per_loop", "2")
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ")] == [
        "2/6", "4/6", "6/6"]
    assert "vol/s" in result.stdout
    calls = [c for c in _calls(tmp_path) if c["call"] == "set_iteration_per_loop"]
    assert calls and calls[0]["args"] == {"iterations_per_loop": 2}
    assert not [c for c in _calls(tmp_path) if c["call"] == "NPULossScaleOptimizer"]  # --npu_loss_scale 0


def test_a_step_count_without_a_loop_of_10_or_more_is_rounded_up_and_the_whole_run_follows(records, tmp_path):
    """--iterations_per_loop auto never falls below 10: 101 steps (no divisor from 10 to 100) become 110 in
    loops of 55, and the core trains, schedules and records 110, with a note saying so."""
    model_dir = str(tmp_path / "rounded")
    out = _one_device(records, model_dir, tmp_path, "--batch_size", "1", "--log_every", "55", "--max_steps", "101",
                      "--checkpoint_every", "1000").stdout
    assert "note: --max_steps 101 rounded up to 110 by the npu backend" in out
    assert "iterations_per_loop 55 (auto: the seed's 100; the 101 steps per device have no divisor" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["55/110", "110/110"]
    # The poly schedule runs over the 110 steps: the rate logged at step 110 is the last, (1/110)^0.9 x 0.01.
    assert re.search(r"^step 110/110 .*  lr 0\.000145  ", out, re.M), out[-1500:]
    assert sorted(n for n in os.listdir(model_dir) if n.endswith(".index")) == ["model.ckpt-110.index"]
    with open(os.path.join(model_dir, "run.json")) as handle:
        assert json.load(handle)["training"]["max_steps"] == 110
    calls = [c for c in _calls(tmp_path) if c["call"] == "set_iteration_per_loop"]
    assert [c["args"] for c in calls] == [{"iterations_per_loop": 55}]


def test_the_seeds_run_config_on_two_devices_end_to_end(records, tmp_path):
    """The seed's configuration: iterations_per_loop 100 (shrunk to the 4 steps per device here), a fixed loss
    scale of 1048576, hcom_parallel; --npus 2, train_and_evaluate: one checkpoint set and an evaluation."""
    model_dir = str(tmp_path / "seed")
    result = subprocess.run(_command(records, model_dir, tmp_path, "--max_steps", "8", "--checkpoint_every", "4",
                                     "--exec_mode", "train_and_evaluate", "--npu_loss_scale", "1048576"),
                            env=_environment(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert "iterations_per_loop 4 (auto: the seed's 100, lowered to the largest divisor of the 4 steps" in out
    assert "hcom_parallel on" in out
    assert re.search(r"^step 4/4 .*loss_scale 1\.049e\+06", out, re.M), out[-1500:]
    assert "skipped_steps 0" in out
    assert sorted(n for n in os.listdir(model_dir) if n.endswith(".index")) == ["model.ckpt-4.index"]
    with open(os.path.join(model_dir, "eval_results.json")) as handle:
        assert len(json.load(handle)["cases"]) == 2
    calls = _calls(tmp_path)
    for rank in ("0", "1"):
        mine = [c for c in calls if c["rank"] == rank]
        (looping,) = {c["session"] for c in mine if c["call"] == "compile_graph" and "IterationOp" in c["targets"]}
        (training,) = [c for c in mine if c["call"] == "session" and c["session"] == looping]
        assert training["parameters"]["iterations_per_loop"] == 4
        assert training["parameters"]["hcom_parallel"] is True
        assert training["parameters"]["enable_data_pre_proc"] is True
        assert training["parameters"]["precision_mode"] == "allow_fp32_to_fp16"
        assert [c["args"] for c in mine if c["call"] == "set_iteration_per_loop"] == [{"iterations_per_loop": 4}]
        managers = [c["args"]["loss_scale"] for c in mine if c["call"] == "FixedLossScaleManager"]
        assert managers == ([] if TF2_ADAPTER else [1048576.0])  # the log line above shows the scale either way
        # One session.run is 4 steps on the device, and one training graph per process (every run fetches the
        # same list; TensorBoard's scalars are written on the host).
        steps = [c for c in mine if c["call"] == "compile_graph" and "IterationOp" in c["targets"]]
        assert len(steps) == 1 and steps[0]["iterations_per_run"] == 4
        assert steps[0]["aicpu_float64"] == []  # nothing in training falls back to the AI CPU for float64
        assert all(c["on_device"] for c in mine if c["call"] == "compile_graph")
        assert not [c for c in mine if c["call"] == "host_session"]  # every session went through the adapter
    assert not [c for c in calls if c["call"] == "fatal"]
