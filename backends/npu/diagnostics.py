"""Profiling, data dumps and the operator-compile cache: the NpuOptimizer keys ModelZoo users set by hand.

Each flag becomes the adapter's own keys (``tf_adapter/util/npu_attrs.cc``, the session-run branch of
``SetNpuOptimizerAttr``), typed as the adapter reads them:

* ``--npu_profiling DIR``: ``profiling_mode`` (bool) and ``profiling_options`` (a JSON string: the
  output folder, training and task traces, AI CPU data; ``--npu_profiling_options`` adds or replaces
  entries). With several ranks the same keys also go into the session that initialises HCCL, which is
  where the adapter docs ask for them (the backend builds that session from the same parameters).
* ``--npu_dump DIR``: ``enable_dump``, ``dump_path``, ``dump_step`` (``0|5|10-20``) and ``dump_mode``.
* ``--npu_overflow_dump DIR``: ``enable_dump_debug``, ``dump_path`` and ``dump_debug_mode`` ``all``.
  The two dumps share the adapter's one ``dump_path``: given both, the folders must be the same.
* ``--npu_op_cache DIR``: ``op_compiler_cache_mode`` ``enable`` and ``op_compiler_cache_dir``, so a
  restarted run reuses the compiled operators.

The adapter refuses a ``dump_path`` that is not an existing folder it can write (``CheckPath``), so
:func:`create_folders` makes each folder before the session is created.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Union

from unet3d_core.errors import ConfigError

Value = Union[bool, int, str]
DUMP_MODES = ("input", "output", "all")
# What the profiler collects by default; fp_point/bp_point empty: the adapter finds the forward and backward
# boundaries itself.
PROFILING_DEFAULTS = {"training_trace": "on", "task_trace": "on", "aicpu": "on", "fp_point": "", "bp_point": ""}
# The adapter keys each flag owns; --npu_option may not set them.
FLAG_KEYS = {
    "profiling_mode": "--npu_profiling",
    "profiling_options": "--npu_profiling / --npu_profiling_options",
    "enable_dump": "--npu_dump",
    "dump_path": "--npu_dump / --npu_overflow_dump",
    "dump_step": "--npu_dump_step",
    "dump_mode": "--npu_dump_mode",
    "enable_dump_debug": "--npu_overflow_dump",
    "dump_debug_mode": "--npu_overflow_dump",
    "op_compiler_cache_mode": "--npu_op_cache",
    "op_compiler_cache_dir": "--npu_op_cache",
}


def add_options(group) -> None:
    group.add_argument("--npu_profiling", default=None, metavar="DIR",
                       help="collect CANN profiling data (training and task traces, AI CPU) into DIR")
    group.add_argument("--npu_profiling_options", default=None, metavar="JSON",
                       help="more profiling options as a JSON object, e.g. '{\"aic_metrics\": \"PipeUtilization\"}' "
                            "(with --npu_profiling)")
    group.add_argument("--npu_dump", default=None, metavar="DIR",
                       help="dump operator inputs/outputs into DIR (see --npu_dump_step, --npu_dump_mode)")
    group.add_argument("--npu_dump_step", default=None, metavar="STEPS",
                       help="steps to dump, e.g. 0|5|10-20 (default: every step)")
    group.add_argument("--npu_dump_mode", choices=DUMP_MODES, default="output",
                       help="what --npu_dump writes: input, output or all (default output)")
    group.add_argument("--npu_overflow_dump", default=None, metavar="DIR",
                       help="dump the operators that overflow (AI Core and atomic) into DIR")
    group.add_argument("--npu_op_cache", default=None, metavar="DIR",
                       help="keep compiled operators in DIR and reuse them in later runs")


def _folder(flag: str, value: str) -> str:
    if not value or not value.strip():
        raise ConfigError("{}: expected a folder".format(flag))
    path = os.path.abspath(value)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError("{} {}: exists and is not a folder".format(flag, value))
    return path


def _profiling_options(options) -> str:
    extra = {}
    if options.npu_profiling_options is not None:
        if options.npu_profiling is None:
            raise ConfigError("--npu_profiling_options needs --npu_profiling DIR")
        try:
            extra = json.loads(options.npu_profiling_options)
        except ValueError as error:
            raise ConfigError("--npu_profiling_options: not valid JSON ({})".format(error)) from None
        if not isinstance(extra, dict) or not all(isinstance(value, str) for value in extra.values()):
            raise ConfigError("--npu_profiling_options: expected a JSON object of strings, e.g. "
                              "'{\"aic_metrics\": \"PipeUtilization\"}'")
        if "output" in extra:
            raise ConfigError("--npu_profiling_options: give the folder with --npu_profiling, not as \"output\"")
    settings = {"output": _folder("--npu_profiling", options.npu_profiling)}
    settings.update(PROFILING_DEFAULTS)
    settings.update(extra)
    return json.dumps(settings, sort_keys=True)


def folders(options) -> Dict[str, str]:
    """{flag: absolute folder} of the diagnostics flags given."""
    given = {}
    for flag in ("npu_profiling", "npu_dump", "npu_overflow_dump", "npu_op_cache"):
        value = getattr(options, flag, None)
        if value is not None:
            given["--" + flag] = _folder("--" + flag, value)
    return given


def parameters(options) -> Dict[str, Value]:
    """The NpuOptimizer keys of the diagnostics flags (empty when none is given).

    Raises:
        ConfigError: a flag without the flag it needs, a malformed value, or two dump folders.
    """
    result: Dict[str, Value] = {}
    paths = folders(options)
    if options.npu_profiling is not None or options.npu_profiling_options is not None:
        result["profiling_mode"] = True
        result["profiling_options"] = _profiling_options(options)
    dump, overflow = paths.get("--npu_dump"), paths.get("--npu_overflow_dump")
    if options.npu_dump_step is not None and dump is None:
        raise ConfigError("--npu_dump_step needs --npu_dump DIR")
    if dump and overflow and dump != overflow:
        raise ConfigError("--npu_dump {} and --npu_overflow_dump {}: the adapter has one dump_path; give both the "
                          "same folder".format(options.npu_dump, options.npu_overflow_dump))
    if dump:
        result.update(enable_dump=True, dump_path=dump, dump_mode=options.npu_dump_mode)
        if options.npu_dump_step is not None:
            result["dump_step"] = options.npu_dump_step
    if overflow:
        result.update(enable_dump_debug=True, dump_path=overflow, dump_debug_mode="all")
    if "--npu_op_cache" in paths:
        result.update(op_compiler_cache_mode="enable", op_compiler_cache_dir=paths["--npu_op_cache"])
    return result


def create_folders(options) -> None:
    """Make the folders the flags name (the adapter refuses a dump_path that does not exist)."""
    for flag, path in folders(options).items():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:
            raise ConfigError("{} {}: cannot create it ({})".format(flag, path, error.strerror)) from None
