"""Fake hccl.manage.api: ranks from the environment and the rank table."""
import json
import os


def _require_initialized():
    from npu_bridge.estimator import npu_ops

    if int(os.environ.get("RANK_SIZE", "1")) > 1 and not npu_ops.is_initialized():
        raise RuntimeError("HCCL is not initialized: run npu_ops.initialize_system() in a session first")


def get_rank_size(group="hccl_world_group"):
    _require_initialized()
    return int(os.environ.get("RANK_SIZE", "1"))


def get_rank_id(group="hccl_world_group"):
    _require_initialized()
    return int(os.environ.get("RANK_ID", "0"))


def get_local_rank_id(group="hccl_world_group"):
    _require_initialized()
    path = os.environ.get("RANK_TABLE_FILE")
    if not path:
        return 0
    with open(path) as handle:
        table = json.load(handle)
    rank = int(os.environ.get("RANK_ID", "0"))
    for server in table["server_list"]:
        ranks = sorted(int(device["rank_id"]) for device in server["device"])
        if rank in ranks:
            return ranks.index(rank)
    raise RuntimeError("rank {} is not in {}".format(rank, path))


def get_local_rank_size(group="hccl_world_group"):
    _require_initialized()
    path = os.environ.get("RANK_TABLE_FILE")
    if not path:
        return 1
    with open(path) as handle:
        table = json.load(handle)
    rank = int(os.environ.get("RANK_ID", "0"))
    for server in table["server_list"]:
        if rank in [int(device["rank_id"]) for device in server["device"]]:
            return len(server["device"])
    return 1
