#!/usr/bin/env python
"""Time and peak memory of predicting one full-size BraTS case with the default network.

Writes one synthetic 240x240x155 case (unet3d_core.data.synth) and a checkpoint of
the default 31.2 M-parameter network with freshly initialised weights (the
cost does not depend on the weights), then runs the real command

    python cli.py predict --input_dir RAW --model_dir MODEL --output_dir OUT [flags]

in a child process and reports its wall time and its peak resident memory
(the child's own maximum RSS from wait4, so this script's memory is not
counted). Extra flags after ``--`` go to ``predict``:

    python benchmarks/predict_full_volume.py                      # defaults: sliding 128^3, overlap 0.5
    python benchmarks/predict_full_volume.py -- --inference_mode crop
    python benchmarks/predict_full_volume.py -- --inference_batch_size 2 --tta
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BRATS_SHAPE = (240, 240, 155)


def prepare(workdir: str, shape) -> tuple:
    """Write the synthetic case and the checkpoint once; reuse them on later runs in the same folder."""
    from unet3d_core.data.synth import write_synthetic_dataset
    from unet3d_core.evaluation.inference import initialize_checkpoint
    from unet3d_core.model.config import ModelConfig

    raw, model_dir = os.path.join(workdir, "raw"), os.path.join(workdir, "model")
    if not os.path.isdir(raw):
        write_synthetic_dataset(raw, cases=1, shape=shape, seed=0)
    if not os.path.isdir(model_dir):
        initialize_checkpoint(model_dir, ModelConfig(), seed=0)
    return raw, model_dir


def run_predict(raw: str, model_dir: str, output_dir: str, extra) -> dict:
    """Run ``cli.py predict`` as a child; return its wall time, peak RSS and the predict step's own seconds."""
    command = [sys.executable, os.path.join(ROOT, "cli.py"), "predict", "--input_dir", raw, "--model_dir", model_dir,
               "--output_dir", output_dir, "--overwrite"] + list(extra)
    started = time.time()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - started
    child.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    if child.returncode != 0:
        sys.stderr.write(output)
        raise SystemExit("predict failed with exit status {}".format(child.returncode))
    inner = re.search(r"predict: cases \d+ .*seconds ([0-9.]+)", output)
    return {
        "command": " ".join(command[1:]),
        "wall_seconds": round(wall, 1),
        "predict_seconds": float(inner.group(1)) if inner else None,  # restore + inference + writing, no start-up
        "peak_rss_gib": round(usage.ru_maxrss / 1024.0 ** 2, 2),  # ru_maxrss is in KiB on Linux
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="folder for the case, checkpoint and output "
                                                        "(default: a temporary folder, removed afterwards)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(BRATS_SHAPE), metavar=("X", "Y", "Z"))
    parser.add_argument("extra", nargs="*", help="flags passed to 'cli.py predict' (after --)")
    options = parser.parse_args()
    workdir = options.workdir or tempfile.mkdtemp(prefix="unet3d-predict-bench-")
    try:
        raw, model_dir = prepare(workdir, tuple(options.shape))
        result = run_predict(raw, model_dir, os.path.join(workdir, "out"), options.extra)
        import tensorflow as tf

        result.update(shape=options.shape, tensorflow=tf.__version__, python=sys.version.split()[0],
                      cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        print("predict one {} case, default network: {:.1f} s wall ({} s in predict), peak RSS {:.2f} GiB".format(
            "x".join(map(str, options.shape)), result["wall_seconds"], result["predict_seconds"],
            result["peak_rss_gib"]))
        print(json.dumps(result))
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
