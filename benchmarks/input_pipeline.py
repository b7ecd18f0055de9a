#!/usr/bin/env python
"""How fast preprocessing and the training input pipeline run on full-size BraTS volumes, beside MONAI.

Builds N synthetic 240x240x155 cases (unet3d_core.data.synth), preprocesses them,
then times the training pipeline alone (``--recipe``'s sampling and
augmentation, ``--shape`` crops, batch 2, cases cached in memory) with each
``--threads`` count of host threads (tf.data's private thread pool and the
session's op threads), printing ``volumes/s X`` per count. In the same run the
same cases go through MONAI's equivalent transform chain in .venv-bench
(``benchmarks/monai_side.py transforms``: DataLoader workers with one torch
thread each), so both columns come from one machine under one load.

    python benchmarks/input_pipeline.py --recipe nnunet --shape 128 128 128 --threads 1 2 [--cases 4]

Compare volumes/s with the training step rate (``train --benchmark`` logs
``throughput_train``): the pipeline must deliver more than the step consumes.
"""
from __future__ import annotations

import argparse
import json
import os
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
BENCH_PYTHON = os.path.join(ROOT, ".venv-bench", "bin", "python")
SEED_DEVICE_RATE = 2.3  # volumes/s per device of the seed's NPU run, which the host must feed
CORES_PER_DEVICE = 24  # an Atlas 800 training server: 192 host cores for 8 NPUs


def time_pipeline(files, *, recipe: str, batches: int, warmup: int, batch_size: int, crop, threads: int,
                  cache: bool = True, intensity: str = "uint8") -> float:
    """Volumes per second of the training pipeline over ``batches`` batches after ``warmup``."""
    import tensorflow as tf

    from unet3d_core.data.input_pipeline import training_dataset
    from unet3d_core.engine.recipes import preset

    tf1 = tf.compat.v1
    settings = preset(recipe)
    graph = tf.Graph()
    with graph.as_default():
        dataset = training_dataset(files, batch_size=batch_size, crop_shape=tuple(crop),
                                   augmentation="nnunet" if recipe == "nnunet" else "seed",
                                   oversample_foreground=float(settings["oversample_foreground"]), seed=0,
                                   cache=cache, intensity=intensity)
        options = tf.data.Options()
        options.experimental_threading.private_threadpool_size = threads
        dataset = dataset.with_options(options)
        images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
        # Fetch something tiny so the timing is the pipeline's, not the copy of the batch into Python.
        fetch = tf.group(images, labels)
        config = tf1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
        with tf1.Session(graph=graph, config=config) as session:
            for _ in range(warmup):
                session.run(fetch)
            started = time.perf_counter()
            for _ in range(batches):
                session.run(fetch)
            elapsed = time.perf_counter() - started
    return batches * batch_size / elapsed


