#!/usr/bin/env python
"""Every benchmark, one after another, and one table at the end: what ``make bench`` runs.

1. Input pipeline (``input_pipeline.py``, both recipes) in each TensorFlow
   environment, with crops of the training benchmark's size, so its volumes/s
   stand next to the training step's; its full-size records are kept for step 2.
2. Training step throughput, roofline and MONAI (``train_throughput.py``),
   also training from those records with augmentation.
3. Whole-volume prediction of one 240x240x155 case, wall time and peak
   memory (``predict_full_volume.py``): sliding windows (the default) in
   TensorFlow 2.15, the seed's single centre crop in both environments.

    python benchmarks/run_all.py                  # about 20 minutes on 2 cores
    python benchmarks/run_all.py --quick          # one run per row, no sliding-window prediction: about 10
    python benchmarks/run_all.py --json bench.json

Run it on an otherwise idle machine: every figure is wall-clock time on
shared cores. The load average before each run is printed and recorded.
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

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import train_throughput  # noqa: E402  (a sibling script, found through the path set above)

NAMES = {"tf2": "TF 2.15 (.venv-tf2)", "tf1": "TF 1.15 (.venv-tf1)"}


def run_script(environment: str, arguments) -> str:
    """Run a benchmark script with ``environment``'s Python; return its output (raise on failure)."""
    python = train_throughput.ENVIRONMENTS[environment]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run([python] + list(arguments), cwd=train_throughput.ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:])
        raise RuntimeError("{}: {} exited with {}".format(environment, " ".join(arguments), completed.returncode))
    return completed.stdout


def input_pipeline(environment: str, crop: int, workdir=None) -> dict:
    """Training-pipeline volumes/s of each recipe's sampling and augmentation (cached cases, every core),
    parsed from input_pipeline.py's ``volumes/s`` lines."""
    rates = {}
    for recipe in ("nnunet", "seed"):
        arguments = [os.path.join(HERE, "input_pipeline.py"), "--recipe", recipe, "--shape"] + [str(crop)] * 3 + [
            "--threads", str(os.cpu_count() or 1), "--no_monai"]
        if workdir:
            arguments += ["--workdir", workdir]
        output = run_script(environment, arguments)
        match = re.search(r"pipeline, .* thread\(s\): volumes/s ([0-9.]+)", output)
        if not match:
            raise RuntimeError("input_pipeline.py ({}) printed no rate:\n{}".format(environment, output[-2000:]))
        rates[recipe] = float(match.group(1))
    return rates


def predict_full_volume(environment: str, mode: str) -> dict:
    """Wall time and peak RSS of ``cli.py predict`` on one full-size case, from predict_full_volume.py's JSON line."""
    output = run_script(environment, [os.path.join(HERE, "predict_full_volume.py"), "--", "--inference_mode", mode])
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("predict_full_volume.py ({}) printed no result:\n{}".format(environment, output[-2000:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one run per training row and no sliding-window prediction")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(train_throughput.ENVIRONMENTS),
                        help="leave out an environment (repeatable)")
    parser.add_argument("--json", default=None, help="also write every measurement to this file")
    options = parser.parse_args(argv)

    train_arguments = ["--compare_kernels"] + ["--skip={}".format(name) for name in options.skip]
    if options.quick:
        train_arguments += ["--repeats", "1", "--tf1_repeats", "1"]
    else:
        train_arguments += ["--tf1_repeats", "2"]
    environments = [name for name in ("tf2", "tf1") if name not in options.skip
                    and os.path.exists(train_throughput.ENVIRONMENTS[name])]
    if "tf2" not in environments:
        raise SystemExit("error: .venv-tf2 is needed (run 'make venvs')")
    train_options = train_throughput.parse_arguments(train_arguments)
    results = {"load_average_at_start": train_throughput.load_average(), "pipeline": {}, "predict": {}}
    workdir = tempfile.mkdtemp(prefix="unet3d-bench-")
    try:
        for environment in environments:
            print("[bench] input pipeline ({}), load average {:.2f}".format(
                environment, train_throughput.load_average()), flush=True)
            keep = os.path.join(workdir, "pipeline") if environment == "tf2" else None
            results["pipeline"][environment] = input_pipeline(environment, train_options.size, keep)
        train_options.records = os.path.join(workdir, "pipeline", "records")
        results["training"] = train_throughput.measure(train_options)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    predictions = [("tf2", "sliding")] if not options.quick else []
    predictions += [(environment, "crop") for environment in environments]
    for environment, mode in predictions:
        print("[bench] predict one 240x240x155 case, {} ({}), load average {:.2f}".format(
            mode, environment, train_throughput.load_average()), flush=True)
        results["predict"]["{}|{}".format(environment, mode)] = predict_full_volume(environment, mode)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)

    train_throughput.print_table(results["training"])
    rows = results["training"]["rows"]
    print("\ninput pipeline ({0}^3 crops, each recipe's sampling and augmentation, batch 2, every core) next to "
          "the training step it feeds (target: at least 3x)".format(train_options.size))
    for environment, rates in results["pipeline"].items():
        step = rows.get("ours|{}".format(environment))
        for recipe, rate in rates.items():
            ratio = " = {:.0f}x the training step ({:.3f} volumes/s)".format(
                rate / step["volumes_per_second"], step["volumes_per_second"]) if step else ""
            print("| {} | {} | {:.1f} volumes/s{} |".format(NAMES[environment], recipe, rate, ratio))
    print("\npredict one 240x240x155 case with the default network (cli.py predict --input_dir, whole command)")
    for key, measured in results["predict"].items():
        environment, mode = key.split("|")
        print("| {} | {} | {:.0f} s wall ({} s in predict) | peak RSS {:.2f} GiB |".format(
            NAMES[environment], "sliding 128^3 windows, overlap 0.5" if mode == "sliding" else
            "the seed's 224x224x160 centre crop", measured["wall_seconds"], measured["predict_seconds"],
            measured["peak_rss_gib"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
