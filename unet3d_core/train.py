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
import re
import time
from typing import Dict, Iterator, List, Tuple

import numpy as np

from unet3d_core import metrics as metrics_lib
from unet3d_core.config import ModelConfig
from unet3d_core.errors import ConfigError, UNet3DError
from unet3d_core.logger import RunLogger
from unet3d_core.records import Manifest

CHECKPOINT_PREFIX = "model.ckpt"


class TrainingError(UNet3DError):
    """Training cannot go on (e.g. the loss became NaN); the last checkpoint is intact."""


def model_config_from(options) -> ModelConfig:
    config = ModelConfig(base_filters=options.base_filters, max_filters=options.max_filters,
                         depth=options.depth, norm=options.norm)
    config.validate()
    return config


def steps_per_worker(max_steps: int, workers: int) -> int:
    """The seed's rule: ``--max_steps`` is shared out over the workers (16,000 / 8 = 2,000 each)."""
    return int(math.ceil(max_steps / float(workers)))


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


def latest_checkpoint(model_dir: str):
    """Path and step of the newest complete checkpoint in ``model_dir``, or (None, 0)."""
    import tensorflow as tf

    path = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
    if path is None:
        return None, 0
    match = re.search(r"-(\d+)$", path)
    return path, int(match.group(1)) if match else 0


