"""The preprocessed data set: one TFRecord file per case plus ``manifest.json``.

Record schema (one ``tf.train.Example`` per file):

- ``image``: bytes, [x, y, z, C] in C order, the manifest's ``channels``
  (t1, t1ce, t2, flair for four-image layouts; t1ce alone for MEN-RT), in the
  manifest's ``intensity_format``: ``uint16`` (little-endian; [0, max] per
  channel, format 3's default) or ``uint8`` (the reference's clip at 0.85 x max;
  every format-1 and -2 data set)
- ``label``: bytes, uint8 [x, y, z], internal labels 0..K-1 (all zero and
  ``has_label`` 0 for cases without segmentation)
- ``shape``: int64 [3]; ``mean``, ``std``: float [C] over voxels > 0
- ``case_index``: int64, the case's position in the manifest
- ``foreground_counts``: bytes, int32 [K-1]: how many locations of each
  foreground class (internal labels 1..K-1) follow (format 2; absent in 1)
- ``foreground_locations``: bytes, int32 [sum of counts, 3]: voxel indices
  (x, y, z) of each class in turn, at most ``FOREGROUND_SAMPLES`` per class,
  drawn once here so that training centres crops on a class without
  scanning the volume (format 2; absent in 1, whose cases train on uniform
  crops alone)

The manifest records, per case: id, grade, fold, file, shape, affine,
spacing, crop box, statistics and source files; and for the data set: the
source layout, its ``channels``, ``cohort``, ``label_map`` (source label ->
internal label, as JSON strings -> ints), ``label_names`` and ``regions``
(the scored label sets, internal labels), the fold seed, the cases left out by ``--skip-invalid``
(``skipped``: id, file, reason) and the format version. ``shape``, ``affine``
and ``spacing`` are the source images' spatial (3-D) geometry, also for
MSD's 4-D images, so predictions are written as 3-D label maps that overlay
the source.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from unet3d_core.errors import ConfigError, DataError
from unet3d_core.folders import KIND_DESCRIPTIONS, MANIFEST_NAME, folder_kind

FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # version 1: no foreground locations; 1 and 2: uint8 images alone
INTENSITY_FORMATS = ("uint16", "uint8")
DEFAULT_INTENSITY = "uint16"  # preprocess --intensity
LEGACY_INTENSITY = "uint8"  # the storage of data sets whose manifest names none
_IMAGE_DTYPES = {"uint8": "u1", "uint16": "<u2"}
FOREGROUND_SAMPLES = 10000  # per class, as nnU-Net's preprocessing keeps
RECORD_SUFFIX = ".tfrecord"


# A tf.train.Example is small enough a protobuf to encode by hand, which lets
# preprocessing workers build records without importing TensorFlow. Wire format:
# a field is varint(number << 3 | type) then, for type 2, varint(length) and
# the bytes. Example{features=1: Features{feature=1: map entry{key=1, value=2:
# Feature{bytes_list=1 | float_list=2 | int64_list=3: List{value=1}}}}}, the
# numeric lists packed. Entries go in key order, as TensorFlow's deterministic
# serialisation writes them, so the bytes are the same as TensorFlow's.
_LENGTH_DELIMITED = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _feature_entry(key: str, kind: int, values: bytes) -> bytes:
    """One map entry of Features; ``kind`` 1 bytes, 2 floats, 3 int64s; ``values`` the List's field 1."""
    feature = _field(kind, _field(1, values))
    return _field(1, _field(1, key.encode("ascii")) + _field(2, feature))


def _int64s(values) -> bytes:
    return b"".join(_varint(int(value)) for value in values)  # non-negative here


