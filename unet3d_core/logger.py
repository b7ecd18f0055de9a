"""Run logging: DLLogger's JSON-lines format to a file, readable lines to stdout.

When NVIDIA's ``dllogger`` package is installed it writes the file; otherwise
a built-in writer produces the same line format::

    DLLL {"timestamp": "1700000000.123", "datetime": "2026-11-25 06:00:00.123456",
          "elapsedtime": "12.5", "type": "LOG", "step": 100, "data": {"loss": 0.42}}

Only the chief process logs; other ranks get a logger that discards.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Dict, List, Optional, Union

import numpy as np

from unet3d_core.errors import ConfigError
from unet3d_core.types import optional_import

Step = Union[int, str, tuple]


def _format_value(value) -> str:
    if isinstance(value, float):
        return "{:.4g}".format(value) if abs(value) < 1e-3 and value != 0 else "{:.4f}".format(value)
    return str(value)


class _JsonLinesWriter:
    """The fallback writer: DLLogger's JSONStreamBackend line format."""

    def __init__(self, path: str):
        self._handle = open(path, "a", buffering=1)
        self._start = time.time()

    def write(self, kind: str, step: Step, data: Dict) -> None:
        now = time.time()
        line = {
            "timestamp": str(now),
            "datetime": str(datetime.datetime.fromtimestamp(now)),
            "elapsedtime": str(now - self._start),
            "type": kind,
            "step": list(step) if isinstance(step, tuple) else step,
            "data": data,
        }
        self._handle.write("DLLL " + json.dumps(line) + "\n")

    def close(self) -> None:
        self._handle.close()


class RunLogger:
    """Metrics and parameters to ``<log_dir>/log.json`` and stdout."""

    def __init__(self, log_path: Optional[str], enabled: bool = True, stream=None):
        self.enabled = enabled
        self._stream = stream or sys.stdout
        self._writer = None
        self._dllogger = None
        if not enabled or log_path is None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        dllogger = optional_import("dllogger")
        if dllogger is not None and hasattr(dllogger, "JSONStreamBackend"):
            dllogger.init(backends=[dllogger.JSONStreamBackend(dllogger.Verbosity.VERBOSE, log_path, append=True)])
            self._dllogger = dllogger
        else:
            self._writer = _JsonLinesWriter(log_path)

    def _write(self, kind: str, step: Step, data: Dict) -> None:
        if self._dllogger is not None:
            if kind == "PARAMETER":
                self._dllogger.log(step="PARAMETER", data=data)
            else:
                self._dllogger.log(step=step, data=data)
            self._dllogger.flush()
        elif self._writer is not None:
            self._writer.write(kind, step, data)

    def parameters(self, data: Dict) -> None:
        if self.enabled:
            self._write("PARAMETER", "PARAMETER", {key: _jsonable(value) for key, value in data.items()})

    def metrics(self, step: Step, data: Dict, echo: bool = True) -> None:
        if not self.enabled:
            return
        clean = {key: _jsonable(value) for key, value in data.items()}
        self._write("LOG", step, clean)
        if echo:
            label = "step {}".format(step) if isinstance(step, int) else str(step)
            self.message("{}: {}".format(label, "  ".join(
                "{} {}".format(key, _format_value(value)) for key, value in clean.items())))

    def message(self, text: str) -> None:
        if self.enabled:
            self._stream.write(text + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def benchmark_report(step_times: List[float], mode: str, *, warmup_steps: int, max_steps: int, logger,
                     volumes_per_step: int) -> Dict:
    """Log and return ``throughput_<mode>`` (volumes/s, all workers) and latency mean/p90/p95/p99 (ms).

    ``step_times`` are seconds per step of this worker, the first
    ``warmup_steps`` of them untimed. Workers step in parallel, so the
    global throughput is ``volumes_per_step`` (every worker's) over the mean step time.
    """
    timed = np.asarray(step_times[warmup_steps:], dtype=np.float64)
    if timed.size == 0:
        raise ConfigError("--benchmark: --max_steps ({}) must exceed --warmup_steps ({})".format(
            max_steps, warmup_steps))
    report = {
        "throughput_{}".format(mode): volumes_per_step / float(timed.mean()),
        "latency_{}_mean_ms".format(mode): 1000 * float(timed.mean()),
    }
    for percentile in (90, 95, 99):
        report["latency_{}_p{}_ms".format(mode, percentile)] = 1000 * float(np.percentile(timed, percentile))
    logger.metrics("benchmark", report)
    return report
