"""The ``best`` checkpoint: a pseudo-Dice on fixed validation patches, smoothed over training.

nnU-Net's way of choosing the checkpoint to keep: every ``--validate_every``
steps (and at the last step) the chief scores the network on a fixed set of
``--validation_patches`` patches of the fold's validation cases, cut once at
the start of training. The score is a pseudo-Dice: true positives, false
positives and false negatives summed over all patches, one Dice per foreground
class (``--target labels``) or region (``--target regions``), then their mean.
An exponential moving average (``ema = 0.9 ema + 0.1 score``; the first score
starts it) smooths out the noise of a few patches; whenever it rises above its
best so far, the checkpoint of that step is copied to ``MODEL_DIR/best/``,
which the rotation of ``--keep_checkpoints`` never touches.

The patches depend only on the data set and the fold (not on ``--seed``):
cases evenly spread over the validation set, each patch the size of the
training crop, every other one centred on a voxel of a randomly chosen
foreground class present in the case (the rest anywhere), all drawn from a
fixed random state.

The network runs in its inference form on a graph and session of its own,
restored from the checkpoint just written at that step: the training graph
and its fetch lists stay as they are (a device that compiles one graph per
fetch list compiles the validation graph once, its input shape being fixed),
and with several workers only the chief validates; the others wait for it at
their next step's gradient exchange.

``MODEL_DIR/validation.json`` holds every validation (step, pseudo-Dice, EMA)
and the best step. It is written at each validation, before the copy, so a
resumed run continues the same average and picks the same best as an
uninterrupted one: validations after the checkpoint it resumes from are
dropped, and a best recorded but not yet copied is copied then.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from unet3d_core.data import volumes
from unet3d_core.engine.listeners import StepListener, StepResult, crosses
from unet3d_core.errors import ConfigError
from unet3d_core.evaluation.inference import NetworkRunner
from unet3d_core.folders import write_json_atomic
from unet3d_core.model.checkpoints import CHECKPOINT_PREFIX, best_checkpoint, is_complete, keep_as_best, save_checkpoint

VALIDATION_FILE = "validation.json"
EMA_DECAY = 0.9  # nnU-Net: ema = 0.9 * ema + 0.1 * new
DEFAULT_PATCHES = 16
PATCH_SEED = 1234  # the patches depend on the data and the fold only


# ------------------------------------------------------------------ patches
def case_order(cases: int, patches: int) -> List[int]:
    """Which validation case each patch comes from: cases evenly spread, each used once while there are enough."""
    if patches <= cases:
        return [(index * cases) // patches for index in range(patches)]
    return [index % cases for index in range(patches)]


def patch_start(label: np.ndarray, crop_shape: Sequence[int], foreground: bool,
                random_state: np.random.RandomState) -> Tuple[int, ...]:
    """Start corner of a patch of ``crop_shape`` in ``label`` (already at least that large).

    ``foreground``: centred on a random voxel of a random foreground class
    present (nnU-Net's oversampling, one class then one voxel, so small
    classes get patches too); without foreground, anywhere.
    """
    room = [size - crop for size, crop in zip(label.shape, crop_shape)]
    classes = np.unique(label[label > 0]) if foreground else []
    if len(classes):
        chosen = classes[random_state.randint(len(classes))]
        voxels = np.argwhere(label == chosen)
        centre = voxels[random_state.randint(len(voxels))]
        return tuple(int(min(max(position - crop // 2, 0), limit))
                     for position, crop, limit in zip(centre, crop_shape, room))
    return tuple(int(random_state.randint(limit + 1)) for limit in room)


def _pad_to(volume: np.ndarray, crop_shape: Sequence[int]) -> np.ndarray:
    padding = [(0, max(crop - size, 0)) for size, crop in zip(volume.shape[:3], crop_shape)]
    padding += [(0, 0)] * (volume.ndim - 3)
    return np.pad(volume, padding) if any(after for _, after in padding) else volume


def cut_patches(cases: Iterable[Tuple[np.ndarray, np.ndarray]], order: List[int], crop_shape: Sequence[int],
                seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """The patches of ``order`` (a case index per patch) from ``cases``, (image, label) in index order.

    Returns float32 images [n, x, y, z, channels] and int32 labels [n, x, y, z];
    patch i is foreground-centred when i is even.
    """
    crop_shape = [int(size) for size in crop_shape]
    random_state = np.random.RandomState(seed)
    images: List[Optional[np.ndarray]] = [None] * len(order)
    labels: List[Optional[np.ndarray]] = [None] * len(order)
    wanted = sorted(set(order))
    for case_index, (image, label) in zip(wanted, cases):
        image, label = _pad_to(image, crop_shape), _pad_to(label, crop_shape)
        for patch, source in enumerate(order):
            if source != case_index:
                continue
            start = patch_start(label, crop_shape, patch % 2 == 0, random_state)
            box = tuple(slice(begin, begin + crop) for begin, crop in zip(start, crop_shape))
            images[patch] = np.ascontiguousarray(image[box], dtype=np.float32)
            labels[patch] = np.ascontiguousarray(label[box], dtype=np.int32)
    return np.stack(images), np.stack(labels)


def validation_patches(config, *, count: int, session_config=None) -> Tuple[np.ndarray, np.ndarray]:
    """``count`` fixed patches of the training crop's size from the validation cases of ``config``'s fold."""
    manifest = config.manifest
    _, cases = manifest.split(config.fold)
    cases = [case for case in cases if case.get("has_label", True)]
    order = case_order(len(cases), count)
    chosen = [cases[index] for index in sorted(set(order))]
    loaded = ((case.image, case.label) for case in volumes.record_cases(manifest, chosen, session_config))
    return cut_patches(loaded, order, config.input_shape, PATCH_SEED + config.fold)


# ------------------------------------------------------------------ score
def pseudo_dice(probabilities: np.ndarray, labels: np.ndarray, network) -> Tuple[float, List[float]]:
    """Mean and per-class Dice of the patches' outputs, counts pooled over all patches (NaN: class absent
    from truth and prediction alike; the mean skips it, and is NaN when every class is absent)."""
    if network.target == "regions":
        pairs = [(probabilities[..., index] > 0.5, np.isin(labels, list(members)))
                 for index, (_, members) in enumerate(network.regions)]
    else:
        predicted = np.argmax(probabilities, axis=-1)
        pairs = [(predicted == label, labels == label) for label in range(1, network.num_classes)]
    scores = []
    for prediction, truth in pairs:
        overlap = float(np.count_nonzero(prediction & truth))
        total = float(np.count_nonzero(prediction) + np.count_nonzero(truth))
        scores.append(2.0 * overlap / total if total else float("nan"))
    present = [score for score in scores if not math.isnan(score)]
    return (float(np.mean(present)) if present else float("nan")), scores


@dataclass
class ValidationState:
    """The validations so far, the smoothed score and the best step (the content of ``validation.json``)."""

    history: List[Dict] = field(default_factory=list)  # {"step", "pseudo_dice", "ema", "per_class"}
    best_step: Optional[int] = None
    best_ema: Optional[float] = None

    @property
    def ema(self) -> Optional[float]:
        return self.history[-1]["ema"] if self.history else None

    def record(self, step: int, score: float, per_class: Sequence[float] = ()) -> bool:
        """Add a validation; True when its EMA is the best so far (this step becomes ``best``).

        A NaN score (no foreground in any patch or prediction) leaves the EMA as it was.
        """
        previous = self.ema
        if math.isnan(score):
            ema = previous
        else:
            ema = score if previous is None else EMA_DECAY * previous + (1.0 - EMA_DECAY) * score
        self.history.append({"step": int(step), "pseudo_dice": score, "ema": ema,
                             "per_class": [float(value) for value in per_class]})
        if ema is not None and (self.best_ema is None or ema > self.best_ema):
            self.best_step, self.best_ema = int(step), float(ema)
            return True
        return False

    def to_json(self, **settings) -> Dict:
        def clean(value):
            return None if isinstance(value, float) and math.isnan(value) else value

        history = [dict(entry, pseudo_dice=clean(entry["pseudo_dice"]),
                        per_class=[clean(value) for value in entry["per_class"]]) for entry in self.history]
        return dict(settings, ema_decay=EMA_DECAY, best={"step": self.best_step, "ema": self.best_ema,
                                                         "checkpoint": best_path(self.best_step)},
                    history=history)

    @classmethod
    def load(cls, model_dir: str, up_to_step: int) -> "ValidationState":
        """The state as it was at ``up_to_step`` (validations after it belong to steps being redone)."""
        path = os.path.join(model_dir, VALIDATION_FILE)
        if not os.path.isfile(path):
            return cls()
        try:
            with open(path) as handle:
                content = json.load(handle)
            entries = [entry for entry in content["history"] if int(entry["step"]) <= up_to_step]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError("{}: unreadable ({}); delete it to restart the best-checkpoint tracking".format(
                path, error)) from None
        state = cls()
        for entry in entries:
            score = entry.get("pseudo_dice")
            state.record(int(entry["step"]), float("nan") if score is None else float(score),
                         [float("nan") if value is None else value for value in entry.get("per_class", [])])
        return state


def best_path(step: Optional[int]) -> Optional[str]:
    """Where the best checkpoint of ``step`` lives, relative to the run folder."""
    return None if step is None else "best/{}-{}".format(CHECKPOINT_PREFIX, step)


def write_state(model_dir: str, state: ValidationState, **settings) -> None:
    write_json_atomic(os.path.join(model_dir, VALIDATION_FILE), state.to_json(**settings))


# ------------------------------------------------------------------ listener
class BestCheckpoint(StepListener):
    """Every ``every`` steps and at the last step: a checkpoint (written here if the step is not already a
    checkpoint step), its pseudo-Dice on the fixed patches, the EMA, and ``best/`` when the EMA improves.
    Must follow the :class:`~unet3d_core.engine.listeners.CheckpointSaver` in the listener list."""

    def __init__(self, config, *, every: int, total_steps: int, saver, guard, patches: Tuple[np.ndarray, np.ndarray],
                 session_config, layer_ops, logger):
        self.config, self.model_dir = config, config.model_dir
        self.every, self.total_steps = every, total_steps
        self.saver, self.guard = saver, guard
        self.images, self.labels = patches
        self.session_config, self.layer_ops, self.logger = session_config, layer_ops, logger
        self.state = ValidationState()
        self._runner = None
        self._session = None

    def _settings(self) -> Dict:
        return {"validate_every": self.every, "patches": int(len(self.images)),
                "patch_shape": list(self.images.shape[1:4])}

    def begin(self, session, step: int) -> None:
        self._session = session
        self.state = ValidationState.load(self.model_dir, step)
        if self.state.history:
            self.logger.message("Best checkpoint tracking resumed: {} validation(s) up to step {}, EMA {:.4f}, "
                                "best step {}".format(len(self.state.history), self.state.history[-1]["step"],
                                                      self.state.ema if self.state.ema is not None else float("nan"),
                                                      self.state.best_step))
        best_step = self.state.best_step
        kept, kept_step = best_checkpoint(self.model_dir)
        if kept is None or kept_step == best_step:
            return
        if best_step is None:  # a best of steps this run is redoing (or of a run whose checkpoints were deleted)
            shutil.rmtree(os.path.dirname(kept))  # MODEL_DIR/best
            self.logger.message("note: removed {} (step {}): no validation up to step {} chose it".format(
                kept, kept_step, step))
            return
        # Killed between recording a new best and copying it: its checkpoint is still among the newest.
        prefix = os.path.join(self.model_dir, "{}-{}".format(CHECKPOINT_PREFIX, best_step))
        if is_complete(prefix):
            keep_as_best(prefix, self.model_dir)
        else:
            self.logger.message("note: {} is step {}, not the best step {} recorded up to step {}, whose checkpoint "
                                "is gone; the next improvement replaces it".format(kept, kept_step, best_step, step))

    def score(self, checkpoint: str) -> Tuple[float, List[float]]:
        """The pseudo-Dice of ``checkpoint``'s network on the patches."""
        if self._runner is None:
            self._runner = NetworkRunner(self.config.network, checkpoint, self.session_config, ops=self.layer_ops)
        else:
            self._runner.restore(checkpoint)
        # One patch per call: one input shape, so one compiled graph where the device compiles per shape.
        probabilities = np.concatenate([self._runner(self.images[index:index + 1])
                                        for index in range(len(self.images))])
        return pseudo_dice(probabilities, self.labels, self.config.network)

    def after_step(self, result: StepResult) -> None:
        step = result.step
        if not (crosses(result.step_before, step, self.every) or step >= self.total_steps):
            return
        if self.guard.last_saved != step:
            save_checkpoint(self.saver, self._session, self.model_dir, step, self.guard.last_saved)
            self.guard.last_saved = step
        checkpoint = os.path.join(self.model_dir, "{}-{}".format(CHECKPOINT_PREFIX, step))
        score, per_class = self.score(checkpoint)
        improved = self.state.record(step, score, per_class)
        write_state(self.model_dir, self.state, **self._settings())
        if improved:
            keep_as_best(checkpoint, self.model_dir)
        ema = self.state.ema
        self.logger.metrics("validation", {"step": step, "pseudo_dice": score, "ema": ema,
                                           "best_step": self.state.best_step}, echo=False)
        self.logger.message("validation at step {}: pseudo-Dice {:.4f} on {} patches, EMA {:.4f}{}".format(
            step, score, len(self.images), ema if ema is not None else float("nan"),
            " (new best)" if improved else ", best step {}".format(self.state.best_step)))

    def end(self, session, step: int, stopped: bool) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
