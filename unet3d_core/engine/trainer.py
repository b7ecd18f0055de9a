"""Training one fold: resume or start, build the graph, run the loop with its listeners.

Only the chief writes (checkpoints, TensorBoard, ``run.json``, log lines);
with several processes the chief's checkpoint decides where everyone
resumes, and its weights reach the others by the initial broadcast.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from unet3d_core.data.records import find_damaged_record
from unet3d_core.distributed import steps_per_worker
from unet3d_core.engine import listeners as listeners_lib
from unet3d_core.engine.best_checkpoint import BestCheckpoint, validation_patches
from unet3d_core.engine.loop import run_training_loop
from unet3d_core.engine.stopping import StopRequest
from unet3d_core.engine.training_graph import build_training_graph
from unet3d_core.errors import ConfigError, DataError, TrainingStopped
from unet3d_core.logger import benchmark_report
from unet3d_core.model.checkpoints import BEST_FOLDER, check_run_folder, latest_checkpoint, restore_checkpoint
from unet3d_core.model.run_folder import write_run
from unet3d_core.runtime import Runtime


def _start(config, strategy, logger):
    """(checkpoint or None, step) to start from, agreed by every rank."""
    checkpoint, start_step = (None, 0) if config.training.benchmark else latest_checkpoint(
        config.model_dir, report=logger.message)
    if strategy.size > 1:
        # Other hosts may not see model_dir: the chief's step decides.
        start_step = int(strategy.allreduce_sum(np.array([start_step if strategy.is_chief else 0]))[0])
        if not strategy.is_chief:
            checkpoint = None
    return checkpoint, start_step


def _validation_patches(config, write: bool, session_config, logger):
    """The chief's fixed patches for the best checkpoint's pseudo-Dice, or None when it does not validate."""
    every, count = config.training.validate_every, config.training.validation_patches
    if not write or every <= 0:
        return None
    _, cases = config.manifest.split(config.fold)
    if not any(case.get("has_label", True) for case in cases):
        logger.message("note: fold {} has no labelled validation case; no best checkpoint is kept".format(config.fold))
        return None
    patches = validation_patches(config, count=count, session_config=session_config)
    logger.message("Best checkpoint: pseudo-Dice on {} fixed patches of {} validation case(s) every {} steps "
                   "and at the last, smoothed (EMA 0.9), kept in {}".format(
                       count, min(count, len(cases)), every, os.path.join(config.model_dir, BEST_FOLDER)))
    return patches


def _data_loss(record_files):
    def explain(error):
        damaged = find_damaged_record(record_files) or "a training record ({})".format(
            " ".join(error.message.split())[:200])
        return DataError("{}; the record is damaged, run 'python cli.py preprocess' again".format(damaged))
    return explain


def train(config, *, runtime: Runtime, logger) -> Dict:
    """Train ``config``'s fold to ``--max_steps`` (shared out over the workers); returns {"step": ...}
    and, with ``--benchmark``, the throughput report.

    Raises:
        TrainingStopped: SIGTERM/SIGINT on any rank; a checkpoint was saved.
        TrainingError: a NaN loss, or no step applied for a long time.
    """
    import tensorflow as tf

    strategy, layer_ops, inference_session = runtime.strategy, runtime.layer_ops, runtime.evaluation_session
    training = config.training
    total_steps = steps_per_worker(training.max_steps, strategy.size)
    checkpoint, start_step = _start(config, strategy, logger)
    if start_step >= total_steps:
        logger.message("Training already finished: {} has step {} of {}".format(
            checkpoint, start_step, total_steps))
        return {"step": start_step}
    manifest = config.manifest
    training_cases, _ = manifest.split(config.fold)
    shard = strategy.shard(training_cases)
    if not shard:
        raise ConfigError("fold {} leaves {} training cases for {} workers; every worker needs one".format(
            config.fold, len(training_cases), strategy.size))
    graph = build_training_graph(config, record_files=[manifest.record_path(case) for case in shard],
                                 start_step=start_step, total_steps=total_steps, runtime=runtime)
    write = strategy.is_chief and not training.benchmark
    if write:  # a full disk or read-only folder is found now, not after hours of training
        check_run_folder(config.model_dir, graph.checkpoint_bytes, training.keep_checkpoints)
        write_run(config.model_dir, network=config.network_record(), data=config.data_record(),
                  training=config.training_record(), backend=config.backend, previous=config.run_record)
    logger.message("Training on {} case(s) of fold {} ({} on this worker), {} parameters, {}, "
                   "steps {}..{} of {} per worker, batch {} x {} worker(s)".format(
                       len(training_cases), config.fold, len(shard), graph.parameters, layer_ops.describe(),
                       start_step + 1, total_steps, total_steps, training.batch_size, strategy.size))
    validation_patches = _validation_patches(config, write, inference_session, logger)
    guard = listeners_lib.StepGuard()
    timer = listeners_lib.BenchmarkTimer()
    listeners = [guard, listeners_lib.ProgressLog(logger, total_steps=total_steps, log_every=training.log_every,
                                                  volumes_per_step=training.batch_size * strategy.size), timer]
    with tf.compat.v1.Session(graph=graph.graph, config=runtime.training_session) as session, StopRequest() as stop:
        if checkpoint:
            restore_checkpoint(graph.saver, session, checkpoint)
            logger.message("Resuming from {} at step {} (learning rate {:.3g})".format(
                checkpoint, start_step, session.run(graph.learning_rate)))
        else:
            session.run(graph.initializer)
        session.run(graph.input_initializer)
        if graph.broadcast is not None:
            session.run(graph.broadcast)
        runner = runtime.step_runner(session, graph.train_op)
        run_op, steps_per_run = runner.op, runner.steps_per_run
        graph.bind_run_op(run_op)
        if write:
            listeners += [listeners_lib.TensorBoardWriter(config.model_dir, graph.graph, training.log_every),
                          listeners_lib.CheckpointSaver(graph.saver, config.model_dir, every=training.checkpoint_every,
                                                        keep=training.keep_checkpoints, total_steps=total_steps,
                                                        guard=guard)]
            if validation_patches is not None:  # after the saver: it validates the checkpoint just written
                listeners.append(BestCheckpoint(config, every=training.validate_every, total_steps=total_steps,
                                                saver=graph.saver, guard=guard, patches=validation_patches,
                                                session_config=inference_session, layer_ops=layer_ops,
                                                logger=logger))
        if graph.compared_variables is not None:
            listeners.append(listeners_lib.RankAgreement(strategy, graph.compared_variables, logger))
        graph.graph.finalize()
        step, stopped = run_training_loop(session, graph, listeners, start_step=start_step,
                                          total_steps=total_steps, steps_per_run=steps_per_run, stop=stop,
                                          explain_data_loss=_data_loss(graph.record_files))
    if stopped:
        raise TrainingStopped("Stopped by {} after step {} of {}{}. Run the same command again to resume.".format(
            stop.signal_name or "another rank", step, total_steps,
            "; checkpoint saved in {}".format(config.model_dir) if write else ""))
    result = {"step": step}
    if training.benchmark:
        result.update(benchmark_report(
            timer.step_times, "train", warmup_steps=training.warmup_steps, max_steps=training.max_steps,
            logger=logger, volumes_per_step=training.batch_size * strategy.size))
    return result
