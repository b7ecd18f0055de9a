"""HCCL rank tables: build version 1.0 from /etc/hccn.conf, validate versions 1.0 and 1.2.

A rank table tells HCCL which device of which server holds which rank. Every
value is a string. Version 1.0 (one or more servers)::

    {"version": "1.0", "status": "completed", "server_count": "1",
     "server_list": [{"server_id": "10.0.0.1",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]}]}

Version 1.2 (Atlas A3 SuperPoD) adds ``super_device_id`` per device,
optional ``host_ip``/port fields, and a ``super_pod_list`` grouping servers.
A device IP that does not match the NIC fails only later, at HCCL start-up,
with "ra rdev init failed"; everything checkable here is checked before any
process starts.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from unet3d_core.errors import ConfigError

VERSIONS = ("1.0", "1.2")
MAX_DEVICES_PER_SERVER = 16
_HCCN_ADDRESS = re.compile(r"^\s*address_(\d+)\s*=\s*(\S+)\s*$")


@dataclass(frozen=True)
class Device:
    server_id: str
    device_id: int
    device_ip: str
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
    _check_ip(server_id, "--server_id")
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


def validate_rank_table(table, source: str = "rank table") -> RankTable:
    """Check a parsed rank table against the 1.0 / 1.2 schema.

    Raises:
        ConfigError: naming the first bad field by its path, e.g.
            ``server_list[0].device[3].rank_id``.
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
    server_count = _number(table, "server_count", source)
    if server_count != len(servers):
        raise ConfigError("{}: server_count is {} but server_list has {} server(s)".format(
            source, server_count, len(servers)))
    devices: List[Device] = []
    seen_servers, seen_ips = set(), {}
    for server_index, server in enumerate(servers):
        where = "{}: server_list[{}]".format(source, server_index)
        if not isinstance(server, dict):
            raise ConfigError("{}: must be an object".format(where))
        server_id = _string(server, "server_id", where)
        if version == "1.0":
            _check_ip(server_id, where + ".server_id")
        if server_id in seen_servers:
            raise ConfigError("{}.server_id: '{}' appears twice".format(where, server_id))
        seen_servers.add(server_id)
        for optional in ("host_ip", "host_nic_ip"):
            if optional in server:
                _check_ip(_string(server, optional, where), "{}.{}".format(where, optional))
        entries = server.get("device")
        if not isinstance(entries, list) or not entries:
            raise ConfigError("{}.device: must be a non-empty list".format(where))
        seen_devices = set()
        for device_index, entry in enumerate(entries):
            device_where = "{}.device[{}]".format(where, device_index)
            if not isinstance(entry, dict):
                raise ConfigError("{}: must be an object".format(device_where))
            device_id = _number(entry, "device_id", device_where)
            if device_id >= MAX_DEVICES_PER_SERVER:
                raise ConfigError("{}.device_id: {} is out of range 0..{}".format(
                    device_where, device_id, MAX_DEVICES_PER_SERVER - 1))
            if device_id in seen_devices:
                raise ConfigError("{}.device_id: device {} appears twice on server {}".format(
                    device_where, device_id, server_id))
            seen_devices.add(device_id)
            device_ip = _string(entry, "device_ip", device_where)
            _check_ip(device_ip, device_where + ".device_ip")
            if device_ip in seen_ips:
                raise ConfigError("{}.device_ip: {} is also the address of {}".format(
                    device_where, device_ip, seen_ips[device_ip]))
            seen_ips[device_ip] = device_where
            if version == "1.2" and "super_device_id" in entry:
                _number(entry, "super_device_id", device_where)
            rank_id = _number(entry, "rank_id", device_where)
            devices.append(Device(server_id, device_id, device_ip, rank_id))
    ranks = sorted(device.rank_id for device in devices)
    duplicates = sorted({rank for rank in ranks if ranks.count(rank) > 1})
    if duplicates:
        raise ConfigError("{}: rank_id {} used by more than one device".format(
            source, ", ".join(map(str, duplicates))))
    if ranks != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        raise ConfigError("{}: rank ids must be 0..{} without gaps; missing {}".format(
            source, len(ranks) - 1, ", ".join(map(str, missing))))
    if version == "1.2" and "super_pod_list" in table:
        _validate_super_pods(table["super_pod_list"], seen_servers, source)
    return RankTable(version, sorted(devices, key=lambda device: device.rank_id))


def _validate_super_pods(pods, server_ids, source: str) -> None:
    if not isinstance(pods, list):
        raise ConfigError("{}: super_pod_list must be a list".format(source))
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


def load_rank_table(path: str) -> RankTable:
    try:
        with open(path) as handle:
            table = json.load(handle)
    except OSError as error:
        raise ConfigError("--rank_table {}: cannot read it ({})".format(path, error.strerror)) from None
    except ValueError as error:
        raise ConfigError("--rank_table {}: not valid JSON ({})".format(path, error)) from None
    return validate_rank_table(table, "--rank_table {}".format(path))


def write_rank_table(table: Dict, path: str) -> None:
    """Write atomically: workers must never read a half-written table."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = path + ".partial"
    with open(temporary, "w") as handle:
        json.dump(table, handle, indent=2)
    os.replace(temporary, path)


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
