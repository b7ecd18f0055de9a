"""The cpu-xla backend: the CPU, with XLA JIT compilation and bfloat16 where they pay off here.

A complete third-party backend that uses only unet3d's public names. What it
does depends on the TensorFlow build and the CPU, which it probes rather than
guesses:

- XLA JIT: TensorFlow groups ops into clusters and compiles each with XLA.
  On the CPU, ``global_jit_level`` alone is not enough: TensorFlow 2.x also
  needs ``OptimizerOptions.cpu_global_jit``, TensorFlow 1.15 the
  ``--tf_xla_cpu_global_jit`` entry of the ``TF_XLA_FLAGS`` environment
  variable. Which ops are compiled matters most: XLA's CPU convolutions are
  much slower than TensorFlow's own kernels, so by default only the fusible
  ops (element-wise, reductions, reshapes) are compiled
  (``--tf_xla_ops_to_cluster=FUSIBLE``) and convolutions are left alone.
  TensorFlow 1.15 cannot limit clustering, so there the default is no JIT
  (``--cpu_xla_jit all`` compiles everything anyway). A TensorFlow built
  without XLA runs unjitted and says so.
- bfloat16: TensorFlow's oneDNN graph rewrite
  (``RewriterConfig.auto_mixed_precision_onednn_bfloat16``) runs the ops
  that are safe in bfloat16 in bfloat16 and keeps variables and the rest in
  float32. It is used where the rewrite exists (TensorFlow 2.x, not 1.15)
  and the CPU executes bfloat16 natively (``avx512_bf16`` or ``amx_bf16``);
  elsewhere training runs in float32 and says why.

Flags, all prefixed ``--cpu_xla_`` so that they cannot collide with the
core's or another backend's: ``--cpu_xla_jit auto|fusible|all|off``,
``--cpu_xla_precision auto|bfloat16|float32`` and ``--cpu_xla_threads N``.
The line ``cpu-xla: ...`` at the start of a run says what was chosen and why.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from unet3d_core import BackendInfo, BackendOptions, WrappedOptimizer, hookimpl
from unet3d_core.errors import ConfigError

NAME = "cpu-xla"
BFLOAT16_REWRITE = "auto_mixed_precision_onednn_bfloat16"
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
XLA_CPU_FLAG = "--tf_xla_cpu_global_jit"
XLA_FUSIBLE_FLAG = "--tf_xla_ops_to_cluster=FUSIBLE"


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (a set), or None where there is no such file (not Linux).

    Read here rather than imported from the built-in cpu backend: a third-party plugin relies only on
    unet3d's public names.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            found = re.search(r"^flags\s*:(.*)$", handle.read(), re.M)
    except OSError:
        return None
    return set(found.group(1).split()) if found else None


@dataclass(frozen=True)
class Plan:
    """What this process will use, decided once from the flags, the TensorFlow build and the CPU."""

    jit: bool
    xla_flags: Tuple[str, ...]  # added to TF_XLA_FLAGS before the first session
    bfloat16: bool
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        return "{}: {}".format(NAME, "; ".join(self.notes))


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _xla_in_build(tf) -> bool:
    probe = getattr(tf.test, "is_built_with_xla", None)
    if probe is not None:
        return bool(probe())
    # TensorFlow 1.15 has no such probe, but lists an XLA_CPU device when XLA is compiled in.
    return bool(tf.config.experimental.list_physical_devices("XLA_CPU"))


def _bfloat16_missing(tf) -> Optional[str]:
    """Why the bfloat16 rewrite cannot run here, or None when it can."""
    rewrite_fields = tf.compat.v1.ConfigProto().graph_options.rewrite_options.DESCRIPTOR.fields_by_name
    if BFLOAT16_REWRITE not in rewrite_fields:
        return "TensorFlow {} has no oneDNN bfloat16 graph rewrite ({})".format(tf.__version__, BFLOAT16_REWRITE)
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("0", "false"):
        return "oneDNN is turned off (TF_ENABLE_ONEDNN_OPTS={})".format(os.environ["TF_ENABLE_ONEDNN_OPTS"])
    flags = cpu_flags()
    if flags is None:
        return "the CPU's features cannot be read (no /proc/cpuinfo)"
    if not flags.intersection(NATIVE_BFLOAT16_FLAGS):
        return "this CPU has no native bfloat16 instructions ({})".format(" or ".join(NATIVE_BFLOAT16_FLAGS))
    return None


def _jit_plan(tf, choice: str):
    """(jit, TF_XLA_FLAGS entries, note) for ``--cpu_xla_jit``."""
    if choice == "off":
        return False, (), "XLA JIT off (--cpu_xla_jit off)"
    if not _xla_in_build(tf):
        if choice != "auto":
            raise ConfigError("--cpu_xla_jit {}: TensorFlow {} was built without XLA; use auto or off".format(
                choice, tf.__version__))
        return False, (), "XLA JIT unavailable: TensorFlow {} was built without XLA; running without it".format(
            tf.__version__)
    # Only TensorFlow 2.x can keep convolutions out of XLA (1.15 has no
    # --tf_xla_ops_to_cluster); XLA's CPU convolutions are slower than
    # TensorFlow's own kernels in both versions.
    can_limit = int(tf.__version__.split(".")[0]) >= 2
    if choice == "fusible" and not can_limit:
        raise ConfigError("--cpu_xla_jit fusible: TensorFlow {} cannot limit XLA to fusible ops "
                          "(no --tf_xla_ops_to_cluster); use auto, all or off".format(tf.__version__))
    if choice == "auto" and not can_limit:
        return False, (), ("XLA JIT off: TensorFlow {} cannot keep convolutions out of XLA, whose CPU "
                           "convolutions are slower than TensorFlow's; --cpu_xla_jit all compiles "
                           "everything anyway".format(tf.__version__))
    flags = []
    if "cpu_global_jit" not in tf.compat.v1.OptimizerOptions.DESCRIPTOR.fields_by_name:
        flags.append(XLA_CPU_FLAG)  # TensorFlow 1.15: the ConfigProto cannot ask for CPU clustering
    fusible = choice in ("auto", "fusible")
    if fusible:
        flags.append(XLA_FUSIBLE_FLAG)
    return True, tuple(flags), "XLA JIT on ({} ops compiled for the CPU)".format(
        "fusible" if fusible else "all supported")


@functools.lru_cache(maxsize=None)
def make_plan(jit_choice: str, precision_choice: str) -> Plan:
    """Decide JIT and precision for ``--cpu_xla_jit`` and ``--cpu_xla_precision``.

    Raises:
        ConfigError: a choice was asked for explicitly where it cannot run.
    """
    import tensorflow as tf

    jit, xla_flags, jit_note = _jit_plan(tf, jit_choice)
    notes = [jit_note]
    bfloat16 = False
    if precision_choice == "float32":
        notes.append("precision float32 (--cpu_xla_precision float32)")
    else:
        missing = _bfloat16_missing(tf)
        if missing is None:
            bfloat16 = True
            notes.append("precision bfloat16 mixed (oneDNN graph rewrite; variables stay float32)")
        elif precision_choice == "bfloat16":
            raise ConfigError("--cpu_xla_precision bfloat16: unavailable here: {}; use auto or float32".format(
                missing))
        else:
            notes.append("precision float32: bfloat16 unavailable: {}".format(missing))
    return Plan(jit=jit, xla_flags=xla_flags, bfloat16=bfloat16, notes=notes)


def _plan_for(options) -> Plan:
    return make_plan(options.cpu_xla_jit, options.cpu_xla_precision)


@hookimpl
def unet3d_backend_info():
    # Called for every listing, so nothing here imports TensorFlow: a missing
    # XLA or bfloat16 only changes what the run uses, never whether it runs.
    return BackendInfo(name=NAME, summary="CPU with XLA JIT and bfloat16 where supported (example plugin, "
                                          "{} cores here)".format(_cpu_count()), available=True)


@hookimpl
def unet3d_add_options(group):
    group.add_argument("--cpu_xla_jit", choices=("auto", "fusible", "all", "off"), default="auto",
                       help="XLA JIT compilation (cpu-xla backend): fusible = element-wise ops, reductions and "
                            "reshapes, convolutions stay with TensorFlow's kernels (TensorFlow 2.x only); all = "
                            "every op XLA supports; auto = fusible where possible, else off (default auto)")
    group.add_argument("--cpu_xla_precision", choices=("auto", "bfloat16", "float32"), default="auto",
                       help="auto: bfloat16 where TensorFlow and the CPU support it, else float32 "
                            "(cpu-xla backend; default auto)")
    group.add_argument("--cpu_xla_threads", type=int, default=0,
                       help="threads per op (intra-op) for the cpu-xla backend; 0 = one per core (default 0)")


@hookimpl
def unet3d_backend_options(flags, core):
    # The core's frozen holder of this backend's flags (options.cpu_xla_threads...) and its settings (options.core).
    options = BackendOptions(core, flags)
    if options.cpu_xla_threads < 0:
        raise ConfigError("--cpu_xla_threads must be >= 0, got {}".format(options.cpu_xla_threads))
    # An explicit choice this machine cannot honour is refused here, before anything starts.
    _plan_for(options)
    return options


@hookimpl
def unet3d_prepare_environment(options):
    plan = _plan_for(options)
    # TensorFlow parses TF_XLA_FLAGS once, when the first session is created;
    # this hook runs before that, so the flags still count. A flag the user
    # set already wins.
    flags = os.environ.get("TF_XLA_FLAGS", "").split()
    for flag in plan.xla_flags:
        if flag.split("=")[0] not in [given.split("=")[0] for given in flags]:
            flags.append(flag)
    if flags:
        os.environ["TF_XLA_FLAGS"] = " ".join(flags)
    print(plan.describe(), flush=True)


@hookimpl
def unet3d_session_config(config, options, strategy):
    plan = _plan_for(options)
    config.intra_op_parallelism_threads = options.cpu_xla_threads or _cpu_count()
    if plan.jit:
        optimizer_options = config.graph_options.optimizer_options
        optimizer_options.global_jit_level = optimizer_options.ON_1
        if "cpu_global_jit" in optimizer_options.DESCRIPTOR.fields_by_name:  # TensorFlow 2.x
            optimizer_options.cpu_global_jit = True
    if plan.bfloat16:
        rewrite_options = config.graph_options.rewrite_options
        setattr(rewrite_options, BFLOAT16_REWRITE, rewrite_options.ON)
    return config


@hookimpl
def unet3d_mixed_precision(optimizer, options, strategy):
    # The bfloat16 rewrite happens in the session (see unet3d_session_config),
    # and bfloat16 has float32's exponent range, so gradients do not underflow
    # as float16 ones would: no loss scaling, the optimizer stays as it is. A
    # float16 backend would return a loss-scaling wrapper here instead.
    return WrappedOptimizer(optimizer)
