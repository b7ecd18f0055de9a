"""The controller: builds graphs, owns the session loop, checkpoints, evaluation and prediction.

Every exec mode runs through :func:`run`, which receives ready options and a
backend; it never imports a backend by name. Training is graph mode through
``tf.compat.v1`` (TensorFlow 1.15 and 2.x alike). Evaluation and prediction
always restore the newest checkpoint into a fresh inference graph.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Dict, List

import numpy as np

from unet3d_core import metrics as metrics_lib
from unet3d_core.checkpoints import check_run_folder, latest_checkpoint, save_checkpoint
from unet3d_core.config import ModelConfig
from unet3d_core.distributed import steps_per_worker
from unet3d_core.errors import ConfigError, DataError, UNet3DError
from unet3d_core.logger import RunLogger
from unet3d_core.records import Manifest, find_damaged_record
from unet3d_core.stopping import StopRequest, TrainingStopped

EVAL_RESULTS = "eval_results.json"
EVAL_CASES = "eval_results.csv"
CV_RESULTS = "cv_results.json"
CV_CASES = "cv_results.csv"


class TrainingError(UNet3DError):
    """Training cannot go on (e.g. the loss became NaN); the last checkpoint is intact."""


def model_config_from(options) -> ModelConfig:
    config = ModelConfig(base_filters=options.base_filters, max_filters=options.max_filters,
                         depth=options.depth, norm=options.norm)
    config.validate()
    return config


def learning_rate_at(step, *, base: float, warmup_steps: int, total_steps: int, schedule: str):
    """Learning rate as a graph op of the global step.

    Linear warm-up from base/warmup to ``base`` over ``warmup_steps``, then
    ``constant`` (the default: the reference's intended schedule, without
    its piecewise bug) or ``cosine`` decay to zero at ``total_steps``.
    Being a pure function of the step, it is exact after a resume.
    """
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    rate = tf.constant(base, tf.float32)
    if schedule == "cosine":
        decay_steps = float(max(total_steps - warmup_steps, 1))
        progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
        rate = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
    if warmup_steps > 0:
        rate = tf.where(step < warmup_steps, base * (step + 1.0) / float(warmup_steps), rate)
    return rate


def synthetic_training_dataset(*, batch_size: int, crop_shape, model_config: ModelConfig, seed: int):
    """``--synthetic_input``: one random batch, made once and kept in memory, repeated forever.

    The images are standard normal (what z-scored inputs look like), the
    labels uniform over the classes; both depend only on ``seed``. Nothing is
    read from disk and nothing is computed per step, so a benchmark times the
    training step alone.
    """
    import tensorflow as tf

    shape = [batch_size] + [int(size) for size in crop_shape]

    def make_batch(_):
        image = tf.random.stateless_normal(shape + [model_config.in_channels], seed=[seed, 1], dtype=tf.float32)
        label = tf.random.stateless_uniform(shape, seed=[seed, 2], minval=0, maxval=model_config.num_classes,
                                            dtype=tf.int32)
        return image, label

    return tf.data.Dataset.range(1).map(make_batch).cache().repeat()


def _write_eval_summaries(folder: str, summary: Dict, step: int) -> None:
    """Mean evaluation metrics as TensorBoard scalars (``eval/Dice_WT`` ...) at the checkpoint's step."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    values = [tf1.Summary.Value(tag="eval/" + name, simple_value=float(value))
              for name, value in summary.items() if isinstance(value, (int, float))]
    with tf.Graph().as_default():
        writer = tf1.summary.FileWriter(folder)
        writer.add_summary(tf1.Summary(value=values), step)
        writer.close()


def _variables_bytes(variables) -> int:
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape.as_list():
            count *= size or 1
        total += count * variable.dtype.base_dtype.size
    return total


def weights_fingerprint(variables):
    """Graph op: per variable, the sum and the sum of squares of its values (float64)."""
    import tensorflow as tf

    parts = []
    for variable in variables:
        values = tf.cast(variable, tf.float64)
        parts.append(tf.stack([tf.reduce_sum(values), tf.reduce_sum(tf.square(values))]))
    return tf.concat(parts, axis=0)


def base_session_config(options):
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    return config


