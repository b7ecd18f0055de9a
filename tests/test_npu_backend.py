"""The NPU backend against the fake adapter in tests/fake_npu (session config, loss scaling,
optimizer chain, rank tables, launcher environment, sync_mode patch)."""
import json
import os
import subprocess
import sys
import types

import pytest
import tensorflow as tf
from conftest import ROOT

from unet3d_core.errors import BackendError, ConfigError
from unet3d_core.types import DistributedStrategy

FAKE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_npu")
tf1 = tf.compat.v1


@pytest.fixture
def npu(fake_npu):
    """The npu plugin with the fake npu_bridge importable (gone again after the test); the fake's call log emptied."""
    import npu_bridge

    from backends.npu import plugin

    del npu_bridge.calls[:]
    yield plugin


def _options(**overrides):
    values = dict(backend="npu", npus=1, device_ids=None, rank_table=None, hccn_conf="/etc/hccn.conf",
                  server_id=None, job_id=None, hccl_connect_timeout=None, precision_mode="allow_fp32_to_fp16",
                  iterations_per_loop=1, hcom_parallel=False, enable_data_pre_proc=False,
                  mix_compile_mode=False, npu_option=[], npu_loss_scale=1.0, no_sync_mode_patch=True,
                  max_steps=16, model_dir="/tmp/unused")
    values.update(overrides)
    return types.SimpleNamespace(**values)


class _Ranks(DistributedStrategy):
    def __init__(self, size):
        self._size = size

    @property
    def size(self):
        return self._size


def _parameters(config):
    (entry,) = [e for e in config.graph_options.rewrite_options.custom_optimizers if e.name == "NpuOptimizer"]
    values = {}
    for key, value in entry.parameter_map.items():
        values[key] = getattr(value, value.WhichOneof("value"))
    return values


def test_session_config_has_the_npu_optimizer_and_adapter_rules(npu):
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    extra = ["op_debug_level=2", "enable_small_channel=true", "op_select_implmode=high_precision"]
    options = _options(iterations_per_loop=10, hcom_parallel=True, npu_option=extra)
    config = npu.unet3d_session_config(tf1.ConfigProto(), options, DistributedStrategy())
    parameters = _parameters(config)
    assert parameters["use_off_line"] is True
    assert parameters["precision_mode"] == b"allow_fp32_to_fp16"
    assert parameters["iterations_per_loop"] == 10
    assert parameters["enable_data_pre_proc"] is True  # required by the device loop
    assert parameters["hcom_parallel"] is True and parameters["mix_compile_mode"] is False
    assert parameters["op_debug_level"] == 2 and parameters["enable_small_channel"] is True
    assert parameters["op_select_implmode"] == b"high_precision"
    assert config.graph_options.rewrite_options.remapping == RewriterConfig.OFF
    assert config.graph_options.rewrite_options.memory_optimization == RewriterConfig.OFF
    # Applying twice keeps one NpuOptimizer entry.
    again = npu.unet3d_session_config(config, _options(precision_mode="force_fp32"), DistributedStrategy())
    assert _parameters(again)["precision_mode"] == b"force_fp32"


