#!/usr/bin/env python
"""unet3d command line: ``python cli.py COMMAND --help`` documents every flag.

Commands: train / evaluate / predict (the trainer's exec modes), synth
(synthetic BraTS-like cases), preprocess (raw NIfTI -> records), backends
(list installed backends), score (any predictions against ground truth),
report (curves and case pictures of a run), demo (the whole pipeline on
synthetic data, CPU).
"""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys

# TensorFlow's C++ start-up chatter drowns our progress lines; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
from typing import List, Optional

from unet3d_core import __version__, plugins
from unet3d_core.data.layouts import LAYOUT_ALIASES, LAYOUT_NAMES
from unet3d_core.data.records import DEFAULT_INTENSITY, INTENSITY_FORMATS
from unet3d_core.engine.recipes import RECIPE_NAMES
from unet3d_core.engine.run_flags import DEFAULTS, shown
from unet3d_core.errors import TrainingStopped, UNet3DError
from unet3d_core.model.config import (
    AUGMENTATIONS,
    EXEC_MODES,
    LESION_RULE_CHOICES,
    LOSSES,
    LR_SCHEDULES,
    NORMS,
    OPTIMIZERS,
    TARGETS,
)

# Used only when running from a source tree that was never pip-installed, so
# no entry points exist; an installed unet3d registers these same modules.
SOURCE_TREE_BACKENDS = {"cpu": "backends.cpu.plugin", "gpu": "backends.gpu.plugin", "npu": "backends.npu.plugin"}


def _default(name: str) -> str:
    """``default X`` for a run-bound flag's help, from the one table of defaults (run_flags.DEFAULTS)."""
    return "default " + shown(DEFAULTS[name])


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer, got {}".format(text))
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, got {}".format(text))
    return value


def fold_value(text: str):
    """A fold number, or 'all' (folds 0..N-1 one after another)."""
    if text == "all":
        return text
    try:
        return non_negative_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a fold number or 'all', got {}".format(text)) from None


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0, got {}".format(text))
    return value


def checkpoint_choice(text: str) -> str:
    """--checkpoint: best, latest or a step number."""
    if text in ("best", "latest") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError("must be best, latest or a step number, got {}".format(text))


def load_backends():
    """All installed backends (see unet3d_core.plugins)."""
    import importlib

    registry = plugins.BackendRegistry.discover()
    if not registry.names and not os.environ.get(plugins.FILTER_VARIABLE):
        for name, module_name in sorted(SOURCE_TREE_BACKENDS.items()):
            registry.add(plugins.load_backend(importlib.import_module(module_name), name,
                                              "unet3d (source tree)", __version__))
    return registry


def add_trainer_options(parser: argparse.ArgumentParser, exec_mode: str, registry) -> None:
    """The options of train, evaluate and predict, in the groups (and the order) that --help shows."""
    trains = exec_mode == "train"  # evaluate and predict show (and take) only the flags they use
    _add_data_options(parser, exec_mode)
    run = _add_run_options(parser, exec_mode, registry)
    if trains:
        _add_recipe_options(parser)
    _add_run_timing_options(run, trains)
    if trains:
        _add_optimiser_options(parser)
    _add_model_options(parser)
    _add_prediction_options(parser)
    _add_best_checkpoint_options(parser, trains)
    if not trains:
        _hide_training_flags(parser)
    registry.add_options(parser)


def _hide_training_flags(parser: argparse.ArgumentParser) -> None:
    """The training-only flags' defaults (as 'train' states them) without the flags: evaluate and predict
    neither list nor accept them, and the run's values come from run.json."""
    scratch = argparse.ArgumentParser(add_help=False)
    _add_recipe_options(scratch)
    _add_run_timing_options(scratch.add_argument_group("run"), True)
    _add_optimiser_options(scratch)
    _add_best_checkpoint_options(scratch, True)
    shown = {action.dest for action in parser._actions}
    parser.set_defaults(**{action.dest: action.default for action in scratch._actions if action.dest not in shown})


def _add_data_options(parser: argparse.ArgumentParser, exec_mode: str) -> None:
    data = parser.add_argument_group("data and run folders")
    data.add_argument("--data_dir", required=exec_mode != "predict",
                      help="preprocessed data set (output of 'preprocess')"
                           + ("; not needed with --input_dir" if exec_mode == "predict" else ""))
    data.add_argument("--model_dir", required=True,
                      help="run folder: checkpoints, logs, results; re-running on it resumes")
    data.add_argument("--fold", type=fold_value, default=None,
                      help="cross-validation fold held out, or 'all': folds 0..N-1 in turn, each in "
                           "MODEL_DIR/fold-N, then the pooled table MODEL_DIR/cv_results.json ("
                           + _default("fold") + "; "
                           "a run folder remembers its fold)")