def foreground_locations(label, num_classes: int, key: str, limit: int = FOREGROUND_SAMPLES):
    """Up to ``limit`` voxel indices of each foreground class, drawn without replacement.

    Args:
        label: uint8 [x, y, z] internal labels, or None (no classes).
        num_classes: K; classes 1..K-1 get a count each (0 where absent).
        key: the case id: the draw is seeded by it, so the same case always gives the same locations.
    Returns:
        (int32 [K-1] counts, int32 [sum(counts), 3] locations, class after class).
    """
    import zlib

    import numpy as np

    counts = np.zeros(max(num_classes - 1, 0), np.int32)
    parts = []
    if label is not None:
        random = np.random.RandomState(zlib.crc32(key.encode("utf-8")))
        for klass in range(1, num_classes):
            where = np.argwhere(label == klass).astype(np.int32)
            if len(where) > limit:
                where = where[np.sort(random.choice(len(where), limit, replace=False))]
            counts[klass - 1] = len(where)
            parts.append(where)
    locations = np.concatenate(parts, axis=0) if parts else np.zeros((0, 3), np.int32)
    return counts, locations.astype(np.int32)


def encode_case_features(image, label, mean, std, foreground=None) -> bytes:
    """Every feature of a case's record except ``case_index``, encoded (see ``assemble_record``).

    ``foreground``: (counts, locations) from :func:`foreground_locations`; None writes a format-1 record.
    """
    import numpy as np

    has_label = label is not None
    if label is None:
        label = np.zeros(image.shape[:3], dtype=np.uint8)
    entries = []  # in key order, after "case_index"
    if foreground is not None:
        counts, locations = foreground
        entries += [_feature_entry("foreground_counts", 1, np.asarray(counts, dtype="<i4").tobytes()),
                    _feature_entry("foreground_locations", 1, np.asarray(locations, dtype="<i4").tobytes())]
    entries += [
        _feature_entry("has_label", 3, _int64s([1 if has_label else 0])),
        _feature_entry("image", 1, np.ascontiguousarray(image, dtype=_IMAGE_DTYPES[image.dtype.name]).tobytes()),
        _feature_entry("label", 1, np.ascontiguousarray(label, dtype=np.uint8).tobytes()),
        _feature_entry("mean", 2, np.asarray(mean, dtype="<f4").tobytes()),
        _feature_entry("shape", 3, _int64s(image.shape[:3])),
        _feature_entry("std", 2, np.asarray(std, dtype="<f4").tobytes()),
    ]
    return b"".join(entries)


def assemble_record(case_index: int, features: bytes) -> bytes:
    """The serialised tf.train.Example of a case from ``encode_case_features`` and its manifest position."""
    index = _feature_entry("case_index", 3, _int64s([case_index]))
    header = _varint(1 << 3 | _LENGTH_DELIMITED) + _varint(len(index) + len(features))
    return b"".join((header, index, features))  # one copy of the volume's bytes


def serialize_case(image, label, mean, std, case_index: int) -> bytes:
    """Serialise one preprocessed case (uint8 or uint16 image, uint8 label) as a tf.train.Example."""
    return assemble_record(case_index, encode_case_features(image, label, mean, std))


def parse_case(serialized, channels: int, intensity: str):
    """Parse a serialised case of ``channels`` images stored as ``intensity`` (the manifest's
    :attr:`Manifest.intensity_format`) into tensors (graph op).

    Returns:
        dict with ``image`` uint8 or uint16 [x, y, z, channels], ``label`` uint8 [x, y, z],
        ``mean``/``std`` float32 [channels], ``case_index`` int64 scalar,
        ``foreground_counts`` int32 [K-1] and ``foreground_locations`` int32 [N, 3]
        (both empty for format-1 records).
    """
    import tensorflow as tf

    spec = {
        "foreground_counts": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "foreground_locations": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "mean": tf.io.FixedLenFeature([channels], tf.float32),
        "std": tf.io.FixedLenFeature([channels], tf.float32),
        "case_index": tf.io.FixedLenFeature([], tf.int64),
    }
    features = tf.io.parse_single_example(serialized, spec)
    shape = tf.cast(features["shape"], tf.int32)
    image = tf.io.decode_raw(features["image"], tf.as_dtype(intensity), little_endian=True)
    image = tf.reshape(image, tf.concat([shape, [channels]], axis=0))
    image.set_shape([None, None, None, channels])
    label = tf.reshape(tf.io.decode_raw(features["label"], tf.uint8), shape)
    counts = tf.io.decode_raw(features["foreground_counts"], tf.int32, little_endian=True)
    locations = tf.reshape(tf.io.decode_raw(features["foreground_locations"], tf.int32, little_endian=True), [-1, 3])
    return {"image": image, "label": label, "mean": features["mean"], "std": features["std"],
            "case_index": features["case_index"], "foreground_counts": counts, "foreground_locations": locations}


