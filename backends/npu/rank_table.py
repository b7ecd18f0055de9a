"""HCCL rank tables: build version 1.0 from /etc/hccn.conf, validate versions 1.0 and 1.2.

A rank table tells HCCL which device of which server holds which rank. Every
value is a string. Version 1.0 (Atlas training series, one or more servers)::

    {"version": "1.0", "status": "completed", "server_count": "1",
     "server_list": [{"server_id": "node_0",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]}]}

``server_id`` is any unique name of up to 64 characters (usually the host's
address); ``device_id`` is the physical device (``/dev/davinciN``). MindSpore's
``hccl_tools.py`` also writes ``"host_nic_ip": "reserve"``, which HCCL ignores.

On Atlas A2/A3 a one-server version 1.0 table may leave ``device_ip`` out.
Version 1.2 (Atlas A3 SuperPoD) makes ``server_count``, ``device_ip`` and
``super_device_id`` optional, adds ``host_ip``/port fields and a
``super_pod_list`` grouping servers.

Rank ids run 0..N-1, one block per server in ``server_list`` order (HCCL
refuses ranks interleaved across servers), and every server uses the same
number of devices. On Atlas 910 (not A2/A3) that number is 1, 2, 4 or 8, and a
2- or 4-device set stays within devices 0-3 or 4-7. A device
IP that does not match the NIC fails only later, at HCCL start-up, with "ra
rdev init failed"; everything checkable here is checked before any process
starts.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from unet3d_core.errors import ConfigError
from unet3d_core.folders import write_json_atomic

VERSIONS = ("1.0", "1.2")
MAX_DEVICES_PER_SERVER = 16
MAX_SERVER_ID_LENGTH = 64
# hccl_tools' placeholder for host_nic_ip; many published tables carry it.
HOST_NIC_PLACEHOLDER = "reserve"
# HCCL on Atlas 910 (docs/zh/user_guide/constraints.md): devices per server,
# and the two groups of four that a 2- or 4-device set may not straddle.
DEVICES_PER_SERVER_910 = (1, 2, 4, 8)
DEVICE_GROUPS_910 = (frozenset(range(0, 4)), frozenset(range(4, 8)))
# Device families, as npu-smi names the chips: Ascend 910 (Atlas 800 training servers, 910A/910B/910ProA..),
# Ascend 910B (Atlas A2: 910B1..910B4) and Ascend 910C (Atlas A3: 910_93xx).
CHIP_910, CHIP_A2, CHIP_A3 = "910", "910b", "910_93"
CHIPS = (CHIP_910, CHIP_A2, CHIP_A3)
_HCCN_ADDRESS = re.compile(r"^\s*address_(\d+)\s*=\s*(\S+)\s*$")


@dataclass(frozen=True)
class Device:
    server_id: str
    device_id: int
    device_ip: str  # "" where the table may leave it out (device_ip_required)
    rank_id: int


@dataclass(frozen=True)
class RankTable:
    version: str
    devices: List[Device]  # ordered by rank

    @property
    def size(self) -> int:
        return len(self.devices)

    @property
    def server_ids(self) -> List[str]:
        seen: List[str] = []
        for device in self.devices:
            if device.server_id not in seen:
                seen.append(device.server_id)
        return seen

    def devices_of(self, server_id: str) -> List[Device]:
        return [device for device in self.devices if device.server_id == server_id]


def read_hccn_conf(path: str) -> Dict[int, str]:
    """Device IPs from ``address_<device>=<ip>`` lines of an hccn.conf."""
    try:
        with open(path) as handle:
            lines = handle.readlines()
    except OSError as error:
        raise ConfigError("--hccn_conf {}: cannot read it ({}); it holds the device NIC addresses "
                          "(or pass --rank_table FILE)".format(path, error.strerror)) from None
    addresses = {}
    for number, line in enumerate(lines, start=1):
        match = _HCCN_ADDRESS.match(line)
        if match:
            device, address = int(match.group(1)), match.group(2)
            _check_ip(address, "--hccn_conf {} line {}: address_{}".format(path, number, device))
            addresses[device] = address
    if not addresses:
        raise ConfigError("--hccn_conf {}: no address_N=IP lines found".format(path))
    return addresses


def build_rank_table(server_id: str, device_ids: Sequence[int], device_ips: Dict[int, str],
                     hccn_conf: str = "hccn.conf") -> Dict:
    """A version 1.0 table for one server: rank i on ``device_ids[i]``."""
    _check_server_id(server_id, "--server_id")
    missing = [device for device in device_ids if device not in device_ips]
    if missing:
        raise ConfigError("{} has no address for device(s) {} (found devices {})".format(
            hccn_conf, ", ".join(map(str, missing)), ", ".join(map(str, sorted(device_ips)))))
    devices = [{"device_id": str(device), "device_ip": device_ips[device], "rank_id": str(rank)}
               for rank, device in enumerate(device_ids)]
    return {"version": "1.0", "status": "completed", "server_count": "1",
            "server_list": [{"server_id": server_id, "device": devices}]}


def _check_ip(value, where: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError("{}: '{}' is not an IP address".format(where, value)) from None


def _check_server_id(value: str, where: str) -> None:
    if not value or len(value) > MAX_SERVER_ID_LENGTH:
        raise ConfigError("{}: '{}' must be 1 to {} characters long (a name such as node_0, or the host's "
                          "address)".format(where, value, MAX_SERVER_ID_LENGTH))


def _string(container: Dict, key: str, where: str) -> str:
    if key not in container:
        raise ConfigError("{}: missing field '{}'".format(where, key))
    value = container[key]
    if not isinstance(value, str):
        raise ConfigError("{}.{}: must be a string (rank tables quote every value), got {}".format(
            where, key, json.dumps(value)))
    return value


def _number(container: Dict, key: str, where: str) -> int:
    value = _string(container, key, where)
    if not value.isdigit():
        raise ConfigError("{}.{}: '{}' is not a non-negative integer".format(where, key, value))
    return int(value)


def validate_rank_table(table, source: str = "rank table", chip: str = CHIP_910) -> RankTable:
    """Check a parsed rank table against the 1.0 / 1.2 schema and HCCL's placement rules.

    ``chip`` is the device family (:data:`CHIPS`): the 1, 2, 4 or 8 devices per server and the
    0-3 / 4-7 groups are HCCL's rules on Atlas 910 only; Atlas A2 and A3 servers may use any count.

    Raises:
        ConfigError: one line naming ``source`` and the first bad field by its
            path, e.g. ``server_list[0].device[3].rank_id``.
    """
    if not isinstance(table, dict):
        raise ConfigError("{}: must be a JSON object".format(source))
    version = _string(table, "version", source)
    if version not in VERSIONS:
        raise ConfigError("{}: version '{}' is not supported (use {})".format(source, version, " or ".join(VERSIONS)))
    status = _string(table, "status", source)
    if status != "completed":
        raise ConfigError("{}: status is '{}'; HCCL needs 'completed'".format(source, status))
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise ConfigError("{}: server_list must be a non-empty list".format(source))
    if version == "1.0" or "server_count" in table:  # optional in 1.2 only
        server_count = _number(table, "server_count", source)
        if server_count != len(servers):
            raise ConfigError("{}: server_count is {} but server_list has {} server(s)".format(
                source, server_count, len(servers)))
    per_server: List[List[Device]] = []
    seen_servers: Dict[str, str] = {}
    seen_ips: Dict[str, str] = {}
    for server_index, server in enumerate(servers):
        where = "{}: server_list[{}]".format(source, server_index)
        devices = _server_devices(server, source, "server_list[{}]".format(server_index), version, seen_ips,
                                  ip_required=device_ip_required(version, chip, len(servers)))
        server_id = devices[0].server_id
        if server_id in seen_servers:
            raise ConfigError("{}.server_id: '{}' is also the id of {}".format(
                where, server_id, seen_servers[server_id]))
        seen_servers[server_id] = "server_list[{}]".format(server_index)
        per_server.append(devices)
    devices = [device for server_devices in per_server for device in server_devices]
    _check_rank_ids(devices, source)
    _check_rank_blocks(per_server, source)
    _check_same_count(per_server, source)
    if chip == CHIP_910:
        _check_910_placement(per_server, source)
    if version == "1.2" and "super_pod_list" in table:
        _validate_super_pods(table["super_pod_list"], list(seen_servers), source)
    return RankTable(version, sorted(devices, key=lambda device: device.rank_id))


def device_ip_required(version: str, chip: str, servers: int) -> str:
    """Why each device must name its ``device_ip``, or "" where the table may leave it out. HCCL's rank-table
    guides (docs/zh/user_guide/cluster_info_config/): version 1.0 on Atlas 910, always
    (rank_table_config_910.md); version 1.0 on Atlas A2 and A3, on several servers only
    (rank_table_config_a2.md, rank_table_config_a3.md); version 1.2 (A3 SuperPoD), optional
    (rank_table_config_a3.md)."""
    if version != "1.0":
        return ""
    if chip == CHIP_910:
        return "HCCL needs it on Atlas 910"
    return "HCCL needs it when the table spans several servers" if servers > 1 else ""


def _server_devices(server, source: str, field: str, version: str, seen_ips: Dict[str, str],
                    ip_required: str = "required") -> List[Device]:
    """The devices of the ``server_list`` entry at ``field``, each value checked; a ``device_ip`` is
    checked when present and must be there when ``ip_required`` gives a reason."""
    where = "{}: {}".format(source, field)
    if not isinstance(server, dict):
        raise ConfigError("{}: must be an object".format(where))
    server_id = _string(server, "server_id", where)
    _check_server_id(server_id, where + ".server_id")
    if "host_ip" in server:
        _check_ip(_string(server, "host_ip", where), where + ".host_ip")
    if "host_nic_ip" in server:
        host_nic_ip = _string(server, "host_nic_ip", where)
        if host_nic_ip != HOST_NIC_PLACEHOLDER:
            _check_ip(host_nic_ip, where + ".host_nic_ip")
    entries = server.get("device")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("{}.device: must be a non-empty list".format(where))
    devices: List[Device] = []
    for device_index, entry in enumerate(entries):
        device_field = "{}.device[{}]".format(field, device_index)
        device_where = "{}: {}".format(source, device_field)
        if not isinstance(entry, dict):
            raise ConfigError("{}: must be an object".format(device_where))
        device_id = _number(entry, "device_id", device_where)
        if device_id >= MAX_DEVICES_PER_SERVER:
            raise ConfigError("{}.device_id: {} is out of range 0..{}".format(
                device_where, device_id, MAX_DEVICES_PER_SERVER - 1))
        if any(device.device_id == device_id for device in devices):
            raise ConfigError("{}.device_id: device {} appears twice on server {}".format(
                device_where, device_id, server_id))
        device_ip = ""
        if ip_required and "device_ip" not in entry:
            raise ConfigError("{}: missing field 'device_ip' ({})".format(device_where, ip_required))
        if "device_ip" in entry:
            device_ip = _string(entry, "device_ip", device_where)
            _check_ip(device_ip, device_where + ".device_ip")
            if device_ip in seen_ips:
                raise ConfigError("{}.device_ip: {} is also the address of {}".format(
                    device_where, device_ip, seen_ips[device_ip]))
            seen_ips[device_ip] = device_field
        if version == "1.2" and "super_device_id" in entry:
            _number(entry, "super_device_id", device_where)  # HCCL refuses an empty one
        devices.append(Device(server_id, device_id, device_ip, _number(entry, "rank_id", device_where)))
    return devices


def _check_rank_ids(devices: List[Device], source: str) -> None:
    ranks = sorted(device.rank_id for device in devices)
    duplicates = sorted({rank for rank in ranks if ranks.count(rank) > 1})
    if duplicates:
        raise ConfigError("{}: rank_id {} used by more than one device".format(
            source, ", ".join(map(str, duplicates))))
    if ranks != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        raise ConfigError("{}: rank ids must be 0..{} without gaps; missing {}".format(
            source, len(ranks) - 1, ", ".join(map(str, missing))))


def _check_rank_blocks(per_server: List[List[Device]], source: str) -> None:
    """Each server holds the next block of rank ids, in server_list order (HCCL: no interleaving)."""
    first = 0
    for server_index, devices in enumerate(per_server):
        expected = list(range(first, first + len(devices)))
        found = sorted(device.rank_id for device in devices)
        if found != expected:
            raise ConfigError("{}: server_list[{}].device[].rank_id: server {} holds ranks {}; HCCL needs each "
                              "server's ranks contiguous and in server_list order, here {}..{}".format(
                                  source, server_index, devices[0].server_id, ",".join(map(str, found)),
                                  expected[0], expected[-1]))
        first += len(devices)


def _check_910_placement(per_server: List[List[Device]], source: str) -> None:
    """HCCL's device-count rules on Atlas 910 (the training series that rank table 1.0 describes)."""
    for server_index, devices in enumerate(per_server):
        where = "{}: server_list[{}].device".format(source, server_index)
        ids = sorted(device.device_id for device in devices)
        if len(ids) not in DEVICES_PER_SERVER_910:
            raise ConfigError("{}: server {} uses {} devices; HCCL on Atlas 910 needs 1, 2, 4 or 8 per "
                              "server (on Atlas A2/A3 pass --npu_chip 910b or 910_93)".format(
                                  where, devices[0].server_id, len(ids)))
        if len(ids) in (2, 4) and not any(set(ids) <= group for group in DEVICE_GROUPS_910):
            raise ConfigError("{}: server {} uses devices {}; HCCL on Atlas 910 needs a {}-device set within "
                              "devices 0-3 or within 4-7 (on Atlas A2/A3 pass --npu_chip 910b or 910_93)".format(
                                  where, devices[0].server_id, ",".join(map(str, ids)), len(ids)))