class GivenFlag(argparse.Action):
    """Store the value and record that the flag was given (``DEST_given``): a resumed run tells an explicit
    ``--exec_mode train`` from the command's default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, self.dest + "_given", True)


def _add_run_options(parser: argparse.ArgumentParser, exec_mode: str, registry):
    """The 'run' group with its first options; returned, as more options join it after the recipe's."""
    run = parser.add_argument_group("run")
    if exec_mode == "train":
        run.add_argument("--exec_mode", choices=EXEC_MODES, default=exec_mode, action=GivenFlag,
                         help="what to run (default train; a resumed run finishes the mode it was started with)")
    parser.set_defaults(exec_mode=exec_mode, exec_mode_given=False)
    run.add_argument("--backend", default="cpu",
                     help="device backend: {} (default cpu; see 'cli.py backends')".format(", ".join(registry.names)))
    run.add_argument("--max_steps", type=positive_int, default=None,
                     help="training steps shared out over the workers, as in the seed ({})".format(
                         _default("max_steps")))
    return run


def _add_recipe_options(parser: argparse.ArgumentParser) -> None:
    recipe = parser.add_argument_group(
        "recipe", "A recipe presets how the network is trained (docs/training.md, 'Recipes'); the flags below and "
                  "in 'loss and optimiser' override its values. run.json records the recipe and every value.")
    recipe.add_argument("--recipe", choices=RECIPE_NAMES, default=None,
                        help="nnunet: foreground-oversampled crops, nnU-Net's spatial and intensity augmentation, "
                             "SGD with poly decay, deep supervision, region outputs; seed: the reference port's "
                             "uniform crops, Adam at a constant rate, label outputs (default nnunet for a new run; "
                             "a run keeps its recipe)")
    recipe.add_argument("--batch_size", type=positive_int, default=None,
                        help="volumes per step per worker (nnunet 2, seed 1)")
    recipe.add_argument("--augmentation", choices=AUGMENTATIONS, default=None,
                        help="training augmentation: nnunet (rotation, scaling, mirroring on every axis, noise, "
                             "blur, brightness, contrast, low resolution, gamma), seed (flip on y, brightness "
                             "shift) or none (nnunet: nnunet, seed: none)")
    recipe.add_argument("--augment", dest="augmentation", action="store_const", const="seed",
                        help="the seed's spelling of --augmentation seed")
    recipe.add_argument("--oversample_foreground", type=float, default=None, metavar="SHARE",
                        help="share of each batch centred on a voxel of a class present in the case: the last "
                             "round(SHARE x batch) samples (nnunet 0.33, seed 0)")
    recipe.add_argument("--elastic_probability", type=float, default=None, metavar="P",
                        help="with --augmentation nnunet: share of samples also deformed elastically, a smooth "
                             "random displacement of up to a few percent of the crop ({}, as nnU-Net)".format(
                            _default("elastic_probability")))


def _add_run_timing_options(run, trains: bool) -> None:
    """The rest of the 'run' group: benchmarking, seed and, for training, caching, logging and checkpoint
    intervals."""
    if trains:
        run.add_argument("--cache", action="store_true",
                         help="keep the decoded training cases in memory (about 45 MB per BraTS case per worker)")
    run.add_argument("--benchmark", action="store_true",
                     help="time the steps after --warmup_steps up to --max_steps and log throughput (volumes/s, "
                          "all workers) and latency; no checkpoints or evaluation. For predict a step is one "
                          "whole volume and nothing is written")
    run.add_argument("--warmup_steps", type=non_negative_int, default=200,
                     help="untimed steps before benchmark timing (default 200)")
    run.add_argument("--synthetic_input", action="store_true",
                     help="feed random in-memory data instead of the records, so the device and not the disk is "
                          "timed: train repeats one batch of --input_shape crops, predict one volume of "
                          "--eval_crop (--data_dir is still read for its case list)")
    run.add_argument("--seed", type=int, default=None,
                     help="random seed for weights and data order ({})".format(_default("seed")))
    if trains:
        run.add_argument("--log_every", type=positive_int, default=100,
                         help="steps between log lines (default 100)")
        run.add_argument("--checkpoint_every", type=positive_int, default=500,
                         help="steps between checkpoints (default 500)")
        run.add_argument("--keep_checkpoints", type=positive_int, default=3, help="checkpoints kept (default 3)")


