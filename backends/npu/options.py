"""The npu backend's options: its flags (``unet3d_add_options`` in plugin.py), checked and frozen, with the loop
size resolved from them. Every hook after ``unet3d_backend_options`` receives one :class:`NpuOptions`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

from unet3d_core.types import CoreSettings

if TYPE_CHECKING:
    from backends.npu.launcher import LaunchedRank


@dataclass(frozen=True)
class LoopSize:
    """``--iterations_per_loop`` resolved: the training steps one ``session.run`` performs on the device."""

    iterations: int
    reason: str  # "given", or how auto chose it
    steps_per_device: int = 0  # the training steps each device runs: the core's share, or that rounded up


@dataclass(frozen=True)
class NpuOptions:
    """One field per flag of the npu backend (same names, same defaults as its parser), the core's settings, and
    what ``unet3d_backend_options`` resolves: ``loop``, the loop size, and ``launched``, this process's rank when
    the launcher started it."""

    core: CoreSettings
    npus: int = 1
    device_ids: Optional[str] = None
    rank_table: Optional[str] = None
    hccn_conf: str = "/etc/hccn.conf"
    server_id: Optional[str] = None
    job_id: Optional[str] = None
    hccl_connect_timeout: Optional[int] = None
    hccl_exec_timeout: Optional[int] = None
    precision_mode: Optional[str] = None
    precision_mode_v2: Optional[str] = None
    iterations_per_loop: Optional[int] = None  # None: auto
    hcom_parallel: bool = True
    enable_data_pre_proc: bool = False
    mix_compile_mode: bool = False
    npu_option: List[str] = field(default_factory=list)
    npu_loss_scale: float = 1.0
    npu_cpu_binding: str = "auto"
    npu_split_strategy: Optional[Tuple[str, Tuple[Union[int, float], ...]]] = None  # ("idx"|"size", values)
    no_sync_mode_patch: bool = False
    npu_chip: str = "auto"
    npu_profiling: Optional[str] = None
    npu_profiling_options: Optional[str] = None
    npu_dump: Optional[str] = None
    npu_dump_step: Optional[str] = None
    npu_dump_mode: str = "output"
    npu_overflow_dump: Optional[str] = None
    npu_op_cache: Optional[str] = None
    loop: Optional[LoopSize] = None
    # This process's rank when the backend's launcher started it (read once from its environment), else None.
    launched: Optional["LaunchedRank"] = None
