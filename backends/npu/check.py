"""``python cli.py npu check``: will a run on this server work? One table, and a non-zero exit if not.

Each row is one thing a first run depends on, with ``ok``, ``warn`` (a run may work, read the note) or
``FAIL`` (a run would fail, or would silently not use the NPU):

* adapter: the adapter for this TensorFlow imports (``npu_bridge`` or ``npu_device``);
* CANN environment: the variables CANN's ``set_env.sh`` sets, and no ``CM_*`` variables mixed with rank tables;
* npu-smi: the devices the driver sees, their chip and health;
* visible devices: the physical devices this process may open (``ASCEND_VISIBLE_DEVICES``,
  ``/dev/davinciN``, ``ASCEND_RT_VISIBLE_DEVICES``) and that each device of the run is among them;
* rank table: the given or built table is valid for this chip;
* device addresses: each device's ``device_ip`` against ``hccn_tool`` and ``/etc/hccn.conf``;
* HCCL timeouts: ``HCCL_CONNECT_TIMEOUT`` / ``HCCL_EXEC_TIMEOUT`` from the environment within HCCL's ranges;
* sync_mode: which case of the early-CANN workaround applies.
"""
from __future__ import annotations

import os
from typing import List, Tuple

from backends.npu import adapter as npu_adapter
from backends.npu import config as npu_config
from backends.npu import devices, launcher, rank_table, run_devices, sync_mode
from unet3d_core.errors import UNet3DError

OK, WARN, FAIL = "ok", "warn", "FAIL"
# What CANN's set_env.sh exports that the adapter and GE read at start-up.
CANN_VARIABLES = ("ASCEND_OPP_PATH", "ASCEND_AICPU_PATH")
CANN_HOME_VARIABLES = ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")
Row = Tuple[str, str, str]


def _adapter_row() -> Row:
    try:
        return "adapter", OK, npu_adapter.load().describe()
    except UNet3DError as error:
        return "adapter", FAIL, str(error)


def _environment_row(environment) -> Row:
    missing = [name for name in CANN_VARIABLES if not environment.get(name)]
    if not any(environment.get(name) for name in CANN_HOME_VARIABLES):
        missing.append(" or ".join(CANN_HOME_VARIABLES))
    try:
        launcher.refuse_mixed_environment(environment)
    except UNet3DError as error:
        return "CANN environment", FAIL, str(error)
    if missing:
        return "CANN environment", FAIL, "not set: {}; source CANN's set_env.sh (e.g. /usr/local/Ascend/" \
                                         "ascend-toolkit/set_env.sh)".format(", ".join(missing))
    home = next(environment[name] for name in CANN_HOME_VARIABLES if environment.get(name))
    return "CANN environment", OK, "set_env.sh sourced ({})".format(home)


def _npu_smi_row(found) -> Row:
    if found is None:
        return "npu-smi", FAIL, "npu-smi not found or failed: is the Ascend driver installed?"
    if not found:
        return "npu-smi", FAIL, "npu-smi lists no device"
    unhealthy = [device for device in found if device.health.upper() != "OK"]
    names = sorted({device.name for device in found})
    detail = "{} device(s): {} ({}); family {}".format(
        len(found), ",".join(str(device.npu_id) for device in found), "/".join(names),
        devices.detect_chip(found) or "unknown")
    if unhealthy:
        return "npu-smi", FAIL, detail + "; not healthy: " + ", ".join(
            "{} {}".format(device.npu_id, device.health) for device in unhealthy)
    return "npu-smi", OK, detail


def _address_row(table, server: str, hccn_conf: str) -> Row:
    configured = devices.configured_addresses(hccn_conf)
    problems, checked, unknown = [], 0, []
    for device in table.devices_of(server):
        if not device.device_ip:
            continue
        live = devices.hccn_tool_address(device.device_id)
        if live is None:
            unknown.append(device.device_id)
        elif live != device.device_ip:
            problems.append("device {}: rank table {} but hccn_tool says {}".format(
                device.device_id, device.device_ip, live))
        if device.device_id in configured and configured[device.device_id] != device.device_ip:
            problems.append("device {}: rank table {} but {} says {}".format(
                device.device_id, device.device_ip, hccn_conf, configured[device.device_id]))
        checked += 1
    if problems:
        return "device addresses", FAIL, "; ".join(problems) + " (HCCL would stop with 'ra rdev init failed')"
    if unknown:
        return "device addresses", WARN, "hccn_tool gave no address for device(s) {}; {} checked against {}".format(
            ",".join(map(str, unknown)), checked, hccn_conf)
    return "device addresses", OK, "{} device address(es) match hccn_tool and {}".format(checked, hccn_conf)


def _run_rows(options, environment) -> List[Row]:
    chip = devices.resolve_chip(options.npu_chip)
    try:
        table, path = run_devices.table_for(options, chip)
        where = path or "built from {}".format(options.hccn_conf)
        server = rank_table.this_server(table, options.server_id if options.rank_table else None)
    except UNet3DError as error:
        return [("rank table", FAIL, str(error))]
    rows = [("rank table", OK, "{}: version {}, {} rank(s) on {} server(s); {} rules".format(
        where, table.version, table.size, len(table.server_ids), chip))]
    try:
        visibility = launcher.visible_devices(environment)
        logical = [launcher.logical_device_id(device.device_id, visibility) for device in table.devices_of(server)]
        rows.append(("visible devices", WARN if visibility.assumed else OK,
                     "{}: physical {} -> ASCEND_DEVICE_ID {}".format(
                         visibility.source, ",".join(str(d.device_id) for d in table.devices_of(server)),
                         ",".join(map(str, logical)))))
    except UNet3DError as error:
        rows.append(("visible devices", FAIL, str(error)))
    rows.append(_address_row(table, server, options.hccn_conf))
    return rows


def _timeouts_row(environment, chip: str) -> Row:
    notes = []
    for _, variable, _ in npu_config.HCCL_TIMEOUTS:
        value = environment.get(variable)
        if value is None:
            continue
        low, high = npu_config.timeout_range(variable, chip)
        if not value.isdigit() or not low <= int(value) <= high:
            return "HCCL timeouts", FAIL, "{}={}: HCCL takes whole seconds within {}..{} ({} rules)".format(
                variable, value, low, high, chip)
        notes.append("{}={}".format(variable, value))
    return "HCCL timeouts", OK, ", ".join(notes) if notes else "HCCL's defaults (connect 120 s, execution 1836 s)"


def _sync_mode_row() -> Row:
    works, detail = sync_mode.inspect(sync_mode.find_cce_build())
    return "sync_mode", OK if works else FAIL, detail


def rows(options, environment=None) -> List[Row]:
    environment = dict(os.environ if environment is None else environment)
    result = [_adapter_row(), _environment_row(environment), _npu_smi_row(devices.npu_smi_devices())]
    result.extend(_run_rows(options, environment))
    result.extend([_timeouts_row(environment, devices.resolve_chip(options.npu_chip)), _sync_mode_row()])
    return result


def command(options) -> int:
    table = rows(options)
    width = max(len(name) for name, _, _ in table)
    print("{:<{w}}  {:<8}{}".format("check", "status", "detail", w=width))
    for name, status, detail in table:
        print("{:<{w}}  {:<8}{}".format(name, status, detail, w=width))
    failed = [name for name, status, _ in table if status == FAIL]
    if failed:
        print("{} check(s) failed: {}; a run would fail".format(len(failed), ", ".join(failed)))
        return 1
    print("all checks passed{}".format(" (read the warnings)" if any(s == WARN for _, s, _ in table) else ""))
    return 0