def read_record(path: str) -> Dict:
    """Read one record file into numpy arrays (for tools and tests; training uses ``parse_case``).

    Returns:
        dict with ``image`` uint8 or uint16 (as stored) [x, y, z, C], ``label``
        uint8 [x, y, z] or None, ``mean``/``std`` float32 [C], ``case_index`` int.
    """
    import numpy as np
    import tensorflow as tf

    serialized = next(iter(tf.compat.v1.io.tf_record_iterator(path)))
    feature = tf.train.Example.FromString(serialized).features.feature
    shape = tuple(feature["shape"].int64_list.value)
    label = None
    if feature["has_label"].int64_list.value[0]:
        label = np.frombuffer(feature["label"].bytes_list.value[0], dtype=np.uint8).reshape(shape)
    channels = len(feature["mean"].float_list.value)
    stored = feature["image"].bytes_list.value[0]
    width = len(stored) // (int(np.prod(shape)) * channels)  # bytes per voxel: 1 (uint8) or 2 (uint16)
    return {
        "image": np.frombuffer(stored, dtype=_IMAGE_DTYPES["uint16" if width == 2 else "uint8"]).reshape(
            shape + (channels,)),
        "label": label,
        "mean": np.asarray(feature["mean"].float_list.value, dtype=np.float32),
        "std": np.asarray(feature["std"].float_list.value, dtype=np.float32),
        "case_index": int(feature["case_index"].int64_list.value[0]),
    }


