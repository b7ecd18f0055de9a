"""What the driver's tools say about this server: ``npu-smi info`` (devices, chip names, health) and
``hccn_tool`` (each device's NIC address), with ``/etc/hccn.conf`` as the configured addresses.

``npu-smi info`` prints one block per device whose first line is ``| <NPU> <Name> | <Health> | ...``,
e.g. ``| 0     910B3               | OK            | 94.4  37 ...``; the name says the family:
``910A``/``910B``/``910ProA``/``910PremiumA`` (Ascend 910, Atlas training series), ``910B1``..``910B4``
(Atlas A2), ``910_93xx`` (Atlas A3). ``hccn_tool -i <id> -ip -g`` prints ``ipaddr:<address>``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional

from backends.npu import rank_table
from unet3d_core.errors import ConfigError

TOOL_TIMEOUT_SECONDS = 30
_NPU_SMI_ROW = re.compile(r"^\|\s*(\d+)\s+([A-Za-z0-9][\w.-]*)\s*\|\s*([A-Za-z][\w-]*)\s*\|")
_IPADDR = re.compile(r"^\s*ipaddr\s*:\s*(\S+)\s*$", re.M)


@dataclass(frozen=True)
class NpuDevice:
    npu_id: int
    name: str
    health: str


def _run(command: List[str]) -> Optional[str]:
    """The tool's standard output, or None when it is not installed, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=TOOL_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def parse_npu_smi(text: str) -> List[NpuDevice]:
    devices = []
    for line in text.splitlines():
        match = _NPU_SMI_ROW.match(line)
        if match:
            devices.append(NpuDevice(int(match.group(1)), match.group(2), match.group(3)))
    return devices


def npu_smi_devices() -> Optional[List[NpuDevice]]:
    """The devices ``npu-smi info`` lists, or None without a working npu-smi."""
    text = _run(["npu-smi", "info"])
    return None if text is None else parse_npu_smi(text)


def chip_family(name: str) -> Optional[str]:
    """The family (one of :data:`rank_table.CHIPS`) of an npu-smi chip name, or None when unknown."""
    compact = name.replace("Ascend", "")
    if re.match(r"^910_?93", compact):
        return rank_table.CHIP_A3
    if re.match(r"^910B\d", compact):
        return rank_table.CHIP_A2
    if compact.startswith("910"):
        return rank_table.CHIP_910
    return None


def detect_chip(devices: Optional[List[NpuDevice]] = None) -> Optional[str]:
    """This server's device family from npu-smi, or None when npu-smi is missing or names no known chip."""
    devices = npu_smi_devices() if devices is None else devices
    families = {chip_family(device.name) for device in devices or []} - {None}
    return families.pop() if len(families) == 1 else None


def resolve_chip(flag: str) -> str:
    """``--npu_chip``: the given family, or auto: npu-smi's, else the Atlas training series (the strict rules)."""
    if flag != "auto":
        return flag
    return detect_chip() or rank_table.CHIP_910


def hccn_tool_address(device_id: int) -> Optional[str]:
    """The address ``hccn_tool`` reports for a physical device's NIC, or None."""
    text = _run(["hccn_tool", "-i", str(device_id), "-ip", "-g"])
    match = _IPADDR.search(text or "")
    return match.group(1) if match else None


def configured_addresses(path: str) -> Dict[int, str]:
    """``address_<id>`` entries of an hccn.conf, {} when the file is missing or unreadable."""
    try:
        return rank_table.read_hccn_conf(path)
    except ConfigError:  # missing or empty: for a check that is a finding, not an error
        return {}
