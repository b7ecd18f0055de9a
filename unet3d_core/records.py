"""The preprocessed data set: one TFRecord file per case plus ``manifest.json``.

Record schema (one ``tf.train.Example`` per file):

- ``image``: bytes, uint8 [x, y, z, 4] in C order, channels t1, t1ce, t2, flair
- ``label``: bytes, uint8 [x, y, z], internal labels 0..3 (all zero and
  ``has_label`` 0 for cases without segmentation)
- ``shape``: int64 [3]; ``mean``, ``std``: float [4] over voxels > 0
- ``case_index``: int64, the case's position in the manifest

The manifest records, per case: id, grade, fold, file, shape, affine,
spacing, crop box, statistics; and for the data set: the source layout, the
label mapping, the fold seed and the format version.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

from unet3d_core.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
RECORD_SUFFIX = ".tfrecord"


def serialize_case(image, label, mean, std, case_index: int) -> bytes:
    """Serialise one preprocessed case (uint8 arrays) as a tf.train.Example."""
    import tensorflow as tf

    def _bytes(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def _floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    has_label = label is not None
    if label is None:
        import numpy as np

        label = np.zeros(image.shape[:3], dtype=np.uint8)
    features = {
        "image": _bytes(image.tobytes()),
        "label": _bytes(label.tobytes()),
        "shape": _ints(image.shape[:3]),
        "mean": _floats(mean),
        "std": _floats(std),
        "case_index": _ints([case_index]),
        "has_label": _ints([1 if has_label else 0]),
    }
    # deterministic: map fields would otherwise be ordered by per-process string hashes.
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def parse_case(serialized):
    """Parse a serialised case into tensors (graph op).

    Returns:
        dict with ``image`` uint8 [x, y, z, 4], ``label`` uint8 [x, y, z],
        ``mean``/``std`` float32 [4], ``case_index`` int64 scalar.
    """
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "mean": tf.io.FixedLenFeature([4], tf.float32),
        "std": tf.io.FixedLenFeature([4], tf.float32),
        "case_index": tf.io.FixedLenFeature([], tf.int64),
    }
    features = tf.io.parse_single_example(serialized, spec)
    shape = tf.cast(features["shape"], tf.int32)
    image = tf.reshape(tf.io.decode_raw(features["image"], tf.uint8), tf.concat([shape, [4]], axis=0))
    label = tf.reshape(tf.io.decode_raw(features["label"], tf.uint8), shape)
    return {"image": image, "label": label, "mean": features["mean"], "std": features["std"],
            "case_index": features["case_index"]}


def write_manifest(folder: str, manifest: Dict) -> None:
    with open(os.path.join(folder, MANIFEST_NAME), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


class Manifest:
    """A preprocessed data folder, checked on open."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        path = os.path.join(data_dir, MANIFEST_NAME)
        if not os.path.isdir(data_dir):
            raise DataError("--data_dir {}: no such directory".format(data_dir))
        if not os.path.isfile(path):
            raise DataError("--data_dir {}: no {} (not a preprocessed data set; run "
                            "'python cli.py preprocess -i RAW_DIR -o {}')".format(data_dir, MANIFEST_NAME, data_dir))
        try:
            with open(path) as handle:
                self.content = json.load(handle)
        except (OSError, ValueError) as error:
            raise DataError("{}: unreadable manifest: {}".format(path, error)) from None
        version = self.content.get("format_version")
        if version != FORMAT_VERSION:
            raise DataError("{}: records are format version {}, this unet3d reads version {}; "
                            "run 'python cli.py preprocess' again".format(path, version, FORMAT_VERSION))
        self.cases: List[Dict] = self.content["cases"]
        for case in self.cases:
            record = os.path.join(data_dir, case["file"])
            if not os.path.isfile(record):
                raise DataError("{}: record of case {} is missing ({})".format(path, case["id"], record))

    @property
    def num_folds(self) -> int:
        return int(self.content["folds"])

    @property
    def label_map(self) -> Dict[int, int]:
        return {int(source): int(target) for source, target in self.content["label_map"].items()}

    def record_path(self, case: Dict) -> str:
        return os.path.join(self.data_dir, case["file"])

    def split(self, fold: int):
        """Return (training cases, validation cases) for ``fold``; validation is that fold."""
        from unet3d_core.errors import ConfigError

        if not 0 <= fold < self.num_folds:
            raise ConfigError("--fold {}: the data set has folds 0..{}".format(fold, self.num_folds - 1))
        training = [case for case in self.cases if case["fold"] != fold and case["has_label"]]
        validation = [case for case in self.cases if case["fold"] == fold and case["has_label"]]
        return training, validation
