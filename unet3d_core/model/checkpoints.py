"""Checkpoints that survive kills and full disks.

TensorFlow's saver writes a checkpoint's data and index, then atomically
replaces the ``checkpoint`` state file, so a kill mid-write leaves the state
pointing at the previous checkpoint. On top of that, resuming here takes the
newest checkpoint whose every tensor can be read (a truncated or damaged one
is skipped with a message), saving turns write failures into one clear error
that says the previous checkpoint is intact, and the run folder is checked
for writability and free space before training starts.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from typing import List, Optional, Tuple

from unet3d_core.errors import CheckpointWriteError, ConfigError

CHECKPOINT_PREFIX = "model.ckpt"
BEST_FOLDER = "best"  # MODEL_DIR/best/model.ckpt-STEP: outside the rotation of the newest checkpoints
CHECKPOINT_CHOICES = "best, latest or a step number"
_STEP = re.compile(r"-(\d+)$")


def checkpoint_step(path: str) -> int:
    match = _STEP.search(path)
    return int(match.group(1)) if match else 0


def _candidates(model_dir: str) -> List[str]:
    """Checkpoint prefixes in ``model_dir``, newest step first (state file and index files alike)."""
    import tensorflow as tf

    prefixes = set()
    try:
        state = tf.train.get_checkpoint_state(model_dir)
    except Exception:  # an unreadable state file must not hide the checkpoints beside it
        state = None
    if state is not None:
        for path in list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]:
            if path:  # by name: the state file's absolute paths still name the original of a copied folder
                prefixes.add(os.path.join(model_dir, os.path.basename(path)))
    for index in glob.glob(os.path.join(model_dir, CHECKPOINT_PREFIX + "-*.index")):
        prefixes.add(index[:-len(".index")])
    return sorted(prefixes, key=checkpoint_step, reverse=True)


def is_complete(prefix: str) -> bool:
    """True when every tensor of the checkpoint can be read back."""
    import tensorflow as tf

    if not os.path.isfile(prefix + ".index"):
        return False
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:  # any failure to read means: not usable
        return False
    return True


def latest_checkpoint(model_dir: str, report=None) -> Tuple[Optional[str], int]:
    """Prefix and step of the newest complete checkpoint in ``model_dir``, or (None, 0).

    ``report``, if given, is called with a message for each newer checkpoint
    that was skipped because it is incomplete.
    """
    if not os.path.isdir(model_dir):
        return None, 0
    for prefix in _candidates(model_dir):
        if is_complete(prefix):
            return prefix, checkpoint_step(prefix)
        if report is not None:
            report("Skipping incomplete checkpoint {} (interrupted while it was written)".format(prefix))
    return None, 0


def check_folder_can_be_written(path: str, flag: str) -> None:
    """Fail if ``path`` could not be created or written, without creating anything."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise ConfigError("{} {}: {} is a file, not a folder".format(flag, path, existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError("{} {}: {} is not writable".format(flag, path, existing))


def check_run_folder(model_dir: str, checkpoint_bytes: int, keep: int) -> None:
    """Fail before training if ``model_dir`` cannot take the checkpoints.

    Needs room for ``keep`` + 1 checkpoints (the newest is written before
    the oldest is removed).
    """
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, ".unet3d-write-test")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise ConfigError("--model_dir {}: not writable ({})".format(model_dir, error.strerror or error)) from None
    free = shutil.disk_usage(model_dir).free
    needed = checkpoint_bytes * (keep + 1)
    if free < needed:
        raise ConfigError("--model_dir {}: {:.0f} MB free, but {} checkpoints of about {:.0f} MB each need "
                          "{:.0f} MB; free space or lower --keep_checkpoints".format(
                              model_dir, free / 1e6, keep + 1, checkpoint_bytes / 1e6, needed / 1e6))


def prune_checkpoints(model_dir: str, keep: int) -> List[str]:
    """Delete all but the ``keep`` newest checkpoints of ``model_dir``; returns those kept, newest first.

    A ``Saver(max_to_keep=K)`` only knows the checkpoints its own process
    wrote, so a run restarted often kept every checkpoint of every earlier
    process. The trainer calls this once before its first save and hands the
    survivors to the saver (``recover_last_checkpoints``), which then keeps
    the newest ``keep`` across any number of restarts.
    """
    found = _candidates(model_dir)
    for prefix in found[keep:]:
        for path in glob.glob(glob.escape(prefix) + ".*"):
            os.remove(path)
    return [prefix for prefix in found[:keep] if os.path.isfile(prefix + ".index")]


