"""The flags a run remembers: their tables and defaults, and their values from the command line, the
recipe and ``run.json``.

:mod:`unet3d_core.engine.run_config` builds a RunConfig from these values:

- Flags that shape the network (``NETWORK_FLAGS``) and the fold are bound to
  the run: omitted, they take the run's values; given with another value,
  they are a one-line error naming the flag, the run's value and the given
  one. A folder with checkpoints but no ``run.json`` (made before it
  existed) needs them on the command line.
- Optimisation flags (``TRAINING_FLAGS``) of a resumed ``train``: omitted,
  they take the run's values (a resumed run keeps its learning rate); given,
  they apply from the resumed step on, and the change is reported.
- ``--recipe`` is bound to the run like the network flags; a flag neither
  given nor recorded takes the recipe's value (:mod:`unet3d_core.engine.recipes`),
  else its default here.
"""
from __future__ import annotations

import glob
import os
from types import MappingProxyType
from typing import Any, Dict, Iterator, List, Mapping, Optional

from unet3d_core.engine.recipes import DEFAULT_RECIPE, LEGACY_RECIPE
from unet3d_core.errors import ConfigError
from unet3d_core.model.checkpoints import CHECKPOINT_PREFIX


class CommandFlags(Mapping[str, Any]):
    """A command line's flag values, read-only: what ``cli.py`` hands the core instead of argparse's Namespace.

    ``flags.data_dir`` or ``flags["data_dir"]`` reads a value; a flag the command does not have is an
    AttributeError (so ``getattr(flags, name, default)`` works); nothing can be assigned. A resolved variant
    (another ``--model_dir``, the run's fold and recorded values) is a new object: ``flags.replace(fold=2)``.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError("the command has no flag --{}".format(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("command flags are read-only (--{}); make a changed copy with replace()".format(name))

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "CommandFlags({})".format(", ".join("{}={!r}".format(k, v) for k, v in sorted(self._values.items())))

    def replace(self, **values: Any) -> "CommandFlags":
        """A copy with ``values`` changed or added."""
        return CommandFlags(dict(self._values, **values))


# Flags bound to a run, and their defaults for a new one.
NETWORK_FLAGS = (("base_filters", 32), ("max_filters", 320), ("depth", 6), ("norm", "instancenorm"),
                 ("input_shape", (128, 128, 128)), ("target", "labels"), ("deep_supervision", False))
TRAINING_FLAGS = (("max_steps", 16000), ("batch_size", 1), ("augmentation", "none"), ("oversample_foreground", 0.0),
                  ("elastic_probability", 0.0), ("loss", "dice+ce"), ("optimizer", "adam"),
                  ("learning_rate", 0.0002), ("momentum", 0.99), ("weight_decay", 0.0), ("grad_clip", 0.0),
                  ("lr_schedule", "constant"), ("lr_warmup_steps", 0), ("lr_scaling", "none"), ("seed", 0))
DEFAULTS = dict(NETWORK_FLAGS + TRAINING_FLAGS, fold=0)
TRAINING_MODES = ("train", "train_and_evaluate")


def has_checkpoints(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a checkpoint (complete or not)."""
    return bool(glob.glob(os.path.join(model_dir, CHECKPOINT_PREFIX + "-*.index")))


def _same(given, recorded) -> bool:
    if isinstance(given, (list, tuple)) or isinstance(recorded, (list, tuple)):
        return list(given) == list(recorded)
    if isinstance(given, float) or isinstance(recorded, float):
        return float(given) == float(recorded)
    return given == recorded


def shown(value) -> str:
    """A flag's value as it is typed on the command line (``128 128 128`` for a list)."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def bound_value(name: str, given, record: Optional[Dict], section: str, model_dir: str):
    """A run-bound flag's value: the run's, or the given one where it agrees."""
    if record is None:
        return given
    recorded = record[section].get(name)
    if given is not None and recorded is not None and not _same(given, recorded):
        raise ConfigError("--{} {} conflicts with the run in {}, made with --{} {} ({}); omit the flag or "
                          "use a new --model_dir".format(name, shown(given), model_dir, name, shown(recorded),
                                                         os.path.join(model_dir, "run.json")))
    return recorded if given is None else given


def resolve_recipe(options, record: Optional[Dict], model_dir: str) -> str:
    """--recipe: bound to the run like the network flags; runs from before recipes were the seed's."""
    given = getattr(options, "recipe", None)
    if record is None:
        return given or (LEGACY_RECIPE if has_checkpoints(model_dir) else DEFAULT_RECIPE)
    recorded = record.get("training", {}).get("recipe") or LEGACY_RECIPE
    if given is not None and given != recorded:
        raise ConfigError("--recipe {} conflicts with the run in {}, trained with --recipe {} ({}); omit the flag "
                          "or use a new --model_dir".format(given, model_dir, recorded,
                                                            os.path.join(model_dir, "run.json")))
    return recorded