def base_session_config(options):
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    return config


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
        checkpoint, start_step = (None, 0) if options.benchmark else latest_checkpoint(options.model_dir)
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
            dataset = training_dataset(files, batch_size=options.batch_size, crop_shape=options.input_shape,
                                       augment=options.augment, seed=options.seed + 7919 * strategy.rank,
                                       first_sample=start_step * options.batch_size)
            images, labels = tf1.data.make_one_shot_iterator(dataset).get_next()
            logits = build_unet3d(images, self.model_config, training=True)
            loss = segmentation_loss(logits, labels, self.model_config.num_classes, options.loss)
            learning_rate = learning_rate_at(global_step, base=options.learning_rate,
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
            parameters = count_parameters(tf1.trainable_variables())
            write = strategy.is_chief and not options.benchmark
            summary_writer = tf1.summary.FileWriter(options.model_dir, graph) if write else None
            graph.finalize()

        self.logger.message("Training on {} case(s) of fold {} ({} on this worker), {} parameters, "
                            "steps {}..{} of {} per worker, batch {} x {} worker(s)".format(
                                len(self.training_cases), options.fold, len(shard), parameters,
                                start_step + 1, total_steps, total_steps, options.batch_size, strategy.size))
        step_times: List[float] = []
        losses: List[float] = []
        last_saved = start_step
        with tf1.Session(graph=graph, config=self.session_config) as session:
            if checkpoint:
                saver.restore(session, checkpoint)
                rate = session.run(learning_rate)
                self.logger.message("Resuming from {} at step {} (learning rate {:.3g})".format(
                    checkpoint, start_step, rate))
            else:
                session.run(initializer)
            if broadcast is not None:
                session.run(broadcast)
            step = start_step
            window_start = time.time()
            while step < total_steps:
                began = time.time()
                want_summary = summary_writer is not None and (step + 1) % options.log_every == 0
                fetches = [train_op, loss] + ([summaries] if want_summary else [])
                results = session.run(fetches)
                step_times.append(time.time() - began)
                # Counted here rather than fetched: a fetch of global_step beside
                # train_op may read the value from before the increment.
                loss_value, step = float(results[1]), step + 1
                if not math.isfinite(loss_value):
                    raise TrainingError("loss is {} at step {}; stopping without saving (the last checkpoint, "
                                        "step {}, is intact). Try a lower --learning_rate".format(
                                            loss_value, step, last_saved))
                losses.append(loss_value)
                if want_summary:
                    summary_writer.add_summary(results[2], step)
                if step % options.log_every == 0 or step == total_steps:
                    elapsed = time.time() - window_start
                    count = len(losses)
                    self.logger.metrics(step, {
                        "loss": float(np.mean(losses)),
                        "learning_rate": float(session.run(learning_rate)),
                        "volumes_per_second": count * options.batch_size * strategy.size / max(elapsed, 1e-9),
                    })
                    losses, window_start = [], time.time()
                if write and (step % options.checkpoint_every == 0 or step == total_steps):
                    saver.save(session, os.path.join(options.model_dir, CHECKPOINT_PREFIX), global_step=step)
                    last_saved = step
        if summary_writer is not None:
            summary_writer.close()
        result = {"step": step}
        if options.benchmark:
            result.update(self._benchmark_report(step_times, "train"))
        return result

    def _benchmark_report(self, step_times: List[float], mode: str) -> Dict:
        timed = np.asarray(step_times[self.options.warmup_steps:], dtype=np.float64)
        if timed.size == 0:
            raise ConfigError("--benchmark: --max_steps ({}) must exceed --warmup_steps ({})".format(
                self.options.max_steps, self.options.warmup_steps))
        batch = self.options.batch_size * self.strategy.size
        report = {
            "throughput_{}".format(mode): batch / float(timed.mean()),
            "latency_{}_mean_ms".format(mode): 1000 * float(timed.mean()),
        }
        for percentile in (90, 95, 99):
            report["latency_{}_p{}_ms".format(mode, percentile)] = 1000 * float(np.percentile(timed, percentile))
        self.logger.metrics("benchmark", report)
        return report

    # ------------------------------------------------------ inference helpers
    def _inference(self, cases: List[Dict]) -> Iterator[Tuple[Dict, np.ndarray, np.ndarray]]:
        """Yield (case, internal prediction, internal label) over the full volume of each case."""
        import tensorflow as tf

        from unet3d_core.input_pipeline import evaluation_dataset
        from unet3d_core.model import build_unet3d

        tf1 = tf.compat.v1
        checkpoint, step = latest_checkpoint(self.options.model_dir)
        if checkpoint is None:
            raise ConfigError("--model_dir {}: no checkpoint to evaluate or predict with; train first".format(
                self.options.model_dir))
        files = [self.manifest.record_path(case) for case in cases]
        graph = tf.Graph()
        with graph.as_default():
            dataset = evaluation_dataset(files, eval_crop=self.options.eval_crop,
                                         divisor=self.model_config.divisor)
            batch = tf1.data.make_one_shot_iterator(dataset).get_next()
            logits = build_unet3d(batch["image"], self.model_config, training=False)
            prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)[0]
            saver = tf1.train.Saver()
        self.logger.message("Restored {} (step {})".format(checkpoint, step))
        with tf1.Session(graph=graph, config=self.session_config) as session:
            saver.restore(session, checkpoint)
            for case in cases:
                result, padded = session.run([batch, prediction])
                offsets, crop = result["offsets"], result["crop"]
                full = np.zeros(result["label"].shape, dtype=np.uint8)
                full[offsets[0]:offsets[0] + crop[0], offsets[1]:offsets[1] + crop[1],
                     offsets[2]:offsets[2] + crop[2]] = padded[:crop[0], :crop[1], :crop[2]]
                yield case, full, result["label"]

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> Dict:
        """Score every validation case exactly once (sharded over ranks), whole volume."""
        cases = self.validation_cases
        if not cases:
            raise ConfigError("fold {} has no labelled validation cases".format(self.options.fold))
        positions = {case["id"]: index for index, case in enumerate(cases)}
        table = np.zeros((len(cases), len(metrics_lib.METRIC_NAMES) + 1), dtype=np.float64)
        started = time.time()
        for case, prediction, label in self._inference(self.strategy.shard(cases)):
            values = metrics_lib.case_metrics(prediction, label)
            row = positions[case["id"]]
            table[row, :-1] = [values[name] for name in metrics_lib.METRIC_NAMES]
            table[row, -1] = 1.0  # evaluated-once marker
            self.logger.message("  {}: WholeTumor {:.4f}  MeanDice {:.4f}".format(
                case["id"], values["WholeTumor"], values["MeanDice"]))
        table = self.strategy.allreduce_sum(table)
        if not np.all(table[:, -1] == 1.0):
            raise UNet3DError("evaluation covered some validation cases {} times".format(table[:, -1].tolist()))
        per_case = [dict(zip(metrics_lib.METRIC_NAMES, row[:-1].tolist())) for row in table]
        summary = metrics_lib.summarize(per_case)
        self.logger.metrics("eval", dict(summary, cases=len(cases),
                                         seconds=round(time.time() - started, 1)))
        if self.strategy.is_chief:
            report = {
                "fold": self.options.fold,
                "checkpoint_step": latest_checkpoint(self.options.model_dir)[1],
                "naming": {"seed": "TumorCore=label 1, PeritumoralEdema=label 2, EnhancingTumor=label 4, "
                                   "MeanDice=mean of the three, WholeTumor=labels 1,2,4",
                           "brats": "Dice_WT=labels 1,2,4; Dice_TC=labels 1,4; Dice_ET=label 4"},
                "mean": summary,
                "cases": {case["id"]: values for case, values in zip(cases, per_case)},
            }
            _write_json_atomic(os.path.join(self.options.model_dir, "eval_results.json"), report)
        return summary

    # -------------------------------------------------------------- prediction
    def predict(self) -> List[str]:
        """Write one NIfTI label map per case in the source's geometry and labels."""
        import nibabel

        if self.options.predict_on == "all":
            cases = list(self.manifest.cases)
        else:
            cases = [case for case in self.manifest.cases if case["fold"] == self.options.fold]
        output_dir = self.options.output_dir or os.path.join(self.options.model_dir, "predictions")
        os.makedirs(output_dir, exist_ok=True)
        inverse = {target: source for source, target in self.manifest.label_map.items()}
        lookup = np.zeros(max(inverse) + 1, dtype=np.uint8)
        for target, source in inverse.items():
            lookup[target] = source
        written = []
        for case, prediction, _ in self._inference(self.strategy.shard(cases)):
            path = os.path.join(output_dir, case["id"] + ".nii.gz")
            if os.path.exists(path) and not self.options.overwrite:
                raise ConfigError("{}: exists; pass --overwrite to replace predictions".format(path))
            image = nibabel.Nifti1Image(lookup[prediction], np.asarray(case["affine"]))
            image.header.set_zooms(case["spacing"])
            image.header.set_xyzt_units("mm")
            temporary = os.path.join(output_dir, ".{}.partial.nii.gz".format(case["id"]))
            nibabel.save(image, temporary)
            os.replace(temporary, path)
            written.append(path)
            self.logger.message("  wrote {}".format(path))
        self.logger.metrics("predict", {"cases": len(written), "output_dir": output_dir})
        return written