@pytest.mark.parametrize("overrides, message", [
    ({"mix_compile_mode": True, "iterations_per_loop": 4}, "--mix_compile_mode needs --iterations_per_loop 1"),
    ({"iterations_per_loop": 5}, "16 steps per device must be a multiple"),
    ({"npu_option": ["no_equals_sign"]}, "--npu_option no_equals_sign: expected KEY=VALUE"),
    ({"device_ids": "0,x"}, "--device_ids 0,x"),
    ({"npus": 2, "device_ids": "3"}, "1 device(s) listed for --npus 2"),
])
def test_bad_npu_flags_are_refused(npu, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        npu.unet3d_validate_options(_options(**overrides))


def test_loss_scale_flag_keeps_the_seed_meaning(npu):
    import npu_bridge

    graph = tf.Graph()
    with graph.as_default():
        adam = tf1.train.AdamOptimizer(0.1)
        assert npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=0), DistributedStrategy()) is adam
        dynamic = npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=1), DistributedStrategy())
        fixed = npu.unet3d_mixed_precision(adam, _options(npu_loss_scale=1048576), DistributedStrategy())
    managers = [call for call in npu_bridge.calls if call["call"].endswith("LossScaleManager")]
    assert managers[0] == dict(managers[0], call="ExponentialUpdateLossScaleManager")
    assert managers[0]["args"] == {"init_loss_scale": 2.0 ** 32, "incr_every_n_steps": 1000,
                                   "decr_every_n_nan_or_inf": 2, "incr_ratio": 2.0, "decr_ratio": 0.5}
    assert managers[1]["call"] == "FixedLossScaleManager" and managers[1]["args"]["loss_scale"] == 1048576
    assert not dynamic.unet3d_distributed and not fixed.unet3d_distributed


def test_distributed_chain_is_loss_scaling_around_the_distributed_optimizer(npu):
    import npu_bridge

    with tf.Graph().as_default():
        chain = npu.unet3d_mixed_precision(tf1.train.AdamOptimizer(0.1), _options(npu_loss_scale=1), _Ranks(8))
    assert chain.unet3d_distributed  # the strategy must not wrap it again
    names = [(call["call"], call["args"]) for call in npu_bridge.calls if "Optimizer" in call["call"]]
    assert names[0] == ("NPUDistributedOptimizer", {"optimizer": "AdamOptimizer",
                                                    "is_weight_update_sharding": False})
    assert names[1][0] == "NPULossScaleOptimizer"
    assert names[1][1]["opt"] == "NPUDistributedOptimizer" and names[1][1]["is_distributed"] is True


def test_overflow_steps_are_skipped_and_counted(npu):
    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        # Gradients of 2e30..4e30 times the initial scale 2^32 overflow float32.
        weight = tf1.get_variable("w", initializer=[1e30, 2e30])
        optimizer = npu.unet3d_mixed_precision(tf1.train.GradientDescentOptimizer(0.1),
                                               _options(npu_loss_scale=1), DistributedStrategy())
        overflowing = optimizer.minimize(tf.reduce_sum(weight * weight), global_step=step)
        metrics = optimizer.unet3d_step_metrics()
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        session.run(overflowing)
        session.run(overflowing)
        values = session.run({"step": step, "weight": weight, **metrics})
    assert values["overflow_steps"] == 2
    assert values["step"] == 0  # skipped steps do not count
    assert values["weight"].tolist() == pytest.approx([1e30, 2e30])
    assert values["loss_scale"] == 2.0 ** 31  # halved after two overflows


def test_iterations_per_loop_goes_through_the_adapter_loop(npu):
    import npu_bridge

    graph = tf.Graph()
    with graph.as_default():
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.assign_add(step, 1).op
    with tf1.Session(graph=graph) as session:
        assert npu.unet3d_training_loop(session, train_op, _options()) == (train_op, 1)
        op, steps = npu.unet3d_training_loop(session, train_op, _options(iterations_per_loop=4))
    assert steps == 4 and op.name == "IterationOp"
    assert [c["args"] for c in npu_bridge.calls if c["call"] == "set_iteration_per_loop"] == [
        {"iterations_per_loop": 4}]


def test_backends_lists_npu_as_usable_with_the_adapter_and_says_why_not_without():
    with_fake = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "backends"], universal_newlines=True,
                               stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=FAKE), cwd=ROOT)
    assert [line for line in with_fake.stdout.splitlines() if line.startswith("npu ")][0].split()[1] == "yes"
    without = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "backends"], universal_newlines=True,
                             stdout=subprocess.PIPE, cwd=ROOT)
    line = [line for line in without.stdout.splitlines() if line.startswith("npu ")][0]
    assert " no " in line and "npu_bridge not importable" in line


