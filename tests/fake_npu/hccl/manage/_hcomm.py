"""The fake's stand-in for libhcomm.so: HCCL's state in this process, and HCCL's own environment rules.

GE starts HCCL while it initialises (GEInitialize, called by GePlugin::Init, tf_adapter/util/ge_plugin.cc:358)
when the rank table is configured (is_use_hcom, ge_plugin.cc:378-401). :func:`start` is that start: it reads
HCCL's environment and the rank table and refuses what HCCL's documentation (hicann/hccl@09300b70,
docs/zh/user_guide/...) says is out of range. Its answer is an error text, or None; the adapter turns a failed
GE start into LOG(FATAL) "[GePlugin] Initialize ge failed" (ge_plugin.cc:363-369).

This module is the fake's own (the real hccl package loads libhcomm.so through ctypes).
"""
import json
import os
import re

HCCL_DOCS = "hicann/hccl@09300b70df9a031339f08e5f2ca06d7bf294d009 docs/zh/user_guide"
CONNECT_TIMEOUT_RANGE = (120, 7200)  # HCCL_CONNECT_TIMEOUT.md:7-9, seconds; HCCL waits value + 20 s
EXEC_TIMEOUT_RANGE = (1, 17340)      # HCCL_EXEC_TIMEOUT.md:33-37, Atlas training series: (0, 17340]
EXEC_TIMEOUT_DEFAULT = 1836
EXEC_TIMEOUT_UNIT = 68               # applied as floor(v / 68) * 68, at least 68
NOT_INITIALISED = 7                  # the fake's return code of a call before HCCL started (not a documented one)

state = {"started": False, "rank_table_file": None, "rank": None, "size": None, "local_rank": None,
         "local_size": None, "devices": {}, "exec_timeout": EXEC_TIMEOUT_DEFAULT, "connect_timeout": None}


def _integer(text):
    return re.match(r"^\s*[+-]?\d+\s*$", text or "") is not None


def _timeouts():
    """(connect, exec) in seconds, or an error text (HCCL_CONNECT_TIMEOUT.md:7-9, HCCL_EXEC_TIMEOUT.md:33-37)."""
    connect = os.environ.get("HCCL_CONNECT_TIMEOUT")
    if connect is not None:
        low, high = CONNECT_TIMEOUT_RANGE
        if not _integer(connect) or not low <= int(connect) <= high:
            return "HCCL_CONNECT_TIMEOUT[{}] is invalid: it must be an integer in [{}, {}] seconds ({}/hccl_env/" \
                   "HCCL_CONNECT_TIMEOUT.md:7-9)".format(connect, low, high, HCCL_DOCS)
        connect = int(connect)
    exec_timeout = os.environ.get("HCCL_EXEC_TIMEOUT")
    if exec_timeout is not None:
        low, high = EXEC_TIMEOUT_RANGE
        if not _integer(exec_timeout) or not low <= int(exec_timeout) <= high:
            return "HCCL_EXEC_TIMEOUT[{}] is invalid: on the Atlas training series it must be an integer in (0, {}] " \
                   "seconds ({}/hccl_env/HCCL_EXEC_TIMEOUT.md:33-37)".format(exec_timeout, high, HCCL_DOCS)
        exec_timeout = max(EXEC_TIMEOUT_UNIT, int(exec_timeout) // EXEC_TIMEOUT_UNIT * EXEC_TIMEOUT_UNIT)
    else:
        exec_timeout = EXEC_TIMEOUT_DEFAULT
    return connect, exec_timeout


def start(rank_table_file, rank_id, rank_size):
    """Start HCCL for this process; None, or why it cannot start."""
    timeouts = _timeouts()
    if isinstance(timeouts, str):
        return timeouts
    try:
        with open(rank_table_file) as handle:
            table = json.load(handle)
    except (OSError, ValueError) as problem:
        return "rank table {} cannot be read: {}".format(rank_table_file, problem)
    if not rank_id or not _integer(rank_id):
        return "RANK_ID [{}] is not set to this process's rank_id in {} (tfa_env docs: RANK_ID must match the " \
               "rank table)".format(rank_id, rank_table_file)
    servers = table.get("server_list") or []
    ranks = {}
    for server in servers:
        for device in server.get("device") or []:
            ranks[int(device["rank_id"])] = (server.get("server_id"), int(device["device_id"]))
    rank = int(rank_id)
    if len(ranks) != rank_size or rank not in ranks:
        return "RANK_ID {} / RANK_SIZE {} do not match the {} rank(s) of {}".format(rank, rank_size, len(ranks),
                                                                                 rank_table_file)
    server_id = ranks[rank][0]
    local = sorted(r for r, (server, _) in ranks.items() if server == server_id)
    state.update(started=True, rank_table_file=rank_table_file, rank=rank, size=len(ranks),
                 local_rank=local.index(rank), local_size=len(local),
                 devices={r: device for r, (_, device) in ranks.items()},
                 connect_timeout=timeouts[0], exec_timeout=timeouts[1])
    return None


def stop():
    state["started"] = False