def _write_json_atomic(path: str, content: Dict) -> None:
    temporary = path + ".partial"
    with open(temporary, "w") as handle:
        json.dump(content, handle, indent=1)
    os.replace(temporary, path)


def run(*, options, backend) -> Dict:
    """Run ``options.exec_mode`` in this process with ``backend``. Returns a dict of results."""
    import tensorflow as tf

    backend.prepare_environment(options)
    strategy = backend.distributed_strategy(options)
    session_config = backend.session_config(base_session_config(options), options, strategy)
    if strategy.is_chief:
        os.makedirs(options.model_dir, exist_ok=True)
    log_path = os.path.join(options.model_dir, "log.json")
    logger = RunLogger(log_path, enabled=strategy.is_chief)
    logger.parameters({key: value for key, value in sorted(vars(options).items())
                       if isinstance(value, (int, float, str, bool, list, tuple)) or value is None})
    logger.message("unet3d {} on backend '{}' ({}), TensorFlow {}".format(
        options.exec_mode, backend.name, strategy.describe(), tf.__version__))
    controller = Controller(options=options, backend=backend, strategy=strategy,
                            session_config=session_config, logger=logger)
    results: Dict = {}
    try:
        if options.exec_mode in ("train", "train_and_evaluate"):
            results["train"] = controller.train()
        if options.exec_mode in ("evaluate", "train_and_evaluate") and not options.benchmark:
            results["evaluate"] = controller.evaluate()
        if options.exec_mode == "predict":
            results["predict"] = controller.predict()
    finally:
        logger.close()
    return results
