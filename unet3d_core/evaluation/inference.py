"""Whole-volume inference: sliding windows or the seed's centre crop, mirroring, post-processing.

Two ways to cover a volume (``--inference_mode``):

- ``sliding`` (the default): windows of ``--window_shape`` (the training crop
  unless set) placed every ``window x (1 - --overlap)`` voxels along each
  axis, the last one flush with the far edge; their softmax outputs are
  blended with a Gaussian importance map (``--blend gaussian``, sigma 1/8 of
  the window per axis, so voxels near a window's centre count most) or
  uniformly (``--blend constant``). Windows run ``--inference_batch_size`` at
  a time. The network sees inputs of the size it was trained on, and memory
  is bounded by the window batch, not by the volume.
- ``crop``: the seed's evaluation: one pass over the centre crop
  ``--eval_crop`` (224x224x155 on BraTS) zero-padded to the network's
  multiple; voxels outside the crop are background.

``--tta`` averages the softmax over the 8 combinations of flipping the x, y
and z axes (8 times the work). ``--min_et_component_voxels N`` relabels
enhancing-tumour connected components (26-connected) smaller than N voxels
as tumour core (label 1), a common BraTS post-processing; 0 (default) is off.

The volumes come in and the label maps go out through
:mod:`unet3d_core.data.volumes`; the network is restored from a checkpoint by
:class:`NetworkRunner`, and from the checkpoint ``--checkpoint`` selects by
:func:`restore_network`.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from unet3d_core.data.records import DEFAULT_INTENSITY
from unet3d_core.errors import ConfigError
from unet3d_core.model.checkpoints import (
    CHECKPOINT_PREFIX,
    best_checkpoint,
    latest_checkpoint,
    restore_checkpoint,
    select_checkpoint,
)
from unet3d_core.model.run_folder import network_record, write_run

INFERENCE_MODES = ("sliding", "crop")
BLENDS = ("gaussian", "constant")
GAUSSIAN_SIGMA_FRACTION = 1.0 / 8
ENHANCING = 3  # internal label of enhancing tumour
CORE = 1  # internal label enhancing components are relabelled to

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class InferenceSettings:
    """How a volume is covered and post-processed; see the module docstring."""

    mode: str = "sliding"
    window_shape: Tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    blend: str = "gaussian"
    mirror: bool = False
    batch_size: int = 1
    eval_crop: Tuple[int, int, int] = (224, 224, 155)
    divisor: int = 32
    min_et_component_voxels: int = 0
    # --target regions: (output index, label) painted outermost first (layouts.region_painting); empty: the
    # outputs are a softmax over labels and the label is their arg-max.
    painting: Tuple[Tuple[int, int], ...] = ()

    def validate(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ConfigError("--inference_mode: '{}' is not one of {}".format(self.mode, ", ".join(INFERENCE_MODES)))
        if self.blend not in BLENDS:
            raise ConfigError("--blend: '{}' is not one of {}".format(self.blend, ", ".join(BLENDS)))
        if self.mode == "sliding" and any(size % self.divisor for size in self.window_shape):
            raise ConfigError("--window_shape {}: every size must be a multiple of {} (the network's "
                              "down-sampling)".format(" ".join(map(str, self.window_shape)), self.divisor))
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("--overlap must be in [0, 1), got {}".format(self.overlap))
        if self.batch_size < 1:
            raise ConfigError("--inference_batch_size must be >= 1, got {}".format(self.batch_size))
        if self.min_et_component_voxels < 0:
            raise ConfigError("--min_et_component_voxels must be >= 0, got {}".format(self.min_et_component_voxels))

    def describe(self) -> Dict:
        """The settings as JSON-friendly values, recorded with every result."""
        described = {"mode": self.mode, "tta": self.mirror,
                     "min_et_component_voxels": self.min_et_component_voxels}
        if self.painting:
            described["target"] = "regions"
        if self.mode == "sliding":
            described.update(window_shape=list(self.window_shape), overlap=self.overlap, blend=self.blend)
        else:
            described.update(eval_crop=list(self.eval_crop))
        return described


# ------------------------------------------------------------------ windows
def window_starts(size: int, window: int, overlap: float) -> List[int]:
    """Start positions of windows covering ``size`` voxels, evenly spread, the last flush with the end.

    The step between windows is at most ``window x (1 - overlap)``; a size
    not larger than the window gets one window at 0.
    """
    if size <= window:
        return [0]
    step = max(int(window * (1.0 - overlap)), 1)
    count = int(np.ceil((size - window) / float(step))) + 1
    return sorted(set(int(round(position)) for position in np.linspace(0, size - window, count)))


def gaussian_importance(window_shape: Sequence[int], sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION) -> np.ndarray:
    """Weights peaking at 1 in the window's centre, Gaussian along each axis, never 0."""
    weights = np.ones([int(size) for size in window_shape], dtype=np.float64)
    for axis, size in enumerate(window_shape):
        position = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        profile = np.exp(-0.5 * (position / (sigma_fraction * size)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = size
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    # Keep every voxel's weight positive so a voxel at a window's corner still counts.
    return np.maximum(weights, weights[weights > 0].min()).astype(np.float32)


def mirror_axes(mirror: bool) -> List[Tuple[int, ...]]:
    """Spatial axes (of a batch [n, x, y, z, c]) to flip, one tuple per test-time augmentation pass."""
    if not mirror:
        return [()]
    spatial = (1, 2, 3)
    return [axes for count in range(4) for axes in itertools.combinations(spatial, count)]


def run_mirrored(batch: np.ndarray, run_batch: RunBatch, mirror: bool) -> np.ndarray:
    """Softmax of ``batch`` averaged over the mirroring passes (one pass without ``mirror``)."""
    passes = mirror_axes(mirror)
    total = None
    for axes in passes:
        flipped = np.flip(batch, axes) if axes else batch
        output = run_batch(np.ascontiguousarray(flipped))
        output = np.flip(output, axes) if axes else output
        total = output.astype(np.float32) if total is None else total + output
    return total / float(len(passes))


def _pad_end(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    padding = [(0, max(int(target) - size, 0)) for size, target in zip(image.shape[:3], shape)]
    if not any(after for _, after in padding):
        return image
    return np.pad(image, padding + [(0, 0)] * (image.ndim - 3), mode="constant")


def sliding_window_probabilities(image: np.ndarray, run_batch: RunBatch, settings: InferenceSettings) -> np.ndarray:
    """Blended softmax over windows covering ``image``.

    Args:
        image: float32 [x, y, z, channels], normalised.
        run_batch: maps float32 [n, wx, wy, wz, channels] to softmax [n, wx, wy, wz, classes].
    Returns:
        float32 [x, y, z, classes], summing to 1 over classes.
    """
    shape = image.shape[:3]
    window = settings.window_shape
    padded = _pad_end(image, window)  # a volume smaller than the window is zero-padded, as in training
    starts = [window_starts(size, size_w, settings.overlap) for size, size_w in zip(padded.shape[:3], window)]
    boxes = [tuple(slice(start, start + size_w) for start, size_w in zip(corner, window))
             for corner in itertools.product(*starts)]
    weights = gaussian_importance(window) if settings.blend == "gaussian" else np.ones(window, np.float32)
    accumulated = None
    weight_sum = np.zeros(padded.shape[:3], dtype=np.float32)
    for first in range(0, len(boxes), settings.batch_size):
        chosen = boxes[first:first + settings.batch_size]
        batch = np.stack([padded[box] for box in chosen])
        probabilities = run_mirrored(batch, run_batch, settings.mirror)
        if accumulated is None:
            accumulated = np.zeros(padded.shape[:3] + probabilities.shape[-1:], dtype=np.float32)
        for box, window_probabilities in zip(chosen, probabilities):
            accumulated[box] += window_probabilities * weights[..., np.newaxis]
            weight_sum[box] += weights
    accumulated /= weight_sum[..., np.newaxis]
    return accumulated[:shape[0], :shape[1], :shape[2]]


def centre_crop_probabilities(image: np.ndarray, run_batch: RunBatch, settings: InferenceSettings) -> np.ndarray:
    """The seed's evaluation: one pass over the centre crop, padded to the network's multiple."""
    shape = np.asarray(image.shape[:3])
    crop = np.minimum(shape, settings.eval_crop)
    offsets = (shape - crop) // 2
    box = tuple(slice(int(start), int(start + size)) for start, size in zip(offsets, crop))
    padded_shape = [int(-(-size // settings.divisor) * settings.divisor) for size in crop]
    batch = _pad_end(image[box], padded_shape)[np.newaxis]
    probabilities = run_mirrored(batch, run_batch, settings.mirror)[0]
    full = np.zeros(tuple(shape) + probabilities.shape[-1:], dtype=np.float32)
    if not settings.painting:
        full[..., 0] = 1.0  # outside the crop: background (region outputs: every region 0)
    full[box] = probabilities[:crop[0], :crop[1], :crop[2]]
    return full


def predict_probabilities(image: np.ndarray, run_batch: RunBatch, settings: InferenceSettings) -> np.ndarray:
    """Softmax probabilities [x, y, z, classes] of a whole normalised volume."""
    if settings.mode == "crop":
        return centre_crop_probabilities(image, run_batch, settings)
    return sliding_window_probabilities(image, run_batch, settings)


def remove_small_enhancing(labels: np.ndarray, min_voxels: int) -> np.ndarray:
    """Relabel enhancing-tumour components (26-connected) of fewer than ``min_voxels`` voxels as core."""
    if min_voxels <= 0:
        return labels
    from scipy import ndimage

    components, count = ndimage.label(labels == ENHANCING, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return labels
    sizes = np.bincount(components.ravel())
    small = sizes < min_voxels
    small[0] = False
    labels = labels.copy()
    labels[small[components]] = CORE
    return labels


def labels_of(probabilities: np.ndarray, painting: Sequence[Tuple[int, int]] = ()) -> np.ndarray:
    """Internal labels (uint8) of network outputs: the arg-max of label probabilities, or for region
    outputs the label of the innermost region above 0.5 (regions painted outermost first)."""
    if not painting:
        return np.argmax(probabilities, axis=-1).astype(np.uint8)
    labels = np.zeros(probabilities.shape[:-1], np.uint8)
    for index, label in painting:
        labels[probabilities[..., index] > 0.5] = label
    return labels


def final_labels(probabilities: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """The label map written for a volume's probabilities: decoded, then post-processed."""
    return remove_small_enhancing(labels_of(probabilities, settings.painting), settings.min_et_component_voxels)


def segment(image: np.ndarray, run_batch: RunBatch, settings: InferenceSettings,
            keep_probabilities: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Internal label map (uint8) of a normalised volume, and its probabilities when asked for."""
    probabilities = predict_probabilities(image, run_batch, settings)
    return final_labels(probabilities, settings), (probabilities if keep_probabilities else None)


# ------------------------------------------------------------------ network
def output_probabilities(logits, model_config):
    """The network's probabilities: softmax over labels, or one sigmoid per region (``--target regions``)."""
    import tensorflow as tf

    if model_config.target == "regions":
        return tf.sigmoid(logits)
    return tf.nn.softmax(logits, axis=-1)


class NetworkRunner:
    """The network restored from a checkpoint, fed whole batches of any spatial size (a multiple of the divisor)."""

    def __init__(self, model_config, checkpoint: str, session_config=None, ops=None):
        import tensorflow as tf

        from unet3d_core.model.network import build_unet3d  # imports TensorFlow

        tf1 = tf.compat.v1
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf1.placeholder(tf.float32, [None, None, None, None, model_config.in_channels],
                                          name="images")
            logits = build_unet3d(self.images, model_config, training=False, ops=ops)
            self.probabilities = output_probabilities(logits, model_config)
            self.saver = tf1.train.Saver()
            self.graph.finalize()
            self.session = tf1.Session(graph=self.graph, config=session_config)
            # Inside the graph's context: under TensorFlow 2 a restore outside it takes the eager path and fails.
            restore_checkpoint(self.saver, self.session, checkpoint)
        self.checkpoint = checkpoint

    def restore(self, checkpoint: str) -> None:
        """Load another checkpoint of the same network into this graph (no rebuild, no recompile)."""
        with self.graph.as_default():
            restore_checkpoint(self.saver, self.session, checkpoint)
        self.checkpoint = checkpoint

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self.probabilities, {self.images: batch})

    def close(self) -> None:
        self.session.close()


def restore_network(config, session_config, layer_ops, logger):
    """The network of ``config`` restored from the checkpoint ``--checkpoint`` selects (the best one where the
    run has one, else the newest), and that step; ``runner.checkpoint`` is its path."""
    if latest_checkpoint(config.model_dir)[0] is None and best_checkpoint(config.model_dir)[0] is None:
        raise ConfigError("--model_dir {}: no checkpoint to evaluate or predict with; train first".format(
            config.model_dir))
    checkpoint, step, kind = select_checkpoint(config.model_dir, config.checkpoint)
    runner = NetworkRunner(config.network, checkpoint, session_config, ops=layer_ops)
    described = ", ".join("{} {}".format(key, value) for key, value in config.inference.describe().items())
    logger.message("Restored {} (step {}, {}); inference: {}".format(
        checkpoint, step, {"best": "the best checkpoint", "latest": "the newest checkpoint"}.get(kind, "--checkpoint"),
        described))
    return runner, step


def checkpoint_name(config, runner) -> str:
    """The restored checkpoint, relative to the run folder (``best/model.ckpt-300``, ``model.ckpt-500``)."""
    return os.path.relpath(runner.checkpoint, config.model_dir).replace(os.sep, "/")


def initialize_checkpoint(model_dir: str, model_config, seed: int = 0, ops=None, input_shape=None) -> str:
    """Write a step-0 checkpoint of freshly initialised weights and its ``run.json`` to ``model_dir``;
    returns the checkpoint's path.

    For timing inference and for tests: the prediction path runs unchanged
    on it, no training needed. Raw inputs are scaled the default way (records.DEFAULT_INTENSITY).
    """
    import tensorflow as tf

    from unet3d_core.model.network import build_unet3d  # imports TensorFlow

    tf1 = tf.compat.v1
    os.makedirs(model_dir, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, None, None, None, model_config.in_channels])
        build_unet3d(images, model_config, training=False, ops=ops)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            path = saver.save(session, os.path.join(model_dir, CHECKPOINT_PREFIX), global_step=0)
    write_run(model_dir, network=network_record(model_config, input_shape), data={"intensity": DEFAULT_INTENSITY},
              training={},
              backend="none (initialised, not trained)")
    return path
