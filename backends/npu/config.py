"""The NPU session configuration and loss scaling, in the adapter's own terms.

Session-run mode on Ascend: the ``NpuOptimizer`` custom graph optimizer in
``graph_options.rewrite_options.custom_optimizers`` with its
``parameter_map``, and grappler's ``remapping`` and ``memory_optimization``
turned off, as the CANN TensorFlow 1.15 adapter requires.

Every ``parameter_map`` key the adapter reads is in :data:`ADAPTER_KEYS`
with the one accessor it reads it with; a value of another type is read as
that accessor's default (false, 0 or ""), silently, so each value is typed
here before it is written, and the adapter's own value checks run before
anything starts.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import replace
from typing import Dict, List, Tuple, Union

from backends.npu import diagnostics, rank_table
from unet3d_core.errors import ConfigError

# Lines below are those of tf_adapter/util/npu_attrs.cc in hicann/tensorflow at
# 82957b92d1ade2f48ca51dda811f0baec23b04c7 (NpuAttrs::SetNpuOptimizerAttr unless said otherwise).
PRECISION_MODES = ("allow_fp32_to_fp16", "force_fp32", "force_fp16", "must_keep_origin_dtype", "allow_mix_precision",
                   "cube_fp16in_fp32out", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                   "allow_fp32_to_bf16")  # 2190-2198
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8",
                      "mixed_hif8")  # 2205-2206
# The adapter sets none when absent and leaves it to the device; this is the Atlas training series' (910)
# own default, written explicitly so that a run means the same everywhere. The reference's README shows it,
# but the reference's code sets force_fp32 (runtime/setup.py): --precision_mode force_fp32 for its numbers.
DEFAULT_PRECISION_MODE = "allow_fp32_to_fp16"
# The seed's run config: iterations_per_loop 100 (10 with --benchmark); ours is the largest divisor of the
# steps per device not above these, so that every run performs whole loops, and never below LOOP_FLOOR
# (unless one loop holds the whole run): steps per device with no divisor there are rounded up to a
# multiple of LOOP_FLOOR, which adds fewer than LOOP_FLOOR steps per device.
LOOP_LIMIT = 100
BENCHMARK_LOOP_LIMIT = 10
LOOP_FLOOR = 10
# HCCL's documented ranges, in seconds (hicann/hccl docs/zh/user_guide/hccl_env/HCCL_CONNECT_TIMEOUT.md:7-9 and
# HCCL_EXEC_TIMEOUT.md:33-37, the Atlas training series (910); HCCL applies the latter in multiples of 68 s).
HCCL_CONNECT_TIMEOUT_RANGE = (120, 7200)
HCCL_EXEC_TIMEOUT_RANGE = (1, 17340)
HCCL_EXEC_TIMEOUT_UNIT = 68
# HCCL_EXEC_TIMEOUT per device family (HCCL_EXEC_TIMEOUT.md): Atlas A2 (HOST/HOST_TS expansion) and A3
# (AI_CPU) take whole seconds in [0, 2147483647], 0 meaning never; only the 910 rounds to multiples of 68.
HCCL_EXEC_TIMEOUT_RANGES = {rank_table.CHIP_910: HCCL_EXEC_TIMEOUT_RANGE, rank_table.CHIP_A2: (0, 2147483647),
                            rank_table.CHIP_A3: (0, 2147483647)}
# HCCL_CONNECT_TIMEOUT for jobs over several servers when none is given: the reference's 8-device script sets
# 300 s (its 16-device one 600); HCCL's 120 s is short for servers that start a few minutes apart.
MULTI_SERVER_CONNECT_TIMEOUT = 300
# (flag, variable, range) of each HCCL timeout.
HCCL_TIMEOUTS = (("hccl_connect_timeout", "HCCL_CONNECT_TIMEOUT", HCCL_CONNECT_TIMEOUT_RANGE),
                 ("hccl_exec_timeout", "HCCL_EXEC_TIMEOUT", HCCL_EXEC_TIMEOUT_RANGE))
# The seed port's dynamic loss scaling (--npu_loss_scale 1).
DYNAMIC_INITIAL_SCALE = 2 ** 32
DYNAMIC_GROWTH_STEPS = 1000
DYNAMIC_SHRINK_AFTER_OVERFLOWS = 2
DYNAMIC_SHRINK_RATIO = 0.5
DYNAMIC_GROWTH_RATIO = 2.0

# Every NpuOptimizer parameter_map key the adapter reads, and its accessor: b = AttrValue.b (bool),
# i = .i (int64), s = .s (string). None is read with .f() or .list(). The number is the line of its first read.
ADAPTER_KEYS = {
    "const_input": "s",  # 981, NpuAttrs::GetPassOptions only
    "variable_format_optimize": "b",  # 2038
    "hcom_parallel": "b",  # 2041
    "graph_memory_max_size": "s",  # 2044
    "variable_memory_max_size": "s",  # 2047
    "enable_dump": "b",  # 2050
    "enable_dump_debug": "b",  # 2053
    "input_fusion_size": "i",  # 2056
    "dump_path": "s",  # 2070
    "dump_step": "s",  # 2085
    "dump_mode": "s",  # 2093
    "dump_debug_mode": "s",  # 2103
    "stream_max_parallel_num": "s",  # 2112
    "ac_parallel_enable": "s",  # 2115
    "quant_dumpable": "s",  # 2118
    "is_tailing_optimization": "b",  # 2122
    "profiling_mode": "b",  # 2125
    "profiling_options": "s",  # 2128
    "auto_tune_mode": "s",  # 2135
    "graph_run_mode": "i",  # 2138
    "op_debug_level": "i",  # 2145
    "enable_scope_fusion_passes": "s",  # 2151
    "aoe_mode": "s",  # 2155
    "work_path": "s",  # 2170
    "distribute_config": "s",  # 2185
    "precision_mode": "s",  # 2189
    "precision_mode_v2": "s",  # 2204
    "soc_config": "s",  # 2213
    "enable_data_pre_proc": "b",  # 2218
    "use_off_line": "b",  # 2222
    "mix_compile_mode": "b",  # 2225
    "iterations_per_loop": "i",  # 2228
    "graph_max_parallel_model_num": "i",  # 2231
    "lower_functional_ops": "b",  # 2236
    "job": "s",  # 2239
    "task_index": "i",  # 2244
    "dynamic_input": "b",  # 2248
    "dynamic_graph_execute_mode": "s",  # 2252
    "dynamic_inputs_shape_range": "s",  # 2261
    "compile_dynamic_mode": "b",  # 2266
    "local_rank_id": "i",  # 2270
    "local_device_list": "s",  # 2279
    "in_out_pair_flag": "b",  # 2288
    "in_out_pair": "s",  # 2291
    "enable_exception_dump": "i",  # 2295
    "op_select_implmode": "s",  # 2315
    "optypelist_for_implmode": "s",  # 2323
    "input_shape": "s",  # 2328
    "dynamic_dims": "s",  # 2334
    "dynamic_node_type": "i",  # 2340
    "compile_hybrid_mode": "i",  # 2346
    "buffer_optimize": "s",  # 2375
    "enable_small_channel": "i",  # 2382
    "deterministic": "i",  # 2388
    "fusion_switch_file": "s",  # 2391
    "enable_compress_weight": "b",  # 2398
    "compress_weight_conf": "s",  # 2401
    "op_compiler_cache_mode": "s",  # 2404
    "op_compiler_cache_dir": "s",  # 2407
    "debug_dir": "s",  # 2410
    "hcom_multi_mode": "b",  # 2413
    "session_device_id": "i",  # 2416
    "modify_mixlist": "s",  # 2439
    "op_precision_mode": "s",  # 2484
    "device_type": "s",  # 2487
    "hccl_timeout": "i",  # 2490
    "op_wait_timeout": "i",  # 2493
    "op_execute_timeout": "i",  # 2496
    "customize_dtypes": "s",  # 2499
    "HCCL_algorithm": "s",  # 2502
    "op_debug_config": "s",  # 2505
    "graph_exec_timeout": "i",  # 2508
    "static_memory_policy": "i",  # 2511
    "atomic_clean_policy": "i",  # 2514
    "variable_use_1g_huge_page": "i",  # 2517
    "memory_optimization_policy": "s",  # 2523
    "experimental_logical_device_cluster_deploy_mode": "s",  # 2526
    "experimental_logical_device_id": "s",  # 2529
    "experimental_accelerate_train_mode": "s",  # 2532
    "experimental_model_deploy_mode": "s",  # 2535
    "experimental_model_deploy_devicelist": "s",  # 2538
    "topo_sorting_mode": "i",  # 2541
    "insert_op_file": "s",  # 2546
    "resource_config_path": "s",  # 2551
    "graph_parallel_option_path": "s",  # 2554
    "enable_graph_parallel": "b",  # 2557
    "dump_data": "s",  # 2560
    "dump_layer": "s",  # 2568
    "aoe_config_file": "s",  # 2571
    "stream_sync_timeout": "i",  # 2574
    "event_sync_timeout": "i",  # 2577
    "external_weight": "b",  # 2580
    "frozen_variable": "b",  # 2583
    "variable_placement": "s",  # 2586
    "export_compile_stat": "i",  # 2590
    "oo_constant_folding": "b",  # 2598
    "aicore_num": "s",  # 2604
    "all_tensor_not_empty": "b",  # 2609
    "auto_multistream_parallel_mode": "s",  # 2612
    "input_batch_cpy": "b",  # 2616
    "oo_level": "s",  # 2623
    "optimization_switch": "s",  # 2628
    "jit_compile": "s",  # 2637
    "shape_generalization_mode": "s",  # 2648
    "graph_compiler_cache_dir": "s",  # 2654
    "graph_slice": "s",  # 2657
}
# Keys this backend sets from its own flags; --npu_option may not set them behind the flags' backs.
FLAG_KEYS = {
    "use_off_line": "nothing (always true here: false runs the whole graph in the host's TensorFlow)",
    "precision_mode": "--precision_mode",
    "precision_mode_v2": "--precision_mode_v2",
    "iterations_per_loop": "--iterations_per_loop",
    "hcom_parallel": "--no_hcom_parallel",
    "enable_data_pre_proc": "--enable_data_pre_proc",
    "mix_compile_mode": "--mix_compile_mode",
}
FLAG_KEYS.update(diagnostics.FLAG_KEYS)
Value = Union[bool, int, str]


def _one_of(*allowed):
    def check(value):
        return None if value in allowed else "must be one of {}".format(", ".join(str(item) for item in allowed))
    return check


def _at_least(low):
    def check(value):
        return None if value >= low else "must be at least {}".format(low)
    return check


def _matches(pattern, example, separator=None):
    """The adapter's regex_match of the value (each ``separator``-separated piece) with a ',' appended."""
    def check(value):
        pieces = value.split(separator) if separator else [value]
        return None if all(re.fullmatch(pattern, piece + ",") for piece in pieces) else "expected e.g. " + example
    return check


