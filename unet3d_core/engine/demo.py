"""The ``demo`` command: the whole pipeline on synthetic data, on the CPU.

synth -> preprocess -> train (train_and_evaluate) -> predict -> report, each
stage the same command line a user would type, run through the command line's
own entry point (``cli.main``, passed in so that the core never imports the CLI).
The console gets one line per stage; each stage's output goes to a log file.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import re
import sys
import time
from typing import Callable, List

from unet3d_core.progress import Progress


class StageOutput:
    """A demo stage's standard output: every line goes to the stage's log file; training's step lines
    (``step 25/300  loss 0.81 ...``) also move a progress bar on standard error."""

    STEP = re.compile(r"^step (\d+)/(\d+)\b(?:.*?(loss \S+))?")

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "w", buffering=1)
        self._partial = ""
        self._bar = None

    def write(self, text: str) -> int:
        self._file.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            match = self.STEP.match(line)
            if match:
                if self._bar is None:
                    self._bar = Progress("  train", int(match.group(2)), unit="step")
                self._bar.update(int(match.group(1)), match.group(3) or "")
        return len(text)

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._file.close()

    def tail(self, count: int = 10) -> List[str]:
        with open(self.path) as handle:
            return handle.read().splitlines()[-count:]


def stage_summary(stage: str, raw: str, records: str, run_dir: str) -> str:
    """One line on what a demo stage left behind, read from its outputs."""
    def load(path):
        with open(path) as handle:
            return json.load(handle)

    if stage == "synth":
        return "{} synthetic cases in {}".format(len(glob.glob(os.path.join(raw, "*", "*", ""))), raw)
    if stage == "preprocess":
        manifest = load(os.path.join(records, "manifest.json"))
        return "{} cases in {} folds -> {}".format(len(manifest["cases"]), manifest["folds"], records)
    if stage == "train":
        results = load(os.path.join(run_dir, "eval_results.json"))
        return "step {}, {} held-out cases of fold {} evaluated -> {}".format(
            results["checkpoint_step"], len(results["cases"]), results["fold"], run_dir)
    if stage == "predict":
        written = glob.glob(os.path.join(run_dir, "predictions", "*.nii.gz"))
        return "{} label maps -> {}".format(len(written), os.path.join(run_dir, "predictions"))
    return "curves and case overlays -> {}".format(os.path.join(run_dir, "report", "index.md"))


def synth_options() -> List[str]:
    """Template brains at 3 mm when nilearn is installed (the training crop is 48 x 48 x 32), else disc phantoms."""
    if importlib.util.find_spec("nilearn") is not None:
        return ["--anatomical", "--shape", "56", "64", "56"]
    return ["--shape", "64", "64", "48"]


def run_demo(workdir: str, max_steps: int, run_command: Callable[[List[str]], int]) -> int:
    """Run the README's demo: each stage is the same command a user would type.

    The console gets one line per stage (and training's progress); each stage's own output, tables
    included, goes to WORKDIR/logs/<stage>.log, and the results stay in the run folder. A second run
    reuses the data and the finished run folder (training resumes or is already done).

    Args:
        workdir: the folder for the data and the run (``--workdir``).
        max_steps: training steps (``--max_steps``).
        run_command: runs one command line (``cli.main``) and returns its exit status.
    """
    workdir = os.path.abspath(workdir)
    raw, records, run_dir, logs = (os.path.join(workdir, name) for name in ("raw", "records", "run", "logs"))
    stages = []
    if not os.path.isdir(raw):
        stages.append(["synth", "--out", raw, "--cases", "20", "--seed", "0"] + synth_options())
    if not os.path.isdir(records):
        stages.append(["preprocess", "-i", raw, "-o", records, "--folds", "5", "--seed", "0"])
    folders = ["--data_dir", records, "--model_dir", run_dir, "--backend", "cpu"]
    # The default recipe (nnunet); only the sizes are made small enough for a CPU.
    stages.append(["train", "--exec_mode", "train_and_evaluate", "--max_steps", str(max_steps),
                   "--cache", "--log_every", "25", "--checkpoint_every", "100", "--fold", "0",
                   "--input_shape", "48", "48", "32", "--base_filters", "8", "--max_filters", "64", "--depth", "4",
                   "--seed", "1"] + folders)
    # The run folder remembers the network and the fold (run.json): the folders are enough.
    stages.append(["predict", "--overwrite"] + folders)
    stages.append(["report", run_dir])
    os.makedirs(logs, exist_ok=True)
    print("[demo] unet3d on synthetic BraTS-like data, CPU backend; each stage's output: {}".format(logs), flush=True)
    reused = [folder for folder in (raw, records) if os.path.isdir(folder)]
    if reused:
        print("[demo] reusing {} (delete {} to start over)".format(" and ".join(reused), workdir), flush=True)
    for number, stage in enumerate(stages, start=1):
        name = stage[0]
        output = StageOutput(os.path.join(logs, "{}.log".format(name)))
        output.write("python cli.py {}\n\n".format(" ".join(stage)))
        began = time.time()
        try:
            with contextlib.redirect_stdout(output):
                code = run_command(stage)
        finally:
            output.close()
        if code:
            print("[demo {}/{}] {} failed (exit {}); its last lines ({}):".format(
                number, len(stages), name, code, output.path), file=sys.stderr)
            for line in output.tail():
                print("  " + line, file=sys.stderr)
            return code
        print("[demo {}/{}] {:<10} {:>5.1f} s  {}".format(number, len(stages), name, time.time() - began,
                                                       stage_summary(name, raw, records, run_dir)), flush=True)
    with open(os.path.join(run_dir, "eval_results.json")) as handle:
        results = json.load(handle)
    mean = results["mean"]
    print("[demo] Dice on the {} held-out cases: {}  (per case: {})".format(
        len(results["cases"]), "  ".join("{} {:.3f}".format(region, mean["Dice_" + region])
                                         for region in ("WT", "TC", "ET") if "Dice_" + region in mean),
        os.path.join(run_dir, "eval_results.csv")))
    print("[demo] report: {}".format(os.path.join(run_dir, "report", "index.md")))
    return 0
