"""Rank tables: what HCCL's docs accept is accepted, what HCCL would refuse at start-up is refused
before any process starts, in one line naming the file and the field."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from backends.npu.rank_table import load_rank_table, validate_rank_table
from unet3d_core.errors import ConfigError


def _server(server_id, device_ids, first_rank, ip_prefix="192.168.1", **fields):
    devices = [{"device_id": str(device), "device_ip": "{}{}.{}".format(ip_prefix, first_rank, device),
                "rank_id": str(first_rank + index)} for index, device in enumerate(device_ids)]
    return dict({"server_id": server_id, "device": devices}, **fields)


def _table(*servers, version="1.0"):
    return {"version": version, "status": "completed", "server_count": str(len(servers)),
            "server_list": list(servers)}


def test_server_ids_are_names_of_up_to_64_characters_not_only_addresses():
    table = validate_rank_table(_table(_server("node_0", [0, 1], 0), _server("node_1", [0, 1], 2)))
    assert table.server_ids == ["node_0", "node_1"]
    assert validate_rank_table(_table(_server("n" * 64, [0], 0))).server_ids == ["n" * 64]
    with pytest.raises(ConfigError, match=r"t.json: server_list\[0\].server_id: '.*' must be 1 to 64 characters"):
        validate_rank_table(_table(_server("n" * 65, [0], 0)), "t.json")


def test_host_nic_ip_reserve_as_hccl_tools_writes_it_is_accepted():
    assert validate_rank_table(_table(_server("10.0.0.5", range(8), 0, host_nic_ip="reserve"))).size == 8
    with pytest.raises(ConfigError, match=r"server_list\[0\].host_nic_ip: 'somewhere' is not an IP address"):
        validate_rank_table(_table(_server("10.0.0.5", range(8), 0, host_nic_ip="somewhere")))


def test_version_1_2_leaves_server_count_device_ip_super_device_id_and_host_ip_optional():
    table = {"version": "1.2", "status": "completed", "server_list": [
        {"server_id": "node_0", "device": [{"device_id": "0", "rank_id": "0"},
                                           {"device_id": "1", "rank_id": "1", "super_device_id": "7"}]}]}
    parsed = validate_rank_table(table, "a3.json")
    assert [(device.device_id, device.device_ip) for device in parsed.devices] == [(0, ""), (1, "")]
    table["server_list"][0]["device"][1]["super_device_id"] = ""
    with pytest.raises(ConfigError, match=r"a3.json: server_list\[0\].device\[1\].super_device_id: '' is not"):
        validate_rank_table(table, "a3.json")
    table["server_list"][0]["device"][1]["super_device_id"] = "7"
    table["server_count"] = "2"
    with pytest.raises(ConfigError, match="a3.json: server_count is 2 but server_list has 1"):
        validate_rank_table(table, "a3.json")


def test_version_1_0_still_requires_server_count_and_device_ip():
    table = _table(_server("node_0", [0, 1], 0))
    del table["server_count"]
    with pytest.raises(ConfigError, match="missing field 'server_count'"):
        validate_rank_table(table)
    table = _table(_server("node_0", [0, 1], 0))
    del table["server_list"][0]["device"][1]["device_ip"]
    with pytest.raises(ConfigError, match=r"server_list\[0\].device\[1\]: missing field 'device_ip' \(HCCL needs "
                                          r"it on Atlas 910\)"):
        validate_rank_table(table)


def test_a_one_server_a2_or_a3_table_without_device_ip_is_accepted_but_not_across_servers():
    """HCCL's rank_table_config_a2.md/_a3.md: device_ip is optional in a one-server version 1.0 table on
    Atlas A2/A3 (the 910B's HCCS links), required on several servers; on Atlas 910 it is always required."""
    one = _table(_server("node_0", range(8), 0))
    for device in one["server_list"][0]["device"]:
        del device["device_ip"]
    for chip in ("910b", "910_93"):
        parsed = validate_rank_table(one, "a2.json", chip=chip)
        assert [device.device_ip for device in parsed.devices] == [""] * 8
    with pytest.raises(ConfigError, match=r"a2.json: server_list\[0\].device\[0\]: missing field 'device_ip' "
                                          r"\(HCCL needs it on Atlas 910\)"):
        validate_rank_table(one, "a2.json", chip="910")
    two = _table(_server("node_0", [0, 1], 0), _server("node_1", [0, 1], 2))
    del two["server_list"][1]["device"][0]["device_ip"]
    with pytest.raises(ConfigError, match=r"server_list\[1\].device\[0\]: missing field 'device_ip' \(HCCL needs "
                                          r"it when the table spans several servers\)"):
        validate_rank_table(two, "a2.json", chip="910b")


def _interleaved():
    # HCCL's docs' own negative example: {0,1,2,7} on one server, {3,4,5,6} on the other.
    first, second = _server("node_0", [0, 1, 2, 3], 0), _server("node_1", [0, 1, 2, 3], 3, ip_prefix="192.168.2")
    first["device"][3]["rank_id"] = "7"
    return _table(first, second)


def _swapped():
    return _table(_server("node_0", [0, 1], 2), _server("node_1", [0, 1], 0, ip_prefix="192.168.2"))


@pytest.mark.parametrize("table, message", [
    (_interleaved(), r"t.json: server_list\[0\].device\[\].rank_id: server node_0 holds ranks 0,1,2,7; .*0..3"),
    (_swapped(), r"t.json: server_list\[0\].device\[\].rank_id: server node_0 holds ranks 2,3; .* in server_list "
                 r"order, here 0..1"),
    (_table(_server("node_0", [0, 1, 2], 0)), r"t.json: server_list\[0\].device: server node_0 uses 3 devices; "
                                              "HCCL on Atlas 910 needs 1, 2, 4 or 8"),
    (_table(_server("node_0", [2, 3, 4, 5], 0)), r"server_list\[0\].device: server node_0 uses devices 2,3,4,5; "
                                                 "HCCL on Atlas 910 needs a 4-device set within devices 0-3 or "
                                                 "within 4-7"),
    (_table(_server("node_0", [3, 4], 0)), "uses devices 3,4; .* a 2-device set within devices 0-3"),
    (_table(_server("node_0", range(8), 0), _server("node_1", [0, 1, 2, 3], 8, ip_prefix="192.168.2")),
     r"server_list\[1\].device: server node_1 uses 4 devices but server node_0 uses 8; .*same number"),
])
def test_placements_hccl_refuses_at_start_up_are_refused_before_launch(table, message):
    with pytest.raises(ConfigError, match=message):
        validate_rank_table(table, "t.json")


def test_placements_hccl_accepts_pass():
    for devices in ([0], [5], [0, 1], [6, 7], [0, 1, 2, 3], [4, 5, 6, 7], range(8)):
        assert validate_rank_table(_table(_server("node_0", devices, 0))).size == len(devices)
    two_servers = validate_rank_table(_table(_server("node_0", [4, 5], 0), _server("node_1", [4, 5], 2,
                                                                                     ip_prefix="192.168.2")))
    assert [(device.server_id, device.rank_id) for device in two_servers.devices] == [
        ("node_0", 0), ("node_0", 1), ("node_1", 2), ("node_1", 3)]
    # The 910 device-count rules are not A2's or A3's: there a server may use 3 devices, or straddle 3 and 4.
    for chip in ("910b", "910_93"):
        assert validate_rank_table(_table(_server("node_0", [0, 1, 2], 0), version="1.2"), chip=chip).size == 3
        assert validate_rank_table(_table(_server("node_0", [2, 3, 4, 5], 0)), chip=chip).size == 4
    with pytest.raises(ConfigError, match="needs 1, 2, 4 or 8 per server \\(on Atlas A2/A3 pass --npu_chip"):
        validate_rank_table(_table(_server("node_0", [0, 1, 2], 0), version="1.2"))


def test_super_pods_must_list_their_servers_together():
    servers = [_server("s{}".format(index), [0], index, ip_prefix="10.{}.".format(index)) for index in range(3)]
    table = _table(*servers, version="1.2")
    table["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "s0"}, {"server_id": "s2"}]},
                               {"super_pod_id": "1", "server_list": [{"server_id": "s1"}]}]
    with pytest.raises(ConfigError, match=r"super_pod_list\[0\]: its servers are not listed together"):
        validate_rank_table(table)
    table["super_pod_list"][0]["server_list"] = [{"server_id": "s0"}, {"server_id": "s1"}]
    table["super_pod_list"][1]["server_list"] = [{"server_id": "s2"}]
    assert validate_rank_table(table).size == 3
    table["super_pod_list"][1]["server_list"].append({"server_id": "s0"})
    with pytest.raises(ConfigError, match=r"super_pod_list\[1\].server_list\[1\].server_id: 's0' is also in "
                                          r"super_pod_list\[0\]"):
        validate_rank_table(table)


def test_a_bad_file_is_one_line_naming_the_file_and_the_field(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_interleaved()))
    with pytest.raises(ConfigError) as raised:
        load_rank_table(str(path))
    assert str(raised.value).startswith("rank table {}: server_list[0].device[].rank_id".format(path))
    assert "\n" not in str(raised.value)


def test_rank_table_check_command_accepts_a_named_server_and_refuses_interleaved_ranks(tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_table(_server("node_0", range(8), 0, host_nic_ip="reserve"))))
    bad.write_text(json.dumps(_interleaved()))
    run = [sys.executable, os.path.join(ROOT, "cli.py"), "npu", "rank-table", "--check"]
    result = subprocess.run(run + [str(good)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "valid version 1.0 rank table, 8 rank(s) on 1 server(s)" in result.stdout
    result = subprocess.run(run + [str(bad)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, cwd=ROOT)
    assert result.returncode != 0
    assert "server_list[0].device[].rank_id: server node_0 holds ranks 0,1,2,7" in result.stderr
