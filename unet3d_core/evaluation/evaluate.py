"""Evaluation: every validation case of the fold scored exactly once (sharded over ranks), whole volume and
lesion-wise, on the regions of the data's cohort.

Writes ``eval_results.json`` (the data set scored - folder and manifest
fingerprint -, means, statistics, per-case values, the checkpoint's path and step
and the inference settings), ``eval_results.csv`` and the means as TensorBoard
scalars under ``eval/`` at the checkpoint's step. Another data set than the
run's own is written to ``eval_results-NAME-FINGERPRINT.{json,csv}`` instead. Each
case's label map (before any post-processing) and truth are kept in
``heldout/<case>.npz``, so ``--fold all`` can choose post-processing on the
pooled held-out cases without predicting again (:mod:`unet3d_core.evaluation.postprocessing`).
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Dict, Tuple

import numpy as np

from unet3d_core.data import volumes
from unet3d_core.errors import ConfigError, UNet3DError
from unet3d_core.evaluation import metrics as metrics_lib
from unet3d_core.evaluation.inference import checkpoint_name, restore_network
from unet3d_core.evaluation.postprocessing import HELDOUT_DIR, heldout_complete, save_heldout
from unet3d_core.evaluation.prediction import segment_all
from unet3d_core.folders import write_json_atomic
from unet3d_core.model.checkpoints import select_checkpoint
from unet3d_core.runtime import Runtime

EVAL_RESULTS = "eval_results.json"
EVAL_CASES = "eval_results.csv"


def own_data(config) -> bool:
    """Whether ``--data_dir`` is the data set the run was trained on (or the run records none)."""
    recorded = (config.run_record or {}).get("data", {}).get("fingerprint")
    return recorded is None or recorded == config.data_fingerprint


def result_names(config) -> Tuple[str, str, str]:
    """(JSON, CSV, held-out label map folder) names in the run folder for this evaluation: the run's own for
    its training data set; for another data set names of its own (``eval_results-NAME-FINGERPRINT``), so the
    run's own evaluation is never overwritten by another data set's."""
    if own_data(config):
        return EVAL_RESULTS, EVAL_CASES, HELDOUT_DIR
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(config.data_dir))) or "data"
    tag = "{}-{}".format(name, config.data_fingerprint[:8])
    return "eval_results-{}.json".format(tag), "eval_results-{}.csv".format(tag), "{}-{}".format(HELDOUT_DIR, tag)


def data_provenance(config) -> Dict:
    """What a result file says of the data it scored: the folder, the manifest's fingerprint, and whether it
    is the run's own training data set."""
    return {"data_dir": os.path.abspath(config.data_dir), "fingerprint": config.data_fingerprint,
            "training_data": own_data(config)}


