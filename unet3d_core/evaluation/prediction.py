"""Prediction: NIfTI label maps (and probabilities) in each source's geometry, and ``predict --benchmark``.

Every prediction restores the checkpoint ``--checkpoint`` selects (the run's
best one where it has one, else the newest) into a fresh inference graph
built from the run's own network (``run.json``):
:func:`unet3d_core.evaluation.inference.restore_network`.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Iterator, List

import numpy as np

from unet3d_core.data import volumes
from unet3d_core.errors import ConfigError
from unet3d_core.evaluation import postprocessing
from unet3d_core.evaluation.inference import (
    checkpoint_name,
    final_labels,
    predict_probabilities,
    restore_network,
    segment,
)
from unet3d_core.folders import write_json_atomic
from unet3d_core.logger import benchmark_report
from unet3d_core.runtime import Runtime


def segment_all(cases: Iterator, runner, settings, keep_probabilities: bool = False):
    """Yield (case, internal label map, probabilities or None) per case; closes the network's session at the end."""
    try:
        for case in cases:
            labels, probabilities = segment(case.image, runner, settings, keep_probabilities)
            yield case, labels, probabilities
    finally:
        runner.close()


def _refuse_existing_outputs(output_dir: str, case_ids: List[str], prediction) -> None:
    """Existing outputs are refused up front (before any work) unless ``--overwrite``."""
    if prediction.overwrite:
        return
    for case_id in case_ids:
        for path in volumes.output_paths(output_dir, case_id, prediction.save_probabilities):
            if os.path.exists(path):
                raise ConfigError("{}: exists; pass --overwrite to replace predictions".format(path))


def predict_cases(config, case_ids: List[str], load_cases: Callable[[], Iterator], *, session_config, layer_ops,
                  logger) -> List[str]:
    """Segment the cases ``load_cases()`` yields and write their NIfTI outputs to the prediction folder.

    Existing outputs are refused up front (before any work) unless ``--overwrite``. The post-processing
    chosen on cross-validation is applied where the run (or its CV folder) has one and ``--postprocessing
    auto``.
    """
    prediction = config.prediction
    output_dir = prediction.output_dir or os.path.join(config.model_dir, "predictions")
    _refuse_existing_outputs(output_dir, case_ids, prediction)
    chosen = postprocessing.for_run(config.model_dir, prediction.postprocessing, logger)
    runner, _ = restore_network(config, session_config, layer_ops, logger)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    started = time.time()
    for case, labels, probabilities in segment_all(load_cases(), runner, config.inference,
                                                   prediction.save_probabilities):
        if chosen is not None:
            labels = chosen.apply(labels)
        paths = volumes.output_paths(output_dir, case.case_id, prediction.save_probabilities)
        volumes.write_label_map(paths[0], labels, case)
        if probabilities is not None:
            volumes.write_probabilities(paths[1], probabilities, case)
        written.append(paths[0])
        logger.message("  wrote {}".format(", ".join(paths)))
    logger.metrics("predict", {"cases": len(written), "output_dir": output_dir,
                               "seconds": round(time.time() - started, 1)})
    return written


def benchmark_prediction(config, load_cases: Callable[[], Iterator], *, session_config, layer_ops, logger,
                         workers: int):
    """``predict --benchmark``: segment whole volumes, timing each after ``--warmup_steps``; write nothing.

    A step is one volume through the network, blending and arg-max (what
    ``predict`` does between reading a case and writing it); reading and
    normalising the case are outside the timing. The cases ``load_cases()``
    yields are cycled until ``--max_steps`` volumes are done; with
    ``--synthetic_input`` one random volume of ``--eval_crop`` is used instead.
    """
    training = config.training
    runner, _ = restore_network(config, session_config, layer_ops, logger)
    volume_times: List[float] = []
    try:
        while len(volume_times) < training.max_steps:
            if training.synthetic_input:
                shape = [int(size) for size in config.inference.eval_crop] + [config.network.in_channels]
                images = [np.random.RandomState(training.seed).standard_normal(shape).astype(np.float32)]
            else:
                images = (case.image for case in load_cases())
            done_before = len(volume_times)
            for image in images:
                began = time.time()
                segment(image, runner, config.inference)
                volume_times.append(time.time() - began)
                if len(volume_times) >= training.max_steps:
                    break
            if len(volume_times) == done_before:
                raise ConfigError("--benchmark: no cases to predict")
    finally:
        runner.close()
    logger.message("Benchmark: {} volumes, the first {} untimed".format(len(volume_times), training.warmup_steps))
    return benchmark_report(volume_times, "predict", warmup_steps=training.warmup_steps,
                            max_steps=training.max_steps, logger=logger, volumes_per_step=workers)


