#!/usr/bin/env python
"""Region-based against label-based training, same data, network, steps and seed.

Writes a synthetic BraTS-like set (``cli.py synth``, 64x64x48 by default),
preprocesses it, then runs the same ``train --exec_mode train_and_evaluate``
twice on the CPU, once with ``--target labels`` (softmax over the labels, the
seed's way) and once with ``--target regions`` (one sigmoid per region, WT, TC
and ET, as nnU-Net trains BraTS), and prints both evaluations' whole-volume
and lesion-wise Dice per region with the differences. ``--json F`` also writes
them.

    python benchmarks/region_training.py [--steps 2000] [--cases 40] [--seeds 1 2 3] [--workdir DIR]

The defaults are the comparison docs/training.md reports (about 25 minutes on
2 cores); ``--steps 300 --cases 20 --seeds 1`` is a 2-minute check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIONS = ("WT", "TC", "ET")


def cli(*args) -> None:
    subprocess.run([sys.executable, os.path.join(ROOT, "cli.py")] + [str(arg) for arg in args], check=True,
                   stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each run (default 2000)")
    parser.add_argument("--cases", type=int, default=40, help="synthetic cases (default 40)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="training seeds; means are reported (default 1 2 3)")
    parser.add_argument("--workdir", default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results here")
    options = parser.parse_args(argv)
    workdir = options.workdir or tempfile.mkdtemp(prefix="unet3d-regions-")
    raw, records = os.path.join(workdir, "raw"), os.path.join(workdir, "records")
    if not os.path.isdir(raw):
        cli("synth", "--out", raw, "--cases", options.cases, "--shape", 64, 64, 48, "--seed", 0)
    if not os.path.isdir(records):
        cli("preprocess", "-i", raw, "-o", records, "--folds", 5, "--seed", 0)
    results = {}
    for target in ("labels", "regions"):
        runs = []
        for seed in options.seeds:
            model_dir = os.path.join(workdir, "{}-seed{}".format(target, seed))
            began = time.time()
            cli("train", "--exec_mode", "train_and_evaluate", "--target", target, "--max_steps", options.steps,
                "--batch_size", 2, "--augment", "--cache", "--learning_rate", 0.002, "--lr_schedule", "cosine",
                "--lr_warmup_steps", 20, "--log_every", 100, "--checkpoint_every", options.steps, "--fold", 0,
                "--input_shape", 48, 48, 32, "--base_filters", 8, "--max_filters", 64, "--depth", 4,
                "--seed", seed, "--data_dir", records, "--model_dir", model_dir, "--backend", "cpu")
            with open(os.path.join(model_dir, "eval_results.json")) as handle:
                mean = json.load(handle)["mean"]
            runs.append({"seed": seed, "seconds": round(time.time() - began, 1),
                         "mean": {name: mean[name] for name in mean if name.split("_")[-1] in REGIONS}})
            print("{:<8} seed {}: {}".format(target, seed, "  ".join(
                "{} {:.4f}".format(name, runs[-1]["mean"][name]) for name in ("Dice_WT", "Dice_TC", "Dice_ET"))),
                flush=True)
        names = list(runs[0]["mean"])
        results[target] = {"runs": runs, "mean": {name: sum(run["mean"][name] for run in runs) / len(runs)
                                                  for name in names}}
    print("\n{:<16} {:>8} {:>8} {:>9}".format("metric", "labels", "regions", "regions-labels"))
    for name in results["labels"]["mean"]:
        if "HD95" in name:
            continue
        labels, regions = results["labels"]["mean"][name], results["regions"]["mean"][name]
        print("{:<16} {:>8.4f} {:>8.4f} {:>+9.4f}".format(name, labels, regions, regions - labels))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"steps": options.steps, "cases": options.cases, "seeds": options.seeds,
                       "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
