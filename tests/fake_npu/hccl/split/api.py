"""Fake hccl.split.api (CANN's hccl Python package, ``hccl/split/api.py``): the gradient split strategy.

The real module checks its arguments in Python and then makes one libhcomm call
(``HcomSetGradFusionByIndex`` / ``HcomSetGradFusionBySize``); a non-zero return is a ValueError. The fake keeps
the module's checks, rule by rule, and stands in for libhcomm with :mod:`hccl.manage._hcomm`: before HCCL
started (the API reference: "must be called after collective communication is initialised") the call fails.
Each accepted call is recorded ``{"call": "set_split_strategy", "by": "idx"|"size", "values": [...],
"group": ...}``.
"""
from hccl.manage import _hcomm

MAX_GROUP_NAME_LEN = 127  # api.py: the group name's longest length
MAX_VALUE_UINT32 = 4294967295  # api.py: an index is a C unsigned int


def _check_group(group):
    # api.py, both functions: a str, at most MAX_GROUP_NAME_LEN characters, not empty.
    if not isinstance(group, str):
        raise ValueError("group must be a python str")
    if len(group) > MAX_GROUP_NAME_LEN:
        raise ValueError("group name len[{}] too long, Max len[{}].".format(len(group), MAX_GROUP_NAME_LEN))
    if not group:
        raise ValueError("group name is empty.")


def _check_list(values, name):
    # api.py, both functions: a python list with at least one value.
    if not isinstance(values, list):
        raise ValueError("{} must be a python list".format(name))
    if not values:
        raise ValueError("{} length is 0".format(name))


def _record(name, **arguments):
    """The fake adapter's call log: npu_bridge's (TF Adapter 1.x), or npu_device.compat.v1's in the 2.x build
    (which copies this package unchanged)."""
    try:
        from npu_bridge import record
    except ImportError:
        from npu_device.compat.v1 import record
    record(name, **arguments)


def _libhcomm(by, values, group, separator):
    """The libhcomm call: 0 once HCCL started (and the group is the world group), else the fake's code."""
    ret = 0 if _hcomm.state["started"] and group == "hccl_world_group" else _hcomm.NOT_INITIALISED
    if ret != 0:
        raise ValueError("split error{} ret[{}]".format(separator, ret))
    _record("set_split_strategy", by=by, values=list(values), group=group)


def set_split_strategy_by_idx(idxList, group="hccl_world_group"):  # noqa: N803 (the real signature)
    _check_group(group)
    _check_list(idxList, "idxList")
    # api.py: python ints in [0, MAX_VALUE_UINT32], strictly ascending.
    for index in idxList:
        if not isinstance(index, int):
            raise ValueError("idx val[{}] in idxList is not python int type.".format(index))
        if not 0 <= index <= MAX_VALUE_UINT32:
            raise ValueError("idx val[{}] in idxList is an out-of-range value, the correct value range is 0 to "
                             "{}".format(index, MAX_VALUE_UINT32))
    if any(first >= second for first, second in zip(idxList, idxList[1:])):
        raise ValueError("idx in idxList is not ascending")
    _libhcomm("idx", idxList, group, ".")


def set_split_strategy_by_size(dataSizeList, group="hccl_world_group"):  # noqa: N803 (the real signature)
    _check_group(group)
    _check_list(dataSizeList, "dataSizeList")
    # api.py: non-negative python ints or floats that sum to exactly 100.
    for size in dataSizeList:
        if not isinstance(size, (int, float)):
            raise ValueError("dataSize val[{}] in dataSizeList is not python int or float type.".format(size))
        if size < 0:
            raise ValueError("dataSize val[{}] in dataSizeList cannot be a negative number.".format(size))
    if sum(dataSizeList) != 100:
        raise ValueError("size percentage list sum is not 100%")
    _libhcomm("size", dataSizeList, group, ",")