class _TrainingProgress:
    """Step bookkeeping of one training loop: logging windows, step times, stalls, NaN checks."""

    # Runs in a row that applied no step (every one an overflow the loss-scaling
    # optimizer skipped) before training is declared stuck.
    MAX_STALLED_RUNS = 1000

    def __init__(self, controller, session, start_step, total_steps, learning_rate, step_metrics):
        self.controller = controller
        self.session = session
        self.step = start_step
        self.total_steps = total_steps
        self.learning_rate = learning_rate
        self.step_metrics = step_metrics
        self.last_saved = start_step
        self.step_times: List[float] = []  # seconds per training step, derived per run
        self._losses: List[float] = []
        self._window_step = start_step
        self._window_start = time.time()
        self._stalled_runs = 0

    def record(self, step: int, seconds: float, loss_value: float) -> None:
        options = self.controller.options
        if not math.isfinite(loss_value):
            raise TrainingError("loss is {} at step {}; stopping without saving (the last checkpoint, step {}, is "
                                "intact). Try a lower --learning_rate".format(loss_value, step, self.last_saved))
        advanced = step - self.step
        if advanced > 0:
            self.step_times.extend([seconds / advanced] * advanced)
            self._stalled_runs = 0
        else:
            self._stalled_runs += 1
            if self._stalled_runs >= self.MAX_STALLED_RUNS:
                raise TrainingError("no training step was applied in {} runs in a row at step {} (every "
                                    "gradient overflowed); check --npu_loss_scale and the learning rate".format(
                                        self._stalled_runs, step))
        self._losses.append(loss_value)
        previous, self.step = self.step, step
        if step // options.log_every > previous // options.log_every or step >= self.total_steps:
            self._log()

    def _log(self) -> None:
        strategy = self.controller.strategy
        elapsed = max(time.time() - self._window_start, 1e-9)
        values = {
            "loss": float(np.mean(self._losses)),
            "learning_rate": float(self.session.run(self.learning_rate)),
            "volumes_per_second": (self.step - self._window_step) * self.controller.options.batch_size
            * strategy.size / elapsed,
        }
        if self.step_metrics:
            values.update({name: float(value) for name, value in self.session.run(self.step_metrics).items()})
        self.controller.logger.metrics(self.step, values)
        self._losses, self._window_step, self._window_start = [], self.step, time.time()