def _add_optimiser_options(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("loss and optimiser",
                                      "A resumed run keeps the values it was started with unless these are given.")
    optim.add_argument("--loss", choices=LOSSES, default=None, help="training loss ({})".format(_default("loss")))
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                       help="sgd (Nesterov momentum) or adam (nnunet sgd, seed adam)")
    optim.add_argument("--learning_rate", type=positive_float, default=None,
                       help="base learning rate (nnunet 0.01, seed 2e-4)")
    optim.add_argument("--momentum", type=float, default=None,
                       help="SGD's Nesterov momentum ({})".format(_default("momentum")))
    optim.add_argument("--weight_decay", type=float, default=None,
                       help="L2 weight decay added to the gradients (nnunet 3e-5, seed 0)")
    optim.add_argument("--grad_clip", type=float, default=None,
                       help="clip the global gradient norm (of the unscaled, averaged gradients) at this value; "
                            "0 = off (nnunet 12, seed 0)")
    optim.add_argument("--lr_schedule", choices=LR_SCHEDULES, default=None,
                       help="after warm-up: constant, cosine decay to 0, or poly decay (1 - step/steps)^0.9 "
                            "(nnunet poly, seed constant)")
    optim.add_argument("--lr_warmup_steps", type=non_negative_int, default=None,
                       help="linear learning-rate warm-up steps ({})".format(_default("lr_warmup_steps")))
    optim.add_argument("--lr_scaling", choices=("none", "linear"), default=None,
                       help="multi-worker runs: keep --learning_rate (none, the seed's way) or multiply it "
                            "by the number of workers (linear) ({})".format(_default("lr_scaling")))


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and shapes",
                                      "Bound to the run: after the first train, MODEL_DIR/run.json supplies "
                                      "--input_shape, --base_filters, --max_filters, --depth, --norm, "
                                      "--target and --deep_supervision.")
    model.add_argument("--input_shape", type=positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                       help="training crop ({})".format(_default("input_shape")))
    model.add_argument("--eval_crop", type=positive_int, nargs=3, default=[224, 224, 155], metavar=("X", "Y", "Z"),
                       help="evaluation centre crop, padded to the network's multiple (default 224 224 155)")
    model.add_argument("--base_filters", type=positive_int, default=None,
                       help="filters at full resolution ({})".format(_default("base_filters")))
    model.add_argument("--max_filters", type=positive_int, default=None,
                       help="filter cap ({})".format(_default("max_filters")))
    model.add_argument("--depth", type=positive_int, default=None,
                       help="resolutions incl. bottleneck ({})".format(_default("depth")))
    model.add_argument("--norm", choices=NORMS, default=None, help="normalisation ({})".format(_default("norm")))
    model.add_argument("--target", choices=TARGETS, default=None,
                       help="what the network outputs: labels (softmax over the data's labels, the seed's way) or "
                            "regions (one sigmoid per region of the cohort, e.g. WT, TC, ET, trained with Dice + "
                            "binary cross-entropy, as nnU-Net does for BraTS; a voxel's label is the innermost "
                            "region above 0.5) (nnunet regions, seed labels)")
    model.add_argument("--deep_supervision", action="store_const", const=True, default=None,
                       help="train with auxiliary outputs on the decoder's lower resolutions, loss weights halving "
                            "per level and summing to 1 (nnU-Net's scheme); inference uses the full-resolution "
                            "output only, so the exported network is the same (on in nnunet, off in seed)")
    model.add_argument("--no_deep_supervision", dest="deep_supervision", action="store_const", const=False,
                       help="train the full-resolution output alone (the nnunet recipe's default is on)")


