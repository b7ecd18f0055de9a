"""The ``NpuOptimizer`` ``parameter_map`` as the adapter reads it (tf_adapter/util/npu_attrs.cc).

The adapter never walks the map: ``NpuAttrs::GetPassOptions`` (npu_attrs.cc:893-1032) and
``NpuAttrs::SetNpuOptimizerAttr`` (npu_attrs.cc:1917-2846) look up each key they know and read it
with one accessor, ``.b()``, ``.i()`` or ``.s()``. Two consequences the fake makes visible:

* a key they do not know is never looked at: silently ignored. The fake records
  ``{"call": "ignored_parameter", "key": ...}`` so a test can assert there is none;
* a known key set through another ``AttrValue`` field (``field.i = 1`` where the adapter reads
  ``.b()``) is read by protobuf as that accessor's default (false, 0 or "") without an error.
  The fake refuses it with a ValueError naming the key, the field set and the accessor read.

The value checks below follow the two functions in their order; each names its lines. A check
the adapter answers with a Status raises the TensorFlow error of that code (InvalidArgumentError,
InternalError); one it answers with LOG(FATAL) aborts the process (see log.py). The real adapter
applies them when a session first runs a graph; the fake applies them when the session is created.
"""
import os
import re

import tensorflow as tf

from npu_bridge._tf_adapter import log

ATTRS = "tf_adapter/util/npu_attrs.cc"
ATTRS_H = "tf_adapter/util/npu_attrs.h"