class Controller:
    """Runs one exec mode for one process."""

    def __init__(self, *, options, backend, strategy, session_config, logger: RunLogger):
        self.options = options
        self.backend = backend
        self.strategy = strategy
        self.session_config = session_config
        self.logger = logger
        self.model_config = model_config_from(options)
        self.manifest = Manifest(options.data_dir)
        self.training_cases, self.validation_cases = self.manifest.split(options.fold)

    # ---------------------------------------------------------------- training
    def train(self) -> Dict:
        import tensorflow as tf

        from unet3d_core.input_pipeline import training_dataset
        from unet3d_core.losses import segmentation_loss
        from unet3d_core.model import build_unet3d, count_parameters

        tf1 = tf.compat.v1
        options, strategy = self.options, self.strategy
        total_steps = steps_per_worker(options.max_steps, strategy.size)
        checkpoint, start_step = (None, 0) if options.benchmark else latest_checkpoint(
            options.model_dir, report=self.logger.message)
        if strategy.size > 1:
            # The chief's checkpoint decides for everyone (other hosts may not see
            # model_dir); its weights reach the others by the initial broadcast.
            start_step = int(strategy.allreduce_sum(np.array([start_step if strategy.is_chief else 0]))[0])
            if not strategy.is_chief:
                checkpoint = None
        if start_step >= total_steps:
            self.logger.message("Training already finished: {} has step {} of {}".format(
                checkpoint, start_step, total_steps))
            return {"step": start_step}
        shard = strategy.shard(self.training_cases)
        if not shard:
            raise ConfigError("fold {} leaves {} training cases for {} workers; every worker needs one".format(
                options.fold, len(self.training_cases), strategy.size))
        files = [self.manifest.record_path(case) for case in shard]

        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(options.seed)
            global_step = tf1.train.get_or_create_global_step()
            if getattr(options, "synthetic_input", False):
                dataset = synthetic_training_dataset(batch_size=options.batch_size, crop_shape=options.input_shape,
                                                     model_config=self.model_config,
                                                     seed=options.seed + 7919 * strategy.rank)
            else:
                dataset = training_dataset(files, batch_size=options.batch_size, crop_shape=options.input_shape,
                                           augment=options.augment, seed=options.seed + 7919 * strategy.rank,
                                           first_sample=start_step * options.batch_size,
                                           cache=getattr(options, "cache", False))
            images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
            logits = build_unet3d(images, self.model_config, training=True)
            loss = segmentation_loss(logits, labels, self.model_config.num_classes, options.loss)
            base_rate = options.learning_rate * (strategy.size if options.lr_scaling == "linear" else 1)
            learning_rate = learning_rate_at(global_step, base=base_rate,
                                             warmup_steps=options.lr_warmup_steps, total_steps=total_steps,
                                             schedule=options.lr_schedule)
            optimizer = tf1.train.AdamOptimizer(learning_rate)
            optimizer = self.backend.mixed_precision(optimizer, options, strategy)
            if not getattr(optimizer, "unet3d_distributed", False):
                optimizer = strategy.wrap_optimizer(optimizer)
            with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
                train_op = optimizer.minimize(loss, global_step=global_step)
            saver = tf1.train.Saver(max_to_keep=options.keep_checkpoints)
            initializer = tf1.global_variables_initializer()
            broadcast = strategy.broadcast_initial_variables_op()
            summaries = tf1.summary.merge([tf1.summary.scalar("loss", loss),
                                           tf1.summary.scalar("learning_rate", learning_rate)])
            step_metrics = optimizer.unet3d_step_metrics() if hasattr(optimizer, "unet3d_step_metrics") else {}
            parameters = count_parameters(tf1.trainable_variables())
            fingerprint = weights_fingerprint(tf1.trainable_variables()) if strategy.size > 1 else None
            write = strategy.is_chief and not options.benchmark
            if write:  # a full disk or read-only folder is found now, not after hours of training
                check_run_folder(options.model_dir, _variables_bytes(tf1.global_variables()),
                                 options.keep_checkpoints)
            summary_writer = tf1.summary.FileWriter(options.model_dir, graph) if write else None

        self.logger.message("Training on {} case(s) of fold {} ({} on this worker), {} parameters, "
                            "steps {}..{} of {} per worker, batch {} x {} worker(s)".format(
                                len(self.training_cases), options.fold, len(shard), parameters,
                                start_step + 1, total_steps, total_steps, options.batch_size, strategy.size))
        with tf1.Session(graph=graph, config=self.session_config) as session, StopRequest() as stop:
            if checkpoint:
                saver.restore(session, checkpoint)
                self.logger.message("Resuming from {} at step {} (learning rate {:.3g})".format(
                    checkpoint, start_step, session.run(learning_rate)))
            else:
                session.run(initializer)
            if broadcast is not None:
                session.run(broadcast)
            run_op, steps_per_run = self.backend.training_loop(session, train_op, options)
            graph.finalize()
            progress = _TrainingProgress(self, session, start_step, total_steps, learning_rate, step_metrics)
            while progress.step < total_steps:
                crossing_log = (progress.step + steps_per_run) // options.log_every > progress.step // options.log_every
                want_summary = summary_writer is not None and crossing_log
                began = time.time()
                try:
                    results = session.run([run_op, loss] + ([summaries] if want_summary else []))
                except tf.errors.DataLossError as error:
                    damaged = find_damaged_record(files) or "a training record ({})".format(
                        " ".join(error.message.split())[:200])
                    raise DataError("{}; the record is damaged, run 'python cli.py preprocess' again".format(
                        damaged)) from None
                # Read after the run, not fetched beside it (such a fetch may see the
                # value before the increment), and never assumed: one run may do
                # several steps (iterations per loop) or none (a skipped overflow).
                step = int(session.run(global_step))
                progress.record(step, time.time() - began, float(results[1]))
                if want_summary:
                    summary_writer.add_summary(results[2], step)
                stopping = self._stop_agreed(stop)
                if write and (step // options.checkpoint_every > progress.last_saved // options.checkpoint_every
                              or step >= total_steps or stopping):
                    save_checkpoint(saver, session, options.model_dir, step, progress.last_saved)
                    progress.last_saved = step
                if stopping:
                    if summary_writer is not None:
                        summary_writer.close()
                    raise TrainingStopped(
                        "Stopped by {} after step {} of {}{}. Run the same command again to resume.".format(
                            stop.signal_name or "another rank", step, total_steps,
                            "; checkpoint saved in {}".format(options.model_dir) if write else ""))
            if fingerprint is not None:
                self._check_ranks_agree(session.run(fingerprint))
        if summary_writer is not None:
            summary_writer.close()
        result = {"step": progress.step}
        if options.benchmark:
            result.update(self._benchmark_report(progress.step_times, "train"))
        return result

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether to stop now: this process got SIGTERM/SIGINT, or (multi-process) any rank did."""
        if self.strategy.size == 1:
            return stop.requested
        votes = self.strategy.allreduce_sum(np.array([1.0 if stop.requested else 0.0]))
        return bool(votes[0] > 0)

    def _check_ranks_agree(self, fingerprint: np.ndarray) -> None:
        """Compare every rank's own weights (by fingerprint); diverged replicas are a bug, not a result."""
        strategy = self.strategy
        table = np.zeros((strategy.size, fingerprint.size))
        table[strategy.rank] = fingerprint
        table = strategy.allreduce_sum(table)
        difference = float(np.max(np.abs(table - table[0])))
        if difference > 0:
            raise TrainingError("the {} ranks ended training with different weights (largest fingerprint "
                                "difference {:.3g}); the distributed optimizer is not averaging".format(
                                    strategy.size, difference))
        self.logger.message("Weights identical on all {} ranks ({} fingerprint values compared)".format(
            strategy.size, fingerprint.size))

    def _benchmark_report(self, step_times: List[float], mode: str) -> Dict:
        return benchmark_report(step_times, mode, options=self.options, logger=self.logger,
                                volumes_per_step=self.options.batch_size * self.strategy.size)

    # ------------------------------------------------------ inference helpers
    def _inference(self, cases: List[Dict], keep_probabilities: bool = False):
        """Restore the newest checkpoint and segment ``cases`` of the data set, whole volume, once each.

        Returns:
            (checkpoint step, InferenceSettings, iterator of (InferenceCase,
            internal label map, probabilities or None)).
        """
        from unet3d_core import inference

        runner, settings, step = _restore_network(self.options, self.model_config, self.session_config,
                                                  self.logger)
        source = inference.record_cases(self.manifest, cases, self.session_config)
        return step, settings, _segment_all(source, runner, settings, keep_probabilities)

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> Dict:
        """Score every validation case exactly once (sharded over ranks), whole volume."""
        cases = self.validation_cases
        if not cases:
            raise ConfigError("fold {} has no labelled validation cases".format(self.options.fold))
        positions = {case["id"]: index for index, case in enumerate(cases)}
        names = metrics_lib.METRIC_NAMES
        table = np.zeros((len(cases), len(names) + 1), dtype=np.float64)
        started = time.time()
        step, settings, segmented = self._inference(self.strategy.shard(cases))
        for case, prediction, _ in segmented:
            values = metrics_lib.case_metrics(prediction, case.label, case.geometry.spacing)
            row = positions[case.case_id]
            table[row, :-1] = [values[name] for name in names]
            table[row, -1] = 1.0  # evaluated-once marker
            self.logger.message("  {}: WholeTumor {:.4f}  MeanDice {:.4f}  Dice WT/TC/ET {:.4f}/{:.4f}/{:.4f}  "
                                "HD95 WT/TC/ET {:.2f}/{:.2f}/{:.2f} mm".format(
                                    case.case_id, values["WholeTumor"], values["MeanDice"], values["Dice_WT"],
                                    values["Dice_TC"], values["Dice_ET"], values["HD95_WT"], values["HD95_TC"],
                                    values["HD95_ET"]))
        table = self.strategy.allreduce_sum(table)
        if not np.all(table[:, -1] == 1.0):
            raise UNet3DError("evaluation covered some validation cases {} times".format(table[:, -1].tolist()))
        per_case = [dict(zip(names, row[:-1].tolist())) for row in table]
        summary = metrics_lib.summarize(per_case)
        self.logger.metrics("eval", dict(summary, cases=len(cases), checkpoint_step=step,
                                         seconds=round(time.time() - started, 1)))
        if self.strategy.is_chief:
            statistics = metrics_lib.describe(per_case)
            self.logger.message(metrics_lib.format_table(statistics, len(cases)))
            report = {
                "fold": self.options.fold,
                "checkpoint_step": step,
                "inference": settings.describe(),
                "naming": dict(metrics_lib.SCHEME_DESCRIPTIONS),
                "mean": summary,
                "statistics": statistics,
                "cases": {case["id"]: values for case, values in zip(cases, per_case)},
            }
            _write_json_atomic(os.path.join(self.options.model_dir, EVAL_RESULTS), report)
            metrics_lib.write_case_table(os.path.join(self.options.model_dir, EVAL_CASES),
                                         report["cases"])
            _write_eval_summaries(os.path.join(self.options.model_dir, "eval"), summary, step)
        return summary

    # -------------------------------------------------------------- prediction
    def predict(self) -> List[str]:
        """Write one NIfTI label map per case of the data set, in the source's geometry and labels."""
        from unet3d_core import inference

        if self.options.predict_on == "all":
            cases = list(self.manifest.cases)
        else:
            cases = [case for case in self.manifest.cases if case["fold"] == self.options.fold]
        cases = self.strategy.shard(cases)
        if self.options.benchmark:
            return benchmark_prediction(lambda: inference.record_cases(self.manifest, cases, self.session_config),
                                        options=self.options, model_config=self.model_config,
                                        session_config=self.session_config, logger=self.logger,
                                        workers=self.strategy.size)
        return predict_cases([case["id"] for case in cases],
                             lambda: inference.record_cases(self.manifest, cases, self.session_config),
                             options=self.options, model_config=self.model_config,
                             session_config=self.session_config, logger=self.logger)


