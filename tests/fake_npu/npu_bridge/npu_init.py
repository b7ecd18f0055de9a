"""Fake ``npu_bridge.npu_init``: the names ``from npu_bridge.npu_init import *`` gives."""
from hccl.manage.api import get_local_rank_id, get_local_rank_size, get_rank_id, get_rank_size  # noqa: F401
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig  # noqa: F401

from npu_bridge.estimator import npu_ops  # noqa: F401
from npu_bridge.estimator.npu import util  # noqa: F401
from npu_bridge.estimator.npu.npu_loss_scale_manager import (  # noqa: F401
    ExponentialUpdateLossScaleManager,
    FixedLossScaleManager,
)
from npu_bridge.estimator.npu.npu_loss_scale_optimizer import NPULossScaleOptimizer  # noqa: F401
from npu_bridge.estimator.npu.npu_optimizer import NPUDistributedOptimizer  # noqa: F401
from npu_bridge.hccl import hccl_ops  # noqa: F401