def _add_prediction_options(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("prediction")
    out.add_argument("--predict_on", choices=("fold", "all"), default="fold",
                     help="predict the --fold cases or all cases of --data_dir (default fold)")
    out.add_argument("--output_dir", default=None, help="prediction folder (default MODEL_DIR/predictions)")
    out.add_argument("--overwrite", action="store_true", help="replace existing prediction files")
    out.add_argument("--skip_invalid", action="store_true",
                     help="predict --input_dir: leave out a case that cannot be read (corrupt NIfTI, wrong shapes, "
                          "unknown labels) and list it at the end, instead of stopping at it")
    out.add_argument("--input_dir", default=None,
                     help="predict a folder of raw BraTS NIfTI cases (segmentations optional) instead of --data_dir")
    out.add_argument("--folds", default=None, metavar="0,2,4",
                     help="predict with the average of these folds' models of a --fold all run (MODEL_DIR/fold-N); "
                          "'--fold all' with --input_dir averages every trained fold. Refused on the "
                          "cross-validation data set itself (its cases were in the folds' training)")
    out.add_argument("--save_probabilities", action="store_true",
                     help="also write <case>_probabilities.nii.gz (float32, one channel per class)")
    out.add_argument("--inference_mode", choices=("sliding", "crop"), default="sliding",
                     help="evaluate/predict with Gaussian-blended sliding windows (default), or the seed's single "
                          "centre crop --eval_crop")
    out.add_argument("--window_shape", type=positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                     help="sliding-window size (default: --input_shape, the training crop)")
    out.add_argument("--overlap", type=float, default=0.5,
                     help="fraction of a window shared with the next one, in [0, 1) (default 0.5)")
    out.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian",
                     help="weighting of overlapping windows (default gaussian)")
    out.add_argument("--tta", action="store_true",
                     help="test-time augmentation: average over the 8 mirrorings of x, y, z (8x the work)")
    out.add_argument("--inference_batch_size", type=positive_int, default=1,
                     help="windows per network call (default 1; memory grows with it)")
    out.add_argument("--min_et_component_voxels", type=non_negative_int, default=0,
                     help="relabel enhancing-tumour components smaller than this many voxels as tumour core "
                          "(default 0: off)")
    out.add_argument("--postprocessing", choices=("auto", "none"), default="auto",
                     help="predict: apply the post-processing that --fold all chose on cross-validation "
                          "(MODEL_DIR/postprocessing.json, or the one above a fold-N folder; default auto), "
                          "or none")
    out.add_argument("--lesion_rules", choices=LESION_RULE_CHOICES, default="auto",
                     help="year whose BraTS lesion-wise rules evaluation uses, with the data's cohort "
                          "(default auto: the year the cohort's release was scored, 2025 for MET or GLI data "
                          "whose truth holds a resection cavity; see docs/metrics.md)")


def _add_best_checkpoint_options(parser: argparse.ArgumentParser, trains: bool) -> None:
    best = parser.add_argument_group(
        "best checkpoint", "train_and_evaluate keeps MODEL_DIR/best/, the checkpoint where a smoothed pseudo-Dice on "
                           "fixed validation patches peaked (docs/training.md, 'The best checkpoint').")
    if trains:
        best.add_argument("--validate_every", type=non_negative_int, default=None,
                          help="train_and_evaluate: steps between pseudo-Dice validations, also done at the last "
                               "step; 0 = none, so no best checkpoint (default: --checkpoint_every)")
        best.add_argument("--validation_patches", type=positive_int, default=None,
                          help="fixed patches of the training crop's size cut from the fold's validation cases, "
                               "every other one centred on tumour (default 16)")
    best.add_argument("--checkpoint", type=checkpoint_choice, default=None, metavar="best|latest|STEP",
                      help="checkpoint that evaluate and predict (and train_and_evaluate's final evaluation) "
                           "restore: best, latest (the newest) or a step number (default: best where the run has "
                           "one, else latest)")


def program_name() -> str:
    """How the user invoked us, for usage lines and hints: ``unet3d`` (the installed command) or ``cli.py``."""
    return "unet3d" if os.path.basename(sys.argv[0] or "") == "unet3d" else "cli.py"


def as_invoked(message: str) -> str:
    """``message`` with its command hints ('python cli.py preprocess ...') naming the program as the user ran
    it: the installed ``unet3d`` command, or cli.py."""
    if program_name() != "unet3d":
        return message
    return re.sub(r"'(?:python )?cli\.py ", "'unet3d ", message)


