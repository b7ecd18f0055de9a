"""``MODEL_DIR/run.json``: the run folder remembers the network, the data and the options that made it.

The first ``train`` in a folder writes it; ``evaluate``, ``predict``,
``train_and_evaluate`` and every resumed ``train`` read it (nnU-Net keeps its
plans in the model folder the same way), so no model flag is needed after the
first command. The file holds:

- ``network``: what builds the graph (widths, depth, norm, channels, classes,
  ``target`` and, for ``--target regions``, the regions learnt) and the
  training crop; a checkpoint only loads into this network;
- ``data``: the data set's fingerprint (:meth:`Manifest.fingerprint`), its
  folder and the fold held out;
- ``training``: the optimisation flags of the latest training session;
- ``backend`` and ``versions`` of the latest training session.

Writes are atomic (a temporary file replaced in one step), so a killed run
never leaves half a ``run.json``.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import platform
from typing import Dict, Optional, Tuple

from unet3d_core import __version__
from unet3d_core.errors import ConfigError
from unet3d_core.folders import KIND_DESCRIPTIONS, RUN_FILE, cross_validation_folds, folder_kind, write_json_atomic
from unet3d_core.model.checkpoints import CHECKPOINT_PREFIX

FORMAT_VERSION = 1


def run_file_path(model_dir: str) -> str:
    return os.path.join(model_dir, RUN_FILE)


def read_run(model_dir: str) -> Optional[Dict]:
    """The content of ``MODEL_DIR/run.json``, or None where the folder has none.

    Raises:
        ConfigError: the file exists but is not a run file of this format.
    """
    path = run_file_path(model_dir)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("{}: unreadable run file ({}); restore it or start a new --model_dir".format(
            path, error)) from None
    if not isinstance(content, dict) or content.get("format_version") != FORMAT_VERSION:
        raise ConfigError("{}: not a run file of format {} (found {!r}); start a new --model_dir".format(
            path, FORMAT_VERSION, content.get("format_version") if isinstance(content, dict) else content))
    for section in ("network", "data", "training"):
        if not isinstance(content.get(section), dict):
            raise ConfigError("{}: the '{}' section is missing; restore the file or start a new --model_dir".format(
                path, section))
    return content


def network_record(model_config, input_shape) -> Dict:
    """The ``network`` section: what builds the graph, and the training crop (None where unknown)."""
    return dict(in_channels=model_config.in_channels, num_classes=model_config.num_classes,
                base_filters=model_config.base_filters, max_filters=model_config.max_filters,
                depth=model_config.depth, norm=model_config.norm, groups=model_config.groups,
                input_shape=list(input_shape) if input_shape is not None else None,
                target=model_config.target, regions=[[name, list(labels)] for name, labels in model_config.regions],
                deep_supervision=model_config.deep_supervision)


def versions() -> Dict[str, str]:
    import tensorflow as tf

    return {"unet3d": __version__, "tensorflow": tf.__version__, "python": platform.python_version()}


def write_run(model_dir: str, *, network: Dict, data: Dict, training: Dict, backend: str,
              previous: Optional[Dict] = None) -> Dict:
    """Write ``run.json`` (atomically) and return its content; ``previous`` keeps the creation time."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    content = {
        "format_version": FORMAT_VERSION,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "network": network,
        "data": data,
        "training": training,
        "backend": backend,
        "versions": versions(),
    }
    write_json_atomic(run_file_path(model_dir), content, sort_keys=True)
    return content


def run_folder_for(model_dir: str, fold, command: str) -> Tuple[str, Optional[str]]:
    """The run folder ``command`` acts on when given ``--model_dir MODEL_DIR`` and ``--fold`` (None when not
    given, a number, or 'all'), and a note for the user when that is not MODEL_DIR itself.

    A cross-validation folder (``fold-N`` runs of ``--fold all``) with ``--fold N`` means its ``fold-N``; a
    command never writes a single run at the top of one, nor fold folders into a single run's folder.

    Raises:
        ConfigError: the folder cannot be what the command needs; the message says what it is and the fix.
    """
    kind = folder_kind(model_dir)
    every = str(fold) == "all"
    reads = command in ("evaluate", "predict", "export")
    if kind == "cross-validation":
        folds = cross_validation_folds(model_dir)
        trained = "fold {}".format(folds[0]) if len(folds) == 1 else "folds {}".format(", ".join(map(str, folds)))
        if every:
            return model_dir, None
        if fold is None:
            raise ConfigError("--model_dir {} is a cross-validation folder (runs of {}): give --fold N for one "
                              "fold's run or --fold all for every fold".format(model_dir, trained))
        path = os.path.join(model_dir, "fold-{}".format(int(fold)))
        if reads and int(fold) not in folds:
            raise ConfigError("--model_dir {} --fold {}: {} is not a trained run (this cross-validation folder "
                              "has runs of {})".format(model_dir, fold, path, trained))
        return path, "--model_dir {} is a cross-validation folder: --fold {} {}s its run {}".format(
            model_dir, fold, command, path)
    if kind == "run" and every:
        recorded = (read_run(model_dir) or {}).get("data", {}).get("fold")
        raise ConfigError("--model_dir {} --fold all: that folder holds a single run (fold {}); --fold all keeps "
                          "its fold-N runs in a folder of their own: give a new --model_dir".format(
                              model_dir, recorded))
    if reads and kind == "missing":
        raise ConfigError("--model_dir {}: does not exist".format(model_dir))
    legacy = glob.glob(os.path.join(model_dir, CHECKPOINT_PREFIX + "-*.index"))  # checkpoints from before run.json
    if reads and kind not in ("run", "empty") and not legacy:
        raise ConfigError("--model_dir {}: not a run folder (no {}); it is {}{}".format(
            model_dir, RUN_FILE, KIND_DESCRIPTIONS.get(kind, kind), _likely_fix(kind)))
    if not reads and kind in ("records", "raw"):
        raise ConfigError("--model_dir {}: it is {}, and a run needs a folder of its own{}".format(
            model_dir, KIND_DESCRIPTIONS[kind], _likely_fix(kind)))
    return model_dir, None


def _likely_fix(kind: str) -> str:
    if kind == "records":
        return ": --data_dir and --model_dir swapped?"
    if kind == "raw":
        return ": raw cases go to 'predict --input_dir' or 'preprocess -i'"
    return ""
