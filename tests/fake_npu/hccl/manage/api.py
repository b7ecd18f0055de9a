"""Fake hccl.manage.api (ships with CANN; the text of the real module: check_group, check_rank_num,
check_rank_id and one libhcomm call per function, each raising ValueError when the call fails).

The answers come from the rank table HCCL was started with (_hcomm.py); before HCCL started (GE starts it
with the rank table, initialize_system runs it in session-run mode) or after shutdown_system, every call fails
with the real module's ValueError.
"""
from hccl.manage import _hcomm

MAX_GROUP_NAME_LEN = 127
_groups = {}


def check_group(group):
    if isinstance(group, str):
        if len(group) > MAX_GROUP_NAME_LEN:
            raise ValueError("group name is invalid. group: " + group[0:MAX_GROUP_NAME_LEN])
        if len(group) == 0:
            raise ValueError("group name is empty.")
    else:
        raise ValueError("group must be a python str")


def check_rank_num(rank_num):
    if isinstance(rank_num, int):
        if rank_num <= 0:
            raise ValueError("rank_num[{}] is less than 0 or equal to 0".format(rank_num))
    else:
        raise ValueError("rank_num must be a python int")


def check_rank_id(rank_id):
    if isinstance(rank_id, int):
        if rank_id < 0:
            raise ValueError("rank_id[{}] is less than 0".format(rank_id))
    else:
        raise ValueError("rank_id must be a python int")


def _call(what, group):
    """The libhcomm return code of a call about ``group``: 0, or the fake's code for "not started"."""
    if not _hcomm.state["started"]:
        return _hcomm.NOT_INITIALISED
    if group != "hccl_world_group" and group not in _groups:
        return _hcomm.NOT_INITIALISED
    return 0


def create_group(group, rank_num, rank_ids):
    check_group(group)
    check_rank_num(rank_num)
    if not isinstance(rank_ids, list):
        raise ValueError("rank_ids must be a python list")
    if rank_num != len(rank_ids):
        raise ValueError("rank_num[{}]".format(rank_num) + " not equal to rank_ids len[{}].".format(len(rank_ids)))
    for rank_id in rank_ids:
        check_rank_id(rank_id)
    if not _hcomm.state["started"]:
        raise ValueError("create group error:" + group)
    _groups[group] = list(rank_ids)


def destroy_group(group):
    check_group(group)
    if _groups.pop(group, None) is None or not _hcomm.state["started"]:
        raise ValueError("destroy group error :" + group)


def _query(what, group):
    """check_group, then libhcomm's call: a non-zero return is "get <what> error. ret[<code>]"."""
    check_group(group)
    ret = _call(what, group)
    if ret != 0:
        raise ValueError("get {} error. ret[{}]".format(what, ret))


def get_rank_size(group="hccl_world_group"):
    _query("rank size", group)
    return len(_groups[group]) if group in _groups else _hcomm.state["size"]


def get_rank_id(group="hccl_world_group"):
    _query("rank id", group)
    return _groups[group].index(_hcomm.state["rank"]) if group in _groups else _hcomm.state["rank"]


def get_local_rank_size(group="hccl_world_group"):
    _query("local rank size", group)
    return _hcomm.state["local_size"]


def get_local_rank_id(group="hccl_world_group"):
    _query("local rank id", group)
    return _hcomm.state["local_rank"]


def get_world_rank_from_group_rank(group, group_rank_id):
    check_group(group)
    check_rank_id(group_rank_id)
    ret = _call("world rank", group)
    if ret != 0 or (group in _groups and group_rank_id >= len(_groups[group])):
        raise ValueError("get world rank from group rank error. ret[{}]".format(ret or _hcomm.NOT_INITIALISED))
    return _groups[group][group_rank_id] if group in _groups else group_rank_id


def get_group_rank_from_world_rank(world_rank_id, group):
    check_group(group)
    check_rank_id(world_rank_id)
    ret = _call("group rank", group)
    if ret != 0 or (group in _groups and world_rank_id not in _groups[group]):
        raise ValueError("get group rank from world rank error. ret[{}]".format(ret or _hcomm.NOT_INITIALISED))
    return _groups[group].index(world_rank_id) if group in _groups else world_rank_id
