"""``cli.py export``: a trained run's network, ready for deployment outside unet3d.

- ``savedmodel``: a TensorFlow SavedModel with one serving signature,
  ``serving_default``: input ``images`` float32 [batch, x, y, z, channels]
  (normalised as below; x, y, z multiples of the network's down-sampling) ->
  output ``probabilities`` float32 [batch, x, y, z, outputs] (softmax over the
  labels, or one sigmoid per region for ``--target regions`` runs). TensorFlow
  1.15 and 2.x load it (``tf.compat.v1.saved_model.load`` /
  ``tf.saved_model.load``), and so does TensorFlow Serving.
- ``frozen``: ``model.pb``, a GraphDef with the weights as constants and a
  fixed input shape [1, X, Y, Z, channels] (``--window``, default the training
  crop), inference-only ops: for Ascend's ATC converter (``atc --framework=3``)
  and TF-TRT.
- ``onnx``: ``model.onnx`` (opset 17, any batch and spatial size) converted by
  ``tf2onnx``, an optional extra (``pip install -e .[onnx]``) of the
  TensorFlow 2.15 environment.

The network is built with the core's own layers (no backend's kernels), from
the run's ``run.json``, and restored from the checkpoint ``--checkpoint`` selects
(the run's best one where it has one, else the newest). Beside the
model: a copy of ``run.json`` and ``export.json`` saying how inputs must be
prepared, what comes out and, for ``frozen``, the ATC command; and the run's
``postprocessing.json`` when cross-validation chose one. The export is
written to a temporary folder and moved to ``--out`` when complete.
:mod:`unet3d_core.evaluation.exported` segments raw cases with such a folder.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Sequence

from unet3d_core.data.preprocess import intensity_description
from unet3d_core.data.records import LEGACY_INTENSITY, Manifest
from unet3d_core.errors import ConfigError, UNet3DError
from unet3d_core.evaluation.inference import output_probabilities
from unet3d_core.evaluation.postprocessing import POSTPROCESSING_FILE, find_postprocessing_file
from unet3d_core.folders import published_folder
from unet3d_core.model.checkpoints import latest_checkpoint, restore_checkpoint, select_checkpoint
from unet3d_core.model.config import ModelConfig
from unet3d_core.model.run_folder import read_run, run_file_path

FORMATS = ("savedmodel", "frozen", "onnx")
ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
NORMALISATION = ("per image channel: {}, then subtract the mean and divide by the standard deviation of the "
                 "voxels > 0 (voxels that were 0 stay 0); channels in the order of 'channels'")


def normalisation(record: Dict) -> str:
    """How an input is normalised for the run of ``record`` (its training data's intensity storage)."""
    return NORMALISATION.format(intensity_description((record.get("data") or {}).get("intensity", LEGACY_INTENSITY)))


def model_config_of(network: Dict):
    """The ModelConfig a ``run.json`` network section describes."""
    regions = tuple((str(name), tuple(int(label) for label in labels))
                    for name, labels in network.get("regions") or [])
    return ModelConfig(in_channels=int(network["in_channels"]), num_classes=int(network["num_classes"]),
                       base_filters=int(network["base_filters"]), max_filters=int(network["max_filters"]),
                       depth=int(network["depth"]), norm=str(network["norm"]), groups=int(network.get("groups", 16)),
                       target=str(network.get("target") or "labels"), regions=regions)


def _channel_names(record: Dict):
    """The images of the run's data set, in input order, where its manifest can still be read."""
    folder = (record.get("data") or {}).get("data_dir")
    try:
        return Manifest(folder).channels if folder else None
    except Exception:  # a moved or removed data set: the names are a courtesy
        return None


def atc_command(window: Sequence[int], channels: int) -> str:
    """The ATC conversion of ``model.pb`` for an Ascend 910 (fp16 where the NPU needs it)."""
    return ("atc --framework=3 --model=model.pb --output=unet3d --soc_version=Ascend910 --input_format=NDHWC "
            "--input_shape=\"{}:1,{},{},{},{}\" --out_nodes=\"{}:0\" --precision_mode=allow_fp32_to_fp16".format(
                INPUT_NAME, window[0], window[1], window[2], channels, OUTPUT_NAME))


def _to_onnx(frozen_graph_def, path: str) -> None:
    """Convert the frozen inference graph (any input size) with tf2onnx, named as the other formats."""
    import tensorflow as tf
    import tf2onnx

    with tf.Graph().as_default():
        tf2onnx.convert.from_graph_def(frozen_graph_def, input_names=[INPUT_NAME + ":0"],
                                       output_names=[OUTPUT_NAME + ":0"], opset=ONNX_OPSET, output_path=path)


def _check_request(model_dir: str, out_dir: str, fmt: str, checkpoint: Optional[str]):
    """Refuse a bad format, a missing tf2onnx, run or checkpoint, or a used --out; returns the run's record and
    the (checkpoint path, step, how it was selected) exported."""
    if fmt not in FORMATS:
        raise ConfigError("--format {}: choose {}".format(fmt, ", ".join(FORMATS)))
    if fmt == "onnx":
        try:
            import tf2onnx  # noqa: F401
        except ImportError:
            raise ConfigError("--format onnx needs tf2onnx, an optional extra of the TensorFlow 2.15 environment: "
                              "pip install -e '.[onnx]'") from None
    record = read_run(model_dir) if os.path.isdir(model_dir) else None
    if record is None:
        raise ConfigError("--model_dir {}: no run.json (not a unet3d run folder, or trained before run folders "
                          "existed)".format(model_dir))
    if checkpoint is None and latest_checkpoint(model_dir)[0] is None:
        raise ConfigError("--model_dir {}: no checkpoint to export; train first".format(model_dir))
    selection = select_checkpoint(model_dir, checkpoint)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConfigError("--out {}: already exists and is not empty; choose another or remove it".format(out_dir))
    return record, selection


def _input_window(record: Dict, config, fmt: str, window: Optional[Sequence[int]]):
    """The spatial input shape: ``window``, else the run's training crop; checked for the frozen format."""
    window = [int(size) for size in (window or record["network"].get("input_shape") or (128, 128, 128))]
    if fmt == "frozen" and any(size <= 0 or size % config.divisor for size in window):
        raise ConfigError("--window {}: every size must be a positive multiple of {} (the network's "
                          "down-sampling)".format(" ".join(map(str, window)), config.divisor))
    return window


def _save_savedmodel(session, model_path: str, images, probabilities) -> None:
    """Write the session's graph and weights as a SavedModel with one serving signature."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    builder = tf1.saved_model.Builder(model_path)
    signature = tf1.saved_model.predict_signature_def(
        inputs={INPUT_NAME: images}, outputs={OUTPUT_NAME: probabilities})
    builder.add_meta_graph_and_variables(
        session, [tf1.saved_model.tag_constants.SERVING],
        signature_def_map={"serving_default": signature}, strip_default_attrs=True)
    builder.save()


def _freeze(session, graph):
    """The inference graph with the weights as constants, training-only nodes removed."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    frozen = tf1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), [OUTPUT_NAME])
    return tf1.graph_util.remove_training_nodes(frozen, protected_nodes=[OUTPUT_NAME])


def _write_model(staging: str, fmt: str, config, window: Sequence[int], checkpoint: str) -> None:
    """Build the network, restore ``checkpoint`` and write it to ``staging`` in ``fmt``."""
    import tensorflow as tf

    from unet3d_core.model.network import build_unet3d

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        shape = [1] + window if fmt == "frozen" else [None, None, None, None]  # onnx: any size
        images = tf1.placeholder(tf.float32, shape + [config.in_channels], name=INPUT_NAME)
        logits = build_unet3d(images, config, training=False)
        probabilities = tf.identity(output_probabilities(logits, config), name=OUTPUT_NAME)
        saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            restore_checkpoint(saver, session, checkpoint)
            if fmt == "savedmodel":
                _save_savedmodel(session, os.path.join(staging, "savedmodel"), images, probabilities)
            else:
                frozen = _freeze(session, graph)
                if fmt == "frozen":
                    with open(os.path.join(staging, "model.pb"), "wb") as handle:
                        handle.write(frozen.SerializeToString())
    if fmt == "onnx":
        _to_onnx(frozen, os.path.join(staging, "model.onnx"))


def _label_mapping(record: Dict, config) -> Optional[Dict]:
    """What each output channel means in the data set's own labels (the run's data set read from its
    manifest): softmax channel k -> the source label written for internal label k, with its name; a region's
    sigmoid -> the source labels it covers. None when the data set is not readable here."""
    try:
        manifest = Manifest(str(record.get("data", {}).get("data_dir") or ""))
    except UNet3DError:
        return None
    source_of = {internal: source for source, internal in manifest.label_map.items()}
    names = {int(label): str(name) for label, name in (manifest.content.get("label_names") or {}).items()}
    if config.target == "regions":
        return {"layout": manifest.layout, "channels": [
            {"channel": channel, "region": name, "source_labels": [source_of.get(label, label) for label in labels]}
            for channel, (name, labels) in enumerate(config.regions)]}
    return {"layout": manifest.layout, "channels": [
        {"channel": channel, "source_label": source_of.get(channel, channel),
         "name": names.get(source_of.get(channel, channel), "")} for channel in range(config.num_classes)]}


def _description(model_dir: str, fmt: str, record: Dict, config, window: Sequence[int], selection,
                 tensorflow_version: str) -> Dict:
    """The content of ``export.json``: the model's file, its source, its input and output, how to use it."""
    checkpoint, step, selected = selection
    description = {
        "format": fmt,
        "model": {"savedmodel": "savedmodel", "frozen": "model.pb", "onnx": "model.onnx"}[fmt],
        "source": {"model_dir": os.path.abspath(model_dir),
                   "checkpoint": os.path.relpath(checkpoint, model_dir).replace(os.sep, "/"), "step": step,
                   "selected": selected},
        "tensorflow": tensorflow_version,
        "input": {"name": INPUT_NAME + ("" if fmt == "savedmodel" else ":0"), "dtype": "float32",
                  "shape": ([1] + window if fmt == "frozen" else ["batch", "x", "y", "z"])
                  + [config.in_channels],
                  "spatial_multiple_of": config.divisor,
                  "channels": _channel_names(record),
                  "normalisation": normalisation(record)},
        "output": {"name": OUTPUT_NAME + ("" if fmt == "savedmodel" else ":0"), "dtype": "float32",
                   "channels": config.outputs,
                   "meaning": ("one sigmoid per region: " + ", ".join(name for name, _ in config.regions)
                               if config.target == "regions" else
                               "softmax over the internal labels 0..{}".format(config.num_classes - 1))},
    }
    labels = _label_mapping(record, config)
    if labels is not None:
        description["output"]["labels"] = labels
    if fmt == "savedmodel":
        description["signature"] = "serving_default"
    elif fmt == "frozen":
        description["atc"] = atc_command(window, config.in_channels)
    else:
        description["opset"] = ONNX_OPSET
    return description


def export(model_dir: str, out_dir: str, *, fmt: str = "savedmodel", window: Optional[Sequence[int]] = None,
           checkpoint: Optional[str] = None) -> Dict:
    """Export the checkpoint of ``model_dir`` that ``checkpoint`` names (best, latest or a step; by default the
    best one where the run has one, else the newest) to ``out_dir``; returns the content of ``export.json``.

    Raises:
        ConfigError: no run.json or checkpoint, an existing --out, an unknown format, a bad window.
    """
    import tensorflow as tf

    record, selection = _check_request(model_dir, out_dir, fmt, checkpoint)
    config = model_config_of(record["network"])
    window = _input_window(record, config, fmt, window)
    with published_folder(out_dir, ".unet3d-export-") as staging:
        _write_model(staging, fmt, config, window, selection[0])
        shutil.copyfile(run_file_path(model_dir), os.path.join(staging, "run.json"))
        description = _description(model_dir, fmt, record, config, window, selection, tf.__version__)
        chosen = find_postprocessing_file(model_dir)  # what cross-validation chose, applied by the predictor too
        if chosen is not None:
            shutil.copyfile(chosen, os.path.join(staging, POSTPROCESSING_FILE))
            description["postprocessing"] = POSTPROCESSING_FILE
        with open(os.path.join(staging, "export.json"), "w") as handle:
            json.dump(description, handle, indent=1)
    return description
