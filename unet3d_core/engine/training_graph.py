"""The training graph: data -> model -> loss -> learning rate -> optimizer, with the backend's hooks in between.

:func:`build_training_graph` returns a :class:`TrainingGraph`; the session
loop (:mod:`unet3d_core.engine.loop`) runs it. Input arrives through an
initializable iterator (never a one-shot one, which a device that runs
several steps per ``session.run`` refuses), initialised once per session.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from unet3d_core.engine.optimizers import build_optimizer
from unet3d_core.model.config import ModelConfig
from unet3d_core.runtime import Runtime

POLY_EXPONENT = 0.9  # nnU-Net's PolyLRScheduler


def learning_rate_at(step, *, base: float, warmup_steps: int, total_steps: int, schedule: str):
    """Learning rate as a graph op of the global step.

    Linear warm-up from base/warmup to ``base`` over ``warmup_steps``, then
    ``constant`` (the seed recipe's: the reference's intended schedule, without
    its piecewise bug), ``cosine`` decay to zero at ``total_steps``, or ``poly``
    decay ``base x (1 - step/total_steps)^0.9`` (nnU-Net's, over its epochs;
    here over steps, counted from the end of warm-up).
    Being a pure function of the step, it is exact after a resume.
    """
    import tensorflow as tf

    step = tf.cast(step, tf.float32)
    rate = tf.constant(base, tf.float32)
    if schedule == "cosine":
        decay_steps = float(max(total_steps - warmup_steps, 1))
        progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
        rate = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif schedule == "poly":
        decay_steps = float(max(total_steps - warmup_steps, 1))
        progress = tf.clip_by_value((step - warmup_steps) / decay_steps, 0.0, 1.0)
        rate = base * tf.pow(1.0 - progress, POLY_EXPONENT)
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


def variables_bytes(variables) -> int:
    """Bytes the values of ``variables`` take (a checkpoint's size, near enough)."""
    total = 0
    for variable in variables:
        count = 1
        for size in variable.shape.as_list():
            count *= size or 1
        total += count * variable.dtype.base_dtype.size
    return total


@dataclass
class TrainingGraph:
    """The ops and tensors of one training process's graph."""

    graph: object
    global_step: object
    loss: object
    learning_rate: object
    train_op: object
    input_initializer: object
    initializer: object
    saver: object
    broadcast: Optional[object]
    compared_variables: Optional[list]  # multi-rank runs: the weights RankAgreement compares at the end
    stop_request: Optional[object]  # placeholder: 1.0 when this rank wants to stop
    stop_votes: Optional[object]  # the ranks' requests summed inside the step
    step_metrics: Dict[str, object] = field(default_factory=dict)
    parameters: int = 0
    checkpoint_bytes: int = 0
    record_files: List[str] = field(default_factory=list)

    run_op: Optional[object] = None  # set by bind_run_op: what one session.run executes
    step_after: Optional[object] = None  # the global step after run_op

    def bind_run_op(self, run_op) -> None:
        """Set what one run executes (the backend's loop, or train_op) and read the global step after it:
        a plain fetch beside the op could see the value from before the increment."""
        import tensorflow as tf

        if run_op is self.run_op:
            return
        self.run_op = run_op
        with self.graph.as_default(), tf.control_dependencies([run_op]):
            self.step_after = tf.identity(self.global_step)

    def step_fetches(self) -> Dict:
        """What every training ``session.run`` fetches: one list, so a device compiles one training graph
        (TensorBoard's scalars are written on the host from the fetched floats)."""
        fetches = {"run": self.run_op, "loss": self.loss, "step": self.step_after,
                   "learning_rate": self.learning_rate, "metrics": self.step_metrics}
        if self.stop_votes is not None:
            fetches["stop_votes"] = self.stop_votes
        return fetches


def supervised_loss(logits, auxiliary, labels, network, kind: str):
    """The training loss of the full-resolution output and, with deep supervision, of each auxiliary output
    against the labels taken at its resolution (every 2^level-th voxel, nearest neighbour), weighted by
    :func:`~unet3d_core.model.network.deep_supervision_weights`."""
    from unet3d_core.model.losses import region_loss, segmentation_loss
    from unet3d_core.model.network import deep_supervision_weights

    def one(output, target):
        if network.target == "regions":
            return region_loss(output, target, network.regions, network.num_classes, kind)
        return segmentation_loss(output, target, network.num_classes, kind)

    if not auxiliary:
        return one(logits, labels)
    weights = deep_supervision_weights(len(auxiliary) + 1)
    total = weights[0] * one(logits, labels)
    for level, (output, weight) in enumerate(zip(auxiliary, weights[1:]), start=1):
        step = 2 ** level
        total += weight * one(output, labels[:, ::step, ::step, ::step])
    return total


def build_training_graph(config, *, record_files: List[str], start_step: int, total_steps: int,
                         runtime: Runtime) -> TrainingGraph:
    """Build one process's training graph.

    Args:
        config: the fold's :class:`unet3d_core.engine.run_config.RunConfig`.
        record_files: this rank's shard of the training records.
        start_step: the step the run resumes from (the input continues its sample sequence there).
        total_steps: steps per worker (the learning-rate schedule's end).
        runtime: the backend's :class:`unet3d_core.runtime.Runtime` (strategy, layer ops, mixed precision).
    """
    import tensorflow as tf

    from unet3d_core.data.input_pipeline import training_dataset
    from unet3d_core.model.network import build_unet3d, count_parameters

    tf1 = tf.compat.v1
    training, network = config.training, config.network
    strategy, layer_ops = runtime.strategy, runtime.layer_ops
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(training.seed)
        global_step = tf1.train.get_or_create_global_step()
        seed = training.seed + 7919 * strategy.rank
        if training.synthetic_input:
            dataset = synthetic_training_dataset(batch_size=training.batch_size, crop_shape=config.input_shape,
                                                 model_config=network, seed=seed)
        else:
            dataset = training_dataset(record_files, batch_size=training.batch_size, crop_shape=config.input_shape,
                                       augmentation=training.augmentation, seed=seed,
                                       oversample_foreground=training.oversample_foreground,
                                       elastic_probability=training.elastic_probability,
                                       first_sample=start_step * training.batch_size, cache=training.cache,
                                       channels=network.in_channels, intensity=config.intensity)
        iterator = tf1.data.make_initializable_iterator(dataset)
        images, labels = iterator.get_next()
        if network.deep_supervision:
            logits, auxiliary = build_unet3d(images, network, training=True, ops=layer_ops, auxiliary=True)
        else:
            logits, auxiliary = build_unet3d(images, network, training=True, ops=layer_ops), []
        loss = supervised_loss(logits, auxiliary, labels, network, training.loss)
        base_rate = training.learning_rate * (strategy.size if training.lr_scaling == "linear" else 1)
        learning_rate = learning_rate_at(global_step, base=base_rate, warmup_steps=training.lr_warmup_steps,
                                         total_steps=total_steps, schedule=training.lr_schedule)
        optimizer = build_optimizer(name=training.optimizer, learning_rate=learning_rate, momentum=training.momentum,
                                    weight_decay=training.weight_decay, grad_clip=training.grad_clip)
        wrapped = runtime.wrap_optimizer(optimizer)
        optimizer = wrapped.optimizer if wrapped.reduces_across_workers else strategy.wrap_optimizer(wrapped.optimizer)
        with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.minimize(loss, global_step=global_step)
        step_metrics = dict(wrapped.step_metrics())
        stop_request = stop_votes = compared = None
        if strategy.size > 1:
            # Stop agreement rides on the step's own run: each rank feeds its request,
            # the sum comes back with the loss; no extra round trip.
            stop_request = tf1.placeholder_with_default(tf.constant(0.0, tf.float32), [], name="stop_request")
            stop_votes = strategy.allreduce_sum_tensor(stop_request)
            compared = tf1.trainable_variables()
        built = TrainingGraph(
            graph=graph, global_step=global_step, loss=loss, learning_rate=learning_rate, train_op=train_op,
            input_initializer=iterator.initializer, initializer=tf1.global_variables_initializer(),
            saver=tf1.train.Saver(max_to_keep=training.keep_checkpoints),
            broadcast=strategy.broadcast_initial_variables_op(), compared_variables=compared,
            stop_request=stop_request, stop_votes=stop_votes, step_metrics=step_metrics,
            parameters=count_parameters(tf1.trainable_variables()),
            checkpoint_bytes=variables_bytes(tf1.global_variables()), record_files=list(record_files))
        # The usual run op, bound before any session touches the graph; a backend that
        # loops on the device binds its own op later (bind_run_op).
        built.bind_run_op(train_op)
    return built
