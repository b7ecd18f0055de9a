#!/usr/bin/env python
"""How fast preprocessing and the training input pipeline run on full-size BraTS volumes.

Builds N synthetic 240x240x155 cases (unet3d_core.synth), preprocesses them,
then times the training pipeline alone (the seed's 128^3 crops, augmentation
on, batch 2) for a fixed number of batches after a warm-up, without and with
the in-memory case cache. Prints a table; takes a minute or two on 2 cores.

    python benchmarks/input_pipeline.py [--cases 4] [--batches 20] [--warmup 5] [--workers 2]

Compare volumes/s with the training step rate (``train --benchmark`` logs
``throughput_train``): the pipeline must deliver more than the step consumes.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BRATS_SHAPE = (240, 240, 155)


def time_pipeline(files, *, cache: bool, batches: int, warmup: int, batch_size: int, crop: int) -> float:
    """Volumes per second of the training pipeline over ``batches`` batches after ``warmup``."""
    import tensorflow as tf

    from unet3d_core.input_pipeline import training_dataset

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        dataset = training_dataset(files, batch_size=batch_size, crop_shape=(crop, crop, crop), augment=True,
                                   seed=0, cache=cache)
        images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
        # Fetch something tiny so the timing is the pipeline's, not the copy of the batch into Python.
        fetch = tf.group(images, labels)
        with tf1.Session(graph=graph) as session:
            for _ in range(warmup):
                session.run(fetch)
            started = time.perf_counter()
            for _ in range(batches):
                session.run(fetch)
            elapsed = time.perf_counter() - started
    return batches * batch_size / elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="synthetic full-size cases (default 4)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--batch_size", type=int, default=2, help="volumes per batch (default 2)")
    parser.add_argument("--crop", type=int, default=128, help="training crop edge (default 128)")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing processes (default 2)")
    parser.add_argument("--workdir", default=None, help="keep data here (default: a temporary folder, removed)")
    options = parser.parse_args(argv)

    import tensorflow as tf

    from unet3d_core.preprocess import preprocess
    from unet3d_core.records import Manifest
    from unet3d_core.synth import write_synthetic_dataset

    workdir = options.workdir or tempfile.mkdtemp(prefix="unet3d-bench-")
    rows = []
    try:
        raw, records = os.path.join(workdir, "raw"), os.path.join(workdir, "records")
        started = time.perf_counter()
        write_synthetic_dataset(raw, cases=options.cases, shape=BRATS_SHAPE, seed=0)
        rows.append(("synthesise {} cases of {}".format(options.cases, "x".join(map(str, BRATS_SHAPE))),
                     "{:.1f} s per case".format((time.perf_counter() - started) / options.cases)))
        started = time.perf_counter()
        preprocess(raw, records, folds=2, seed=0, workers=options.workers, show_progress=False)
        rows.append(("preprocess, --workers {}".format(options.workers),
                     "{:.2f} s per case".format((time.perf_counter() - started) / options.cases)))
        manifest = Manifest(records)
        files = [manifest.record_path(case) for case in manifest.cases]
        for cache in (False, True):
            rate = time_pipeline(files, cache=cache, batches=options.batches, warmup=options.warmup,
                                 batch_size=options.batch_size, crop=options.crop)
            rows.append(("training pipeline, {}^3 crops, augment, batch {}, cache {}".format(
                options.crop, options.batch_size, "on" if cache else "off"), "{:.1f} volumes/s".format(rate)))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