def write_manifest(folder: str, manifest: Dict) -> None:
    with open(os.path.join(folder, MANIFEST_NAME), "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)


def _not_a_data_set(data_dir: str) -> str:
    """Why ``data_dir`` (no manifest.json) is not a data set, and the likely fix."""
    kind = folder_kind(data_dir)
    text = "--data_dir {}: no {}, so not a preprocessed data set".format(data_dir, MANIFEST_NAME)
    if kind in ("run", "cross-validation"):
        return text + "; it is {}: --data_dir and --model_dir swapped?".format(KIND_DESCRIPTIONS[kind])
    if kind == "raw":
        return text + "; it holds {}: preprocess it into a new folder first, e.g. 'python cli.py preprocess " \
                      "-i {} -o {}-records'".format(KIND_DESCRIPTIONS[kind], data_dir, data_dir.rstrip("/\\"))
    return text + " ({}); preprocess raw cases into it with 'python cli.py preprocess -i RAW_DIR -o {}'".format(
        KIND_DESCRIPTIONS[kind], data_dir)


class Manifest:
    """A preprocessed data folder, checked on open."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        path = os.path.join(data_dir, MANIFEST_NAME)
        if not os.path.isdir(data_dir):
            raise DataError("--data_dir {}: no such directory".format(data_dir))
        if not os.path.isfile(path):
            raise DataError(_not_a_data_set(data_dir))
        try:
            with open(path) as handle:
                self.content = json.load(handle)
        except (OSError, ValueError) as error:
            raise DataError("{}: unreadable manifest: {}".format(path, error)) from None
        version = self.content.get("format_version")
        if version not in READABLE_VERSIONS:
            raise DataError("{}: records are format version {}, this unet3d reads version {}; "
                            "run 'python cli.py preprocess' again".format(path, version, FORMAT_VERSION))
        if self.intensity_format not in INTENSITY_FORMATS:
            raise DataError("{}: unknown intensity_format {!r} (this unet3d reads {}); run 'python cli.py "
                            "preprocess' again".format(path, self.intensity_format, ", ".join(INTENSITY_FORMATS)))
        self.cases: List[Dict] = self.content["cases"]
        if not self.cases:
            raise DataError("{}: the data set has no cases; run 'python cli.py preprocess' on a folder of cases "
                            "(see 'python cli.py validate')".format(path))
        for case in self.cases:
            record = os.path.join(data_dir, case["file"])
            if not os.path.isfile(record):
                raise DataError("{}: record of case {} is missing ({}); run 'python cli.py preprocess' "
                                "again".format(path, case["id"], record))
            expected = case.get("record_bytes")
            if expected is not None and os.path.getsize(record) != expected:
                raise DataError("{}: {} bytes, but the manifest says {} (truncated or replaced); run "
                                "'python cli.py preprocess' again".format(record, os.path.getsize(record), expected))

    @property
    def num_folds(self) -> int:
        return int(self.content["folds"])

    @property
    def label_map(self) -> Dict[int, int]:
        """Source label -> internal label."""
        return {int(source): int(target) for source, target in self.content["label_map"].items()}

    @property
    def layout(self) -> str:
        return str(self.content.get("source_layout", "brats2019"))

    @property
    def intensity_format(self) -> str:
        """How the records store intensities: uint16 or uint8 (every data set older than format 3)."""
        return str(self.content.get("intensity_format", LEGACY_INTENSITY))

    @property
    def channels(self) -> List[str]:
        """The images of every case, in network input order."""
        return list(self.content.get("channels", ["t1", "t1ce", "t2", "flair"]))

    @property
    def num_classes(self) -> int:
        """Internal labels 0..K-1: the network's output classes."""
        return max(self.label_map.values()) + 1

    @property
    def skipped(self) -> List[Dict]:
        """Cases ``--skip-invalid`` left out: dicts with id, file, reason."""
        return list(self.content.get("skipped", []))

    def labels_present(self) -> Optional[List[int]]:
        """The internal foreground labels any labelled case's truth holds, sorted; None when some labelled case
        was written before preprocess recorded them."""
        found = set()
        for case in self.cases:
            if case["has_label"]:
                if case.get("labels_present") is None:
                    return None
                found.update(int(label) for label in case["labels_present"])
        return sorted(found)

    def fingerprint(self) -> str:
        """SHA-256 of what defines the data set: each case's id, fold, label flag and record size, the folds
        and the label map. Paths are left out, so a moved copy of the same records has the same fingerprint."""
        import hashlib

        content = {
            "cases": [[case["id"], case["fold"], bool(case["has_label"]), case.get("record_bytes")]
                      for case in self.cases],
            "folds": self.num_folds,
            "label_map": sorted(self.label_map.items()),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()

    def record_path(self, case: Dict) -> str:
        return os.path.join(self.data_dir, case["file"])

    def split(self, fold: int):
        """Return (training cases, validation cases) for ``fold``; validation is that fold."""
        if not 0 <= fold < self.num_folds:
            raise ConfigError("--fold {}: the data set has folds 0..{}".format(fold, self.num_folds - 1))
        training = [case for case in self.cases if case["fold"] != fold and case["has_label"]]
        validation = [case for case in self.cases if case["fold"] == fold and case["has_label"]]
        return training, validation


def find_damaged_record(paths) -> Optional[str]:
    """The first record file that TensorFlow cannot read back whole (CRC, framing), with why.

    Used after the input pipeline failed, to name the file in the error.
    """
    import tensorflow as tf

    for path in paths:
        try:
            for serialized in tf.compat.v1.io.tf_record_iterator(path):
                tf.train.Example.FromString(serialized)
        except Exception as error:  # DataLossError, DecodeError, OSError...
            return "{}: {}".format(path, " ".join(str(error).split())[:200])
    return None