def _dump_step(value):
    """checkDumpStep (266-294): up to 100 sets joined by '|', each a step or an increasing range 'a-b'."""
    sets = value.split("|")
    if len(sets) > 100:
        return "at most 100 sets of steps"
    for item in sets:
        bounds = item.split("-")
        if len(bounds) > 2 or not all(re.fullmatch("[0-9]+", bound) for bound in bounds):
            return "expected steps and ranges joined by '|', e.g. 0|5|10-20"
        if len(bounds) == 2 and int(bounds[0]) >= int(bounds[1]):
            return "range {}: the first step must be below the second".format(item)
    return None


def _readable_folder(value):
    """CheckPath (314-327): an existing folder with read and write access."""
    return None if os.path.isdir(value) and os.access(value, os.R_OK | os.W_OK) else \
        "must be an existing folder with read and write access"


# The adapter's checks on single values (a Status error or a LOG(FATAL) abort there).
VALUE_CHECKS = {
    "dynamic_graph_execute_mode": _one_of("lazy_recompile", "dynamic_execute"),  # 2256
    "local_rank_id": _one_of(*range(8)),  # CheckLocalRankId 393-399
    "local_device_list": _matches(r"(\d+,)+", "1,2,3"),  # CheckDeviceList 401-408
    "variable_placement": _one_of("Host", "Device"),  # CheckVariablePlacement 341-348, GetPassOptions 988
    "shape_generalization_mode": _one_of("STRICT", "FULL", "ADAPTIVE"),  # 2643-2651
    "graph_max_parallel_model_num": _at_least(1),  # 2232
    "dump_path": _readable_folder,  # 2070-2076
    "dump_step": _dump_step,  # 2086
    "dump_mode": _one_of(*diagnostics.DUMP_MODES),  # checkDumpMode 296-303
    "dump_debug_mode": _one_of("aicore_overflow", "atomic_overflow", "all"),  # checkDumpDebugMode 305-313
    "graph_run_mode": _one_of(0, 1),  # 2139
    "aoe_mode": _one_of("1", "2", "4"),  # CheckAoeMode 350-359
    "work_path": _readable_folder,  # 2170-2176
    "enable_exception_dump": _one_of(0, 1, 2),  # 2296-2303
    "op_select_implmode": _one_of("high_precision", "high_performance", "high_precision_for_all",
                                  "high_performance_for_all"),  # CheckOpImplMode 329-339
    "input_shape": _matches(r"[\s\S]+:((\d+|-\d+),)+", "data:1,-1,3", ";"),  # CheckInputShape 361-375
    "dynamic_dims": _matches(r"(\d+,)+", "1,2;3,4", ";"),  # CheckDynamicDims 377-391
    "dynamic_node_type": _one_of(0, 1),  # 2341
    "compile_hybrid_mode": _one_of(0, 1),  # 2347
    "buffer_optimize": _one_of("l2_optimize", "off_optimize"),  # 2376
    "session_device_id": _at_least(0),  # 2416-2420
    "variable_use_1g_huge_page": _one_of(0, 1, 2),  # 2518-2520
    "dump_data": _one_of("tensor", "stats"),  # 2561
    "export_compile_stat": _one_of(0, 1, 2),  # 2592
    "jit_compile": _one_of("true", "false", "auto"),  # 2634-2638
    "graph_slice": _one_of("auto", "manual"),  # 2657-2660
}
_MIXED_PRECISION = ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16")
_MIXED_PRECISION_V2 = ("mixed_float16", "mixed_bfloat16", "mixed_hif8")