# key -> (accessor, line of its read in npu_attrs.cc). Lines are those of SetNpuOptimizerAttr, except
# const_input, which only GetPassOptions reads (the pass-level keys GetPassOptions reads, lines 921-995, use
# the same accessor).
KEYS = {
    # pass-level keys
    "enable_data_pre_proc": ("b", 2218),
    "use_off_line": ("b", 2222),
    "mix_compile_mode": ("b", 2225),
    "iterations_per_loop": ("i", 2228),
    "lower_functional_ops": ("b", 2236),
    "job": ("s", 2239),
    "task_index": ("i", 2244),
    "dynamic_input": ("b", 2248),
    "dynamic_graph_execute_mode": ("s", 2252),
    "dynamic_inputs_shape_range": ("s", 2261),
    "local_rank_id": ("i", 2270),
    "local_device_list": ("s", 2279),
    "in_out_pair_flag": ("b", 2288),
    "in_out_pair": ("s", 2291),
    "frozen_variable": ("b", 2583),
    "variable_placement": ("s", 2586),
    "shape_generalization_mode": ("s", 2648),
    "const_input": ("s", 981),
    "graph_max_parallel_model_num": ("i", 2231),
    "compile_dynamic_mode": ("b", 2266),
    "experimental_accelerate_train_mode": ("s", 2532),
    # session, graph and init keys
    "variable_format_optimize": ("b", 2038),
    "hcom_parallel": ("b", 2041),
    "graph_memory_max_size": ("s", 2044),
    "variable_memory_max_size": ("s", 2047),
    "enable_dump": ("b", 2050),
    "enable_dump_debug": ("b", 2053),
    "input_fusion_size": ("i", 2056),
    "dump_path": ("s", 2070),
    "dump_step": ("s", 2085),
    "dump_mode": ("s", 2093),
    "dump_debug_mode": ("s", 2103),
    "stream_max_parallel_num": ("s", 2112),
    "ac_parallel_enable": ("s", 2115),
    "quant_dumpable": ("s", 2118),
    "is_tailing_optimization": ("b", 2122),
    "profiling_mode": ("b", 2125),
    "profiling_options": ("s", 2128),
    "auto_tune_mode": ("s", 2135),
    "graph_run_mode": ("i", 2138),
    "op_debug_level": ("i", 2145),
    "enable_scope_fusion_passes": ("s", 2151),
    "aoe_mode": ("s", 2155),
    "work_path": ("s", 2170),
    "distribute_config": ("s", 2185),
    "precision_mode": ("s", 2189),
    "precision_mode_v2": ("s", 2204),
    "soc_config": ("s", 2213),
    "enable_exception_dump": ("i", 2295),
    "op_select_implmode": ("s", 2315),
    "optypelist_for_implmode": ("s", 2323),
    "input_shape": ("s", 2328),
    "dynamic_dims": ("s", 2334),
    "dynamic_node_type": ("i", 2340),
    "compile_hybrid_mode": ("i", 2346),
    "buffer_optimize": ("s", 2375),
    "enable_small_channel": ("i", 2382),
    "deterministic": ("i", 2388),
    "fusion_switch_file": ("s", 2391),
    "enable_compress_weight": ("b", 2398),
    "compress_weight_conf": ("s", 2401),
    "op_compiler_cache_mode": ("s", 2404),
    "op_compiler_cache_dir": ("s", 2407),
    "debug_dir": ("s", 2410),
    "hcom_multi_mode": ("b", 2413),
    "session_device_id": ("i", 2416),
    "modify_mixlist": ("s", 2439),
    "op_precision_mode": ("s", 2484),
    "device_type": ("s", 2487),
    "hccl_timeout": ("i", 2490),
    "op_wait_timeout": ("i", 2493),
    "op_execute_timeout": ("i", 2496),
    "customize_dtypes": ("s", 2499),
    "HCCL_algorithm": ("s", 2502),
    "op_debug_config": ("s", 2505),
    "graph_exec_timeout": ("i", 2508),
    "static_memory_policy": ("i", 2511),
    "atomic_clean_policy": ("i", 2514),
    "variable_use_1g_huge_page": ("i", 2517),
    "memory_optimization_policy": ("s", 2523),
    "experimental_logical_device_cluster_deploy_mode": ("s", 2526),
    "experimental_logical_device_id": ("s", 2529),
    "experimental_model_deploy_mode": ("s", 2535),
    "experimental_model_deploy_devicelist": ("s", 2538),
    "topo_sorting_mode": ("i", 2541),
    "insert_op_file": ("s", 2546),
    "resource_config_path": ("s", 2551),
    "graph_parallel_option_path": ("s", 2554),
    "enable_graph_parallel": ("b", 2557),
    "dump_data": ("s", 2560),
    "dump_layer": ("s", 2568),
    "aoe_config_file": ("s", 2571),
    "stream_sync_timeout": ("i", 2574),
    "event_sync_timeout": ("i", 2577),
    "external_weight": ("b", 2580),
    "export_compile_stat": ("i", 2590),
    "oo_constant_folding": ("b", 2598),
    "aicore_num": ("s", 2604),
    "all_tensor_not_empty": ("b", 2609),
    "auto_multistream_parallel_mode": ("s", 2612),
    "input_batch_cpy": ("b", 2616),
    "oo_level": ("s", 2623),
    "optimization_switch": ("s", 2628),
    "jit_compile": ("s", 2637),
    "graph_compiler_cache_dir": ("s", 2654),
    "graph_slice": ("s", 2657),
}
# Keys whose value case the adapter itself checks, answering a wrong one with InvalidArgument
# (npu_attrs.cc:2634-2636 jit_compile, 2644-2646 shape_generalization_mode).
CASE_CHECKED = {"jit_compile": 2636, "shape_generalization_mode": 2646}
# Keys the adapter reads only when their case is the expected one, ignoring them silently otherwise
# (npu_attrs.cc:2589-2590 export_compile_stat, 2597-2598 oo_constant_folding).
CASE_GUARDED = {"export_compile_stat", "oo_constant_folding"}

_ACCESSOR_DEFAULT = {"b": False, "i": 0, "s": ""}
PRECISION_MODES = ["force_fp32", "allow_fp32_to_fp16", "force_fp16", "must_keep_origin_dtype", "allow_mix_precision",
                   "cube_fp16in_fp32out", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                   "allow_fp32_to_bf16"]  # npu_attrs.cc:2190-2198
PRECISION_MODES_V2 = ["fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8",
                      "mixed_hif8"]  # npu_attrs.cc:2205-2206


def _at(line, end=None):
    return "{}:{}".format(ATTRS, line if end is None else "{}-{}".format(line, end))


def invalid_argument(message, source):
    return tf.errors.InvalidArgumentError(None, None, "{} (fake_npu: {} {})".format(message, "InvalidArgument",
                                                                                     source))


def internal(message, source):
    return tf.errors.InternalError(None, None, "{} (fake_npu: {} {})".format(message, "Internal", source))


def _value_of(attr):
    """(field name, Python value) of an AttrValue."""
    field = attr.WhichOneof("value")
    if field is None:
        return None, None
    value = getattr(attr, field)
    if field == "s":
        value = value.decode("utf-8", "replace")
    elif field == "list":
        value = str(value).strip()
    elif field in ("shape", "tensor", "func", "type"):
        value = str(value).strip()
    return field, value