def _restore_network(options, model_config, session_config, logger):
    """The network restored from the newest checkpoint of ``--model_dir``, the inference settings and the step."""
    from unet3d_core import inference

    settings = inference.InferenceSettings.from_options(options, model_config.divisor)
    checkpoint, step = latest_checkpoint(options.model_dir)
    if checkpoint is None:
        raise ConfigError("--model_dir {}: no checkpoint to evaluate or predict with; train first".format(
            options.model_dir))
    runner = inference.NetworkRunner(model_config, checkpoint, session_config)
    described = ", ".join("{} {}".format(key, value) for key, value in settings.describe().items())
    logger.message("Restored {} (step {}); inference: {}".format(checkpoint, step, described))
    return runner, settings, step


def _segment_all(source, runner, settings, keep_probabilities: bool):
    """Yield (case, internal label map, probabilities or None) per case; closes the network's session at the end."""
    from unet3d_core.inference import segment

    try:
        for case in source:
            labels, probabilities = segment(case.image, runner, settings, keep_probabilities)
            yield case, labels, probabilities
    finally:
        runner.close()


def predict_cases(case_ids: List[str], load_cases, *, options, model_config, session_config,
                  logger: RunLogger) -> List[str]:
    """Segment the cases ``load_cases()`` yields and write their NIfTI outputs to the prediction folder.

    Existing outputs are refused up front (before any work) unless ``--overwrite``.
    """
    from unet3d_core import inference

    output_dir = options.output_dir or os.path.join(options.model_dir, "predictions")
    save_probabilities = bool(getattr(options, "save_probabilities", False))
    if not options.overwrite:
        for case_id in case_ids:
            for path in inference.output_paths(output_dir, case_id, save_probabilities):
                if os.path.exists(path):
                    raise ConfigError("{}: exists; pass --overwrite to replace predictions".format(path))
    os.makedirs(output_dir, exist_ok=True)
    runner, settings, _ = _restore_network(options, model_config, session_config, logger)
    written = []
    started = time.time()
    for case, labels, probabilities in _segment_all(load_cases(), runner, settings, save_probabilities):
        paths = inference.output_paths(output_dir, case.case_id, save_probabilities)
        inference.write_label_map(paths[0], labels, case)
        if probabilities is not None:
            inference.write_probabilities(paths[1], probabilities, case)
        written.append(paths[0])
        logger.message("  wrote {}".format(", ".join(paths)))
    logger.metrics("predict", {"cases": len(written), "output_dir": output_dir,
                               "seconds": round(time.time() - started, 1)})
    return written


