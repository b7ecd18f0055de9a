"""The host's cores for the ranks of one server: each rank bound to its own share, NUMA node by node.

Eight ranks of one Atlas 800 share its host: each runs TensorFlow's thread
pools and the tf.data pipeline that feeds its device. Unbound, every process
sizes its pools for all of the host's cores (192 on a Kunpeng 920 server), so
eight of them oversubscribe the cores and migrate between NUMA nodes. The
reference port's scripts bind each rank with ``taskset``; ``--npu_cpu_binding
auto`` (the default) does the same from the launcher:

- the cores are those the launcher may use (``sched_getaffinity``: a
  container's cpuset is respected), grouped by NUMA node
  (``/sys/devices/system/node/node*/cpulist``);
- the ranks are spread over the nodes in device order (on an Atlas 800 the
  first half of the devices hangs off the first socket): with at least as many
  ranks as nodes, each node's cores are split into equal contiguous blocks for
  its ranks; with fewer ranks, each rank takes whole nodes;
- TensorFlow sizes its thread pools from the cores a process may run on, so a
  bound rank's pools fit its share; without binding the npu backend caps the
  session's pools at the host's cores divided by the ranks on it.

The launcher hands each worker its set in ``UNET3D_NPU_CPUS`` (a CPU list such
as ``0-23``) and binds it before it starts.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence

from unet3d_core.errors import ConfigError

NODE_FOLDER = "/sys/devices/system/node"
CPUS_VARIABLE = "UNET3D_NPU_CPUS"
BINDING_CHOICES = ("auto", "off")
_NODE = re.compile(r"^node(\d+)$")


def parse_cpu_list(text: str, where: str = "CPU list") -> List[int]:
    """``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: List[int] = []
    for part in (piece.strip() for piece in text.strip().split(",")):
        if not part:
            continue
        bounds = part.split("-")
        if len(bounds) > 2 or not all(bound.isdigit() for bound in bounds):
            raise ConfigError("{}: '{}' is not a list of CPUs like 0-23,48-71".format(where, text))
        first, last = int(bounds[0]), int(bounds[-1])
        if last < first:
            raise ConfigError("{}: '{}' has a range running backwards".format(where, text))
        cpus.extend(range(first, last + 1))
    return sorted(set(cpus))


def format_cpu_list(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8] -> ``"0-3,8"``."""
    parts, ordered = [], sorted(set(cpus))
    start = previous = None
    for cpu in ordered + [None]:
        if cpu is not None and previous is not None and cpu == previous + 1:
            previous = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == previous else "{}-{}".format(start, previous))
        start = previous = cpu
    return ",".join(parts)


def numa_nodes(folder: str = NODE_FOLDER) -> List[List[int]]:
    """The CPUs of each NUMA node, in node order; [] where the kernel shows no nodes."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    nodes = []
    for name in sorted((name for name in names if _NODE.match(name)), key=lambda name: int(_NODE.match(name)[1])):
        try:
            with open(os.path.join(folder, name, "cpulist")) as handle:
                nodes.append(parse_cpu_list(handle.read(), os.path.join(folder, name, "cpulist")))
        except OSError:
            continue
    return [node for node in nodes if node]


def rank_cpu_sets(ranks: int, available: Sequence[int], nodes: Sequence[Sequence[int]]) -> Optional[List[List[int]]]:
    """The cores of each of ``ranks`` local ranks, or None when there are fewer cores than ranks.

    ``available``: the cores the launcher may use; ``nodes``: each NUMA node's cores (all of ``available``
    as one node when empty). See the module docstring for the rule.
    """
    allowed = set(available)
    groups = [[cpu for cpu in node if cpu in allowed] for node in nodes]
    groups = [group for group in groups if group] or [sorted(allowed)]
    if ranks < 1 or len(allowed) < ranks:
        return None
    if ranks <= len(groups):  # each rank takes whole nodes
        return [sorted(cpu for group in groups[rank * len(groups) // ranks:(rank + 1) * len(groups) // ranks]
                       for cpu in group) for rank in range(ranks)]
    on_node: Dict[int, List[int]] = {}
    for rank in range(ranks):
        on_node.setdefault(rank * len(groups) // ranks, []).append(rank)
    sets: List[List[int]] = [[] for _ in range(ranks)]
    for node, members in on_node.items():
        cores = groups[node]
        share = len(cores) // len(members)
        if share < 1:
            return None
        for index, rank in enumerate(members):
            sets[rank] = cores[index * share:(index + 1) * share]
    return sets


def binding_for(choice: str, ranks: int, node_folder: str = NODE_FOLDER) -> Optional[List[List[int]]]:
    """``--npu_cpu_binding``: the cores of each local rank, or None (off, one rank, or too few cores)."""
    if choice == "off" or ranks < 2:
        return None
    return rank_cpu_sets(ranks, sorted(os.sched_getaffinity(0)), numa_nodes(node_folder))


def session_threads(bound_cpus: Optional[Sequence[int]], local_ranks: int) -> int:
    """Threads of a rank's session pools: its bound cores, else the host's cores shared by the local ranks."""
    if bound_cpus:
        return len(bound_cpus)
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_ranks))