def _check_allowed(option, value, allowed, line):
    """NpuAttrs::CheckValueAllowed (npu_attrs.h:86-96): InvalidArgument listing the allowed values."""
    if value not in allowed:
        raise invalid_argument("option {} value '{}' is invalid, it should be one of the list:[{}]".format(
            option, value, ", ".join("'{}'".format(item) for item in allowed)),
            "{} (CheckValueAllowed, {}:86-96)".format(_at(line), ATTRS_H))


def _getline_split(text, separator):
    """Split(s, result, delchar) of npu_attrs.cc:229-241: std::getline items, no trailing empty item."""
    if not text:
        return []
    items = text.split(separator)
    if items[-1] == "":
        items.pop()
    return items


def _dump_step_problem(dump_step):
    """checkDumpStep (npu_attrs.cc:266-294): '0|5|10-20', at most 100 sets."""
    sets = _getline_split(dump_step, "|")
    if len(sets) > 100:
        return "dump_step only support dump <= 100 sets of data"
    for item in sets:
        bounds = _getline_split(item, "-")
        if len(bounds) not in (1, 2) or not all(re.match(r"^[0-9]*$", bound) for bound in bounds):
            return "dump_step string style is error, correct example:'0|5|10|50-100'"
        if len(bounds) == 2 and int(bounds[0] or 0) >= int(bounds[1] or 0):
            return "in range steps, the first step is >= second step, correct example:'0|5|10-20'"
    return None


def _path_problem(path):
    """CheckPath (npu_attrs.cc:314-326): an existing directory with read and write access."""
    if not os.path.isdir(path):
        return "the path {} is not directory.".format(path)
    if not os.access(os.path.realpath(path), os.R_OK | os.W_OK):
        return "the path {} does't have read, write permissions.".format(path)
    return None


def read_parameter_map(custom_optimizer):
    """The typed parameter map of one ``NpuOptimizer`` entry, checked as the adapter checks it.

    Returns ``(parameters, types, ignored, effective)``: the values by key (bool, int or str), the
    AttrValue field of each, the keys the adapter never reads, and the values the adapter applies
    where they differ from what was set (enable_small_channel under graph_run_mode 0).
    """
    parameters, types, ignored = {}, {}, []
    for key in sorted(custom_optimizer.parameter_map):
        field, value = _value_of(custom_optimizer.parameter_map[key])
        types[key] = field
        parameters[key] = value
        if key not in KEYS:
            ignored.append(key)
            continue
        accessor, line = KEYS[key]
        if field == accessor:
            continue
        if key in CASE_CHECKED:
            raise invalid_argument("The data type of {} is invalid. Expected string type.".format(key),
                                   _at(CASE_CHECKED[key]))
        consequence = ("ignores it (it reads the key only when that field is set)" if key in CASE_GUARDED else
                       "would silently read it as {!r}".format(_ACCESSOR_DEFAULT[accessor]))
        raise ValueError(
            "NpuOptimizer parameter_map['{}'] is set as AttrValue.{} ({!r}), but the adapter reads it with .{}() "
            "({} SetNpuOptimizerAttr); the real adapter {}. Set parameter_map['{}'].{} instead.".format(
                key, field, value, accessor, _at(line), consequence, key, accessor))
    _check_pass_options(parameters)
    effective = _check_optimizer_attrs(parameters)
    return parameters, types, ignored, effective


def _check_pass_options(p):
    """The LOG(FATAL) checks of NpuAttrs::GetPassOptions(GraphOptimizationPassOptions), which runs first
    (get_attr_optimize_pass.cc:42, before SetNpuOptimizerAttr at :77)."""
    if p.get("dynamic_input") and "dynamic_graph_execute_mode" in p and \
            p["dynamic_graph_execute_mode"] not in ("lazy_recompile", "dynamic_execute"):
        log.fatal("dynamic_graph_execute_mode should be lazy_recompile or dynamic_execute.", _at(946, 951))
    if "local_rank_id" in p and not 0 <= p["local_rank_id"] <= 7:
        log.fatal("local rank id should be in [0,7]", _at(958, 964) + " (CheckLocalRankId, :393-399)")
    if "local_device_list" in p and not re.match(r"^(\d{1,},)+$", p["local_device_list"] + ","):
        log.fatal("local_device_list style is invalid, example:'1,2,3'", _at(966, 972) + " (CheckDeviceList, :401-408)")
    if "variable_placement" in p and p["variable_placement"] not in ("Host", "Device"):
        log.fatal("variable placement should be one of the list:[Host, Device]",
                  _at(986, 992) + " (CheckVariablePlacement, :341-348)")