def network_values(options, record, model_dir: str, exec_mode: str, recipe: Dict) -> Dict:
    """The network flags' values: bound to the run, else given, else the recipe's, else the default."""
    if record is None and has_checkpoints(model_dir):
        missing = ["--" + name for name, _ in NETWORK_FLAGS if getattr(options, name) is None
                   and name not in ("target", "deep_supervision")]
        if missing:
            raise ConfigError("--model_dir {} has checkpoints but no run.json (a run made before run folders "
                              "remembered their network): pass the flags it was trained with: {}".format(
                                  model_dir, ", ".join(missing)))
    values = {}
    for name, default in NETWORK_FLAGS:
        value = bound_value(name, getattr(options, name), record, "network", model_dir)
        values[name] = recipe.get(name, default) if value is None else value
    return values


def _recorded_training(record: Optional[Dict], name: str):
    """A training value from run.json; runs from before --augmentation recorded the seed's --augment flag."""
    section = record["training"]
    if name == "augmentation" and name not in section and "augment" in section:
        return "seed" if section["augment"] else "none"
    return section.get(name)


def training_values(options, record, exec_mode: str, notes: List[str], recipe: Dict) -> Dict:
    """The optimisation flags' values, checked: given (a change from the resumed run's is noted), else the
    run's when training resumes, else the recipe's, else the default."""
    values = {}
    inherit = record is not None and exec_mode in TRAINING_MODES
    for name, default in TRAINING_FLAGS:
        given = getattr(options, name)
        recorded = _recorded_training(record, name) if inherit else None
        if given is not None and recorded is not None and not _same(given, recorded):
            notes.append("--{} {} (the run used {} so far)".format(name, shown(given), shown(recorded)))
        value = given if given is not None else recorded
        values[name] = recipe.get(name, default) if value is None else value
    if not 0.0 <= float(values["oversample_foreground"]) <= 1.0:
        raise ConfigError("--oversample_foreground {}: a share of the batch, between 0 and 1".format(
            values["oversample_foreground"]))
    if not 0.0 <= float(values["elastic_probability"]) <= 1.0:
        raise ConfigError("--elastic_probability {}: a probability, between 0 and 1".format(
            values["elastic_probability"]))
    for name in ("weight_decay", "grad_clip"):
        if float(values[name]) < 0.0:
            raise ConfigError("--{} {}: must be >= 0 (0 = off)".format(name, values[name]))
    if float(values["momentum"]) < 0.0 or float(values["momentum"]) >= 1.0:
        raise ConfigError("--momentum {}: must be in [0, 1)".format(values["momentum"]))
    return values


def resumed_exec_mode(parsed, record: Optional[Dict], notes: List[str]) -> str:
    """The exec mode: ``--exec_mode`` or the command's; a plain ``train`` resuming a run started as
    ``train_and_evaluate`` finishes that (the final evaluation included), and a note says so."""
    started = ((record or {}).get("training") or {}).get("exec_mode")
    if parsed.exec_mode == "train" and not getattr(parsed, "exec_mode_given", True) and \
            started == "train_and_evaluate":
        notes.append("this run was started with --exec_mode train_and_evaluate: it evaluates when training ends, "
                     "as asked then (--exec_mode train only trains)")
        return started
    return parsed.exec_mode


def parse_folds(text: str) -> List[int]:
    """``--folds 0,2,4`` -> [0, 2, 4]; a bad list is a ConfigError naming the flag."""
    try:
        folds = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        folds = []
    if not folds or any(fold < 0 for fold in folds) or len(set(folds)) != len(folds):
        raise ConfigError("--folds {}: expected distinct fold numbers separated by commas, e.g. 0,2,4".format(text))
    return folds