def monai_rate(files, workdir: str, *, shape, threads: int, samples: int):
    """MONAI's volumes/s on the same cases (benchmarks/monai_side.py in .venv-bench); None without it."""
    import numpy as np

    from unet3d_core.data.records import read_record

    if not os.path.isfile(BENCH_PYTHON):
        print("[bench] no .venv-bench (tools/make_bench_venv.sh): the MONAI column is skipped", flush=True)
        return None
    folder = os.path.join(workdir, "npz")
    if not os.path.isdir(folder):
        os.makedirs(folder)
        for path in files:
            case = read_record(path)
            np.savez(os.path.join(folder, os.path.basename(path) + ".npz"), image=case["image"], label=case["label"])
    result = os.path.join(workdir, "monai-{}.json".format(threads))
    subprocess.run([BENCH_PYTHON, os.path.join(ROOT, "benchmarks", "monai_side.py"), "transforms", "--cases", folder,
                    "--shape"] + [str(size) for size in shape] + [
                        "--threads", str(threads), "--samples", str(samples), "--json", result], check=True)
    with open(result) as handle:
        return float(json.load(handle)["volumes_per_second"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=("nnunet", "seed"), default="nnunet",
                        help="whose sampling and augmentation to time (default nnunet)")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128], help="crop (default 128 128 128)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="host threads to time (default 1 2)")
    parser.add_argument("--cases", type=int, default=4, help="synthetic full-size cases (default 4)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    parser.add_argument("--batch_size", type=int, default=2, help="volumes per batch (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes (default 2)")
    parser.add_argument("--intensity", choices=("uint16", "uint8"), default="uint16",
                        help="the records' intensity storage (preprocess --intensity; default uint16)")
    parser.add_argument("--no_monai", action="store_true", help="time unet3d alone")
    parser.add_argument("--workdir", default=None, help="keep data here (default: a temporary folder, removed)")
    parser.add_argument("--json", default=None, help="also write the results here")
    options = parser.parse_args(argv)

    import tensorflow as tf

    from unet3d_core.data.preprocess import preprocess
    from unet3d_core.data.records import Manifest
    from unet3d_core.data.synth import write_synthetic_dataset

    workdir = options.workdir or tempfile.mkdtemp(prefix="unet3d-bench-")
    rows, results = [], {"recipe": options.recipe, "shape": options.shape, "threads": {}}
    try:
        raw, records = os.path.join(workdir, "raw"), os.path.join(workdir, "records-" + options.intensity)
        if not os.path.isdir(records):
            if not os.path.isdir(raw):
                started = time.perf_counter()
                write_synthetic_dataset(raw, cases=options.cases, shape=BRATS_SHAPE, seed=0)
                rows.append(("synthesise {} cases of {}".format(options.cases, "x".join(map(str, BRATS_SHAPE))),
                             "{:.1f} s per case".format((time.perf_counter() - started) / options.cases)))
            started = time.perf_counter()
            preprocess(raw, records, folds=2, seed=0, workers=options.workers, show_progress=False,
                       intensity=options.intensity)
            rows.append(("preprocess --intensity {}, --workers {}".format(options.intensity, options.workers),
                         "{:.2f} s per case".format((time.perf_counter() - started) / options.cases)))
        manifest = Manifest(records)
        sizes = [os.path.getsize(manifest.record_path(case)) for case in manifest.cases]
        results["intensity"], results["record_mb"] = options.intensity, sum(sizes) / len(sizes) / 1e6
        rows.append(("record size per case, {}".format(options.intensity), "{:.1f} MB".format(results["record_mb"])))
        files = [manifest.record_path(case) for case in manifest.cases]
        crop = "x".join(map(str, options.shape))
        for threads in options.threads:
            ours = time_pipeline(files, recipe=options.recipe, batches=options.batches, warmup=options.warmup,
                                 batch_size=options.batch_size, crop=options.shape, threads=threads,
                                 intensity=manifest.intensity_format)
            print("unet3d {} pipeline, {} crops, {} thread(s): volumes/s {:.3f}".format(
                options.recipe, crop, threads, ours), flush=True)
            theirs = None if options.no_monai else monai_rate(files, workdir, shape=options.shape, threads=threads,
                                                              samples=options.batches * options.batch_size)
            results["threads"][str(threads)] = {"unet3d": ours, "monai": theirs}
            rows.append(("unet3d {} sampling + augmentation, {} crops, {} thread(s)".format(
                options.recipe, crop, threads), "{:.3f} volumes/s".format(ours)))
            if theirs is not None:
                rows.append(("MONAI's equivalent chain, {} crops, {} worker(s)".format(crop, threads),
                             "{:.3f} volumes/s".format(theirs)))
                rows.append(("unet3d / MONAI at {} thread(s)".format(threads), "{:.2f}x".format(ours / theirs)))
        single = results["threads"].get("1")
        if single:
            fed = single["unet3d"] * CORES_PER_DEVICE
            rows.append(("unet3d, 1 thread x {} cores (one device's share)".format(CORES_PER_DEVICE),
                         "{:.1f} volumes/s".format(fed)))
            rows.append(("  = x the seed's device rate ({} volumes/s)".format(SEED_DEVICE_RATE),
                         "{:.1f}x".format(fed / SEED_DEVICE_RATE)))
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print("\nunet3d input benchmark: Python {}, TensorFlow {}, {} CPU cores".format(
        sys.version.split()[0], tf.__version__, os.cpu_count()))
    width = max(len(name) for name, _ in rows)
    print("| {:<{}} | {:>18} |".format("stage", width, "figure"))
    print("|-{}-|-{}:|".format("-" * width, "-" * 18))
    for name, value in rows:
        print("| {:<{}} | {:>18} |".format(name, width, value))
    if options.json:
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
