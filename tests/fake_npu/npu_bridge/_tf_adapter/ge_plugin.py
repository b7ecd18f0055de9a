"""GePlugin::Init (tf_adapter/util/ge_plugin.cc:154-...): GE's start-up, once per process, and its environment.

The real adapter runs it from the first GeOp (tf_adapter/kernels/geop_npu.cc:476) or from the NPUInit kernel
that ``npu_ops.initialize_system()`` builds (tf_adapter/kernels/npu_sys_ctl_ops.cc:76); later calls return at
once (``isInit_``). The fake runs it when the first session with an ``NpuOptimizer`` is created and when an
``initialize_system`` op runs.

The devices the fake's runtime sees are ``$FAKE_NPU_VISIBLE_DEVICES`` (comma-separated physical ids, default
0..7): a logical id is an index into that list, as ``ASCEND_DEVICE_ID`` is (docs/zh/tfa_env/ASCEND_DEVICE_ID.md:5-7:
the logical id, in [0, N-1]).
"""
import json
import os
import re

from hccl.manage import _hcomm

from npu_bridge import record
from npu_bridge._tf_adapter import log

GE_PLUGIN = "tf_adapter/util/ge_plugin.cc"
ATTRS = "tf_adapter/util/npu_attrs.cc"
DEFAULT_VISIBLE = "0,1,2,3,4,5,6,7"

state = {"initialized": False, "logical_device": None, "physical_device": None, "use_hcom": False}


def visible_devices():
    """The physical ids of the devices this process's runtime can open, in logical order."""
    text = os.environ.get("FAKE_NPU_VISIBLE_DEVICES", DEFAULT_VISIBLE)
    return [int(part) for part in text.split(",") if part.strip()]


def _int64(text):
    return re.match(r"^\s*[+-]?\d+\s*$", text) is not None


def _env_device_id():
    """GetEnvDeviceID (npu_attrs.cc:154-186): the logical device; a bad value is FATAL (ge_plugin.cc:196-200)."""
    at_init = "{}:196-200".format(GE_PLUGIN)
    ascend_device_id = os.environ.get("ASCEND_DEVICE_ID", "")
    device_id = os.environ.get("DEVICE_ID", "")
    if not ascend_device_id and not device_id:
        log.warning("[GePlugin] DEVICE_ID and ASCEND_DEVICE_ID is none, use default device id : 0, if set "
                    "session_device_id, session_device_id has a higher priority.", "{}:161-166".format(ATTRS))
        return 0
    if ascend_device_id:  # the logical id, used as it is
        if not _int64(ascend_device_id):
            log.fatal("ASCEND_DEVICE_ID is invalid, should be int, such as 0, 1, 2.",
                      "{} (GetEnvDeviceID, {}:167-168)".format(at_init, ATTRS))
        if int(ascend_device_id) < 0:
            log.fatal("ASCEND_DEVICE_ID should be >= 0.", "{} (GetEnvDeviceID, {}:170-171)".format(at_init, ATTRS))
        return int(ascend_device_id)
    # DEVICE_ID is a physical id, turned into a logical one by IndexTransform (npu_attrs.cc:175-183)
    if not _int64(device_id):
        log.fatal("DEVICE_ID is invalid, should be int, such as 0, 1, 2.",
                  "{} (GetEnvDeviceID, {}:175-176)".format(at_init, ATTRS))
    if int(device_id) < 0:
        log.fatal("DEVICE_ID should be >= 0.", "{} (GetEnvDeviceID, {}:178-179)".format(at_init, ATTRS))
    if int(device_id) not in visible_devices():
        log.fatal("get logic device id by DEVICE_ID failed.", "{} (GetEnvDeviceID, {}:181-182)".format(at_init, ATTRS))
    return visible_devices().index(int(device_id))


def _env_int64(name, default=-1):
    """ReadInt64FromEnvVar: the default when unset or not an integer (its Status is ignored, ge_plugin.cc:215-218)."""
    text = os.environ.get(name, "")
    return int(text) if _int64(text) else default


def initialize(trigger):
    """GePlugin::Init once per process; ``trigger`` says what ran it (for the call log)."""
    if state["initialized"]:
        return state
    try:  # TF_CONFIG task type "ps": nothing is started (ge_plugin.cc:171-186)
        task = json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("task", {})
    except ValueError:
        task = {}
    if isinstance(task, dict) and task.get("type") == "ps":
        state["initialized"] = True
        record("ge_initialize", trigger=trigger, skipped="TF_CONFIG task type ps")
        return state
    logical = _env_device_id()
    visible = visible_devices()
    if not os.environ.get("JOB_ID"):
        log.warning("[GePlugin] can not find Environment variable : JOB_ID", "{}:204-211".format(GE_PLUGIN))
    if logical >= len(visible):
        # The runtime cannot open a logical device beyond the visible ones; the device is opened by
        # TdtOutFeedInit before GEInitialize, whose failure is FATAL (ge_plugin.cc:321-330).
        log.fatal("[GePlugin] Tdt host init failed, tdt error code : 1 (fake_npu: ASCEND_DEVICE_ID is the logical "
                  "id {}, but this process sees {} device(s), physical {}; the logical ids are 0..{}, see "
                  "docs/zh/tfa_env/ASCEND_DEVICE_ID.md:5-7)".format(logical, len(visible),
                                                                     ",".join(map(str, visible)), len(visible) - 1),
                  "{}:321-330".format(GE_PLUGIN))
    cm_chief_ip = os.environ.get("CM_CHIEF_IP", "")
    rank_table_file = os.environ.get("RANK_TABLE_FILE", "")
    work_size = _env_int64("CM_WORKER_SIZE")
    rank_size = _env_int64("RANK_SIZE")
    use_hcom = False
    if cm_chief_ip and rank_table_file:  # ge_plugin.cc:219-221: an ERROR, and neither is configured
        log.error("[GePlugin] CM_CHIEF_IP and RANK_TABLE_FILE cannot be configured at the same time.",
                  "{}:219-221".format(GE_PLUGIN))
    elif rank_table_file:  # SetRankTableFileEnv (ge_plugin.cc:378-401)
        rank_size = 1 if rank_size == -1 else rank_size
        use_hcom = rank_size > 0 and work_size == -1
    if use_hcom:
        problem = _hcomm.start(rank_table_file, os.environ.get("RANK_ID", ""), rank_size)
        if problem:
            log.fatal("[GePlugin] Initialize ge failed, ret : 1 (fake_npu: HCCL: {})".format(problem),
                      "{}:363-369".format(GE_PLUGIN))
    state.update(initialized=True, logical_device=logical, physical_device=visible[logical], use_hcom=use_hcom)
    record("ge_initialize", trigger=trigger, logical_device=logical, physical_device=visible[logical],
           use_hcom=use_hcom, job_id=os.environ.get("JOB_ID"),
           hccl=dict(_hcomm.state) if use_hcom else None)
    return state