def _typed(key: str, text: str) -> Value:
    kind = ADAPTER_KEYS[key]
    if kind == "s":
        return text
    if kind == "b":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ConfigError("--npu_option {}={}: the adapter reads {} as a bool: true, false, 1 or 0".format(
                key, text, key))
        return lowered in ("true", "1")
    try:
        return int(text)
    except ValueError:
        raise ConfigError("--npu_option {}={}: the adapter reads {} as an integer".format(key, text, key)) from None


def parse_npu_options(pairs: List[str]) -> Dict[str, Value]:
    """``--npu_option key=value`` pairs, each typed as the adapter reads its key and checked as it checks it."""
    parsed = {}
    for pair in pairs or []:
        key, separator, text = pair.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError("--npu_option {}: expected KEY=VALUE".format(pair))
        if key in FLAG_KEYS:
            raise ConfigError("--npu_option {}: set by this backend; use {}".format(key, FLAG_KEYS[key]))
        if key not in ADAPTER_KEYS:
            close = difflib.get_close_matches(key, ADAPTER_KEYS, n=1)
            raise ConfigError("--npu_option {}: not a key the adapter reads{}; known keys: {}".format(
                key, " (did you mean {}?)".format(close[0]) if close else "",
                ", ".join(sorted(set(ADAPTER_KEYS) - set(FLAG_KEYS)))))
        value = _typed(key, text)
        problem = VALUE_CHECKS[key](value) if key in VALUE_CHECKS else None
        if problem:
            raise ConfigError("--npu_option {}={}: {} (the adapter's rule)".format(key, text, problem))
        parsed[key] = value
    return parsed


