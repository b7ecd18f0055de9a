"""`cli.py npu check`: one table of what a run on this server depends on, exit 1 when a run would fail.

The driver's tools are the fakes in tests/fake_npu/bin (npu-smi's table layout, hccn_tool's ipaddr line).
"""
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from fake_npu_env import adapter_fake

FAKE = adapter_fake()
CANN = {"ASCEND_OPP_PATH": "/usr/local/Ascend/opp", "ASCEND_AICPU_PATH": "/usr/local/Ascend",
        "ASCEND_HOME_PATH": "/usr/local/Ascend/ascend-toolkit/latest"}


@pytest.fixture
def server(tmp_path):
    """A healthy 4-device Atlas A2 server in a container holding davinci4-7: (hccn.conf, environment)."""
    conf = tmp_path / "hccn.conf"
    conf.write_text("".join("address_{0}=192.168.1{0}.1\n".format(device) for device in range(8)))
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("ASCEND_", "HCCL_", "CM_", "RANK_"))}
    environment.update(CANN, PYTHONPATH=FAKE, PATH=os.path.join(FAKE, "bin") + os.pathsep + environment["PATH"],
                       FAKE_NPU_SMI="4:910B3:OK,5:910B3:OK,6:910B3:OK,7:910B3:OK",
                       FAKE_HCCN_ADDRESSES=",".join("{0}=192.168.1{0}.1".format(d) for d in range(8)),
                       ASCEND_VISIBLE_DEVICES="4-7")
    return str(conf), environment


def _check(environment, *flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "npu", "check"] + list(flags),
                            env=environment, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=120)
    table = {}
    for line in result.stdout.splitlines()[1:]:
        name = next((row for row in ("adapter", "CANN environment", "npu-smi", "rank table", "visible devices",
                                     "device addresses", "HCCL timeouts", "sync_mode") if line.startswith(row)),
                    None)
        if name:
            status, _, detail = line[len(name):].strip().partition(" ")
            table[name] = (status, detail.strip())
    return result, table


def test_a_ready_server_passes_every_check(server):
    conf, environment = server
    result, table = _check(environment, "--npus", "3", "--device_ids", "4,5,6", "--hccn_conf", conf,
                           "--server_id", "node_0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {name: status for name, (status, _) in table.items()} == {
        "adapter": "ok", "CANN environment": "ok", "npu-smi": "ok", "rank table": "ok", "visible devices": "ok",
        "device addresses": "ok", "HCCL timeouts": "ok", "sync_mode": "ok"}
    assert "4 device(s): 4,5,6,7 (910B3); family 910b" in table["npu-smi"][1]
    assert "3 rank(s) on 1 server(s); 910b rules" in table["rank table"][1]  # 3 devices are fine on an A2
    assert "physical 4,5,6 -> ASCEND_DEVICE_ID 0,1,2" in table["visible devices"][1]
    assert "3 device address(es) match hccn_tool" in table["device addresses"][1]
    assert "all checks passed" in result.stdout


