"""Fake npu_ops: HCCL start-up and shut-down as graph ops."""
import json
import os

import tensorflow as tf

from npu_bridge import record

_state = {"initialized": False}


def _check_environment():
    size = int(os.environ.get("RANK_SIZE", "1"))
    if size == 1:
        return
    for name in ("RANK_TABLE_FILE", "RANK_ID", "JOB_ID"):
        if not os.environ.get(name):
            raise RuntimeError("HCCL init failed: {} is not set".format(name))
    with open(os.environ["RANK_TABLE_FILE"]) as handle:
        table = json.load(handle)
    ranks = [int(device["rank_id"]) for server in table["server_list"] for device in server["device"]]
    if len(ranks) != size or int(os.environ["RANK_ID"]) not in ranks:
        raise RuntimeError("HCCL init failed: RANK_ID {} / RANK_SIZE {} do not match {}".format(
            os.environ["RANK_ID"], size, os.environ["RANK_TABLE_FILE"]))


def _set(value):
    def run():
        if value:
            _check_environment()
        _state["initialized"] = value
        return True
    return run


def initialize_system(name=None):
    record("initialize_system")
    return tf.compat.v1.py_func(_set(True), [], tf.bool, stateful=True, name=name or "NPUInit").op


def shutdown_system(name=None):
    record("shutdown_system")
    return tf.compat.v1.py_func(_set(False), [], tf.bool, stateful=True, name=name or "NPUShutdown").op


def is_initialized():
    return _state["initialized"]
