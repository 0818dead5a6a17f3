"""The person-crop record: the one tf.Example layout shared by every stage.

ExampleGen (Beam) writes it with :func:`build_example`; the trainer, the
evaluator and the serving signature read it with :func:`feature_spec` /
:func:`parse_records`. Bump :data:`SCHEMA_VERSION` on any layout change.

One record is one person crop. Coordinates follow :mod:`pose.coordinates`.

=====================  ======  =======  ===========================================
key                    dtype   shape    meaning
=====================  ======  =======  ===========================================
schema/version         int64   ()       :data:`SCHEMA_VERSION`
dataset                bytes   ()       keypoint schema name (coco / mpii)
image/encoded          bytes   ()       the crop at the model input size, encoded
image/format           bytes   ()       ``jpeg`` or ``png``
image/id               int64   ()       source image id
image/height           int64   ()       source image height, pixels
image/width            int64   ()       source image width, pixels
annotation/id          int64   ()       annotation id (-1 for detector boxes)
crop/height            int64   ()       model input height
crop/width             int64   ()       model input width
bbox/center            float   (2,)     crop window centre (x, y), image pixels
bbox/scale             float   (2,)     crop window size (w, h), image pixels
bbox/score             float   ()       box score (1 for ground-truth boxes)
person/area            float   ()       annotation area (OKS normaliser), pixels^2
keypoints/crop         float   (K*2,)   keypoints (x, y) in crop pixels, row-major
keypoints/image        float   (K*2,)   keypoints (x, y) in source-image pixels
keypoints/visibility   int64   (K,)     0 unlabelled, 1 labelled occluded, 2 visible
heatmaps/encoded       bytes   ()       targets (H_hm, W_hm, K) channels-last, see below
heatmap/height         int64   ()       H_hm
heatmap/width          int64   ()       W_hm
target_weight          float   (K,)     per-joint loss weight
=====================  ======  =======  ===========================================

Heatmap storage: 16-bit fixed point, ``round(value * 65535)`` as raw
little-endian uint16, stored joint-major ``(K, H_hm, W_hm)`` (the decoders
return channels-last ``(H_hm, W_hm, K)``); values must lie in [0, 1] (the
targets peak at 1). Chosen by measurement (``bench/ingest.py``,
docs/example_gen.md) over float16 and 8-bit quantisation: at 256x192 /
64x48 / K=17 with the writer's gzip (level 1, Z_RLE), uint16 is smaller than float16 and adds
~20x less DARK round-trip error (float16 keeps useless precision in the
near-zero tails, which compresses badly); uint8 is smaller still but adds
~0.005 px mean / 0.03 px max, half of the 0.01 px budget. Joint-major order
puts each Gaussian's zero tails in long runs: ~1.3x fewer gzip'd bytes than
channels-last order.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 2  # 2: uint16 fixed-point joint-major heatmaps (1 was float16 channels-last)
HEATMAP_DTYPE = np.dtype("<u2")
HEATMAP_TF_DTYPE = tf.uint16
HEATMAP_SCALE = 65535.0
"""Stored value = round(heatmap * HEATMAP_SCALE)."""

_SCALARS_INT = ("schema/version", "image/id", "image/height", "image/width", "annotation/id",
                "crop/height", "crop/width", "heatmap/height", "heatmap/width")
_SCALARS_FLOAT = ("bbox/score", "person/area")
_SCALARS_BYTES = ("dataset", "image/encoded", "image/format", "heatmaps/encoded")


def feature_spec(num_joints: int) -> Dict[str, tf.io.FixedLenFeature]:
    """The parsing spec of a person-crop record with ``num_joints`` joints."""
    if num_joints < 1:
        raise ValueError(f"num_joints must be >= 1, got {num_joints}")
    spec = {key: tf.io.FixedLenFeature([], tf.int64) for key in _SCALARS_INT}
    spec.update({key: tf.io.FixedLenFeature([], tf.float32) for key in _SCALARS_FLOAT})
    spec.update({key: tf.io.FixedLenFeature([], tf.string) for key in _SCALARS_BYTES})
    spec.update({
        "bbox/center": tf.io.FixedLenFeature([2], tf.float32),
        "bbox/scale": tf.io.FixedLenFeature([2], tf.float32),
        "keypoints/crop": tf.io.FixedLenFeature([num_joints * 2], tf.float32),
        "keypoints/image": tf.io.FixedLenFeature([num_joints * 2], tf.float32),
        "keypoints/visibility": tf.io.FixedLenFeature([num_joints], tf.int64),
        "target_weight": tf.io.FixedLenFeature([num_joints], tf.float32),
    })
    return spec


def encode_heatmaps(heatmaps: np.ndarray) -> bytes:
    """(H, W, K) float heatmaps in [0, 1] -> storage bytes (uint16 fixed point, little-endian, (K, H, W) order)."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.ndim != 3:
        raise ValueError(f"heatmaps must be (H, W, K), got shape {heatmaps.shape}")
    if heatmaps.size and not (np.all(np.isfinite(heatmaps)) and heatmaps.min() >= 0.0
                              and heatmaps.max() <= 1.0 + 1e-6):
        raise ValueError("heatmaps must be finite values in [0, 1] to be stored")
    quantised = np.rint(np.clip(heatmaps, 0.0, 1.0) * HEATMAP_SCALE)
    return np.ascontiguousarray(np.moveaxis(quantised, -1, 0), dtype=HEATMAP_DTYPE).tobytes()


