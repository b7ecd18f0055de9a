"""The run configuration: parsed flags and the run folder's ``run.json`` turned into validated, typed settings.

``cli.py`` parses the flags once; :func:`resolve_runs` is the one place
where they are checked and combined with what the run folder remembers:

- Flags that shape the network, the fold, ``--recipe`` and the optimisation
  flags take their values as :mod:`unet3d_core.engine.run_flags` says (bound to the
  run, or inherited by a resumed ``train``).
- The data set, its layout and the run's network are checked against each
  other; everything else takes its default.
- ``--fold all`` and fold ensembles (``--folds``) become one run per fold.

The flags arrive as read-only :class:`~unet3d_core.engine.run_flags.CommandFlags`; each
run's resolved values make a new copy beside its RunConfig.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from unet3d_core.data.layouts import LAYOUTS, detect_layout, region_painting
from unet3d_core.data.records import LEGACY_INTENSITY, Manifest
from unet3d_core.engine.recipes import preset
from unet3d_core.engine.run_flags import (
    DEFAULTS,
    TRAINING_FLAGS,
    TRAINING_MODES,
    CommandFlags,
    bound_value,
    has_checkpoints,
    network_values,
    parse_folds,
    resolve_recipe,
    resumed_exec_mode,
    shown,
    training_values,
)
from unet3d_core.errors import ConfigError
from unet3d_core.evaluation.inference import InferenceSettings
from unet3d_core.evaluation.lesion_rules import AUTO, rules_year
from unet3d_core.folders import fold_folders
from unet3d_core.model.checkpoints import check_folder_can_be_written, select_checkpoint
from unet3d_core.model.config import ModelConfig
from unet3d_core.model.run_folder import network_record, read_run, run_folder_for
from unet3d_core.types import CoreSettings


@dataclass(frozen=True)
class TrainingConfig:
    """How the network is trained (the optimisation flags) and how the run is looked after."""

    max_steps: int
    batch_size: int
    augmentation: str  # none, seed (the reference's flip and brightness), nnunet
    oversample_foreground: float  # share of each batch centred on foreground (the last round(share x batch))
    elastic_probability: float  # nnunet augmentation: share of samples elastically deformed
    loss: str
    optimizer: str  # adam, or sgd (Nesterov momentum)
    learning_rate: float
    momentum: float
    weight_decay: float  # L2 added to the gradients, as torch's SGD does
    grad_clip: float  # global gradient norm cap, 0 = off
    lr_schedule: str
    lr_warmup_steps: int
    lr_scaling: str
    seed: int
    recipe: str = "seed"
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    cache: bool = False
    benchmark: bool = False
    warmup_steps: int = 200
    synthetic_input: bool = False
    validate_every: int = 0  # steps between pseudo-Dice validations for the best checkpoint; 0 = none
    validation_patches: int = 16


@dataclass(frozen=True)
class PredictionConfig:
    """Where and what ``predict`` writes."""

    predict_on: str = "fold"
    output_dir: Optional[str] = None
    overwrite: bool = False
    input_dir: Optional[str] = None
    save_probabilities: bool = False
    postprocessing: str = "auto"  # --postprocessing: apply postprocessing.json (auto) or not (none)
    skip_invalid: bool = False  # --skip_invalid: an unreadable --input_dir case is listed and left out


@dataclass(frozen=True)
class RunConfig:
    """Everything one exec mode needs for one fold, validated."""

    exec_mode: str
    model_dir: str
    data_dir: Optional[str]
    fold: int
    backend: str
    network: ModelConfig
    input_shape: Tuple[int, int, int]
    training: TrainingConfig
    inference: object  # unet3d_core.evaluation.inference.InferenceSettings
    prediction: PredictionConfig
    run_record: Optional[Dict] = None  # run.json as found, None for a new run
    data_fingerprint: Optional[str] = None
    notes: Tuple[str, ...] = field(default_factory=tuple)
    lesion_rules: str = "auto"  # --lesion_rules: the year of the BraTS lesion-wise rules evaluation uses
    checkpoint: Optional[str] = None  # --checkpoint: best, latest or a step; None = best where there is one
    # How the training data stores intensities (records.INTENSITY_FORMATS): raw inputs are scaled the same way.
    intensity: str = LEGACY_INTENSITY
    # The data set --data_dir names, opened once by resolve(); None without one (predict --input_dir).
    manifest: Optional[Manifest] = field(default=None, compare=False, repr=False)

    @property
    def trains(self) -> bool:
        return self.exec_mode in TRAINING_MODES

    def core_settings(self) -> CoreSettings:
        """The core's values the backend's hooks may read (``unet3d_backend_options``' ``core``)."""
        training = self.training
        return CoreSettings(backend=self.backend, exec_mode=self.exec_mode, model_dir=self.model_dir,
                            max_steps=training.max_steps, batch_size=training.batch_size,
                            benchmark=training.benchmark, warmup_steps=training.warmup_steps, seed=training.seed,
                            cache=training.cache)

    def network_record(self) -> Dict:
        """The ``network`` section of ``run.json``."""
        return network_record(self.network, self.input_shape)

    def training_record(self) -> Dict:
        """The ``training`` section of ``run.json``: the recipe and every optimisation flag's resolved value."""
        record = {name: getattr(self.training, name) for name, _ in TRAINING_FLAGS}
        record["recipe"] = self.training.recipe
        record["exec_mode"] = self.exec_mode  # what a resumed 'train' finishes
        return record

    def data_record(self) -> Dict:  # the ``data`` section of ``run.json``
        return {"data_dir": os.path.abspath(self.data_dir) if self.data_dir else None,
                "fingerprint": self.data_fingerprint, "fold": self.fold, "intensity": self.intensity}


def _check_data(options, fold, record, notes: List[str], opened: Optional[Manifest] = None):
    """Open ``--data_dir`` (or take ``opened``, that folder already open), check the fold, compare with the
    run's; returns (manifest, fingerprint)."""
    config_data_dir, exec_mode = options.data_dir, options.exec_mode
    manifest = opened if opened is not None and opened.data_dir == config_data_dir else Manifest(config_data_dir)
    if fold is not None:
        manifest.split(fold)
    fingerprint = manifest.fingerprint()
    recorded = (record or {}).get("data", {}).get("fingerprint")
    if recorded and recorded != fingerprint:
        text = "--data_dir {} is not the data set the run was trained on (fingerprint {} in run.json, {} here)".format(
            config_data_dir, recorded[:12], fingerprint[:12])
        if exec_mode in TRAINING_MODES:
            raise ConfigError(text + "; resume with the original data or use a new --model_dir")
        notes.append(text + "; fold {} of it may hold cases the network was trained on".format(fold))
    return manifest, fingerprint


def _data_layout(manifest, options):
    """The layout of the data this command reads (the data set's, or the raw --input_dir's), or None."""
    if manifest is not None:
        return LAYOUTS[manifest.layout]
    if options.input_dir:
        return LAYOUTS[detect_layout(options.input_dir)]
    return None


def _channels_and_classes(layout, record, options, model_dir: str) -> Tuple[int, int]:
    """The network's input channels and classes: the run's, else the data's; a mismatch is a ConfigError."""
    recorded = (record or {}).get("network", {})
    data = None
    if layout is not None:
        source = "--data_dir {}".format(options.data_dir) if not options.input_dir else "--input_dir {}".format(
            options.input_dir)
        data = (len(layout.channels), layout.num_classes, "{} ({} layout)".format(source, layout.name))
    if recorded.get("in_channels") is not None:
        channels, classes = int(recorded["in_channels"]), int(recorded["num_classes"])
        if data is not None and (data[0] != channels or data[1] != classes):
            raise ConfigError("{} has {} image channel(s) and {} classes, but the network in --model_dir {} was "
                              "trained on {} and {}; use that cohort's data or a new --model_dir".format(
                                  data[2], data[0], data[1], model_dir, channels, classes))
        return channels, classes
    if data is not None:
        return data[0], data[1]
    return ModelConfig.in_channels, ModelConfig.num_classes


def _target_regions(target: str, layout, record) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """--target regions: the regions the network learns (the run's, else the data's cohort's; the glioma
    regions for synthetic input); () for --target labels."""
    if target != "regions":
        return ()
    recorded = (record or {}).get("network", {}).get("regions")
    if recorded:
        return tuple((str(name), tuple(int(label) for label in labels)) for name, labels in recorded)
    return tuple((layout or LAYOUTS["brats2019"]).target_regions.items())


def _check_postprocessing(options, layout) -> None:
    """--min_et_component_voxels relabels enhancing tumour (3) as core (1): glioma labels only."""
    if not getattr(options, "min_et_component_voxels", 0) or layout is None:
        return
    if layout.regions.get("ET") != (3,) or layout.regions.get("TC") != (1, 3):
        raise ConfigError("--min_et_component_voxels: relabels enhancing tumour as tumour core in glioma labels; "
                          "the {} layout numbers its labels differently ({})".format(
                              layout.name, layout.describe_labels()))


def _check_folders(options, exec_mode: str) -> None:
    if os.path.exists(options.model_dir) and not os.path.isdir(options.model_dir):
        raise ConfigError("--model_dir {}: exists and is not a directory".format(options.model_dir))
    check_folder_can_be_written(options.model_dir, "--model_dir")
    input_dir = options.input_dir
    if input_dir and exec_mode != "predict":
        raise ConfigError("--input_dir is for predict; to score a raw folder, predict it and run 'cli.py score'")
    if exec_mode == "predict" and options.output_dir:
        check_folder_can_be_written(options.output_dir, "--output_dir")
        output = os.path.realpath(options.output_dir)
        for flag in ("input_dir", "data_dir"):
            source = getattr(options, flag, None)
            if source and (output + os.sep).startswith(os.path.realpath(source) + os.sep):
                raise ConfigError("--output_dir {} is inside --{} {}: predictions are never written among the "
                                  "inputs; choose another folder".format(options.output_dir, flag, source))
    if not options.data_dir and not input_dir:
        raise ConfigError("--data_dir is required (only 'predict --input_dir RAW_DIR' works without it)")


def _lesion_rules(manifest: Manifest, flag: str, notes: List[str]) -> str:
    """The year of the lesion-wise rules evaluation scores by (``auto``: by the labels the data holds, said in a
    note). A year the cohort lacks fails now, not after training."""
    from unet3d_core.evaluation.metrics import LabelScheme  # the lesion code (~15 ms), not needed by --help

    year, reason = rules_year(flag, manifest.layout, manifest.labels_present,
                              "--data_dir {}".format(manifest.data_dir))
    notes.extend([reason] if reason else [])
    LabelScheme.for_layout(manifest.layout, year)
    return year


def resolve(parsed: CommandFlags, *, model_dir: Optional[str] = None, fold: Optional[int] = None,
            manifest: Optional[Manifest] = None, note: Optional[str] = None) -> Tuple[CommandFlags, RunConfig]:
    """One fold's validated RunConfig, and a copy of ``parsed`` holding the resolved values (the flags
    a run remembers, its folder and fold); ``parsed`` itself is never written.

    ``manifest``: ``--data_dir``'s data set if already open (else opened here), kept as ``RunConfig.manifest``;
    ``note``: told to the user first (e.g. which fold's run of a cross-validation folder this is). Raises
    ConfigError / DataError for a bad flag, folder or data set, or a flag that conflicts with the run.
    """
    model_dir = model_dir or parsed.model_dir
    record = read_run(model_dir) if os.path.isdir(model_dir) else None
    notes: List[str] = [] if note is None else [note]
    exec_mode = resumed_exec_mode(parsed, record, notes)
    options = parsed.replace(model_dir=model_dir, exec_mode=exec_mode)
    _check_folders(options, exec_mode)
    fold = bound_value("fold", options.fold if fold is None else fold, record, "data", model_dir)
    fold = DEFAULTS["fold"] if fold is None else int(fold)

    recipe = resolve_recipe(options, record, model_dir)
    network = network_values(options, record, model_dir, exec_mode, preset(recipe))
    training = training_values(options, record, exec_mode, notes, preset(recipe))
    options = options.replace(fold=fold, **{name: list(value) if name == "input_shape" else value
                                            for name, value in list(network.items()) + list(training.items())})
    opened, fingerprint, manifest = manifest, None, None
    if not options.input_dir:
        # An ensemble member predicts a data set outside its cross-validation: its fold number is not that set's.
        member = getattr(options, "ensemble_member", False)
        manifest, fingerprint = _check_data(options, None if member else fold, record, notes, opened)
    layout = _data_layout(manifest, options)  # detected once: a raw folder is listed whole to detect it
    in_channels, num_classes = _channels_and_classes(layout, record, options, model_dir)
    lesion_rules = str(getattr(options, "lesion_rules", AUTO) or AUTO)
    if manifest is not None and exec_mode in ("evaluate", "train_and_evaluate"):
        lesion_rules = _lesion_rules(manifest, lesion_rules, notes)
    _check_postprocessing(options, layout)
    regions = _target_regions(network["target"], layout, record)
    model_config = ModelConfig(in_channels=in_channels, num_classes=num_classes,
                               base_filters=network["base_filters"], max_filters=network["max_filters"],
                               depth=network["depth"], norm=network["norm"], target=network["target"],
                               regions=regions, deep_supervision=bool(network["deep_supervision"]))
    model_config.validate()
    input_shape = tuple(int(size) for size in network["input_shape"])
    if any(size % model_config.divisor for size in input_shape):
        raise ConfigError("--input_shape {}: every size must be a multiple of {} (2^(depth-1) for --depth {})".format(
            shown(input_shape), model_config.divisor, model_config.depth))
    training_config = TrainingConfig(
        log_every=options.log_every, checkpoint_every=options.checkpoint_every,
        keep_checkpoints=options.keep_checkpoints, cache=bool(options.cache),
        benchmark=bool(options.benchmark), warmup_steps=options.warmup_steps,
        validate_every=_validate_every(options, exec_mode),
        validation_patches=int(getattr(options, "validation_patches", None) or 16),
        synthetic_input=bool(options.synthetic_input), recipe=recipe, **training)
    if training_config.benchmark and training_config.max_steps <= training_config.warmup_steps:
        raise ConfigError("--benchmark: --max_steps ({}) must be greater than --warmup_steps ({})".format(
            training_config.max_steps, training_config.warmup_steps))
    inference = InferenceSettings(
        mode=options.inference_mode, window_shape=tuple(options.window_shape or input_shape),
        overlap=float(options.overlap), blend=options.blend, mirror=bool(options.tta),
        batch_size=options.inference_batch_size, eval_crop=tuple(options.eval_crop), divisor=model_config.divisor,
        min_et_component_voxels=options.min_et_component_voxels,
        # Also the check that the regions turn back into labels.
        painting=tuple(region_painting(model_config.regions)) if model_config.target == "regions" else ())
    inference.validate()
    prediction = PredictionConfig(predict_on=options.predict_on, output_dir=options.output_dir,
                                  overwrite=bool(options.overwrite), input_dir=options.input_dir,
                                  save_probabilities=bool(options.save_probabilities),
                                  postprocessing=getattr(options, "postprocessing", None) or "auto",
                                  skip_invalid=bool(getattr(options, "skip_invalid", False)))
    if exec_mode in ("evaluate", "predict") and not has_checkpoints(model_dir):
        raise ConfigError("--model_dir {}: no checkpoint to {} with; train first".format(model_dir, exec_mode))
    if exec_mode in ("evaluate", "predict") and getattr(options, "checkpoint", None) is not None:
        select_checkpoint(model_dir, options.checkpoint)  # a step or best the folder lacks fails before any work
    return options, RunConfig(exec_mode=exec_mode, model_dir=model_dir, data_dir=options.data_dir, fold=fold,
                     backend=options.backend, network=model_config, input_shape=input_shape,
                     training=training_config, inference=inference, prediction=prediction, run_record=record,
                     data_fingerprint=fingerprint, notes=tuple(notes),
                     lesion_rules=lesion_rules,
                     checkpoint=getattr(options, "checkpoint", None),
                     intensity=_intensity(manifest, fingerprint, record), manifest=manifest)


def _intensity(manifest, fingerprint: Optional[str], record: Optional[Dict]) -> str:
    """The intensity storage the network learns from: the data set's when one is open (a new run's, or the
    run's own after the fingerprint check), else the run's record (uint8 for runs made before the choice)."""
    recorded = (record or {}).get("data", {})
    own = manifest is not None and recorded.get("fingerprint") in (None, fingerprint)
    return manifest.intensity_format if own else str(recorded.get("intensity", LEGACY_INTENSITY))


def _validate_every(options, exec_mode: str) -> int:
    """--validate_every: train_and_evaluate validates at the checkpoint interval unless told; other modes never."""
    if exec_mode != "train_and_evaluate" or options.benchmark:
        return 0
    given = getattr(options, "validate_every", None)
    return options.checkpoint_every if given is None else int(given)


def ensemble_folds(options) -> Optional[List[int]]:
    """The folds whose models ``predict`` averages, or None for a plain prediction.

    An ensemble is ``predict --input_dir NEW --model_dir CV_DIR --fold all`` (every ``fold-N`` with a
    checkpoint) or ``--folds 0,2,4``. On the cross-validation data set itself it is refused: every case
    was in some fold's training set. ``predict --data_dir --fold all`` stays each fold predicting its
    own held-out cases.
    """
    return _ensemble(options)[0]


def _ensemble(options) -> Tuple[Optional[List[int]], Optional[Manifest]]:
    """:func:`ensemble_folds`, and the ``--data_dir`` data set it opened to refuse the cross-validation's
    (None with ``--input_dir`` or no ensemble)."""
    folds_flag = getattr(options, "folds", None)
    if options.exec_mode != "predict" or (folds_flag is None and not (str(options.fold) == "all"
                                                                       and options.input_dir)):
        if folds_flag is not None:
            raise ConfigError("--folds: averages fold models in predict; use --fold for {}".format(
                options.exec_mode))
        return None, None
    if folds_flag is not None and str(options.fold) not in ("None", "all"):
        raise ConfigError("--folds {} and --fold {}: give one of them".format(folds_flag, options.fold))
    if folds_flag is not None:
        folds = parse_folds(folds_flag)
    else:
        folds = [fold for fold in fold_folders(options.model_dir)
                 if has_checkpoints(os.path.join(options.model_dir, "fold-{}".format(fold)))]
    for fold in folds:
        folder = os.path.join(options.model_dir, "fold-{}".format(fold))
        if not has_checkpoints(folder):
            raise ConfigError("--model_dir {}: {} has no checkpoint (not a --fold all run, or fold {} not "
                              "trained)".format(options.model_dir, folder, fold))
    if not folds:
        raise ConfigError("--model_dir {}: no fold-N folders with checkpoints; an ensemble needs a --fold all "
                          "training run".format(options.model_dir))
    if options.input_dir:
        return folds, None
    return folds, _refuse_cross_validation_data(options, folds)


def _refuse_cross_validation_data(options, folds: List[int]) -> Manifest:
    """Open ``--data_dir`` and refuse it if some fold was trained on it; returns the open data set."""
    if not options.data_dir:
        raise ConfigError("predict with --folds needs --input_dir (new cases) or --data_dir")
    manifest = Manifest(options.data_dir)
    fingerprint = manifest.fingerprint()
    for fold in folds:
        record = read_run(os.path.join(options.model_dir, "fold-{}".format(fold))) or {}
        if record.get("data", {}).get("fingerprint") == fingerprint:
            raise ConfigError("--data_dir {} is the data set fold {} was trained on: every case of it was in "
                              "some fold's training set, so an ensemble's predictions of it say nothing about "
                              "new cases; predict --input_dir NEW_CASES, or --fold all for each fold's held-out "
                              "cases".format(options.data_dir, fold))
    return manifest


def fold_options(options: CommandFlags, fold: int, **values) -> CommandFlags:
    """A copy of ``options`` for fold ``fold`` of ``--fold all``, run in ``MODEL_DIR/fold-N``, with ``values``."""
    return options.replace(fold=fold, model_dir=os.path.join(options.model_dir, "fold-{}".format(fold)), **values)


def resolve_runs(options: CommandFlags) -> List[Tuple[CommandFlags, RunConfig]]:
    """Every run the command performs, each validated: ``[(resolved options, RunConfig)]``, one per fold.

    ``--fold all`` gives one per fold of the data set, each in ``MODEL_DIR/fold-N``. ``options`` is not written.
    The data set is opened once and shared by every run's RunConfig.
    """
    if str(options.fold) == "all" and options.exec_mode == "predict" and options.predict_on == "all":
        raise ConfigError("--fold all with --predict_on all would predict every case once per fold; "
                          "use --predict_on fold (each case once, by the fold that held it out)")
    _check_folders(options, options.exec_mode)  # flags about folders first, whatever --model_dir holds
    if getattr(options, "folds", None) is None:
        model_dir, note = run_folder_for(options.model_dir, options.fold, options.exec_mode)
        if note is not None:
            return [resolve(options.replace(model_dir=model_dir), note=note)]
    folds, manifest = _ensemble(options)
    if folds is not None:
        return [resolve(fold_options(options, fold, ensemble_member=True), manifest=manifest) for fold in folds]
    if str(options.fold) != "all":
        return [resolve(options)]
    if not options.data_dir:
        raise ConfigError("--data_dir is required with --fold all")

    manifest = Manifest(options.data_dir)
    return [resolve(fold_options(options, fold), manifest=manifest) for fold in range(manifest.num_folds)]


def process_options(options: CommandFlags, runs: List[Tuple[CommandFlags, RunConfig]]) -> CommandFlags:
    """The options the backend's process-wide hooks see: one run's resolved copy; the parsed options when the
    command performs several runs (``--fold all``, an ensemble), whose ``--model_dir`` holds them all."""
    return options if _several_runs(options, runs) else runs[0][0]


def _several_runs(options: CommandFlags, runs: List[Tuple[CommandFlags, RunConfig]]) -> bool:
    return str(options.fold) == "all" or getattr(runs[0][0], "ensemble_member", False)


def process_core_settings(options: CommandFlags, runs: List[Tuple[CommandFlags, RunConfig]]) -> CoreSettings:
    """The core's values the backend's process-wide hooks (launch, environment, sessions) see: the first run's,
    with the ``--model_dir`` that holds them all when the command performs several runs."""
    settings = runs[0][1].core_settings()
    return replace(settings, model_dir=options.model_dir) if _several_runs(options, runs) else settings