class Parser(argparse.ArgumentParser):
    """argparse with exact flag names only (no abbreviations) and one-line errors: the problem, a "did you
    mean" where a flag or choice is close to a known one, and where the command's help is."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_args(args, namespace)

    def _command_parser(self, name: Optional[str] = None) -> "Parser":
        """The sub-command's parser called ``name``, or else the one named on the command line (unrecognised
        flags are the top parser's error); this parser when there is none."""
        commands = [action for action in self._actions if isinstance(action, argparse._SubParsersAction)]
        words = [token for token in getattr(self, "given", []) if not token.startswith("-")]
        name = name or (words[0] if words else None)
        if commands and name in commands[0].choices:
            return commands[0].choices[name]
        return self

    def known_flags(self) -> List[str]:
        return [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]

    def error(self, message: str):
        hint, parser = "", self
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            parser = self._command_parser()
            names = [token.split("=")[0] for token in unknown.group(1).split() if token.startswith("-")]
            trainer = self._command_parser("train")
            hint = "; ".join(filter(None, (_unknown_flag_hint(name, parser, trainer) for name in names)))
        choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            choices = [item.strip(" '") for item in choice.group(3).split(",")]
            match = difflib.get_close_matches(choice.group(2), choices, n=1, cutoff=0.5) or \
                [item for item in choices if item.lower() == choice.group(2).lower()]
            hint = "did you mean {}?".format(match[0]) if match else ""
        self.exit(2, "error: {}{} (see '{} --help')\n".format(message, " - " + hint if hint else "", parser.prog))


def _unknown_flag_hint(name: str, parser: "Parser", trainer: "Parser") -> str:
    """What to say of ``name``, a flag ``parser`` does not know: a mode of its own, a training flag (for
    evaluate and predict, which take those from run.json), else the nearest flag."""
    command = parser.prog.split()[-1]
    if parser is not trainer and name == "--exec_mode":
        return "{} takes no --exec_mode: it is a mode of its own ('train --exec_mode' picks one)".format(command)
    if parser is not trainer and name in trainer.known_flags():
        return "{} is a training flag: {} takes the run's values from its run.json".format(name, command)
    return _closest(name, parser.known_flags())


def _closest(name: str, flags: List[str]) -> str:
    """"did you mean" for an unknown flag: the flags it abbreviates (argparse's abbreviations are off), else
    the nearest spelling; '' when none is close."""
    longer = sorted(flag for flag in flags if flag.startswith(name))
    close = longer[:3] or difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
    return "did you mean {}?".format(" or ".join(close)) if close else ""


def normalised_flags(argv: List[str]) -> List[str]:
    """``--data-dir`` spelt with hyphens is ``--data_dir``: every flag of ours is written with underscores."""
    out = []
    for position, token in enumerate(argv):
        if token == "--":
            return out + argv[position:]
        if token.startswith("--") and "-" in token.split("=", 1)[0][2:]:
            name, equals, value = token.partition("=")
            token = "--" + name[2:].replace("-", "_") + equals + value
        out.append(token)
    return out