def save_checkpoint(saver, session, model_dir: str, step: int, previous_step: int) -> str:
    """Save, or raise CheckpointWriteError naming the folder and the intact previous checkpoint."""
    import tensorflow as tf

    try:
        return saver.save(session, os.path.join(model_dir, CHECKPOINT_PREFIX), global_step=step,
                          write_meta_graph=False)
    except (tf.errors.OpError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        raise CheckpointWriteError(
            "could not write the step {} checkpoint to {}: {}; the previous checkpoint ({}) is intact, "
            "free space and run the same command to resume".format(
                step, model_dir, " ".join(message.split())[:300],
                "step {}".format(previous_step) if previous_step else "none yet")) from None


def _check_shapes(session, checkpoint: str) -> None:
    """Every variable of the session's graph is in ``checkpoint`` with the same shape.

    Resource variables (TensorFlow 2) take a value of any shape on restore, so
    a checkpoint of another network would load and fail only at the first step.
    """
    import tensorflow as tf

    stored = tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map()
    with session.graph.as_default():
        variables = tf.compat.v1.global_variables()
    for variable in variables:
        name = variable.op.name
        if name not in stored:
            raise ConfigError("{}: has no variable {}: it was written by another network; check the model flags "
                              "against the run folder's run.json".format(checkpoint, name))
        if list(stored[name]) != variable.shape.as_list():
            raise ConfigError("{}: {} has shape {} there but {} in the network built from the run's settings; "
                              "check the model flags against the run folder's run.json".format(
                                  checkpoint, name, list(stored[name]), variable.shape.as_list()))


def restore_checkpoint(saver, session, checkpoint: str) -> None:
    """Restore ``checkpoint``, or raise a one-line ConfigError when it does not fit the graph's network."""
    import tensorflow as tf

    _check_shapes(session, checkpoint)
    try:
        saver.restore(session, checkpoint)
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as error:
        first_line = (getattr(error, "message", None) or str(error)).strip().splitlines()[0]
        raise ConfigError("{}: does not fit the network built from the run's settings ({}); check the model "
                          "flags against the run folder's run.json".format(checkpoint, first_line[:240])) from None


def best_checkpoint(model_dir: str) -> Tuple[Optional[str], int]:
    """Prefix and step of the run's ``best`` checkpoint (``MODEL_DIR/best/``), or (None, 0).

    A new best always comes later in training than the one it replaces, so
    where a kill left two, the newest complete one is the best.
    """
    folder = os.path.join(model_dir, BEST_FOLDER)
    indexes = glob.glob(os.path.join(glob.escape(folder), CHECKPOINT_PREFIX + "-*.index"))
    for prefix in sorted((index[:-len(".index")] for index in indexes), key=checkpoint_step, reverse=True):
        if is_complete(prefix):
            return prefix, checkpoint_step(prefix)
    return None, 0


def keep_as_best(prefix: str, model_dir: str) -> str:
    """Copy the checkpoint ``prefix`` into ``MODEL_DIR/best/`` and remove the best it replaces; returns the copy.

    Copying the files, rather than saving again, adds no operation to the
    training session (a device that compiles one graph per fetch list would
    compile a second saver's). Each file lands under its final name in one
    step, the index last, so a kill leaves the previous best usable.
    """
    folder = os.path.join(model_dir, BEST_FOLDER)
    os.makedirs(folder, exist_ok=True)
    sources = sorted(glob.glob(glob.escape(prefix) + ".*"), key=lambda path: path.endswith(".index"))
    if not any(path.endswith(".index") for path in sources):
        raise CheckpointWriteError("{}: no such checkpoint to keep as the best one".format(prefix))
    try:
        for source in sources:
            target = os.path.join(folder, os.path.basename(source))
            shutil.copyfile(source, target + ".partial")
            os.replace(target + ".partial", target)
    except OSError as error:
        raise CheckpointWriteError("could not copy {} to {}: {}; free space and run the same command to "
                                   "resume".format(prefix, folder, error.strerror or error)) from None
    copy = os.path.join(folder, os.path.basename(prefix))
    for path in glob.glob(os.path.join(glob.escape(folder), CHECKPOINT_PREFIX + "-*")):
        if not path.startswith(copy + "."):
            os.remove(path)
    return copy


def describe_checkpoints(model_dir: str) -> str:
    """What ``--checkpoint`` can choose in ``model_dir``, e.g. "best (step 300), steps 400, 500"."""
    parts = []
    best, best_step = best_checkpoint(model_dir)
    if best is not None:
        parts.append("best (step {})".format(best_step))
    steps = sorted(checkpoint_step(prefix) for prefix in _candidates(model_dir) if os.path.isfile(prefix + ".index"))
    if steps:
        parts.append("step{} {}".format("s" if len(steps) > 1 else "", ", ".join(map(str, steps))))
    return ", ".join(parts) or "no checkpoint"


def select_checkpoint(model_dir: str, choice: Optional[str] = None) -> Tuple[str, int, str]:
    """The checkpoint ``--checkpoint`` names: (prefix, step, "best" | "latest" | "step").

    ``choice`` None (the default) is the best checkpoint where the run has
    one, else the newest; "best", "latest" or a step number select that one.

    Raises:
        ConfigError: naming --checkpoint and the checkpoints the folder has.
    """
    text = "auto" if choice is None else str(choice).strip()
    best, best_step = best_checkpoint(model_dir)
    if text in ("auto", "best") and best is not None:
        return best, best_step, "best"
    if text == "best":
        raise ConfigError("--checkpoint best: {} has no best checkpoint (train --exec_mode train_and_evaluate "
                          "keeps one in {}/); it has: {}".format(model_dir, BEST_FOLDER,
                                                                 describe_checkpoints(model_dir)))
    if text in ("auto", "latest"):
        latest, step = latest_checkpoint(model_dir)
        if latest is None:
            raise ConfigError("--checkpoint {}: {} has no complete checkpoint; train first".format(text, model_dir))
        return latest, step, "latest"
    if not text.isdigit():
        raise ConfigError("--checkpoint {}: choose {}".format(text, CHECKPOINT_CHOICES))
    wanted = int(text)
    for prefix in _candidates(model_dir):
        if checkpoint_step(prefix) == wanted and is_complete(prefix):
            return prefix, wanted, "step"
    if best is not None and best_step == wanted:
        return best, wanted, "step"
    raise ConfigError("--checkpoint {}: {} has no complete checkpoint of that step; it has: {}".format(
        text, model_dir, describe_checkpoints(model_dir)))
