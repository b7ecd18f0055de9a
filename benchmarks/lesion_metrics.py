#!/usr/bin/env python
"""Time of scoring one full-size case: whole-volume metrics alone, and with each year's lesion-wise rules.

Builds a 240x240x155 truth of a GLI post-treatment case (a tumour with its
three sub-regions, a resection cavity and a few small enhancing lesions) and a
prediction of it (shifted, one lesion missed, two small false positives), then
times ``metrics.case_metrics`` for the brats2024-gli scheme without lesion-wise
rules and with each of 2023, 2024, 2025 and 2026. Prints a table; ``--json F``
also writes it.

    python benchmarks/lesion_metrics.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SHAPE = (240, 240, 155)


def ball(volume, centre, radius, label):
    x, y, z = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius ** 2
    volume[inside] = label


def case_pair():
    truth = np.zeros(SHAPE, np.uint8)
    ball(truth, (120, 110, 80), 30, 2)
    ball(truth, (120, 110, 80), 16, 1)
    ball(truth, (122, 112, 80), 9, 3)
    ball(truth, (70, 150, 60), 12, 4)
    for centre in ((180, 60, 100), (60, 60, 40), (190, 180, 120)):
        ball(truth, centre, 4, 3)
    prediction = np.zeros(SHAPE, np.uint8)
    ball(prediction, (122, 110, 80), 29, 2)
    ball(prediction, (122, 110, 80), 15, 1)
    ball(prediction, (124, 112, 81), 9, 3)
    ball(prediction, (71, 150, 60), 11, 4)
    ball(prediction, (180, 61, 100), 4, 3)
    ball(prediction, (60, 60, 41), 3, 3)
    ball(prediction, (30, 200, 20), 2, 3)
    ball(prediction, (200, 30, 130), 3, 2)
    return prediction, truth


def main(argv=None) -> int:
    from unet3d_core.evaluation import metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per rule set; the median is shown")
    parser.add_argument("--json", default=None, help="also write the results here")
    options = parser.parse_args(argv)
    prediction, truth = case_pair()
    rows = []
    for rules in (None, "2023", "2024", "2025", "2026"):
        scheme = metrics.LabelScheme.for_layout("brats2024-gli", rules)
        times = []
        for _ in range(options.repeats):
            began = time.perf_counter()
            values = metrics.case_metrics(prediction, truth, (1.0, 1.0, 1.0), scheme)
            times.append(time.perf_counter() - began)
        lesion = {name: round(value, 4) for name, value in values.items() if name.startswith("LesionDice_")}
        rows.append({"rules": rules or "whole volume only", "seconds": round(float(np.median(times)), 3),
                     "lesion_dice": lesion})
        print("{:<18} {:>7.3f} s  {}".format(rows[-1]["rules"], rows[-1]["seconds"], lesion or ""), flush=True)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"shape": list(SHAPE), "repeats": options.repeats, "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