def benchmark_report(step_times: List[float], mode: str, *, options, logger: RunLogger,
                     volumes_per_step: int) -> Dict:
    """Log and return ``throughput_<mode>`` (volumes/s, all workers) and latency mean/p90/p95/p99 (ms).

    ``step_times`` are seconds per step of this worker, the first
    ``--warmup_steps`` of them untimed. Workers step in parallel, so the
    global throughput is ``volumes_per_step`` (every worker's) over the mean step time.
    """
    timed = np.asarray(step_times[options.warmup_steps:], dtype=np.float64)
    if timed.size == 0:
        raise ConfigError("--benchmark: --max_steps ({}) must exceed --warmup_steps ({})".format(
            options.max_steps, options.warmup_steps))
    report = {
        "throughput_{}".format(mode): volumes_per_step / float(timed.mean()),
        "latency_{}_mean_ms".format(mode): 1000 * float(timed.mean()),
    }
    for percentile in (90, 95, 99):
        report["latency_{}_p{}_ms".format(mode, percentile)] = 1000 * float(np.percentile(timed, percentile))
    logger.metrics("benchmark", report)
    return report


def benchmark_prediction(load_cases, *, options, model_config, session_config, logger: RunLogger,
                         workers: int) -> Dict:
    """``predict --benchmark``: segment whole volumes, timing each after ``--warmup_steps``; write nothing.

    A step is one volume through the network, blending and arg-max (what
    ``predict`` does between reading a case and writing it); reading and
    normalising the case are outside the timing. The cases ``load_cases()``
    yields are cycled until ``--max_steps`` volumes are done; with
    ``--synthetic_input`` one random volume of ``--eval_crop`` is used instead.
    """
    from unet3d_core.inference import segment

    runner, settings, _ = _restore_network(options, model_config, session_config, logger)
    volume_times: List[float] = []
    try:
        while len(volume_times) < options.max_steps:
            if getattr(options, "synthetic_input", False):
                shape = [int(size) for size in options.eval_crop] + [model_config.in_channels]
                images = [np.random.RandomState(options.seed).standard_normal(shape).astype(np.float32)]
            else:
                images = (case.image for case in load_cases())
            done_before = len(volume_times)
            for image in images:
                began = time.time()
                segment(image, runner, settings)
                volume_times.append(time.time() - began)
                if len(volume_times) >= options.max_steps:
                    break
            if len(volume_times) == done_before:
                raise ConfigError("--benchmark: no cases to predict")
    finally:
        runner.close()
    logger.message("Benchmark: {} volumes, the first {} untimed".format(len(volume_times), options.warmup_steps))
    return benchmark_report(volume_times, "predict", options=options, logger=logger, volumes_per_step=workers)


