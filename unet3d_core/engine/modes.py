"""Exec modes: train, evaluate, train_and_evaluate, predict; one fold or ``--fold all``; cross-validation pooling.

:func:`run` receives the parsed options and the selected backend; it never
imports a backend by name. The backend's hooks give the process's strategy,
session config and layer ops once; each fold then runs with its own
validated :class:`unet3d_core.engine.run_config.RunConfig` and run folder.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Dict, List, Tuple

import numpy as np

from unet3d_core.data.layouts import LAYOUTS
from unet3d_core.engine.run_config import RunConfig, process_core_settings, process_options
from unet3d_core.engine.run_flags import CommandFlags
from unet3d_core.engine.trainer import train
from unet3d_core.errors import BackendError
from unet3d_core.evaluation import metrics as metrics_lib
from unet3d_core.evaluation.evaluate import EVAL_RESULTS, evaluate, evaluation_is_current
from unet3d_core.evaluation.postprocessing import POSTPROCESSING_FILE, choose_for_cross_validation
from unet3d_core.evaluation.prediction import predict, predict_ensemble
from unet3d_core.folders import check_shared_folder, write_json_atomic
from unet3d_core.logger import RunLogger
from unet3d_core.runtime import Runtime, runtime_for

CV_RESULTS = "cv_results.json"
CV_CASES = "cv_results.csv"


def _loggable(options: CommandFlags) -> Dict:
    return {key: value for key, value in sorted(options.items())
            if isinstance(value, (int, float, str, bool, list, tuple)) or value is None}


def with_backend_steps(config: RunConfig, runtime: Runtime) -> RunConfig:
    """``config`` with the training steps the backend's options settled on: a backend may round ``--max_steps``
    up (the npu backend, to keep its device loop at 10 steps or more), never down."""
    core = getattr(runtime.options, "core", None)
    asked = config.training.max_steps
    steps = asked if core is None or not config.trains else int(core.max_steps)
    if steps == asked:
        return config
    if steps < asked:
        raise BackendError("backend '{}' lowered --max_steps {} to {}: a backend may only round it up".format(
            runtime.backend.name, asked, steps))
    note = "--max_steps {} rounded up to {} by the {} backend (its log line says why)".format(
        asked, steps, runtime.backend.name)
    return replace(config, training=replace(config.training, max_steps=steps), notes=config.notes + (note,))


def run_fold(config: RunConfig, *, options: CommandFlags, runtime: Runtime, reuse_evaluation=False) -> Dict:
    """Run ``config.exec_mode`` for one fold (or one raw prediction folder) with ``options`` resolved for it."""
    import tensorflow as tf

    runtime = runtime.for_run(runtime.backend.backend_options(options, config.core_settings()))
    config = with_backend_steps(config, runtime)
    if runtime.worker.is_chief:
        os.makedirs(config.model_dir, exist_ok=True)
    check_shared_folder(runtime.strategy, config.model_dir)  # before any rank waits for another
    logger = RunLogger(os.path.join(config.model_dir, "log.json"), enabled=runtime.worker.is_chief)
    logger.parameters(_loggable(options))
    logger.message("unet3d {} on backend '{}' ({}), TensorFlow {}".format(
        config.exec_mode, runtime.backend.name, runtime.describe(), tf.__version__))
    for note in config.notes:
        logger.message("note: " + note)
    results: Dict = {}
    try:
        if config.trains:
            results["train"] = train(config, runtime=runtime, logger=logger)
        if config.exec_mode in ("evaluate", "train_and_evaluate") and not config.training.benchmark:
            if reuse_evaluation and evaluation_is_current(config):
                logger.message("{}: already scores the newest checkpoint with these settings; kept".format(
                    os.path.join(config.model_dir, EVAL_RESULTS)))
            else:
                results["evaluate"] = evaluate(config, runtime=runtime, logger=logger)
        if config.exec_mode == "predict":
            results["predict"] = predict(config, runtime=runtime, logger=logger)
    finally:
        logger.close()
    return results


def write_cross_validation(model_dir: str, folds: int, logger: RunLogger):
    """Pool ``fold-N/eval_results.json`` into ``cv_results.json`` and ``cv_results.csv``; log the table.

    Returns the pooled statistics, or None while some fold has no evaluation yet.
    """
    per_fold = {}
    for fold in range(folds):
        path = os.path.join(model_dir, "fold-{}".format(fold), EVAL_RESULTS)
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            per_fold[fold] = json.load(handle)
    cases = {}
    for report in per_fold.values():
        cases.update(report["cases"])
    statistics = metrics_lib.describe(list(cases.values()))
    first = per_fold[0]
    naming = first.get("naming") or dict(metrics_lib.default_scheme().descriptions())
    content = {
        "folds": folds,
        "cases": len(cases),
        "layout": first.get("layout"),
        "lesion_rules": first.get("lesion_rules"),
        "naming": naming,
        "pooled": statistics,  # every case once, scored by the fold that held it out
        "mean_of_folds": {name: float(np.mean([per_fold[fold]["mean"][name] for fold in per_fold]))
                          for name in metrics_lib.metric_names(cases)},
        "per_fold": {str(fold): {"checkpoint_step": report["checkpoint_step"], "cases": len(report["cases"]),
                                 "mean": report["mean"]} for fold, report in per_fold.items()},
    }
    logger.message("\nCross-validation over {} folds, {} cases (pooled):".format(folds, len(cases)))
    logger.message(metrics_lib.format_table(statistics, len(cases), naming))
    content["postprocessing"] = _choose_postprocessing(model_dir, per_fold, first.get("layout"), logger)
    write_json_atomic(os.path.join(model_dir, CV_RESULTS), content)
    metrics_lib.write_case_table(os.path.join(model_dir, CV_CASES), cases,
                                 folds={case: fold for fold, report in per_fold.items() for case in report["cases"]})
    for fold, report in per_fold.items():
        mean = report["mean"]
        shown = [name for name in mean if name.startswith(("Dice_", "LesionDice_"))]
        logger.message("  fold {}: {}".format(fold, "  ".join("{} {:.4f}".format(name, mean[name]) for name in shown)))
    logger.message("wrote {} and {}".format(os.path.join(model_dir, CV_RESULTS), os.path.join(model_dir, CV_CASES)))
    return statistics


def _choose_postprocessing(model_dir: str, per_fold: Dict, layout, logger):
    """Post-processing chosen on the folds' held-out label maps (``postprocessing.json``); for cv_results.json
    its pooled Dice before and after, or None when it could not be chosen."""
    if layout not in LAYOUTS:
        return None
    chosen = choose_for_cross_validation(model_dir, {fold: list(report["cases"]) for fold, report in per_fold.items()},
                                         LAYOUTS[layout].regions, logger, layout)
    if chosen is None:
        return None
    return {"file": POSTPROCESSING_FILE, "chosen": chosen["description"], "dice_regions": chosen["dice_regions"],
            "mean_dice_before": chosen["dice_before"], "mean_dice_after": chosen["dice_after"],
            "per_region": chosen["per_region"]}


def run(*, options: CommandFlags, backend, runs: List[Tuple[CommandFlags, RunConfig]]) -> Dict:
    """Run ``options.exec_mode`` in this process with ``backend``; returns a dict of results.

    ``runs`` are :func:`unet3d_core.engine.run_config.resolve_runs`'s answer for ``options``. ``--fold all`` runs
    folds 0..N-1 one after another, each in ``<model_dir>/fold-N`` (each resumable), then pools their
    evaluations.
    """
    runtime = runtime_for(backend, backend.backend_options(options, process_core_settings(options, runs)))
    options = process_options(options, runs)
    try:
        console = RunLogger(None, enabled=runtime.worker.is_chief)
        if getattr(runs[0][0], "ensemble_member", False):  # resolve_runs made the folds' models members
            output_dir = options.output_dir or os.path.join(options.model_dir, "ensemble-predictions")
            return {"predict": predict_ensemble([config for _, config in runs], output_dir=output_dir,
                                                runtime=runtime, logger=console)}
        every_fold = str(options.fold) == "all"
        results: Dict = {}
        for fold_options, config in runs:
            if every_fold:
                console.message("\n[fold {} of 0..{}] {}".format(config.fold, len(runs) - 1, config.model_dir))
            outcome = run_fold(config, options=fold_options, runtime=runtime, reuse_evaluation=every_fold)
            if not every_fold:
                return outcome
            results[config.fold] = outcome
        if runtime.worker.is_chief and runs[0][1].exec_mode in ("evaluate", "train_and_evaluate"):
            summary = write_cross_validation(options.model_dir, len(runs), console)
            if summary is not None:
                results["cross_validation"] = summary
        return results
    finally:
        runtime.strategy.close()