def _check_same_count(per_server: List[List[Device]], source: str) -> None:
    """HCCL on every Atlas training server: n servers use k*n devices, the same k on each (constraints.md)."""
    for server_index, devices in enumerate(per_server):
        if len(devices) != len(per_server[0]):
            raise ConfigError("{}: server_list[{}].device: server {} uses {} devices but server {} uses {}; HCCL "
                              "needs the same number on every server".format(
                                  source, server_index, devices[0].server_id, len(devices),
                                  per_server[0][0].server_id, len(per_server[0])))


def _validate_super_pods(pods, server_ids: List[str], source: str) -> None:
    if not isinstance(pods, list):
        raise ConfigError("{}: super_pod_list must be a list".format(source))
    pod_of: Dict[str, int] = {}
    for pod_index, pod in enumerate(pods):
        where = "{}: super_pod_list[{}]".format(source, pod_index)
        if not isinstance(pod, dict):
            raise ConfigError("{}: must be an object".format(where))
        _string(pod, "super_pod_id", where)
        members = pod.get("server_list")
        if not isinstance(members, list):
            raise ConfigError("{}.server_list: must be a list".format(where))
        for member_index, member in enumerate(members):
            member_where = "{}.server_list[{}]".format(where, member_index)
            server_id = _string(member if isinstance(member, dict) else {}, "server_id", member_where)
            if server_id not in server_ids:
                raise ConfigError("{}.server_id: '{}' is not in the table's server_list".format(
                    member_where, server_id))
            if server_id in pod_of:
                raise ConfigError("{}.server_id: '{}' is also in super_pod_list[{}]".format(
                    member_where, server_id, pod_of[server_id]))
            pod_of[server_id] = pod_index
    # HCCL: the servers of one super-pod are listed together in server_list.
    order = [pod_of[server_id] for server_id in server_ids if server_id in pod_of]
    for position in range(1, len(order)):
        if order[position] != order[position - 1] and order[position] in order[:position]:
            raise ConfigError("{}: super_pod_list[{}]: its servers are not listed together in server_list; HCCL "
                              "needs each super-pod's servers side by side".format(source, order[position]))


def load_rank_table(path: str, chip: str = CHIP_910) -> RankTable:
    where = "rank table {}".format(path)
    try:
        with open(path) as handle:
            table = json.load(handle)
    except OSError as error:
        raise ConfigError("{}: cannot read it ({})".format(where, error.strerror)) from None
    except ValueError as error:
        raise ConfigError("{}: not valid JSON ({})".format(where, error)) from None
    return validate_rank_table(table, where, chip)


def write_rank_table(table: Dict, path: str) -> None:
    """Write atomically: workers must never read a half-written table."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json_atomic(path, table, indent=2)


def this_server(table: RankTable, server_id: Optional[str]) -> str:
    """The server of this machine in ``table``: ``--server_id``, or the only one."""
    if server_id is not None:
        if server_id not in table.server_ids:
            raise ConfigError("--server_id {}: not in the rank table (servers: {})".format(
                server_id, ", ".join(table.server_ids)))
        return server_id
    if len(table.server_ids) > 1:
        raise ConfigError("the rank table lists {} servers ({}); pass --server_id to say which one this is".format(
            len(table.server_ids), ", ".join(table.server_ids)))
    return table.server_ids[0]