def decode_heatmaps(data: bytes, heatmap_size: Sequence[int], num_joints: int) -> np.ndarray:
    """Storage bytes -> (H, W, K) float32 heatmaps (NumPy)."""
    flat = np.frombuffer(data, dtype=HEATMAP_DTYPE)
    expected = int(heatmap_size[0]) * int(heatmap_size[1]) * num_joints
    if flat.size != expected:
        raise ValueError(f"heatmap bytes hold {flat.size} values, expected {expected}")
    heatmaps = flat.reshape(num_joints, int(heatmap_size[0]), int(heatmap_size[1])).astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(heatmaps, 0, -1)) * np.float32(1.0 / HEATMAP_SCALE)


def decode_heatmaps_tf(data: tf.Tensor, heatmap_size: Sequence[int], num_joints: int) -> tf.Tensor:
    """TF twin of :func:`decode_heatmaps`: bytes (...,) -> (..., H, W, K) float32."""
    values = tf.io.decode_raw(data, HEATMAP_TF_DTYPE, little_endian=True)
    height, width = int(heatmap_size[0]), int(heatmap_size[1])
    joint_major = tf.reshape(values, [-1, num_joints, height, width])
    channels_last = tf.transpose(joint_major, [0, 2, 3, 1])
    shape = tf.concat([tf.shape(data), [height, width, num_joints]], axis=0)
    return tf.cast(tf.reshape(channels_last, shape), tf.float32) * (1.0 / HEATMAP_SCALE)


def bytes_feature(value) -> tf.train.Feature:
    """A one-value bytes ``tf.train.Feature`` (``str`` is UTF-8 encoded); shared by every record spec."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def float_feature(values) -> tf.train.Feature:
    """A float32 list ``tf.train.Feature`` of ``values`` (any shape, flattened)."""
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel().tolist()))


def int_feature(values) -> tf.train.Feature:
    """An int64 list ``tf.train.Feature`` of ``values`` (any shape, flattened)."""
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel().tolist()))


def build_example(record: Mapping[str, Any]) -> tf.train.Example:
    """Builds a tf.Example from a mapping with every key of :func:`feature_spec`.

    ``heatmaps/encoded`` may be given as an (H, W, K) array; it is stored with
    :func:`encode_heatmaps`. ``schema/version`` defaults to :data:`SCHEMA_VERSION`.

    Raises:
        ValueError: a key is missing or has the wrong size.
    """
    record = dict(record)
    record.setdefault("schema/version", SCHEMA_VERSION)
    if isinstance(record.get("heatmaps/encoded"), np.ndarray):
        record["heatmaps/encoded"] = encode_heatmaps(record["heatmaps/encoded"])
    num_joints = int(np.asarray(record.get("keypoints/visibility", [])).size)
    layout = _layout(max(num_joints, 1))
    missing = sorted(set(layout) - set(record))
    if missing:
        raise ValueError(f"record is missing keys {missing}")
    features = {}
    for key, (kind, expected) in layout.items():
        value = record[key]
        if kind == "bytes":
            features[key] = bytes_feature(value)
            continue
        array = np.asarray(value).ravel()
        if array.size != expected:
            raise ValueError(f"record key {key!r} has {array.size} values, expected {expected}")
        features[key] = int_feature(array) if kind == "int64" else float_feature(array)
    return tf.train.Example(features=tf.train.Features(feature=features))


@functools.lru_cache(maxsize=None)
def _layout(num_joints: int) -> Dict[str, tuple]:
    """key -> (``"bytes"`` | ``"int64"`` | ``"float"``, value count), from :func:`feature_spec` (cached)."""
    kinds = {tf.string: "bytes", tf.int64: "int64", tf.float32: "float"}
    return {key: (kinds[feature.dtype], int(np.prod(feature.shape)) if feature.shape else 1)
            for key, feature in feature_spec(num_joints).items()}


def parse_records(serialized: tf.Tensor, num_joints: int) -> Dict[str, tf.Tensor]:
    """Parses a batch (B,) of serialized records; reshapes keypoints to (B, K, 2).

    Images and heatmaps stay encoded (decode with ``tf.io.decode_image`` and
    :func:`decode_heatmaps_tf`), so callers choose where the work happens.
    """
    parsed = tf.io.parse_example(serialized, feature_spec(num_joints))
    for key in ("keypoints/crop", "keypoints/image"):
        parsed[key] = tf.reshape(parsed[key], [-1, num_joints, 2])
    return parsed