def test_each_problem_fails_its_row_and_the_exit_code(server, tmp_path):
    conf, environment = server
    flags = ["--npus", "2", "--device_ids", "4,5", "--hccn_conf", conf, "--server_id", "node_0"]
    # A NIC whose address is not the one the rank table gives.
    changed = dict(environment, FAKE_HCCN_ADDRESSES="4=192.168.14.1,5=10.0.0.5")
    result, table = _check(changed, *flags)
    assert result.returncode == 1
    assert table["device addresses"][0] == "FAIL"
    assert "device 5: rank table 192.168.15.1 but hccn_tool says 10.0.0.5" in table["device addresses"][1]
    assert "1 check(s) failed: device addresses; a run would fail" in result.stdout
    # A device the container does not hold; set_env.sh not sourced; an unhealthy chip; a bad timeout.
    broken = {name: value for name, value in environment.items() if name not in CANN}
    broken.update(ASCEND_VISIBLE_DEVICES="6-7", FAKE_NPU_SMI="6:910B3:OK,7:910B3:Alarm", HCCL_CONNECT_TIMEOUT="60")
    result, table = _check(broken, *flags)
    assert result.returncode == 1
    assert table["visible devices"] == ("FAIL", table["visible devices"][1])
    assert "device 4 is not visible here" in table["visible devices"][1]
    assert table["CANN environment"][0] == "FAIL" and "source CANN's set_env.sh" in table["CANN environment"][1]
    assert table["npu-smi"][0] == "FAIL" and "not healthy: 7 Alarm" in table["npu-smi"][1]
    assert table["HCCL timeouts"] == ("FAIL", "HCCL_CONNECT_TIMEOUT=60: HCCL takes whole seconds within 120..7200 "
                                              "(910b rules)")
    # On an Atlas 910 (npu-smi says 910A) a 3-device set breaks HCCL's placement rules.
    ascend_910 = dict(environment, FAKE_NPU_SMI="4:910A:OK,5:910A:OK,6:910A:OK,7:910A:OK")
    result, table = _check(ascend_910, "--npus", "3", "--device_ids", "4,5,6", "--hccn_conf", conf,
                           "--server_id", "node_0")
    assert result.returncode == 1 and table["rank table"][0] == "FAIL"
    assert "HCCL on Atlas 910 needs 1, 2, 4 or 8 per server" in table["rank table"][1]


def test_without_adapter_or_driver_the_check_says_so(server):
    conf, environment = server
    bare = dict(environment, PYTHONPATH="", FAKE_NPU_SMI="")
    result, table = _check(bare, "--npus", "1", "--hccn_conf", conf)
    assert result.returncode == 1
    assert table["adapter"][0] == "FAIL" and "neither npu_bridge nor npu_device importable" in table["adapter"][1]
    assert table["npu-smi"] == ("FAIL", "npu-smi not found or failed: is the Ascend driver installed?")
    assert "Traceback" not in result.stderr


def test_sync_mode_row_says_which_case_applies_and_writes_nothing(server, tmp_path, monkeypatch):
    conf, environment = server
    site = tmp_path / "site"
    (site / "te" / "platform").mkdir(parents=True)
    target = site / "te" / "platform" / "cce_build.py"
    target.write_text("def build(sync_mode=2):\n    return sync_mode\n")
    result, table = _check(dict(environment, PYTHONPATH=FAKE + os.pathsep + str(site)), "--npus", "1",
                           "--device_ids", "4", "--hccn_conf", conf, "--server_id", "node_0")
    assert table["sync_mode"] == ("ok", "{}: needs the patch (sync_mode=2); the first run applies it".format(target))
    assert target.read_text() == "def build(sync_mode=2):\n    return sync_mode\n"
    assert sorted(os.listdir(str(target.parent))) == ["cce_build.py"]  # no lock, no backup
    # A toolkit this user cannot write (root-owned, as installed): the check fails and names the command.
    from backends.npu import sync_mode

    monkeypatch.setattr(sync_mode.os, "access", lambda path, mode: False)
    works, detail = sync_mode.inspect(str(target))
    assert not works and "is not writable" in detail and "run once as root: sudo " in detail


@pytest.mark.parametrize("smi, value, status", [("910B3", "0", "ok"), ("910B3", "30000", "ok"),
                                                ("910A", "30000", "FAIL"), ("910A", "0", "FAIL"),
                                                ("910A", "1836", "ok")])
def test_hccl_exec_timeout_is_checked_against_the_devices_range(server, smi, value, status):
    """HCCL_EXEC_TIMEOUT.md: the Atlas training series takes (0, 17340]; A2 and A3 [0, 2147483647], 0 = never."""
    conf, environment = server
    chips = dict(environment, FAKE_NPU_SMI=",".join("{}:{}:OK".format(device, smi) for device in range(4, 8)),
                 HCCL_EXEC_TIMEOUT=value)
    _, table = _check(chips, "--npus", "2", "--device_ids", "4,5", "--hccn_conf", conf, "--server_id", "node_0")
    assert table["HCCL timeouts"][0] == status, table["HCCL timeouts"]
    if status == "FAIL":
        assert "within 1..17340 (910 rules)" in table["HCCL timeouts"][1]