def precision_parameters(options) -> Dict[str, str]:
    """The one precision key in force: --precision_mode_v2, else --precision_mode, else the default."""
    if options.precision_mode_v2:
        return {"precision_mode_v2": options.precision_mode_v2}
    return {"precision_mode": options.precision_mode or DEFAULT_PRECISION_MODE}


def describe_precision(options) -> str:
    ((key, value),) = precision_parameters(options).items()
    given = getattr(options, key, None) is not None
    return "{} {}{}".format(key, value, "" if given else " (default, as on the Atlas training series)")


def npu_parameters(options) -> Dict[str, Value]:
    """The NpuOptimizer parameter map for these options: the flags, then the other --npu_option keys."""
    if options.iterations_per_loop is None:
        raise ConfigError("--iterations_per_loop auto was not resolved (the backend's options were not validated)")
    parameters: Dict[str, Value] = {
        "use_off_line": True,  # run on the NPU, not in the host's TensorFlow
        "iterations_per_loop": options.iterations_per_loop,
        "hcom_parallel": options.hcom_parallel,
        # The loop of iterations_per_loop > 1 needs the input pipeline on the device.
        "enable_data_pre_proc": options.enable_data_pre_proc or options.iterations_per_loop > 1,
        "mix_compile_mode": options.mix_compile_mode,
    }
    parameters.update(precision_parameters(options))
    parameters.update(diagnostics.parameters(options))
    parameters.update(parse_npu_options(options.npu_option))
    return parameters


