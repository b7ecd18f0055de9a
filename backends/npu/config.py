"""The NPU session configuration and loss scaling, in the adapter's own terms.

Session-run mode on Ascend: the ``NpuOptimizer`` custom graph optimizer in
``graph_options.rewrite_options.custom_optimizers`` with its
``parameter_map``, and grappler's ``remapping`` and ``memory_optimization``
turned off, as the CANN TensorFlow 1.15 adapter requires.
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

from unet3d_core.errors import ConfigError

PRECISION_MODES = ("allow_fp32_to_fp16", "allow_mix_precision", "force_fp32", "must_keep_origin_dtype")
DEFAULT_PRECISION_MODE = "allow_fp32_to_fp16"  # the Ascend 910's own default
# The seed port's dynamic loss scaling (--npu_loss_scale 1).
DYNAMIC_INITIAL_SCALE = 2 ** 32
DYNAMIC_GROWTH_STEPS = 1000
DYNAMIC_SHRINK_AFTER_OVERFLOWS = 2
DYNAMIC_SHRINK_RATIO = 0.5
DYNAMIC_GROWTH_RATIO = 2.0


def parse_npu_options(pairs: List[str]) -> Dict[str, Union[bool, int, float, str]]:
    """``--npu_option key=value`` pairs, typed: true/false -> bool, integers, floats, else strings."""
    parsed = {}
    for pair in pairs or []:
        key, separator, text = pair.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError("--npu_option {}: expected KEY=VALUE".format(pair))
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            value: Union[bool, int, float, str] = lowered == "true"
        else:
            try:
                value = int(text)
            except ValueError:
                try:
                    value = float(text)
                except ValueError:
                    value = text
        parsed[key] = value
    return parsed


def npu_parameters(options) -> Dict[str, Union[bool, int, float, str]]:
    """The NpuOptimizer parameter map for these options (flags first, then --npu_option overrides)."""
    parameters = {
        "use_off_line": True,  # run on the NPU, not in the host's TensorFlow
        "precision_mode": options.precision_mode,
        "iterations_per_loop": options.iterations_per_loop,
        "hcom_parallel": options.hcom_parallel,
        # The loop of iterations_per_loop > 1 needs the input pipeline on the device.
        "enable_data_pre_proc": options.enable_data_pre_proc or options.iterations_per_loop > 1,
        "mix_compile_mode": options.mix_compile_mode,
    }
    parameters.update(parse_npu_options(options.npu_option))
    return parameters


def apply_session_config(config, parameters: Dict):
    """Add (or update) the NpuOptimizer entry of ``config`` and switch off what the adapter forbids."""
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    rewrite = config.graph_options.rewrite_options
    optimizer = next((entry for entry in rewrite.custom_optimizers if entry.name == "NpuOptimizer"), None)
    if optimizer is None:
        optimizer = rewrite.custom_optimizers.add()
        optimizer.name = "NpuOptimizer"
    for key, value in parameters.items():
        field = optimizer.parameter_map[key]
        if isinstance(value, bool):
            field.b = value
        elif isinstance(value, int):
            field.i = value
        elif isinstance(value, float):
            field.f = value
        else:
            field.s = str(value).encode()
    rewrite.remapping = RewriterConfig.OFF
    rewrite.memory_optimization = RewriterConfig.OFF
    return config


def loss_scale_choice(npu_loss_scale: float) -> Tuple[str, float]:
    """The seed port's --npu_loss_scale: < 1 none, == 1 dynamic, > 1 fixed at that value."""
    if npu_loss_scale < 1:
        return "none", 0.0
    if npu_loss_scale == 1:
        return "dynamic", float(DYNAMIC_INITIAL_SCALE)
    return "fixed", float(npu_loss_scale)


def validate(options, total_steps_per_worker: int) -> None:
    """Flag rules of the adapter, checked before anything starts."""
    if options.iterations_per_loop < 1:
        raise ConfigError("--iterations_per_loop must be at least 1, got {}".format(options.iterations_per_loop))
    if options.mix_compile_mode and options.iterations_per_loop != 1:
        raise ConfigError("--mix_compile_mode needs --iterations_per_loop 1 (the adapter's rule), got {}".format(
            options.iterations_per_loop))
    if total_steps_per_worker % options.iterations_per_loop:
        raise ConfigError("--iterations_per_loop {}: the {} steps per device must be a multiple of it "
                          "(adjust --max_steps)".format(options.iterations_per_loop, total_steps_per_worker))
    parse_npu_options(options.npu_option)
