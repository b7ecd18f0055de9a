"""Fake ``npu_bridge.npu_init``: the names ``from npu_bridge.npu_init import *`` gives that the fake implements.

The real module has no ``__all__`` (tf_adapter/python/npu_bridge/npu_init.py:15-69), so a star import gives
every public name it binds; the fake binds a subset of those names and no others. Importing it decorates
``Session.__init__`` and ``InteractiveSession.__init__`` with ``decorator_tf_session`` (npu_init.py:262-264):
from then on every session is an NPU session.
"""
import os  # noqa: F401

import tensorflow as tf  # noqa: F401
from hccl.manage.api import (  # noqa: F401
    create_group,
    destroy_group,
    get_group_rank_from_world_rank,
    get_local_rank_id,
    get_local_rank_size,
    get_rank_id,
    get_rank_size,
    get_world_rank_from_group_rank,
)
from hccl.split.api import set_split_strategy_by_idx, set_split_strategy_by_size  # noqa: F401 (npu_init.py:63-64)
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2  # noqa: F401
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig  # noqa: F401
from tensorflow.python.client import session

from npu_bridge import record
from npu_bridge._tf_adapter.session import wrap
from npu_bridge.estimator import npu_ops  # noqa: F401
from npu_bridge.estimator.npu import npu_plugin, util  # noqa: F401
from npu_bridge.estimator.npu.npu_config import decorator_tf_session, npu_defaults

# isort: off
# These three lines as the real module writes them (npu_init.py:34-36): the TF 2 adapter's build removes
# exactly these lines (tf_adapter_2.x/compat_v1/upgrade_tf1_compat_tf2.py), and the fake's TF 2 build too.
from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer
from npu_bridge.estimator.npu.npu_loss_scale_manager import FixedLossScaleManager
from npu_bridge.estimator.npu.npu_loss_scale_manager import ExponentialUpdateLossScaleManager
# isort: on
from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer  # noqa: F401
from npu_bridge.hccl import hccl_ops  # noqa: F401


def npu_config_proto(config_proto=None):
    """npu_init.py:99-119: a ConfigProto with an NpuOptimizer and the adapter's rewrite settings."""
    if not isinstance(config_proto, config_pb2.ConfigProto):
        config_proto = config_pb2.ConfigProto()
    return npu_defaults(config_proto)  # the same settings as npu_config.set_npu_default_config


wrap(session.Session, "__init__", decorator_tf_session)
wrap(session.InteractiveSession, "__init__", decorator_tf_session)
record("npu_init_imported", decorated=["Session.__init__", "InteractiveSession.__init__"])