def apply_session_config(config, parameters: Dict[str, Value]):
    """Add (or update) the NpuOptimizer entry of ``config`` and switch off what the adapter forbids.

    Each value goes into the field its key's accessor reads (never ``f``, which no key is read from);
    a value of another type is a bug here, not something to write for the adapter to ignore.
    """
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig

    rewrite = config.graph_options.rewrite_options
    optimizer = next((entry for entry in rewrite.custom_optimizers if entry.name == "NpuOptimizer"), None)
    if optimizer is None:
        optimizer = rewrite.custom_optimizers.add()
        optimizer.name = "NpuOptimizer"
    for key, value in parameters.items():
        kind = ADAPTER_KEYS.get(key)
        expected = {"b": (bool,), "i": (int,), "s": (str,)}.get(kind, (bool, int, str))
        if type(value) not in expected:
            raise TypeError("NpuOptimizer parameter {}: {!r} is a {}; the adapter reads it with .{}()".format(
                key, value, type(value).__name__, kind or "b/i/s"))
        field = optimizer.parameter_map[key]
        if type(value) is bool:
            field.b = value
        elif type(value) is int:
            field.i = value
        else:
            field.s = value.encode()
    rewrite.remapping = RewriterConfig.OFF
    rewrite.memory_optimization = RewriterConfig.OFF
    return config


# HCCL's gradient split (hccl.split.api; docs: "set_split_strategy_by_idx" / "_by_size" in HCCL's API reference):
# at most 8 segments; without one, HCCL splits the gradients by size into 96.54% and 3.46%.
SPLIT_SEGMENTS_MAX = 8
SPLIT_KINDS = ("idx", "size")
SPLIT_INDEX_MAX = 4294967295  # an index is a C unsigned int


def split_strategy(text: str) -> Tuple[str, Tuple[Union[int, float], ...]]:
    """``--npu_split_strategy idx:20,100,159`` or ``size:60,20,20`` -> ("idx", (20, 100, 159)); checked by
    hccl.split.api's rules (indices ascending non-negative integers, sizes non-negative percentages summing to
    100) and its documented limit of 8 segments, so a bad value fails before any device starts. The
    ConfigError says what is wrong; argparse, whose type function this is, names the flag and the value."""
    kind, _, values = str(text).partition(":")
    if kind not in SPLIT_KINDS or not values.strip():
        raise ConfigError("expected idx:I1,I2,... (last gradient index of each segment) or size:P1,P2,... "
                          "(percent of the gradient bytes per segment, summing to 100)")
    try:
        parsed = tuple(int(part) if kind == "idx" else float(part) for part in values.split(","))
    except ValueError:
        raise ConfigError("every value must be {}".format("an integer" if kind == "idx" else "a number")) from None
    if len(parsed) > SPLIT_SEGMENTS_MAX:
        raise ConfigError("HCCL splits the gradients into at most {} segments".format(SPLIT_SEGMENTS_MAX))
    if kind == "idx":
        if any(index < 0 or index > SPLIT_INDEX_MAX for index in parsed) or any(
                first >= second for first, second in zip(parsed, parsed[1:])):
            raise ConfigError("the indices must be ascending integers from 0 (each segment's last gradient)")
        return kind, parsed
    if any(size < 0 for size in parsed) or abs(sum(parsed) - 100.0) > 1e-9:
        raise ConfigError("the sizes must be non-negative percentages summing to 100")
    return kind, tuple(int(size) if float(size).is_integer() else size for size in parsed)


def split_values(values) -> str:
    """``(1, 90, 99)`` -> ``"1,90,99"``: a split strategy's values as the flag spells them."""
    return ",".join("{:g}".format(value) for value in values)


def describe_split(strategy) -> str:
    """One line for the log: the split HCCL fuses the gradient allreduces by."""
    if strategy is None:
        return "gradient split HCCL's default (by size 96.54%/3.46%)"
    kind, values = strategy
    return "gradient split by {} {}".format("index" if kind == "idx" else "size %", split_values(values))


