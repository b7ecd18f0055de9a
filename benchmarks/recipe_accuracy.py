#!/usr/bin/env python
"""Which recipe trains the better model: ``--recipe seed``, ``--recipe nnunet`` and MONAI's DynUNet trained the
nnU-Net way, on anatomical synthetic brains, tested on the training scanner and on a shifted one.

Data (``cli.py synth --anatomical``, 2 mm grid): ``--cases`` training cases of
scanner a, preprocessed into 5 folds; fold 0's held-out cases are left out, so
the networks train on the other four fifths (24 of 30 by default). Two test
sets, never trained on: ``--test_cases`` new subjects of scanner a and as many
of scanner b (other contrast weights, more noise, 3 mm slices, x flipped).

Rows, each with the same network (``--base_filters``/``--max_filters``/
``--depth``), crop, batch 2 and steps, for every ``--seeds``:

- ``seed``: ``cli.py train --recipe seed --batch_size 2`` (the reference port's
  recipe; the batch made equal);
- ``nnunet``: ``cli.py train --recipe nnunet``;
- ``monai``: ``benchmarks/monai_side.py train`` in .venv-bench;
- ablations (``--rows nnunet-adam ...``, see ``ABLATIONS``): the nnunet recipe with
  one part set back to the seed's (optimiser, augmentation, target, sampling).

Each trained model predicts both test sets (sliding windows, overlap 0.5,
Gaussian blending, no test-time mirroring), and ``cli.py score`` scores every
row the same way. Printed and written (``--json``): whole-volume Dice WT/TC/ET
per row and test set, mean and standard deviation over the seeds, and each
run's own means.

    python benchmarks/recipe_accuracy.py [--steps 800] [--seeds 1 2 3] [--workdir DIR] [--json F]

About 40 minutes on 2 cores with the defaults; ``--steps 100 --seeds 1`` checks the plumbing in a few.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_PYTHON = os.path.join(ROOT, ".venv-bench", "bin", "python")
REGIONS = ("WT", "TC", "ET")
DOMAINS = ("same scanner", "shifted scanner")
ROWS = ("seed", "nnunet", "monai")
# Ablations: the nnunet recipe with one of its parts set back to the seed's, to tell which part helps or hurts.
ABLATIONS = {
    "nnunet-adam": ("--optimizer", "adam", "--learning_rate", 0.0002, "--lr_schedule", "constant",
                    "--weight_decay", 0, "--grad_clip", 0),
    "nnunet-noaug": ("--augmentation", "none"),
    "nnunet-labels": ("--target", "labels", "--no_deep_supervision"),
    "nnunet-uniform": ("--oversample_foreground", 0),
}


def run(command, log_path: str) -> None:
    """Run ``command``; its output goes to ``log_path``; a failure shows the log's tail."""
    with open(log_path, "w") as log:
        code = subprocess.call([str(part) for part in command], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if code:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise SystemExit("command failed (exit {}): {}\n{}".format(code, " ".join(map(str, command)), tail))


def cli(*args):
    return [sys.executable, os.path.join(ROOT, "cli.py")] + list(args)


def score(predictions: str, truth: str, out: str, log: str):
    """Mean whole-volume Dice per region of one prediction folder (cli.py score)."""
    run(cli("score", "--pred", predictions, "--truth", truth, "--out", out + ".csv"), log)
    with open(out + ".json") as handle:
        metrics = json.load(handle)["metrics"]
    return {region: float(metrics["Dice_" + region]["mean"]) for region in REGIONS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps of every run (default 800)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds (default 1 2 3)")
    parser.add_argument("--cases", type=int, default=30, help="synthetic scanner-a cases, 5 folds (default 30)")
    parser.add_argument("--test_cases", type=int, default=10, help="cases of each test set (default 10)")
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 48, 48], help="training crop (default 48 48 48)")
    parser.add_argument("--base_filters", type=int, default=8)
    parser.add_argument("--max_filters", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--rows", nargs="+", choices=ROWS + tuple(ABLATIONS), default=list(ROWS),
                        help="rows to run (default seed nnunet monai; ablations: {})".format(" ".join(ABLATIONS)))
    parser.add_argument("--workdir", default=os.path.join(ROOT, "benchmarks", "work", "recipe-accuracy"),
                        help="data, runs and logs; reused when run again (default benchmarks/work/recipe-accuracy)")
    parser.add_argument("--intensity", choices=("uint8", "uint16"), default="uint8",
                        help="the records' intensity storage (preprocess --intensity; default uint8, the storage of "
                             "the first results); runs on uint16 records are named ROW-uint16-seedN")
    parser.add_argument("--json", default=None, help="also write the results here")
    options = parser.parse_args(argv)
    if "monai" in options.rows and not os.path.isfile(BENCH_PYTHON):
        raise SystemExit("the monai row needs .venv-bench (tools/make_bench_venv.sh); or pass --rows seed nnunet")
    work = os.path.abspath(options.workdir)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    suffix = "" if options.intensity == "uint8" else "-" + options.intensity
    train_raw, records = os.path.join(work, "train_raw"), os.path.join(work, "records" + suffix)
    tests = {DOMAINS[0]: os.path.join(work, "test_a"), DOMAINS[1]: os.path.join(work, "test_b")}
    if not os.path.isdir(train_raw):
        run(cli("synth", "--anatomical", "--out", train_raw, "--cases", options.cases, "--seed", 0),
            os.path.join(logs, "synth-train.log"))
    for folder, (seed, scanner) in zip(tests.values(), ((1000, "a"), (2000, "b"))):
        if not os.path.isdir(folder):
            run(cli("synth", "--anatomical", "--out", folder, "--cases", options.test_cases, "--seed", seed,
                    "--scanner", scanner), os.path.join(logs, "synth-{}.log".format(scanner)))
    if not os.path.isdir(records):
        run(cli("preprocess", "-i", train_raw, "-o", records, "--folds", 5, "--seed", 0, "--intensity",
                options.intensity),
            os.path.join(logs, "preprocess.log"))
    with open(os.path.join(records, "manifest.json")) as handle:
        manifest = json.load(handle)
    training_cases = [{"images": case["source_images"], "segmentation": case["source_segmentation"]}
                      for case in manifest["cases"] if case["fold"] != 0]
    cases_file = os.path.join(work, "training-cases.json")
    with open(cases_file, "w") as handle:
        json.dump(training_cases, handle)
    network = ["--base_filters", options.base_filters, "--max_filters", options.max_filters, "--depth",
               options.depth]
    results = {row: {} for row in options.rows}
    for row in options.rows:
        for seed in options.seeds:
            name = "{}{}-seed{}".format(row, suffix, seed)
            run_dir = os.path.join(work, name)
            outputs = {domain: os.path.join(run_dir, "predictions-" + tag) for domain, tag in zip(DOMAINS, "ab")}
            began = time.time()
            if not all(os.path.isdir(folder) for folder in outputs.values()):
                if row == "monai":
                    run([BENCH_PYTHON, os.path.join(ROOT, "benchmarks", "monai_side.py"), "train", "--cases",
                         cases_file, "--test_dirs"] + list(tests.values()) + ["--out_dirs"] + list(outputs.values())
                        + ["--crop"] + options.crop + ["--steps", options.steps, "--batch_size", 2, "--seed", seed,
                           "--save", os.path.join(run_dir, "network.pt")] + network,
                        os.path.join(logs, name + ".log"))
                else:
                    recipe, extra = (row, ()) if row in ROWS else ("nnunet", ABLATIONS[row])
                    run(cli("train", "--recipe", recipe, *extra, "--data_dir", records, "--model_dir", run_dir,
                            "--fold", 0, "--batch_size", 2, "--max_steps", options.steps, "--seed", seed, "--cache",
                            "--log_every", 100, "--checkpoint_every", options.steps, "--input_shape", *options.crop,
                            *network), os.path.join(logs, name + ".log"))
                    for domain, folder in tests.items():
                        run(cli("predict", "--model_dir", run_dir, "--input_dir", folder, "--output_dir",
                                outputs[domain], "--overwrite"), os.path.join(logs, name + "-predict.log"))
            results[row][seed] = {domain: score(outputs[domain], tests[domain],
                                                os.path.join(run_dir, "score-" + tag),
                                                os.path.join(logs, name + "-score.log"))
                                  for domain, tag in zip(DOMAINS, "ab")}
            print("{:<14} seed {}: {}  ({:.0f} s)".format(row, seed, "  ".join(
                "{} {}".format(domain, " ".join("{} {:.3f}".format(region, results[row][seed][domain][region])
                                                for region in REGIONS)) for domain in DOMAINS),
                time.time() - began), flush=True)
    summary = {}
    print("\nWhole-volume Dice, mean +- standard deviation over seeds {} ({} steps, crop {}, batch 2)".format(
        " ".join(map(str, options.seeds)), options.steps, "x".join(map(str, options.crop))))
    print("{:<14} {:<16} {}".format("row", "test set", "  ".join("{:>15}".format(region) for region in REGIONS)))
    for row in options.rows:
        summary[row] = {}
        for domain in DOMAINS:
            summary[row][domain] = {}
            cells = []
            for region in REGIONS:
                values = [results[row][seed][domain][region] for seed in options.seeds]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[row][domain][region] = {"mean": statistics.mean(values), "std": spread, "runs": values}
                cells.append("{:>7.3f} +- {:.3f}".format(statistics.mean(values), spread))
            print("{:<14} {:<16} {}".format(row, domain, "  ".join(cells)))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"steps": options.steps, "seeds": options.seeds, "crop": options.crop,
                       "network": {"base_filters": options.base_filters, "max_filters": options.max_filters,
                                   "depth": options.depth},
                       "cases": {"training": len(training_cases), "test per scanner": options.test_cases},
                       "summary": summary}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
