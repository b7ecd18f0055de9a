"""``cli.py report RUN_DIR``: pictures of a run that people actually look at.

Writes into ``RUN_DIR/report/`` (or ``--out``):

- ``curves.png``: training loss, learning rate and the evaluation Dice
  (both schemes) over steps, read from the ``log.json`` DLLogger lines of
  the run and of its ``fold-N`` sub-runs (one line per run);
- ``case-<id>.png`` for a few predicted cases: an axial slice through the
  largest tumour area, FLAIR and T1ce, with the ground truth and the
  prediction overlaid;
- ``index.md``: the evaluation tables (scheme named per metric) linking both.

Images are found through ``--images RAW_DIR``, else the run's own
parameters (``--input_dir``, or the ``--data_dir`` manifest's source paths).
Rendering uses matplotlib's Agg backend: no display needed.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

from unet3d_core.data.case_scan import discover_cases
from unet3d_core.data.layouts import LAYOUTS, detect_layout, map_labels
from unet3d_core.data.volumes import segmentation_beside
from unet3d_core.errors import DataError
from unet3d_core.evaluation import metrics as metrics_lib
from unet3d_core.evaluation.distances import dice
from unet3d_core.evaluation.postprocessing import POSTPROCESSING_FILE, summary_lines

LOG_NAME = "log.json"
# Overlay colours by internal label (files are mapped from their own convention first).
PALETTE = ("#e41a1c", "#4daf4a", "#ffd700", "#377eb8", "#984ea3")  # internal labels 1, 2, 3, ...
LABEL_COLOURS = OrderedDict([(1, ("necrotic / non-enhancing core", PALETTE[0])), (2, ("oedema", PALETTE[1])),
                             (3, ("enhancing tumour", PALETTE[2]))])
CURVE_DICE = ("MeanDice", "WholeTumor", "Dice_WT", "Dice_TC", "Dice_ET", "LesionDice_WT", "LesionDice_TC",
              "LesionDice_ET", "Dice_GTV", "LesionDice_GTV")


def read_log(path: str) -> Tuple[Dict, List[Dict]]:
    """Parameters and records of a DLLogger JSON-lines file (ours or NVIDIA dllogger's)."""
    parameters: Dict = {}
    records: List[Dict] = []
    with open(path) as handle:
        for line in handle:
            if not line.startswith("DLLL "):
                continue
            try:
                record = json.loads(line[5:])
            except ValueError:
                continue  # a line cut short by a kill
            if record.get("type") == "PARAMETER" or record.get("step") == "PARAMETER":
                parameters.update(record.get("data", {}))
            else:
                records.append(record)
    return parameters, records


def curves_of(records: List[Dict]) -> Dict[str, List]:
    """Training steps, loss, learning rate, and (checkpoint step, Dice values) of each evaluation."""
    steps, losses, rates, evaluations = [], [], [], []
    last_step = 0
    for record in records:
        step, data = record.get("step"), record.get("data", {})
        if isinstance(step, int) and "loss" in data:
            steps.append(step)
            losses.append(float(data["loss"]))
            rates.append(float(data.get("learning_rate", float("nan"))))
            last_step = step
        elif step == "eval":
            evaluations.append((int(data.get("checkpoint_step", last_step)),
                                {name: float(data[name]) for name in CURVE_DICE if name in data}))
    return {"steps": steps, "loss": losses, "learning_rate": rates, "evaluations": evaluations}


def run_folders(run_dir: str) -> "OrderedDict[str, str]":
    """Label -> folder for the run and its ``fold-N`` sub-runs that have a log."""
    if not os.path.isdir(run_dir):
        raise DataError("RUN_DIR {}: no such directory".format(run_dir))
    found: "OrderedDict[str, str]" = OrderedDict()
    if os.path.isfile(os.path.join(run_dir, LOG_NAME)):
        found["run"] = run_dir
    for name in sorted(os.listdir(run_dir)):
        folder = os.path.join(run_dir, name)
        if name.startswith("fold-") and os.path.isfile(os.path.join(folder, LOG_NAME)):
            found[name] = folder
    if not found:
        raise DataError("RUN_DIR {}: no {} here or in fold-N sub-folders (not a run folder?)".format(
            run_dir, LOG_NAME))
    return found


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: Dict[str, Dict[str, List]], path: str) -> None:
    """Loss, learning rate and evaluation Dice over steps, one line per run.

    Evaluations sit at their checkpoint's training step; when every run was evaluated once
    (``train_and_evaluate``), the Dice panel is a bar per metric instead of lone points.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    once = all(len(curve["evaluations"]) <= 1 for curve in curves.values())
    axes[1].sharex(axes[0])
    if not once:
        axes[2].sharex(axes[0])  # evaluations sit at their checkpoint's training step
    # Several runs (folds): two Dice lines each keep the legend readable.
    dice_names = CURVE_DICE if len(curves) == 1 else ("Dice_WT", "LesionDice_WT", "Dice_GTV")
    for label, curve in curves.items():
        if curve["steps"]:
            axes[0].plot(curve["steps"], curve["loss"], label=label)
            axes[1].plot(curve["steps"], curve["learning_rate"], label=label)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss")
    axes[1].set(title="learning rate", xlabel="step", ylabel="rate")
    axes[1].ticklabel_format(axis="y", useOffset=False)
    if once:
        _plot_final_dice(axes[2], curves, dice_names)
    else:
        for label, curve in curves.items():
            for name in dice_names:
                points = [(step, values[name]) for step, values in curve["evaluations"] if name in values]
                if points:
                    xs, ys = zip(*points)
                    axes[2].plot(xs, ys, marker="o",
                                 label="{} {} ({})".format(label, name, metrics_lib.scheme_of(name)))
        axes[2].set(title="evaluation Dice", xlabel="checkpoint step", ylabel="Dice", ylim=(0, 1))
    for axis in axes:
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_final_dice(axis, curves: Dict[str, Dict[str, List]], dice_names) -> None:
    """One horizontal bar per run and metric of each run's only evaluation, its value written beside it."""
    bars, steps = [], set()
    for label, curve in curves.items():
        for step, values in curve["evaluations"]:
            steps.add(step)
            bars += [("{} ({})".format(name, metrics_lib.scheme_of(name)) if len(curves) == 1
                      else "{} {}".format(label, name), values[name]) for name in dice_names if name in values]
    positions = list(range(len(bars)))[::-1]
    axis.barh(positions, [value for _, value in bars], color="#4c72b0")
    for position, (_, value) in zip(positions, bars):
        axis.text(min(value, 1.0) + 0.01, position, "{:.3f}".format(value), va="center", fontsize=8)
    axis.set_yticks(positions)
    axis.set_yticklabels([name for name, _ in bars], fontsize=8)
    title = "evaluation Dice" + (" at step {}".format(steps.pop()) if len(steps) == 1 else "")
    axis.set(title=title, xlabel="Dice", xlim=(0, 1.12))