def test_without_the_adapter_preparing_the_environment_fails_clearly(monkeypatch):
    from backends.npu import plugin

    monkeypatch.setattr(plugin, "_adapter_present", lambda: False)
    with pytest.raises(BackendError, match="npu_bridge not importable"):
        plugin.unet3d_prepare_environment(_options())


def test_an_npu_process_builds_the_textbook_model(npu):
    """The adapter compiles the graph for the device: TensorFlow's own ops, none of the CPU rewrites."""
    from unet3d_core import plugins
    from unet3d_core.layers import LayerOps

    assert type(plugins.load_backend(npu, "npu").layer_ops(_options())) is LayerOps


def test_built_rank_table_is_written_with_the_workers_environment(npu, tmp_path):
    from backends.npu import launcher, rank_table

    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.100.101\nnetmask_0=255.255.255.0\naddress_1=192.168.101.101\n"
                    "address_2=192.168.102.101\naddress_3=192.168.103.101\n")
    addresses = rank_table.read_hccn_conf(str(conf))
    built = rank_table.build_rank_table("10.0.0.5", [2, 3], addresses)
    assert built == {"version": "1.0", "status": "completed", "server_count": "1", "server_list": [
        {"server_id": "10.0.0.5", "device": [
            {"device_id": "2", "device_ip": "192.168.102.101", "rank_id": "0"},
            {"device_id": "3", "device_ip": "192.168.103.101", "rank_id": "1"}]}]}
    table = rank_table.validate_rank_table(built)
    workers = launcher.worker_environments(table=table, server_id="10.0.0.5", table_path="/run/table.json",
                                           job_id="job-7", model_dir="/run", base={"PATH": "/bin"},
                                           hccl_connect_timeout=600)
    assert [(w.rank, w.device_id, w.log_path) for w in workers] == [
        (0, 2, "/run/Device-2/train.log"), (1, 3, "/run/Device-3/train.log")]
    assert {key: workers[1].environment[key] for key in ("RANK_TABLE_FILE", "RANK_SIZE", "RANK_ID",
                                                          "ASCEND_DEVICE_ID", "JOB_ID", "HCCL_CONNECT_TIMEOUT",
                                                          "PATH")} == {
        "RANK_TABLE_FILE": "/run/table.json", "RANK_SIZE": "2", "RANK_ID": "1", "ASCEND_DEVICE_ID": "3",
        "JOB_ID": "job-7", "HCCL_CONNECT_TIMEOUT": "600", "PATH": "/bin"}
    with pytest.raises(ConfigError, match="CM_CHIEF_IP set in the environment"):
        launcher.worker_environments(table=table, server_id="10.0.0.5", table_path="t", job_id="j", model_dir="/r",
                                     base={"CM_CHIEF_IP": "10.0.0.1"})
    with pytest.raises(ConfigError, match="no address for device"):
        rank_table.build_rank_table("10.0.0.5", [7], addresses)


def _table(devices=2, **server_fields):
    return {"version": "1.0", "status": "completed", "server_count": "1", "server_list": [dict({
        "server_id": "10.0.0.5", "device": [{"device_id": str(i), "device_ip": "192.168.10{}.101".format(i),
                                             "rank_id": str(i)} for i in range(devices)]}, **server_fields)]}


def _broken(change):
    table = _table(3)
    change(table)
    return table


@pytest.mark.parametrize("table, message", [
    (_broken(lambda t: t.pop("status")), "missing field 'status'"),
    (_broken(lambda t: t["server_list"][0]["device"][1].pop("device_ip")),
     r"server_list\[0\].device\[1\]: missing field 'device_ip'"),
    (_broken(lambda t: t["server_list"][0]["device"][2].update(rank_id="1")), "rank_id 1 used by more than one"),
    (_broken(lambda t: t["server_list"][0]["device"][2].update(rank_id="5")), "without gaps; missing 2"),
    (_broken(lambda t: t["server_list"][0]["device"][0].update(rank_id=0)),
     r"device\[0\].rank_id: must be a string .* got 0"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_ip="192.168.1.300")),
     "'192.168.1.300' is not an IP address"),
    (_broken(lambda t: t.update(server_count="2")), "server_count is 2 but server_list has 1"),
    (_broken(lambda t: t.update(version="2.0")), "version '2.0' is not supported"),
    (_broken(lambda t: t["server_list"][0]["device"][1].update(device_id="0")), "device 0 appears twice"),
])
def test_broken_rank_tables_are_refused_naming_the_field(table, message):
    from backends.npu.rank_table import validate_rank_table

    with pytest.raises(ConfigError, match=message):
        validate_rank_table(table, "table.json")


