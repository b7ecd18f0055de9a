"""Fake npu_device.compat.utils (tf_adapter_2.x/python/npu_device/compat/utils.py): SessionConfigBuilder.

``npu_device/compat/`` has no ``__init__.py`` in the real package either: it is a namespace package
holding this file and the built ``v1`` tree (see ../../build.py).
"""
import tensorflow as tf
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig


class SessionConfigBuilder(object):
    """A ConfigProto with an NpuOptimizer custom optimizer and remapping off; ``parameter_map`` to fill."""

    def __init__(self, config=None):
        self._config = config if config is not None else tf.compat.v1.ConfigProto()
        rewrite = self._config.graph_options.rewrite_options
        optimizer = next((entry for entry in rewrite.custom_optimizers if entry.name == "NpuOptimizer"), None)
        if optimizer is None:
            optimizer = rewrite.custom_optimizers.add()
            optimizer.name = "NpuOptimizer"
        rewrite.remapping = RewriterConfig.OFF
        self._optimizer = optimizer

    @property
    def parameter_map(self):
        return self._optimizer.parameter_map

    @property
    def session_config(self):
        return self._config
