"""The devices of a run and its rank table, shared by the npu backend's hooks (:mod:`backends.npu.plugin`)
and ``npu check`` (:mod:`backends.npu.check`).

``--device_ids`` (default ``0..npus-1``) names the physical devices on this
server; the rank table is the file ``--rank_table`` names, or one built from
those devices and the NIC addresses of ``--hccn_conf``, validated by the
placement rules of the device family (``--npu_chip``).
"""
from __future__ import annotations

import os
import socket

from backends.npu import devices, rank_table
from unet3d_core.errors import ConfigError


def device_ids(options):
    """The physical devices of ``--device_ids`` (default 0..npus-1), checked against ``--npus``."""
    if options.device_ids is None:
        return list(range(options.npus))
    try:
        ids = [int(part) for part in options.device_ids.split(",") if part.strip()]
    except ValueError:
        raise ConfigError("--device_ids {}: expected comma-separated integers like 0,1,2,3".format(
            options.device_ids)) from None
    if len(ids) != options.npus:
        raise ConfigError("--device_ids {}: {} device(s) listed for --npus {}".format(
            options.device_ids, len(ids), options.npus))
    if len(set(ids)) != len(ids) or any(not 0 <= device < rank_table.MAX_DEVICES_PER_SERVER for device in ids):
        raise ConfigError("--device_ids {}: ids must be distinct and within 0..{}".format(
            options.device_ids, rank_table.MAX_DEVICES_PER_SERVER - 1))
    return ids


def host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def built_table(options):
    """The version 1.0 table of --device_ids on this server (--server_id), with the addresses of --hccn_conf."""
    return rank_table.build_rank_table(options.server_id or host_address(), device_ids(options),
                                       rank_table.read_hccn_conf(options.hccn_conf), options.hccn_conf)


def table_for(options, chip=None):
    """(validated table, path) for this run (also ``npu check``'s); a built table's path is None (the launcher
    writes it into the run folder). ``chip``: the device family, default --npu_chip resolved."""
    chip = chip or devices.resolve_chip(getattr(options, "npu_chip", "auto"))
    if options.rank_table is not None:
        return rank_table.load_rank_table(options.rank_table, chip), os.path.abspath(options.rank_table)
    return rank_table.validate_rank_table(built_table(options), "built rank table", chip), None