def _check_optimizer_attrs(p):
    """The checks of NpuAttrs::SetNpuOptimizerAttr, in its order."""
    effective = {}
    if "input_fusion_size" in p and not 0 <= p["input_fusion_size"] <= 32 * 1024 * 1024:
        effective["input_fusion_size"] = min(max(p["input_fusion_size"], 0), 32 * 1024 * 1024)
        log.warning("input_fusion_size clamped to [0, 32 MiB]", _at(2056, 2067))
    if p.get("enable_dump") or p.get("enable_dump_debug"):
        if "dump_path" not in p:
            raise internal("if use dump function, dump_path must be set.", _at(2076, 2080))
        problem = _path_problem(p["dump_path"])
        if problem:
            raise internal(problem, _at(2069, 2075))
    if p.get("enable_dump"):
        if "dump_step" in p:
            problem = _dump_step_problem(p["dump_step"])
            if problem:
                raise internal(problem, _at(2084, 2090) + " (checkDumpStep, :266-294)")
        if "dump_mode" in p and p["dump_mode"] not in ("input", "output", "all"):
            log.fatal("dump mode should be one of the list:[input, output, all]", _at(2092, 2099))
    if p.get("enable_dump_debug") and "dump_debug_mode" in p and \
            p["dump_debug_mode"] not in ("aicore_overflow", "atomic_overflow", "all"):
        log.fatal("dump debug mode should be one of the list:[aicore_overflow, atomic_overflow, all]", _at(2102, 2109))
    if "graph_run_mode" in p and p["graph_run_mode"] > 1:
        log.fatal("graph_run_mode value must be 0 or 1", _at(2137, 2142))
    aoe_mode = p["aoe_mode"] if "aoe_mode" in p else os.environ.get("AOE_MODE", "")  # npu_attrs.cc:2154-2161
    if aoe_mode:
        if aoe_mode not in ("1", "2", "4"):
            raise internal("aoe mode:{} is invalid, aoe mode should be one of the list:['1', '2', '4']".format(
                aoe_mode), _at(2162, 2167) + " (CheckAoeMode, :350-359)")
        problem = _path_problem(p.get("work_path", "./"))  # default "./" (npu_attrs.cc:1986)
        if problem:
            log.fatal(problem, _at(2169, 2182))
    if "precision_mode" in p:
        _check_allowed("precision_mode", p["precision_mode"], PRECISION_MODES, 2199)
    if "precision_mode_v2" in p:
        _check_allowed("precision_mode_v2", p["precision_mode_v2"], PRECISION_MODES_V2, 2207)
    if "graph_max_parallel_model_num" in p and p["graph_max_parallel_model_num"] <= 0:
        raise internal("graph_max_parallel_model_num should not be less than 1", _at(2230, 2234))
    if "enable_exception_dump" in p and not 0 <= p["enable_exception_dump"] <= 2:
        raise internal("enable_exception_dump should be one of 0, 1 and 2.", _at(2294, 2305))
    if "op_select_implmode" not in p:
        if "optypelist_for_implmode" in p:
            log.fatal("when use optypelist_for_implmode, op_select_implmode must be set.", _at(2307, 2312))
    elif p["op_select_implmode"] not in ("high_precision", "high_performance", "high_precision_for_all",
                                         "high_performance_for_all"):
        log.fatal("op select impl mode should be one of the list:[high_precision, high_performance, "
                  "high_precision_for_all, high_performance_for_all]", _at(2313, 2320) + " (CheckOpImplMode, :329-339)")
    _check_dynamic_dims(p)
    if "buffer_optimize" in p and p["buffer_optimize"] not in ("l2_optimize", "off_optimize"):
        log.fatal("buffer_optimize is valid, should be one of [l2_optimize, off_optimize]", _at(2374, 2380))
    if p.get("graph_run_mode", 1) == 0 and p.get("enable_small_channel") != 1:
        effective["enable_small_channel"] = 1  # npu_attrs.cc:2384-2386
    if "enable_compress_weight" in p and "compress_weight_conf" in p:
        log.fatal("enable_compress_weight can not use with compress_weight_conf.", _at(2392, 2396))
    if "session_device_id" in p and p["session_device_id"] < 0:
        log.fatal("session_device_id must be nonnegative integer.", _at(2416, 2421))
    _check_modify_mixlist(p)
    if "precision_mode" in p and "precision_mode_v2" in p:
        raise internal("'precision_mode' and 'precision_mode_v2' can not be assigned at the same time.",
                       _at(2478, 2482))
    if "variable_use_1g_huge_page" in p:
        _check_allowed("variable_use_1g_huge_page", p["variable_use_1g_huge_page"], [0, 1, 2], 2519)
    if "dump_data" in p and p["dump_data"] not in ("tensor", "stats"):
        raise internal("dump_data should be 'tensor' or 'stats'.", _at(2560, 2566))
    if "export_compile_stat" in p:
        _check_allowed("export_compile_stat", p["export_compile_stat"], [0, 1, 2], 2592)
    if "jit_compile" in p:
        _check_allowed("jit_compile", p["jit_compile"], ["true", "false", "auto"], 2637)
    if "shape_generalization_mode" in p:
        _check_allowed("shape_generalization_mode", p["shape_generalization_mode"], ["STRICT", "FULL", "ADAPTIVE"],
                       2648)
    if "graph_slice" in p and p["graph_slice"] not in ("auto", "manual"):
        raise internal("graph_slice must be in ['auto', 'manual']", _at(2655, 2660))
    return effective