def loss_scale_choice(npu_loss_scale: float) -> Tuple[str, float]:
    """The seed port's --npu_loss_scale: < 1 none, == 1 dynamic, > 1 fixed at that value."""
    if npu_loss_scale < 1:
        return "none", 0.0
    if npu_loss_scale == 1:
        return "dynamic", float(DYNAMIC_INITIAL_SCALE)
    return "fixed", float(npu_loss_scale)


def _largest_divisor(number: int, limit: int) -> int:
    return max(divisor for divisor in range(1, max(1, min(number, limit)) + 1) if number % divisor == 0)


def iterations_per_loop(options, steps: int) -> Tuple[int, str, int]:
    """(steps per session.run, how it was chosen, training steps per device) for ``steps`` steps per device.

    ``--iterations_per_loop auto`` (the default) follows the seed: 100, or 10 with ``--benchmark``, or the
    largest divisor of the steps per device below that (with ``--benchmark`` also of ``--warmup_steps``, so
    that no timed run holds warm-up steps). A loop below ``LOOP_FLOOR`` (10) costs a host round trip every few
    steps, so where the only divisors are smaller, the steps per device are rounded up to a multiple of
    ``LOOP_FLOOR`` (the third value; the core trains that many) instead, unless one loop holds the whole run.
    1 with ``--mix_compile_mode`` and outside training.
    """
    given = options.iterations_per_loop
    if given is not None:
        if given < 1:
            raise ConfigError("--iterations_per_loop must be at least 1, got {}".format(given))
        if options.mix_compile_mode and given != 1:
            raise ConfigError("--mix_compile_mode needs --iterations_per_loop 1 (the adapter's rule), got {}".format(
                given))
        if steps % given:
            raise ConfigError("--iterations_per_loop {}: the {} steps per device must be a multiple of it "
                              "(adjust --max_steps)".format(given, steps))
        return given, "given", steps
    if options.mix_compile_mode or not options.core.trains:
        return 1, "auto: 1 {}".format("with --mix_compile_mode" if options.mix_compile_mode
                                      else "outside training"), steps
    benchmark = options.core.benchmark
    limit = BENCHMARK_LOOP_LIMIT if benchmark else LOOP_LIMIT
    warmup = options.core.warmup_steps if benchmark else 0
    chosen = _largest_divisor(math.gcd(steps, warmup) if warmup else steps, limit)
    seed = "auto: the seed's {}{}".format(limit, " with --benchmark" if benchmark else "")
    if chosen == limit:
        return chosen, seed, steps
    if chosen < LOOP_FLOOR and chosen != steps and warmup % LOOP_FLOOR == 0:
        rounded = -(-steps // LOOP_FLOOR) * LOOP_FLOOR
        chosen = _largest_divisor(math.gcd(rounded, warmup) if warmup else rounded, limit)
        return chosen, "{}; the {} steps per device have no divisor from {} to {}, so they are rounded up to " \
                       "{}, of which {} is the largest divisor up to {}".format(
                           seed, steps, LOOP_FLOOR, limit, rounded, chosen, limit), rounded
    return chosen, "{}, lowered to the largest divisor of the {} steps per device{}; with a multiple of {} " \
                   "there it would be {}".format(seed, steps, " and the {} warm-up steps".format(warmup) if warmup
                                                 else "", limit, limit), steps


def timeout_range(variable: str, chip: str) -> Tuple[int, int]:
    """HCCL's range of ``variable`` (HCCL_CONNECT_TIMEOUT or HCCL_EXEC_TIMEOUT) on the device family ``chip``."""
    if variable == "HCCL_EXEC_TIMEOUT":
        return HCCL_EXEC_TIMEOUT_RANGES.get(chip, HCCL_EXEC_TIMEOUT_RANGE)
    return HCCL_CONNECT_TIMEOUT_RANGE


def hccl_timeouts(options, chip: str = rank_table.CHIP_910, servers: int = 1) -> Dict[str, str]:
    """HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT for the workers' environment, checked against HCCL's ranges on
    ``chip``; a job over several ``servers`` gets MULTI_SERVER_CONNECT_TIMEOUT unless a connect timeout is given
    (flag or environment)."""
    variables = {}
    for flag, variable, _ in HCCL_TIMEOUTS:
        value = getattr(options, flag, None)
        if value is None:
            continue
        low, high = timeout_range(variable, chip)
        if not low <= value <= high:
            raise ConfigError("--{} {}: {} must be within {}..{} seconds{}".format(
                flag, value, variable, low, high, " on the Atlas training series (910)" if chip ==
                rank_table.CHIP_910 and variable == "HCCL_EXEC_TIMEOUT" else ""))
        variables[variable] = str(value)
    if servers > 1 and "HCCL_CONNECT_TIMEOUT" not in variables and "HCCL_CONNECT_TIMEOUT" not in os.environ:
        variables["HCCL_CONNECT_TIMEOUT"] = str(MULTI_SERVER_CONNECT_TIMEOUT)
    return variables


def applied_exec_timeout(seconds: int, chip: str = rank_table.CHIP_910) -> int:
    """What HCCL makes of HCCL_EXEC_TIMEOUT: on the Atlas training series whole multiples of 68 s, at least 68;
    elsewhere the value itself."""
    if chip != rank_table.CHIP_910:
        return seconds
    return max(HCCL_EXEC_TIMEOUT_UNIT, seconds // HCCL_EXEC_TIMEOUT_UNIT * HCCL_EXEC_TIMEOUT_UNIT)


def _check_combinations(parameters: Dict[str, Value]) -> None:
    """The adapter's rules across keys (npu_attrs.cc SetNpuOptimizerAttr, om_partition_subgraphs_pass.cc)."""
    has = parameters.__contains__
    dynamic = [key for key in ("input_shape", "dynamic_dims", "dynamic_node_type") if has(key)]
    rules = [
        (has("modify_mixlist") and parameters.get("precision_mode") not in _MIXED_PRECISION
         and parameters.get("precision_mode_v2") not in _MIXED_PRECISION_V2,
         "modify_mixlist needs --precision_mode {} or --precision_mode_v2 {}".format(
             "/".join(_MIXED_PRECISION), "/".join(_MIXED_PRECISION_V2))),  # 2424-2477
        (has("optypelist_for_implmode") and not has("op_select_implmode"),
         "optypelist_for_implmode needs op_select_implmode"),  # 2307-2312
        (0 < len(dynamic) < 3, "input_shape, dynamic_dims and dynamic_node_type go together"),  # 2326-2371
        (parameters.get("compile_hybrid_mode") == 1 and parameters.get("dynamic_node_type") != 1,
         "compile_hybrid_mode=1 needs input_shape, dynamic_dims and dynamic_node_type=1"),  # 2345-2368
        (has("enable_compress_weight") and has("compress_weight_conf"),
         "enable_compress_weight and compress_weight_conf exclude each other"),  # 2392-2396
        (parameters.get("mix_compile_mode") and has("input_shape") and has("dynamic_dims"),
         "input_shape and dynamic_dims cannot be used with --mix_compile_mode"),  # om_partition 2385-2389
        (has("in_out_pair") and not parameters.get("mix_compile_mode"),
         "in_out_pair needs --mix_compile_mode"),  # om_partition 1063-1066
        (parameters.get("dynamic_input") and parameters.get("dynamic_graph_execute_mode") == "lazy_recompile"
         and parameters["iterations_per_loop"] > 1,
         "dynamic_graph_execute_mode=lazy_recompile needs --iterations_per_loop 1"),  # om_partition 2481-2485
    ]
    for broken, message in rules:
        if broken:
            raise ConfigError("--npu_option: {} (the adapter's rule)".format(message))


def validate(options, total_steps_per_worker: int, chip: str = rank_table.CHIP_910) -> Tuple[int, str, int]:
    """Flag rules of the adapter, checked before anything starts; returns :func:`iterations_per_loop`'s answer."""
    if options.precision_mode_v2 and options.precision_mode:
        raise ConfigError("--precision_mode {} and --precision_mode_v2 {}: the adapter takes one of them, not both "
                          "(npu_attrs.cc:2478)".format(options.precision_mode, options.precision_mode_v2))
    if options.npu_dump_step is not None:
        problem = VALUE_CHECKS["dump_step"](options.npu_dump_step)
        if problem:
            raise ConfigError("--npu_dump_step {}: {} (the adapter's rule)".format(options.npu_dump_step, problem))
    loop = iterations_per_loop(options, total_steps_per_worker)
    hccl_timeouts(options, chip)
    parameters = npu_parameters(replace(options, iterations_per_loop=loop[0]))
    _check_combinations(parameters)
    return loop
