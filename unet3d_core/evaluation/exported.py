"""Segment raw cases with an export folder alone (what ``cli.py export`` wrote): no run folder, no checkpoint.

    python -m unet3d_core.evaluation.exported EXPORT_DIR --input_dir RAW --output_dir OUT

or, from Python, ``ExportedModel(EXPORT_DIR).predict_folder(RAW, OUT)``. Around the exported network it
does what ``cli.py predict --input_dir`` does around a checkpoint, with the same code: each case's images
scaled to the run's intensity storage and normalised (``export.json`` says how), sliding windows of the
training crop with overlap 0.5 and Gaussian blending, the arg-max (or, for a ``--target regions`` run, the
region painting), the post-processing chosen on cross-validation when the export carries
``postprocessing.json``, and a NIfTI label map in the case's own label values and geometry. The network runs in
ONNX Runtime (``model.onnx``, no TensorFlow needed) or TensorFlow 2 (``savedmodel/``); a frozen graph is for
Ascend's ATC and is refused here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, List, Optional

import numpy as np

from unet3d_core.data.layouts import region_painting
from unet3d_core.data.records import LEGACY_INTENSITY
from unet3d_core.data.volumes import output_paths, raw_folder_cases, write_label_map
from unet3d_core.errors import ConfigError, UNet3DError
from unet3d_core.evaluation import postprocessing
from unet3d_core.evaluation.export import OUTPUT_NAME, model_config_of
from unet3d_core.evaluation.inference import InferenceSettings, final_labels, sliding_window_probabilities

EXPORT_FILE = "export.json"


def _read_json(path: str, what: str):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ConfigError("{}: cannot read {} ({})".format(path, what, error)) from None


def _onnx_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("{}: running an ONNX export needs onnxruntime (pip install onnxruntime)".format(
            path)) from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.astype(np.float32)})[0]


def _savedmodel_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    if not tf.__version__.startswith("2."):
        raise ConfigError("{}: this SavedModel runs here under TensorFlow 2 (this is {}); export with --format "
                          "onnx to run without it".format(path, tf.__version__))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda batch: serve(images=tf.constant(batch, tf.float32))[OUTPUT_NAME].numpy()


class ExportedModel:
    """An export folder, ready to segment raw cases (see the module docstring)."""

    def __init__(self, export_dir: str, overlap: float = 0.5, batch_size: int = 1):
        description_path = os.path.join(export_dir, EXPORT_FILE)
        if not os.path.isfile(description_path):
            raise ConfigError("{}: no {} (give a folder written by 'cli.py export')".format(export_dir, EXPORT_FILE))
        self.description = _read_json(description_path, EXPORT_FILE)
        record = _read_json(os.path.join(export_dir, "run.json"), "the run's run.json")
        fmt, model = self.description.get("format"), os.path.join(export_dir, str(self.description.get("model")))
        if fmt == "onnx":
            self.run_batch = _onnx_runner(model)
        elif fmt == "savedmodel":
            self.run_batch = _savedmodel_runner(model)
        else:
            raise ConfigError("{}: a '{}' export is for Ascend's ATC; export with --format onnx or savedmodel to "
                              "predict with it".format(export_dir, fmt))
        config = model_config_of(record["network"])
        if not record["network"].get("input_shape"):
            raise ConfigError("{}: run.json does not record the training crop the windows take".format(export_dir))
        window = tuple(int(size) for size in record["network"]["input_shape"])
        self.intensity = str((record.get("data") or {}).get("intensity", LEGACY_INTENSITY))
        self.settings = InferenceSettings(
            window_shape=window, overlap=float(overlap), batch_size=int(batch_size), divisor=config.divisor,
            painting=tuple(region_painting(config.regions)) if config.target == "regions" else ())
        self.settings.validate()
        self.postprocessing = postprocessing.for_run(export_dir)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """float32 [x, y, z, outputs] of one normalised volume [x, y, z, channels]."""
        return sliding_window_probabilities(image, self.run_batch, self.settings)

    def predict_folder(self, input_dir: str, output_dir: str, progress: Optional[Callable[[str], None]] = None
                       ) -> List[str]:
        """Write ``<case>.nii.gz`` in ``output_dir`` for every case of the raw folder ``input_dir``; returns the
        written paths. Existing files are not overwritten (a DataError names the first)."""
        case_ids, cases = raw_folder_cases(input_dir, intensity=self.intensity)
        for case_id in case_ids:
            path = output_paths(output_dir, case_id, False)[0]
            if os.path.exists(path):
                raise ConfigError("{}: exists; choose an empty --output_dir".format(path))
        os.makedirs(output_dir, exist_ok=True)
        written = []
        for case in cases:
            labels = final_labels(self.probabilities(case.image), self.settings)
            if self.postprocessing is not None:
                labels = self.postprocessing.apply(labels)
            path = output_paths(output_dir, case.case_id, False)[0]
            write_label_map(path, labels, case)
            written.append(path)
            if progress is not None:
                progress(path)
        return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unet3d_core.evaluation.exported",
                                     description="Segment raw cases with a 'cli.py export' folder (onnx or "
                                                 "savedmodel) alone.")
    parser.add_argument("export_dir", help="the folder 'cli.py export --out' wrote")
    parser.add_argument("--input_dir", required=True, help="raw BraTS-style cases (segmentations not needed)")
    parser.add_argument("--output_dir", required=True, help="new or empty folder for <case>.nii.gz label maps")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default 0.5)")
    options = parser.parse_args(argv)
    try:
        model = ExportedModel(options.export_dir, overlap=options.overlap)
        written = model.predict_folder(options.input_dir, options.output_dir,
                                       progress=lambda path: print("wrote " + path, flush=True))
    except UNet3DError as error:
        print("error: {}".format(error), file=sys.stderr)
        return 1
    print("{} case(s) segmented with {}".format(len(written), options.export_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