def _axial_slice(volume: np.ndarray, index: int) -> np.ndarray:
    # Rotate so the brain is upright with x across and y up, as viewers show it.
    return np.rot90(volume[:, :, index])


def tumour_slice(truth: Optional[np.ndarray], prediction: np.ndarray) -> int:
    """The axial slice with the most tumour in the truth (else in the prediction, else the middle)."""
    for labels in (truth, prediction):
        if labels is not None and np.any(labels > 0):
            return int(np.argmax(np.count_nonzero(labels > 0, axis=(0, 1))))
    return prediction.shape[2] // 2


def _label_colours(names: Optional[Dict[int, str]]) -> "OrderedDict[int, Tuple[str, str]]":
    """Internal label -> (name, colour) for the legend: the data's label names, else the glioma ones."""
    if not names:
        return LABEL_COLOURS
    return OrderedDict((label, (name, PALETTE[(label - 1) % len(PALETTE)]))
                       for label, name in sorted(names.items()) if label > 0)


def _overlay(axis, background: np.ndarray, labels: Optional[np.ndarray], title: str,
             legend: Optional[Dict] = None) -> None:
    from matplotlib.colors import ListedColormap

    legend = legend or _label_colours(None)
    axis.imshow(background, cmap="gray", interpolation="nearest")
    if labels is not None:
        values = list(legend)
        colours = ListedColormap([legend[value][1] for value in values])
        index = np.full(labels.shape, np.nan)
        for position, value in enumerate(values):
            index[labels == value] = position
        axis.imshow(np.ma.masked_invalid(index), cmap=colours, vmin=0, vmax=len(values) - 1, alpha=0.45,
                    interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")


def plot_case(case_id: str, images: Dict[str, np.ndarray], truth: Optional[np.ndarray], prediction: np.ndarray,
              path: str, regions: Optional[Dict] = None, label_names: Optional[Dict[int, str]] = None) -> str:
    """One row per image (FLAIR and T1ce where the case has them); columns image, ground truth (if any),
    prediction. Returns the caption.

    ``truth`` and ``prediction`` hold internal labels; ``regions`` (name -> labels, the cohort's) are
    scored in the caption, ``label_names`` (internal label -> name) name the colours.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    regions = regions or metrics_lib.BRATS_REGIONS
    colours = _label_colours(label_names)
    index = tumour_slice(truth, prediction)
    columns = [("image", None)] + ([("ground truth", truth)] if truth is not None else []) + \
        [("prediction", prediction)]
    modalities = [modality for modality in ("flair", "t1ce") if modality in images]
    figure, axes = plt.subplots(len(modalities), len(columns), figsize=(3.3 * len(columns), 3.3 * len(modalities)),
                                squeeze=False)
    for row, modality in enumerate(modalities):
        background = _axial_slice(images[modality], index)
        for column, (name, labels) in enumerate(columns):
            _overlay(axes[row][column], background, None if labels is None else _axial_slice(labels, index),
                     "{} {}".format(modality.upper(), name), colours)
    caption = "{}: axial slice {} of {}".format(case_id, index, prediction.shape[2])
    if truth is not None:
        scores = []
        for region, labels in regions.items():
            scores.append("{} {:.3f}".format(region, dice(np.isin(prediction, labels), np.isin(truth, labels))))
        caption += "; whole-volume Dice (BraTS regions) " + ", ".join(scores)
    legend = [Patch(color=colour, label=name) for name, colour in colours.values()]
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(caption, fontsize=9)
    figure.tight_layout(rect=(0, 0.05, 1, 0.95))
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return caption


def _case_sources(parameters: Dict, images_dir: Optional[str]) -> Dict[str, Tuple]:
    """Case id -> (modality -> image path, segmentation path or None, 4-D volume index or None,
    source label -> internal label, layout name).

    From ``images_dir``, else wherever the run read its data (``--input_dir``
    or the ``--data_dir`` manifest's source paths).
    """
    raw_dir = images_dir or parameters.get("input_dir")
    if raw_dir:
        layout = detect_layout(raw_dir)
        sources = {}
        for raw in discover_cases(raw_dir, require_segmentation=False):
            name = getattr(raw, "layout", None) or layout
            sources[raw.case_id] = (raw.images, raw.segmentation, getattr(raw, "volume_index", None),
                                    dict(LAYOUTS[name].label_map), name)
        return sources
    data_dir = parameters.get("data_dir")
    manifest = os.path.join(data_dir, "manifest.json") if data_dir else None
    if not manifest or not os.path.isfile(manifest):
        return {}
    with open(manifest) as handle:
        content = json.load(handle)
    cases = content.get("cases", [])
    label_map = {int(source): int(target) for source, target in content.get("label_map", {}).items()}
    layout = content.get("source_layout", "brats2019")
    sources = {}
    for case in cases:
        images = case.get("source_images", {})
        first = next(iter(sorted(images.values())), None)
        if first and all(os.path.isfile(path) for path in images.values()):
            segmentation = case.get("source_segmentation") or segmentation_beside(first, case["id"])
            sources[case["id"]] = (images, segmentation if segmentation and os.path.isfile(segmentation) else None,
                                   case.get("source_volume_index"), label_map, layout)
    return sources


def _prediction_folders(folder: str, parameters: Dict, predictions_dir: Optional[str]) -> List[str]:
    candidates = [predictions_dir, parameters.get("output_dir"), os.path.join(folder, "predictions")]
    unique = OrderedDict((os.path.realpath(candidate), candidate) for candidate in candidates
                         if candidate and os.path.isdir(candidate))
    return list(unique.values())


def _load_volume(path: str, volume: Optional[int] = None) -> np.ndarray:
    """A 3-D array from a NIfTI file; ``volume`` picks one along a 4-D file's 4th axis (MSD)."""
    import nibabel

    data = nibabel.load(path).dataobj
    return np.asanyarray(data[..., volume] if volume is not None else data)


def _internal(path: str, label_map: Dict[int, int]) -> np.ndarray:
    """A label-map file in internal labels (its values mapped through the data set's ``label_map``)."""
    return map_labels(_load_volume(path), label_map, path)


def _results_table(path: str, title: str) -> List[str]:
    """Markdown lines for an eval_results.json / cv_results.json, each metric with its scheme."""
    with open(path) as handle:
        content = json.load(handle)
    statistics = content.get("statistics") or content.get("pooled")
    lines = ["### {}".format(title), ""]
    if statistics:
        lines += ["| metric | scheme | mean | median | std |", "|---|---|---|---|---|"]
        for name, row in statistics.items():
            lines.append("| {} | {} | {:.4f} | {:.4f} | {:.4f} |".format(
                name, row["scheme"], row["mean"], row["median"], row["std"]))
    elif content.get("mean"):
        lines += ["| metric | scheme | mean |", "|---|---|---|"]
        for name, value in content["mean"].items():
            lines.append("| {} | {} | {:.4f} |".format(name, metrics_lib.scheme_of(name), value))
    if content.get("naming"):
        lines += [""] + ["- **{}**: {}".format(scheme, text) for scheme, text in content["naming"].items()]
    data = content.get("data")
    if data:
        lines += ["", "Data scored: {} (manifest fingerprint {}){}.".format(
            data.get("data_dir"), str(data.get("fingerprint"))[:12],
            "" if data.get("training_data", True) else ", not the run's training data set")]
    described = content.get("checkpoint_step")
    if described is not None:
        lines += ["", "Checkpoint step {}; inference {}.".format(described, json.dumps(content.get("inference", {})))]
    return lines + [""]


def _postprocessing_table(run_dir: str) -> List[str]:
    """Markdown lines for the post-processing chosen on cross-validation (``postprocessing.json``), if any."""
    path = os.path.join(run_dir, POSTPROCESSING_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as handle:
            content = json.load(handle)
        table = summary_lines(content, markdown=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError("{}: unreadable post-processing choice ({})".format(path, error)) from None
    return ["### Post-processing chosen on cross-validation ({})".format(POSTPROCESSING_FILE), "",
            "Pooled mean whole-volume Dice over {} and {} held-out cases before and after each step, each "
            "tried on top of the steps kept before it; `predict` applies what is kept.".format(
                "/".join(content["dice_regions"]), content["cases"]), ""] + table + [""]


def build_report(run_dir: str, *, out_dir: Optional[str] = None, cases: int = 3, images_dir: Optional[str] = None,
                 predictions_dir: Optional[str] = None) -> str:
    """Render the curves, a few case overlays and ``index.md``; returns the index's path.

    Raises:
        DataError: RUN_DIR holds no run log.
    """
    out_dir = out_dir or os.path.join(run_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    folders = run_folders(run_dir)
    logs = OrderedDict((label, read_log(os.path.join(folder, LOG_NAME))) for label, folder in folders.items())
    curves = OrderedDict((label, curves_of(records)) for label, (_, records) in logs.items())
    plot_curves(curves, os.path.join(out_dir, "curves.png"))

    lines = ["# unet3d run report: {}".format(os.path.abspath(run_dir)), "",
             "Each evaluation table names its schemes: whole-volume (brats, seed) and lesion-wise with the "
             "year's rules.", "", "## Training", "", "![training curves](curves.png)", ""]
    for label, curve in curves.items():
        if curve["steps"]:
            lines.append("- {}: steps {}..{}, last logged loss {:.4f}, {} evaluation(s)".format(
                label, curve["steps"][0], curve["steps"][-1], curve["loss"][-1], len(curve["evaluations"])))
    lines += ["", "## Evaluation", ""]
    cross_validation = os.path.join(run_dir, "cv_results.json")
    if os.path.isfile(cross_validation):
        lines += _results_table(cross_validation, "Cross-validation, all folds pooled")
    lines += _postprocessing_table(run_dir)
    for label, folder in folders.items():
        results = os.path.join(folder, "eval_results.json")
        if os.path.isfile(results):
            lines += _results_table(results, "{} ({})".format(label, results))
        for name in sorted(os.listdir(folder)):
            if name.startswith("eval_results-") and name.endswith(".json"):  # another data set's scores
                other = os.path.join(folder, name)
                lines += _results_table(other, "{}, another data set ({})".format(label, other))

    lines += ["## Cases", ""]
    drawn: List[str] = []
    for label, folder in folders.items():
        parameters = logs[label][0]
        sources = _case_sources(parameters, images_dir)
        for prediction_folder in _prediction_folders(folder, parameters, predictions_dir):
            for name in sorted(os.listdir(prediction_folder)):
                case_id = name[:-len(".nii.gz")] if name.endswith(".nii.gz") else None
                if len(drawn) >= cases:
                    break
                if case_id is None or case_id not in sources or case_id in drawn or name.startswith("."):
                    continue
                images, segmentation, volume_index, label_map, layout = sources[case_id]
                volumes = {modality: _load_volume(images[modality], (volume_index or {}).get(modality))
                           for modality in ("flair", "t1ce") if modality in images}
                truth = _internal(segmentation, label_map) if segmentation else None
                prediction = _internal(os.path.join(prediction_folder, name), label_map)
                picture = "case-{}.png".format(case_id)
                spec = LAYOUTS.get(layout, LAYOUTS["brats2019"])
                names = {label_map[source]: text for source, text in spec.label_names.items() if source in label_map}
                caption = plot_case(case_id, volumes, truth, prediction, os.path.join(out_dir, picture),
                                    spec.regions, names if not spec.seed_table else None)
                lines += ["![{}]({})".format(case_id, picture), "", caption, ""]
                drawn.append(case_id)
    if not drawn:
        lines.append("No case pictures: no predictions with findable images (run 'predict', or pass --images "
                     "RAW_DIR / --predictions DIR).")
    index = os.path.join(out_dir, "index.md")
    with open(index, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return index