def predict(config, *, runtime: Runtime, logger):
    """``predict``: a raw folder (``--input_dir``) or the data set's cases (``--predict_on``), sharded over
    ranks; with ``--benchmark`` timed and not written."""
    strategy, session_config, layer_ops = runtime.strategy, runtime.evaluation_session, runtime.layer_ops
    skipped: List = []  # (case, reason) of --skip_invalid
    if config.prediction.input_dir:
        case_ids, listed = volumes.raw_folder_cases(config.prediction.input_dir, shard=strategy.shard,
                                                    intensity=config.intensity,
                                                    skipped=skipped if config.prediction.skip_invalid else None)
        unused = [listed]  # the listing's lazy iterator, for the first pass over the cases

        def load():
            if unused:
                return unused.pop()
            # A benchmark cycles the cases: each further pass lists the folder again.
            return volumes.raw_folder_cases(config.prediction.input_dir, shard=strategy.shard,
                                            intensity=config.intensity)[1]
    else:
        manifest = config.manifest
        cases = [case for case in manifest.cases
                 if config.prediction.predict_on == "all" or case["fold"] == config.fold]
        cases = strategy.shard(cases)
        case_ids = [case["id"] for case in cases]

        def load():
            return volumes.record_cases(manifest, cases, session_config)
    if config.training.benchmark:
        return benchmark_prediction(config, load, session_config=session_config, layer_ops=layer_ops,
                                    logger=logger, workers=strategy.size)
    written = predict_cases(config, case_ids, load, session_config=session_config, layer_ops=layer_ops,
                            logger=logger)
    if skipped:
        logger.message("--skip_invalid: left out {} case(s) that could not be read:".format(len(skipped)))
        for case_id, reason in skipped:
            logger.message("  {}: {}".format(case_id, reason))
    return written


def predict_ensemble(configs, *, output_dir: str, runtime: Runtime, logger) -> List[str]:
    """``predict`` with several folds' models: each case's probabilities (softmax or sigmoid) averaged over
    the models, then turned into labels and written; ``ensemble.json`` beside them lists the folds.

    The models run one after another on a case, so memory holds one window batch at a time, the running
    sum and the current model's volume.
    """
    strategy, session_config, layer_ops = runtime.strategy, runtime.evaluation_session, runtime.layer_ops
    first = configs[0]
    for config in configs[1:]:
        theirs, ours = config.network, first.network
        if (theirs.in_channels, theirs.outputs, theirs.target, theirs.regions) != (
                ours.in_channels, ours.outputs, ours.target, ours.regions):
            raise ConfigError("{} and {}: different networks (channels, outputs or target); an ensemble "
                              "needs folds of one run".format(first.model_dir, config.model_dir))
    prediction = first.prediction
    if prediction.input_dir:
        case_ids, cases = volumes.raw_folder_cases(prediction.input_dir, shard=strategy.shard,
                                                   intensity=first.intensity)
    else:
        manifest = first.manifest  # a data set outside the cross-validation: every case
        chosen = strategy.shard(list(manifest.cases))
        case_ids, cases = [case["id"] for case in chosen], volumes.record_cases(manifest, chosen, session_config)
    _refuse_existing_outputs(output_dir, case_ids, prediction)
    # The folds' CV folder holds the choice (fold-N/.. of the first member).
    chosen_postprocessing = postprocessing.for_run(first.model_dir, prediction.postprocessing, logger)
    models = []
    names = {}
    try:
        for config in configs:
            runner, step = restore_network(config, session_config, layer_ops, logger)
            models.append((config, runner, step))
            names[config.fold] = checkpoint_name(config, runner)
        folds = [config.fold for config, _, _ in models]
        logger.message("Ensemble of folds {} ({} models), probabilities averaged".format(
            ", ".join(map(str, folds)), len(models)))
        os.makedirs(output_dir, exist_ok=True)
        settings = first.inference
        written = []
        started = time.time()
        for case in cases:
            total = None
            for _, runner, _ in models:
                probabilities = predict_probabilities(case.image, runner, settings)
                if total is None:
                    total = probabilities
                else:
                    total += probabilities
                del probabilities
            total /= len(models)
            labels = final_labels(total, settings)
            if chosen_postprocessing is not None:
                labels = chosen_postprocessing.apply(labels)
            paths = volumes.output_paths(output_dir, case.case_id, prediction.save_probabilities)
            volumes.write_label_map(paths[0], labels, case)
            if prediction.save_probabilities:
                volumes.write_probabilities(paths[1], total, case)
            written.append(paths[0])
            logger.message("  wrote {} (folds {})".format(", ".join(paths), ",".join(map(str, folds))))
    finally:
        for _, runner, _ in models:
            runner.close()
    if strategy.is_chief:
        description = {"folds": folds,
                       "models": [{"fold": config.fold, "model_dir": os.path.abspath(config.model_dir),
                                   "checkpoint": names[config.fold], "checkpoint_step": step}
                                  for config, _, step in models],
                       "combination": "mean of the models' {} probabilities".format(
                           "sigmoid region" if first.network.target == "regions" else "softmax"),
                       "inference": settings.describe(),
                       "postprocessing": (chosen_postprocessing.source if chosen_postprocessing is not None
                                          else None),
                       "source": os.path.abspath(prediction.input_dir or first.data_dir),
                       "cases": case_ids if strategy.size == 1 else None}
        write_json_atomic(os.path.join(output_dir, "ensemble.json"), description)
    logger.metrics("predict", {"cases": len(written), "output_dir": output_dir, "folds": folds,
                               "seconds": round(time.time() - started, 1)})
    return written