def build_parser(registry) -> argparse.ArgumentParser:
    parser = Parser(prog=program_name(), description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="unet3d " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_trainer_commands(commands, registry)
    _add_synth_command(commands)
    _add_raw_data_commands(commands)
    commands.add_parser("backends", help="list installed backends and whether they are usable here")
    registry.add_commands(commands)
    _add_score_command(commands)
    _add_report_command(commands)
    _add_export_command(commands)
    _add_demo_command(commands)
    return parser


def _add_trainer_commands(commands, registry) -> None:
    """train, evaluate and predict: the trainer's exec modes, each with every trainer option."""
    for name, mode, text in (("train", "train", "train (or any --exec_mode) on a backend"),
                             ("evaluate", "evaluate", "score the best checkpoint (else the newest) on the held-out "
                                                      "fold"),
                             ("predict", "predict", "write NIfTI label maps with the best checkpoint (else the "
                                                    "newest)")):
        sub = commands.add_parser(name, help=text, description=text)
        add_trainer_options(sub, mode, registry)


def _add_synth_command(commands) -> None:
    synth = commands.add_parser("synth", help="write synthetic BraTS 2019-style cases",
                                description="Write synthetic BraTS 2019-style cases (HGG/ and LGG/).")
    synth.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    synth.add_argument("--cases", type=positive_int, default=20, help="number of cases (default 20)")
    synth.add_argument("--shape", type=positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                       help="volume shape (default 64 64 48; with --anatomical 80 96 80, about 2 mm voxels; "
                            "BraTS is 240 240 155)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--anatomical", action="store_true",
                       help="brains warped from the MNI ICBM152 2009 template with grown gliomas, harder than the "
                            "default disc phantoms (needs nilearn)")
    synth.add_argument("--scanner", choices=("a", "b"), default=None,
                       help="acquisition domain of --anatomical cases: a, or b with other contrast weights, more "
                            "noise, 3 mm slices along z and x flipped (default a)")


def layout_name(text: str) -> str:
    """A --layout value with its aliases resolved (brats2021 is the 2020 layout)."""
    return LAYOUT_ALIASES.get(text, text)


def _add_raw_data_commands(commands) -> None:
    """preprocess and validate, the two commands that read raw NIfTI cases."""
    layout_choices = ("auto",) + LAYOUT_NAMES
    prep = commands.add_parser("preprocess", help="raw NIfTI (BraTS 2018-2023+, MSD) -> records + manifest",
                               description="Check and convert raw cases (BraTS 2018/2019, 2020/2021, 2023+ or MSD "
                                           "Task01_BrainTumour; detected automatically) into TFRecords and a "
                                           "manifest with seeded, case-level folds.")
    prep.add_argument("-i", "--input_dir", required=True, help="raw data folder")
    prep.add_argument("-o", "--output_dir", required=True, help="output folder (must not exist or be empty)")
    prep.add_argument("--folds", type=positive_int, default=5, help="number of folds (default 5)")
    prep.add_argument("--seed", type=int, default=0, help="fold assignment seed (default 0)")
    prep.add_argument("--workers", type=positive_int, default=1, help="parallel processes (default 1)")
    prep.add_argument("--layout", choices=layout_choices, default="auto", type=layout_name,
                      help="raw layout (default auto: detected from the folder; brats2021 is brats2020)")
    prep.add_argument("--skip-invalid", "--skip_invalid", dest="skip_invalid", action="store_true",
                      help="leave invalid cases out and list them, instead of stopping at the first")
    prep.add_argument("--intensity", choices=INTENSITY_FORMATS, default=DEFAULT_INTENSITY,
                      help="how images are stored (default {}): uint16 keeps each modality's whole range; uint8 is "
                           "the reference's (clipped at 0.85 x max, half the bytes)".format(DEFAULT_INTENSITY))
    prep.add_argument("-v", "--verbose", action="store_true",
                      help="accepted for the seed's scripts; progress is always shown")

    check = commands.add_parser("validate", help="check raw cases without writing anything",
                                description="Run every check of 'preprocess' on every case, write nothing, "
                                            "list the invalid cases; exit status 1 if there are any.")
    check.add_argument("-i", "--input_dir", required=True, help="raw data folder")
    check.add_argument("--layout", choices=layout_choices, default="auto", type=layout_name,
                       help="raw layout (default auto: detected from the folder; brats2021 is brats2020)")
    check.add_argument("--workers", type=positive_int, default=1, help="parallel processes (default 1)")


def _add_score_command(commands) -> None:
    score = commands.add_parser("score", help="score a folder of predictions against ground truth",
                                description="Score predicted label maps (any tool's) against ground truth: "
                                            "whole-volume Dice and HD95 (mm) per region of the cohort, the "
                                            "challenge's lesion-wise Dice and HD95, and the reference port's "
                                            "legacy table for glioma labels. Prints a table, writes a per-case "
                                            "CSV and a JSON summary beside it.")
    score.add_argument("--pred", required=True, help="flat folder of <case>.nii.gz label maps")
    score.add_argument("--truth", required=True,
                       help="raw BraTS folder (<case>/<case>_seg.nii.gz, <case>-seg.nii.gz, <case>_gtv.nii.gz) "
                            "or flat folder of <case>.nii.gz")
    score.add_argument("--out", default=None,
                       help="per-case CSV; the summary goes to the same name with .json (default PRED/metrics.csv)")
    score.add_argument("--labels", "--layout", dest="labels", default="auto",
                       help="layout whose labels and regions both folders use (default auto: detected from "
                            "--truth; brats2019 for a flat folder of label maps)")
    score.add_argument("--lesion_rules", choices=LESION_RULE_CHOICES, default="auto",
                       help="year of the BraTS lesion-wise rules (default auto: the year the cohort's release "
                            "was scored, 2025 for MET or GLI truth that holds a resection cavity)")
    score.add_argument("--require_all", action="store_true",
                       help="fail when a truth case has no prediction (default: score the predicted cases)")


def _add_report_command(commands) -> None:
    report = commands.add_parser("report", help="render training curves, case overlays and a summary of a run",
                                 description="Render PNGs of a run (training curves from log.json, slice overlays "
                                             "of ground truth and prediction) and a Markdown summary linking them.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a --model_dir (also one trained with --fold all)")
    report.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")
    report.add_argument("--cases", type=non_negative_int, default=3, help="cases to draw (default 3)")
    report.add_argument("--images", default=None,
                        help="raw BraTS folder with the cases' images (default: found from the run's parameters)")
    report.add_argument("--predictions", default=None,
                        help="folder of <case>.nii.gz predictions (default: the run's predictions/)")


def _add_export_command(commands) -> None:
    export = commands.add_parser("export", help="write a trained run's network as a SavedModel, frozen graph or "
                                                "ONNX model",
                                 description="Export the best checkpoint of a run (else its newest; see "
                                             "--checkpoint) for deployment: a SavedModel "
                                             "with a serving signature (TensorFlow 1.15/2.x, TensorFlow Serving), "
                                             "a frozen GraphDef with a fixed input shape (Ascend ATC, TF-TRT) "
                                             "or an ONNX model (ONNX Runtime, TensorRT; needs the onnx extra). "
                                             "export.json beside it says how to normalise the input and which "
                                             "label each output channel is.")
    export.add_argument("--model_dir", required=True,
                        help="the run folder, or a --fold all run's folder with --fold N")
    export.add_argument("--fold", type=non_negative_int, default=None,
                        help="with a cross-validation --model_dir: the fold whose run is exported")
    export.add_argument("--format", choices=("savedmodel", "frozen", "onnx"), default="savedmodel",
                        help="savedmodel (any input size), frozen (.pb, fixed --window) or onnx (tf2onnx, an "
                             "optional extra of the TensorFlow 2.15 environment) (default savedmodel)")
    export.add_argument("--window", type=positive_int, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="frozen: the input's spatial shape (default: the run's training crop)")
    export.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    export.add_argument("--checkpoint", type=checkpoint_choice, default=None, metavar="best|latest|STEP",
                        help="the checkpoint exported: best, latest (the newest) or a step number (default: best "
                             "where the run has one, else latest)")


def _add_demo_command(commands) -> None:
    demo = commands.add_parser("demo",
                               help="synthetic data -> preprocess -> train -> evaluate -> predict -> report (CPU)",
                               description="The whole pipeline on a small synthetic data set, on the CPU: one "
                                           "line per stage on the console, each stage's output in "
                                           "WORKDIR/logs/, the run and its report in WORKDIR/run/.")
    demo.add_argument("--workdir", default="demo", help="folder for data and run (default ./demo)")
    demo.add_argument("--max_steps", type=positive_int, default=300, help="training steps (default 300)")


def command_backends(registry) -> int:
    rows = []
    for name in registry.names:
        backend = registry.backends[name]
        rows.append((name, "yes" if backend.info.available else "no",
                     "{} {}".format(backend.distribution, backend.version).strip(),
                     backend.info.summary if backend.info.available else backend.info.reason,
                     ", ".join(backend.hooks)))
    name_width = max([len("name")] + [len(row[0]) for row in rows])
    source_width = max([len("distribution")] + [len(row[2]) for row in rows])
    line = "{:<%d}  {:<6}  {:<%d}  {}" % (name_width, source_width)
    print(line.format("name", "usable", "distribution", "summary / reason"))
    for name, usable, source, detail, hooks in rows:
        print(line.format(name, usable, source, detail))
        print(line.format("", "", "", "hooks: " + hooks))
    return 0


def command_score(options) -> int:
    """Score the predictions, then print the metrics table, the unscored truth cases and the files written."""
    from unet3d_core.evaluation.metrics import format_table
    from unet3d_core.evaluation.score import run_score

    result = run_score(options.pred, options.truth, out_csv=options.out, labels=options.labels,
                       require_all=options.require_all, lesion_rules=options.lesion_rules)
    if result.lesion_rules_chosen:
        print("note: " + result.lesion_rules_chosen)
    print(format_table(result.statistics, result.cases, result.descriptions))
    if result.unpredicted:
        print("note: {} truth case(s) have no prediction and were not scored (--require_all makes this an "
              "error): {}{}".format(len(result.unpredicted), ", ".join(result.unpredicted[:5]),
                                    " ..." if len(result.unpredicted) > 5 else ""))
    print("wrote {} and {}".format(result.csv_path, result.summary_path))
    return 0


def command_report(options) -> int:
    from unet3d_core.evaluation.report import build_report

    index = build_report(options.run_dir, out_dir=options.out, cases=options.cases,
                         images_dir=options.images, predictions_dir=options.predictions)
    print("wrote {}".format(index))
    return 0


def command_demo(options) -> int:
    from unet3d_core.engine.demo import run_demo

    return run_demo(options.workdir, options.max_steps, main)


def command_export(options) -> int:
    from unet3d_core.evaluation.export import export
    from unet3d_core.model.run_folder import run_folder_for

    model_dir, note = run_folder_for(options.model_dir, options.fold, "export")
    if note is not None:
        print("note: " + note)
    described = export(model_dir, options.out, fmt=options.format, window=options.window,
                       checkpoint=options.checkpoint)
    print("wrote {} ({}, input {} {}, output {} with {} channels)".format(
        options.out, described["format"], described["input"]["name"], described["input"]["shape"],
        described["output"]["name"], described["output"]["channels"]))
    if "atc" in described:
        print("convert for Ascend with: " + described["atc"])
    else:
        print("segment raw cases with it: python -m unet3d_core.evaluation.exported {} --input_dir RAW "
              "--output_dir OUT".format(options.out))
    return 0


def command_synth(options) -> int:
    from unet3d_core.data.synth import write_synthetic_dataset
    from unet3d_core.progress import Progress

    shape = options.shape
    if shape is None:
        from unet3d_core.data.synth_anatomy import DEFAULT_SHAPE

        shape = DEFAULT_SHAPE if options.anatomical else (64, 64, 48)
    bar = Progress("synth", options.cases)
    write_synthetic_dataset(options.out, cases=options.cases, shape=tuple(shape),
                            seed=options.seed, progress=lambda done, total, case_id: bar.update(done, case_id),
                            anatomical=options.anatomical, scanner=options.scanner)
    print("wrote {} cases to {}".format(options.cases, options.out))
    return 0


def command_preprocess(options) -> int:
    from unet3d_core.data.preprocess import preprocess, skipped_summary

    manifest = preprocess(options.input_dir, options.output_dir, folds=options.folds, seed=options.seed,
                          workers=options.workers, layout=options.layout, skip_invalid=options.skip_invalid,
                          intensity=options.intensity)
    if manifest["skipped"]:
        print(skipped_summary(manifest))
    print("wrote {} cases ({} layout) in {} folds to {}".format(
        len(manifest["cases"]), manifest["source_layout"], options.folds, options.output_dir))
    return 0


def command_validate(options) -> int:
    from unet3d_core.data.preprocess import validate

    report = validate(options.input_dir, layout=options.layout, workers=options.workers)
    print(report.summary())
    return 1 if report.problems else 0


def command_trainer(options, registry, argv: List[str]) -> int:
    """train, evaluate and predict: check every flag, let the backend launch its workers, else run here."""
    from unet3d_core.engine.run_config import process_core_settings, resolve_runs
    from unet3d_core.engine.run_flags import CommandFlags

    backend = registry.get(options.backend)
    flags = CommandFlags(vars(options))  # the core reads the flags from here on, and never writes them
    runs = resolve_runs(flags)  # every flag checked against the data and the run folder before anything starts
    # The backend's own flags, checked and frozen: what its hooks receive instead of the parsed options.
    backend_options = backend.backend_options(flags, process_core_settings(flags, runs))
    code = backend.launch(backend_options, [sys.executable, os.path.abspath(__file__)] + argv)
    if code is not None:
        return int(code)
    from unet3d_core.engine.modes import run

    run(options=flags, backend=backend, runs=runs)
    return 0


# The commands whose handler needs the parsed options alone.
OPTIONS_COMMANDS = {"score": command_score, "report": command_report, "demo": command_demo,
                    "export": command_export, "synth": command_synth, "preprocess": command_preprocess,
                    "validate": command_validate}


def run_command(options, registry, argv: List[str]) -> int:
    """Run the parsed command: a backend's own, one of OPTIONS_COMMANDS, backends, or a trainer mode."""
    if getattr(options, "command_handler", None) is not None:  # a backend's own command
        return int(options.command_handler(options))
    if options.command == "backends":
        return command_backends(registry)
    handler = OPTIONS_COMMANDS.get(options.command)
    if handler is not None:
        return handler(options)
    return command_trainer(options, registry, argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        registry = load_backends()
        argv = normalised_flags(argv)
        options = build_parser(registry).parse_args(argv)
        return run_command(options, registry, argv)
    except TrainingStopped as stopped:
        print(str(stopped), flush=True)
        return 0
    except UNet3DError as error:
        print("error: {}".format(as_invoked(str(error))), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