def _write_json_atomic(path: str, content: Dict) -> None:
    temporary = path + ".partial"
    with open(temporary, "w") as handle:
        json.dump(content, handle, indent=1)
    os.replace(temporary, path)


def _evaluation_is_current(model_dir: str, settings_description: Dict) -> bool:
    """Whether ``eval_results.json`` already scores the newest checkpoint with these inference settings."""
    path = os.path.join(model_dir, EVAL_RESULTS)
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        return False
    return (previous.get("checkpoint_step") == latest_checkpoint(model_dir)[1]
            and previous.get("inference") == settings_description
            and all(name in previous.get("mean", {}) for name in metrics_lib.METRIC_NAMES))


def _run_fold(options, backend, strategy, session_config, reuse_evaluation: bool = False) -> Dict:
    """Run ``options.exec_mode`` for one fold (or one raw prediction folder)."""
    import tensorflow as tf

    from unet3d_core.inference import InferenceSettings

    if strategy.is_chief:
        os.makedirs(options.model_dir, exist_ok=True)
    log_path = os.path.join(options.model_dir, "log.json")
    logger = RunLogger(log_path, enabled=strategy.is_chief)
    logger.parameters({key: value for key, value in sorted(vars(options).items())
                       if isinstance(value, (int, float, str, bool, list, tuple)) or value is None})
    logger.message("unet3d {} on backend '{}' ({}), TensorFlow {}".format(
        options.exec_mode, backend.name, strategy.describe(), tf.__version__))
    results: Dict = {}
    try:
        if options.exec_mode == "predict" and getattr(options, "input_dir", None):
            from unet3d_core.inference import raw_folder_cases

            case_ids, cases = raw_folder_cases(options.input_dir, shard=strategy.shard)
            if options.benchmark:
                results["predict"] = benchmark_prediction(
                    lambda: raw_folder_cases(options.input_dir, shard=strategy.shard)[1], options=options,
                    model_config=model_config_from(options), session_config=session_config, logger=logger,
                    workers=strategy.size)
                return results
            results["predict"] = predict_cases(case_ids, lambda: cases, options=options,
                                               model_config=model_config_from(options),
                                               session_config=session_config, logger=logger)
            return results
        controller = Controller(options=options, backend=backend, strategy=strategy,
                                session_config=session_config, logger=logger)
        if options.exec_mode in ("train", "train_and_evaluate"):
            results["train"] = controller.train()
        if options.exec_mode in ("evaluate", "train_and_evaluate") and not options.benchmark:
            settings = InferenceSettings.from_options(options, controller.model_config.divisor)
            if reuse_evaluation and _evaluation_is_current(options.model_dir, settings.describe()):
                logger.message("{}: already scores the newest checkpoint with these settings; kept".format(
                    os.path.join(options.model_dir, EVAL_RESULTS)))
            else:
                results["evaluate"] = controller.evaluate()
        if options.exec_mode == "predict":
            results["predict"] = controller.predict()
    finally:
        logger.close()
    return results