def write_eval_summaries(folder: str, summary: Dict, step: int) -> None:
    """Mean evaluation metrics as TensorBoard scalars (``eval/Dice_WT`` ...) at the checkpoint's step."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    values = [tf1.Summary.Value(tag="eval/" + name, simple_value=float(value))
              for name, value in summary.items() if isinstance(value, (int, float))]
    with tf.Graph().as_default():
        writer = tf1.summary.FileWriter(folder)
        writer.add_summary(tf1.Summary(value=values), step)
        writer.close()


def evaluation_is_current(config) -> bool:
    """Whether ``eval_results.json`` already scores the checkpoint ``--checkpoint`` selects (the best one, else
    the newest) with these settings and metrics."""
    manifest = config.manifest
    names = metrics_lib.LabelScheme.for_layout(manifest.layout, config.lesion_rules).names
    # Evaluations from before the label maps were kept are redone once, so post-processing can be chosen.
    if not heldout_complete(os.path.join(config.model_dir, HELDOUT_DIR),
                            [case["id"] for case in manifest.split(config.fold)[1]]):
        return False
    path = os.path.join(config.model_dir, EVAL_RESULTS)
    if not own_data(config) or not os.path.isfile(path):
        return False
    try:
        with open(path) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return False
    if previous.get("data", {}).get("fingerprint", config.data_fingerprint) != config.data_fingerprint:
        return False
    # A best checkpoint is a copy of the step's own: the step names the weights.
    return (previous.get("checkpoint_step") == select_checkpoint(config.model_dir, config.checkpoint)[1]
            and previous.get("inference") == config.inference.describe()
            and previous.get("lesion_rules") == config.lesion_rules
            and all(name in previous.get("mean", {}) for name in names))


def _case_line(case_id: str, values: Dict, scheme) -> str:
    regions = list(scheme.regions)
    line = "  {}: Dice {} {}  HD95 {} mm".format(
        case_id, "/".join(regions), "/".join("{:.4f}".format(values["Dice_" + name]) for name in regions),
        "/".join("{:.2f}".format(values["HD95_" + name]) for name in regions))
    if scheme.lesion_rules is not None:
        scored = list(scheme.lesion_rules.regions)
        line += "  lesion-wise ({}) Dice {} HD95 {}".format(
            scheme.lesion_rules.year, "/".join("{:.4f}".format(values["LesionDice_" + name]) for name in scored),
            "/".join("{:.2f}".format(values["LesionHD95_" + name]) for name in scored))
        for nsd in scheme.lesion_rules.nsd_names:
            line += " {} {}".format(nsd, "/".join("{:.4f}".format(values["Lesion{}_{}".format(nsd, name)])
                                                  for name in scored))
    return line


def evaluate(config, *, runtime: Runtime, logger) -> Dict:
    """Score the fold's validation cases with the checkpoint ``--checkpoint`` selects (the best one where the
    run has one, else the newest); returns the mean metrics."""
    strategy, session_config, layer_ops = runtime.strategy, runtime.evaluation_session, runtime.layer_ops
    manifest = config.manifest
    _, cases = manifest.split(config.fold)
    if not cases:
        raise ConfigError("fold {} has no labelled validation cases".format(config.fold))
    positions = {case["id"]: index for index, case in enumerate(cases)}
    scheme = metrics_lib.LabelScheme.for_layout(manifest.layout, config.lesion_rules)
    names = scheme.names
    table = np.zeros((len(cases), len(names) + 1), dtype=np.float64)
    started = time.time()
    runner, step = restore_network(config, session_config, layer_ops, logger)
    checkpoint = checkpoint_name(config, runner)
    source = volumes.record_cases(manifest, strategy.shard(cases), session_config)
    json_name, csv_name, heldout_name = result_names(config)
    heldout = os.path.join(config.model_dir, heldout_name)
    for case, prediction, _ in segment_all(source, runner, config.inference):
        values = metrics_lib.case_metrics(prediction, case.label, case.geometry.spacing, scheme)
        save_heldout(heldout, case.case_id, prediction, case.label)  # every rank keeps its own cases
        row = positions[case.case_id]
        table[row, :-1] = [values[name] for name in names]
        table[row, -1] = 1.0  # evaluated-once marker
        logger.message(_case_line(case.case_id, values, scheme))
    table = strategy.allreduce_sum(table)
    if not np.all(table[:, -1] == 1.0):
        raise UNet3DError("evaluation covered some validation cases {} times".format(table[:, -1].tolist()))
    per_case = [dict(zip(names, row[:-1].tolist())) for row in table]
    summary = metrics_lib.summarize(per_case)
    logger.metrics("eval", dict(summary, cases=len(cases), checkpoint_step=step,
                                seconds=round(time.time() - started, 1)))
    if strategy.is_chief:
        statistics = metrics_lib.describe(per_case)
        logger.message(metrics_lib.format_table(statistics, len(cases), scheme.descriptions()))
        report = {
            "data": data_provenance(config),
            "fold": config.fold,
            "checkpoint": checkpoint,  # relative to the run folder: best/model.ckpt-N or model.ckpt-N
            "checkpoint_step": step,
            "inference": config.inference.describe(),
            "layout": scheme.layout,
            "cohort": scheme.cohort,
            "lesion_rules": config.lesion_rules,
            "naming": dict(scheme.descriptions()),
            "mean": summary,
            "statistics": statistics,
            "cases": {case["id"]: values for case, values in zip(cases, per_case)},
        }
        write_json_atomic(os.path.join(config.model_dir, json_name), report)
        metrics_lib.write_case_table(os.path.join(config.model_dir, csv_name), report["cases"])
        if json_name == EVAL_RESULTS:
            write_eval_summaries(os.path.join(config.model_dir, "eval"), summary, step)
        else:
            logger.message("--data_dir {} is not the run's training data set: its scores are in {} (the run's own "
                           "{} is kept)".format(config.data_dir, os.path.join(config.model_dir, json_name),
                                                EVAL_RESULTS))
    return summary