def test_version_1_2_tables_with_super_pods_are_accepted():
    from backends.npu.rank_table import validate_rank_table

    table = _table(2)
    table["version"] = "1.2"
    for device in table["server_list"][0]["device"]:
        device["super_device_id"] = str(100 + int(device["device_id"]))
    table["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "10.0.0.5"}]}]
    assert validate_rank_table(table).size == 2
    table["super_pod_list"][0]["server_list"][0]["server_id"] = "10.9.9.9"
    with pytest.raises(ConfigError, match="'10.9.9.9' is not in the table's server_list"):
        validate_rank_table(table)


def test_rank_table_file_with_wrong_device_count_stops_before_launch(npu, tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_table(4)))
    with pytest.raises(ConfigError, match="--npus 8: the rank table has 4 device"):
        npu.unet3d_validate_options(_options(npus=8, rank_table=str(path)))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        npu.unet3d_validate_options(_options(npus=8, rank_table=str(path)))


def _cce_build(tmp_path, text="def build(sync_mode=2):\n    return sync_mode\n"):
    folder = tmp_path / "site" / "te" / "platform"
    folder.mkdir(parents=True)
    path = folder / "cce_build.py"
    path.write_text(text)
    return str(path)


def test_sync_mode_patch_is_idempotent_keeps_a_backup_and_unpatches(tmp_path):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    assert sync_mode.find_cce_build([str(tmp_path / "elsewhere"), str(tmp_path / "site")]) == path
    assert sync_mode.patch(path) == "patched"
    assert "sync_mode=0" in open(path).read() and "sync_mode=2" not in open(path).read()
    assert sync_mode.patch(path) == "already patched"
    assert "sync_mode=2" in open(path + sync_mode.BACKUP_SUFFIX).read()
    assert sync_mode.unpatch(path) == "restored"
    assert "sync_mode=2" in open(path).read()
    assert sync_mode.unpatch(path) == "no backup"
    other = _cce_build(tmp_path / "clean", "SYNC = 0\n")
    assert sync_mode.patch(other) == "not affected"


def test_eight_processes_patching_at_once_patch_once(tmp_path):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    script = "import sys; sys.path.insert(0, {!r}); from backends.npu import sync_mode; " \
             "print(sync_mode.patch({!r}))".format(ROOT, path)
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, universal_newlines=True)
                 for _ in range(8)]
    results = sorted(process.communicate()[0].strip() for process in processes)
    assert results == ["already patched"] * 7 + ["patched"]
    assert open(path).read().count("sync_mode=0") == 1
    assert "sync_mode=2" in open(path + sync_mode.BACKUP_SUFFIX).read()


def test_unwritable_cce_build_is_a_clear_error(tmp_path, monkeypatch):
    from backends.npu import sync_mode

    path = _cce_build(tmp_path)
    monkeypatch.setattr(sync_mode.os, "access", lambda *args: False)  # root can write anything: pretend
    with pytest.raises(BackendError, match="is not writable; .* --no_sync_mode_patch"):
        sync_mode.patch(path)


def test_npu_unpatch_command(tmp_path):
    path = _cce_build(tmp_path)
    for tool, expected in (("patch", "patched"), ("unpatch", "restored")):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "npu", tool, "--path", path],
                                stdout=subprocess.PIPE, universal_newlines=True, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip().endswith(expected)