def _run_all_folds(options, backend, strategy, session_config) -> Dict:
    """``--fold all``: each fold in ``<model_dir>/fold-N`` in turn (each resumable), then the pooled table."""
    import argparse

    if getattr(options, "input_dir", None):
        raise ConfigError("--fold all predicts each fold's held-out cases from the data set; to predict "
                          "--input_dir, point --model_dir at one fold's run (e.g. {}/fold-0)".format(options.model_dir))
    if options.exec_mode == "predict" and options.predict_on == "all":
        raise ConfigError("--fold all with --predict_on all would predict every case five times; "
                          "use --predict_on fold (each case once, by the fold that held it out)")
    folds = Manifest(options.data_dir).num_folds
    results: Dict = {}
    for fold in range(folds):
        fold_options = argparse.Namespace(**vars(options))
        fold_options.fold = fold
        fold_options.model_dir = os.path.join(options.model_dir, "fold-{}".format(fold))
        if strategy.is_chief:
            print("\n[fold {} of 0..{}] {}".format(fold, folds - 1, fold_options.model_dir), flush=True)
        results[fold] = _run_fold(fold_options, backend, strategy, session_config, reuse_evaluation=True)
    if strategy.is_chief and options.exec_mode in ("evaluate", "train_and_evaluate"):
        summary = write_cross_validation(options.model_dir, folds)
        if summary is not None:
            results["cross_validation"] = summary
    return results


def write_cross_validation(model_dir: str, folds: int):
    """Pool ``fold-N/eval_results.json`` into ``cv_results.json`` and ``cv_results.csv``; print the table.

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
    content = {
        "folds": folds,
        "cases": len(cases),
        "naming": dict(metrics_lib.SCHEME_DESCRIPTIONS),
        "pooled": statistics,  # every case once, scored by the fold that held it out
        "mean_of_folds": {name: float(np.mean([per_fold[fold]["mean"][name] for fold in per_fold]))
                          for name in metrics_lib.METRIC_NAMES},
        "per_fold": {str(fold): {"checkpoint_step": report["checkpoint_step"], "cases": len(report["cases"]),
                                 "mean": report["mean"]} for fold, report in per_fold.items()},
    }
    _write_json_atomic(os.path.join(model_dir, CV_RESULTS), content)
    metrics_lib.write_case_table(os.path.join(model_dir, CV_CASES), cases)
    print("\nCross-validation over {} folds, {} cases (pooled):".format(folds, len(cases)))
    print(metrics_lib.format_table(statistics, len(cases)))
    for fold, report in per_fold.items():
        mean = report["mean"]
        print("  fold {}: MeanDice {:.4f}  WholeTumor {:.4f}  Dice WT/TC/ET {:.4f}/{:.4f}/{:.4f}".format(
            fold, mean["MeanDice"], mean["WholeTumor"], mean["Dice_WT"], mean["Dice_TC"], mean["Dice_ET"]))
    print("wrote {} and {}".format(os.path.join(model_dir, CV_RESULTS), os.path.join(model_dir, CV_CASES)))
    return statistics


def run(*, options, backend) -> Dict:
    """Run ``options.exec_mode`` in this process with ``backend``. Returns a dict of results.

    ``--fold all`` runs folds 0..N-1 one after another, each in
    ``<model_dir>/fold-N``; ``predict --input_dir`` needs no data set.
    """
    backend.prepare_environment(options)
    strategy = backend.distributed_strategy(options)
    session_config = backend.session_config(base_session_config(options), options, strategy)
    if not options.data_dir and not (options.exec_mode == "predict" and getattr(options, "input_dir", None)):
        raise ConfigError("--data_dir is required (only 'predict --input_dir RAW_DIR' works without it)")
    try:
        if str(options.fold) == "all":
            return _run_all_folds(options, backend, strategy, session_config)
        return _run_fold(options, backend, strategy, session_config)
    finally:
        strategy.close()