def _check_dynamic_dims(p):
    """input_shape, dynamic_dims and dynamic_node_type come together (npu_attrs.cc:2326-2372)."""
    present = [key in p for key in ("input_shape", "dynamic_dims", "dynamic_node_type")]
    if all(present):
        shapes = _getline_split(p["input_shape"], ";")
        if not shapes or not all(re.match(r"^[\s\S]+:((\d{1,}|-\d{1,}),)+$", shape + ",") for shape in shapes):
            log.fatal("input_shape string style is invalid", _at(2328, 2333) + " (CheckInputShape, :361-375)")
        dims = _getline_split(p["dynamic_dims"], ";")
        if not dims or not all(re.match(r"^(\d{1,},)+$", dim + ",") for dim in dims):
            log.fatal("dynamic_dims string style is invalid", _at(2334, 2339) + " (CheckDynamicDims, :377-391)")
        if p["dynamic_node_type"] not in (0, 1):
            log.fatal("dynamic_node_type should be 0 or 1.", _at(2340, 2344))
        if "compile_hybrid_mode" in p:
            if p["compile_hybrid_mode"] not in (0, 1):
                raise internal("compile_hybrid_mode should be 0 or 1", _at(2345, 2351))
            if p["compile_hybrid_mode"] == 1 and p["dynamic_node_type"] != 1:
                raise internal("When compile_hybrid_mode set, dynamic_node_type should be 1.", _at(2352, 2356))
    elif not any(present):
        if p.get("compile_hybrid_mode") == 1:
            raise internal("input_shape, dynamic_dims and dynamic_node_type should be set when compile_hybrid_mode "
                           "is 1", _at(2358, 2368))
    else:
        log.fatal("input_shape, dynamic_dims and dynamic_node_type should use together.", _at(2369, 2372))


def _check_modify_mixlist(p):
    """modify_mixlist needs a mixed precision mode (npu_attrs.cc:2424-2477)."""
    if "modify_mixlist" not in p:
        return
    if "precision_mode" in p:
        if p["precision_mode"] in ("allow_mix_precision", "allow_mix_precision_fp16", "allow_mix_precision_bf16"):
            return
        raise internal("modify_mixlist is assigned, please ensure that precision_mode is assigned to "
                       "'allow_mix_precision' or 'allow_mix_precision_fp16' or 'allow_mix_precision_bf16'(if "
                       "available).", _at(2439, 2450))
    if "precision_mode_v2" in p:
        if p["precision_mode_v2"] in ("mixed_float16", "mixed_bfloat16", "mixed_hif8"):
            return
        raise internal("modify_mixlist is assigned, please ensure that precision_mode_v2 is assigned to "
                       "'mixed_float16', 'mixed_hif8' or 'mixed_bfloat16'(if available).", _at(2451, 2458))
    raise internal("modify_mixlist is assigned, please ensure precision_mode only can be assigned to "
                   "'allow_mix_precision' or 'allow_mix_precision_fp16' or 'allow_mix_precision_bf16'(if available),"
                   "precision_mode_v2 only can be assigned to 'mixed_float16', 'mixed_hif8' or 'mixed_bfloat16'(if "
                   "available).", _at(2459, 2476))
