"""Fake npu_bridge.estimator.npu.npu_config: the session decorator npu_init puts on Session.__init__.

``set_npu_default_config`` / ``decorator_tf_session`` follow npu_config.py:525-563: every Session (and
InteractiveSession) gets a config with an ``NpuOptimizer`` custom optimizer (added if missing, and then
memory_optimization OFF), allow_soft_placement on, log_device_placement off, remapping OFF and the global JIT
level OFF. The caller's ConfigProto is changed in place, as the real one changes it.
"""
from inspect import signature

from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

from npu_bridge._tf_adapter import live
from npu_bridge._tf_adapter.session import MARK


def npu_defaults(config):
    """The settings both npu_config.py:536-545 and npu_init.py:99-119 write into a ConfigProto, in place."""
    rewrite = config.graph_options.rewrite_options
    if not any(entry.name == "NpuOptimizer" for entry in rewrite.custom_optimizers):
        rewrite.custom_optimizers.add().name = "NpuOptimizer"
        rewrite.memory_optimization = RewriterConfig.OFF
    config.allow_soft_placement = True
    config.log_device_placement = False
    rewrite.remapping = RewriterConfig.OFF
    config.graph_options.optimizer_options.global_jit_level = config_pb2.OptimizerOptions.OFF
    return config


def set_npu_default_config(func, args, kwargs):
    names = list(signature(func).parameters)
    position = names.index("config") - 1 if "config" in names else None  # the first parameter is self
    if kwargs.get("config") is not None:
        config = kwargs["config"]
    elif position is not None and len(args) > position:
        config = args[position]  # a positional None fails below, as in the real one
    else:
        config = config_pb2.ConfigProto()
    kwargs["config"] = npu_defaults(config)
    if position is not None and len(args) > position:
        args = args[:position] + args[position + 1:]
    return args, kwargs


def decorator_tf_session(func):
    def class_func_wrapper(self, *args, **kwargs):
        if live():
            args, kwargs = set_npu_default_config(func, args, kwargs)
        return func(self, *args, **kwargs)

    setattr(class_func_wrapper, MARK, func)  # the fake's: so a later load of the fake can take it off again
    return class_func_wrapper
