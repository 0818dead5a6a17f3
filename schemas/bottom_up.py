"""The bottom-up (box-free) image record and the channel layout of its targets.

One record is one *image* (not one person), resized and padded to the model's
square input ``S x S`` (:func:`pose.coordinates.letterbox_affine`). ExampleGen
``--approach bottom_up`` writes it (:func:`build_example`); the trainer, the
evaluator and the serving signature read it (:func:`parse_record_tf`, and
:func:`pose.bottom_up_codec_tf.decode_record_tf` with the image decoded). Bump
:data:`SCHEMA_VERSION` on any layout change.

Channel layout
--------------

Targets and the bottom-up model output are one channels-last tensor
``(H_out, W_out, C)`` (float32) with ``C = K + 2K + 4E + 1``
(:func:`num_channels`), in this order (PersonLab, Papandreou et al. ECCV 2018,
Sec. 3; the body channel after StrongPose, ICPR 2021):

==========  ==========  =====================================================
channels    name        meaning
==========  ==========  =====================================================
K           heatmaps    per joint: max over persons of the unbiased (DARK)
                        Gaussian at the keypoint, peak 1
2K          short       per joint j: ``(dx_j, dy_j)`` interleaved (channel
                        ``K + 2j`` is dx, ``K + 2j + 1`` dy), OUTPUT pixels,
                        from the pixel to the nearest labelled joint j within
                        the disk of radius ``bottom_up.short_radius``; 0 outside
2 * 2E      mid         per directed edge e = (a -> b) of :data:`BOTTOM_UP_EDGES`:
                        ``(dx_e, dy_e)`` interleaved, OUTPUT pixels, at pixels of
                        the disk (``bottom_up.mid_radius``) around joint a of a
                        person p, the vector to joint b of the same person p; 0
                        outside
1           body        max over persons of a Gaussian at the person's centre
                        (``bottom_up.body_sigma``), peak 1
==========  ==========  =====================================================

Records add one ``mask`` channel ``(H_out, W_out, 1)``: 1 = the pixel counts
in the loss, 0 = crowd regions and persons without keypoints (their COCO
``segmentation``), see :mod:`components.ingest_bottom_up`.

Directed edges: :data:`BOTTOM_UP_GRAPHS` holds the E undirected edges per
dataset; the directed list :data:`BOTTOM_UP_EDGES` is the E edges as written,
then the same E edges reversed, so directed edge ``e + E`` is edge ``e``
backwards. MPII: the schema's 15-edge skeleton, a spanning tree. COCO:
PersonLab's 16-edge spanning tree rooted at the nose (:data:`PERSONLAB_COCO_TREE`,
the first 16 edges) plus the 5 edges of the COCO skeleton that the tree lacks
(l_hip-r_hip, l_shoulder-r_shoulder, l_eye-r_eye, l_ear-l_shoulder,
r_ear-r_shoulder): E = 21. Why more than the tree: a person whose hub joint
is unlabelled (a back view without a nose label) splits into pieces that no
decoder can join along the tree; on the shared COCO samples (98 persons) the
tree leaves 34 persons / 105 labelled keypoints cut off, the 21-edge graph 12 /
20 (measured by X16, /tmp notes of issue 16). The decoder groups along any
directed edge list.

Record
------

=====================  ======  ===========  ==========================================
key                    dtype   shape        meaning
=====================  ======  ===========  ==========================================
schema/version         int64   ()           :data:`SCHEMA_VERSION`
approach               bytes   ()           ``bottom_up``
dataset                bytes   ()           keypoint schema name (coco / mpii)
image/encoded          bytes   ()           the S x S letterboxed input image, encoded
image/format           bytes   ()           ``jpeg`` or ``png``
image/id               int64   ()           source image id
image/height           int64   ()           source image height, pixels
image/width            int64   ()           source image width, pixels
input/size             int64   ()           S
affine                 float   (6,)         original -> input affine, row-major (2, 3)
targets/height         int64   ()           H_out
targets/width          int64   ()           W_out
targets/heatmaps       bytes   ()           K heatmaps + body, uint16 fixed point
targets/offsets        bytes   ()           2K short + 4E mid offsets, int16 fixed point
targets/mask           bytes   ()           (H_out, W_out) uint8 loss mask, 0 or 1
person/count           int64   ()           P people stored (all encoded persons)
person/annotation_id   int64   (P,)         annotation ids, var-length
person/area            float   (P,)         annotation areas (OKS normaliser), source pixels^2
person/keypoints       float   (P*K*3,)     (x, y, v): x, y in INPUT pixels, v COCO flag
=====================  ======  ===========  ==========================================

Storage (chosen like the person-crop heatmaps, :mod:`schemas.features`):
heatmaps and body as ``round(value * 65535)`` uint16; offsets as
``round(value * OFFSET_SCALE)`` int16 (step 1/64 output pixel, at most
1/128 px rounding error, range +-511.98 output pixels: any output map up to
362 x 362 fits its diagonal); both little-endian and channel-major
``(C, H_out, W_out)`` so each channel's zero runs compress well under the
shard writer's gzip; the mask as uint8 ``(H_out, W_out)``. The persons whose
targets are encoded are exactly the stored persons, so re-encoding the stored
keypoints gives the stored targets up to the rounding above (tested).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from schemas.keypoints import get_schema
from schemas.features import bytes_feature, float_feature, int_feature

SCHEMA_VERSION = 1
APPROACH = "bottom_up"

HEATMAP_DTYPE = np.dtype("<u2")
HEATMAP_SCALE = 65535.0
"""Stored heatmap/body value = round(value * HEATMAP_SCALE), values in [0, 1]."""
OFFSET_DTYPE = np.dtype("<i2")
OFFSET_SCALE = 64.0
"""Stored offset = round(offset in output pixels * OFFSET_SCALE)."""
OFFSET_LIMIT = 32767.0 / OFFSET_SCALE
"""Largest storable offset magnitude, output pixels."""
MASK_DTYPE = np.dtype("u1")

# PersonLab's kinematic tree for COCO (Papandreou et al. ECCV 2018, Fig. 2 / Sec. 3.2):
# 16 edges rooted at the nose, face then left arm/leg then right arm/leg.
_COCO_TREE = (
    (0, 1), (1, 3), (0, 2), (2, 4),            # nose-left_eye-left_ear, nose-right_eye-right_ear
    (0, 5), (5, 7), (7, 9),                     # nose-left_shoulder-left_elbow-left_wrist
    (5, 11), (11, 13), (13, 15),                # left_shoulder-left_hip-left_knee-left_ankle
    (0, 6), (6, 8), (8, 10),                    # nose-right_shoulder-right_elbow-right_wrist
    (6, 12), (12, 14), (14, 16),                # right_shoulder-right_hip-right_knee-right_ankle
)

PERSONLAB_COCO_TREE = _COCO_TREE
"""PersonLab's COCO spanning tree, 16 undirected edges (a, b)."""

_COCO_EXTRA = ((11, 12), (5, 6), (1, 2), (3, 5), (4, 6))
"""The COCO skeleton's edges (schemas.keypoints.COCO.skeleton) missing from the tree."""

BOTTOM_UP_GRAPHS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    "coco": _COCO_TREE + _COCO_EXTRA,             # 21 edges: tree first, then the extra skeleton edges
    "mpii": tuple(get_schema("mpii").skeleton),  # 15 edges over 16 joints: a spanning tree (tested)
}
"""Undirected edges (a, b) per dataset, each a connected graph over all joints that contains a spanning tree."""

BOTTOM_UP_EDGES: Dict[str, Tuple[Tuple[int, int], ...]] = {
    name: tuple(graph) + tuple((b, a) for a, b in graph) for name, graph in BOTTOM_UP_GRAPHS.items()
}
"""Directed edges (a -> b) per dataset: the E graph edges, then the same reversed (2E in all)."""


def num_edges(dataset: str) -> int:
    """Number of DIRECTED edges 2E of ``dataset``'s edge graph."""
    _check_dataset(dataset)
    return len(BOTTOM_UP_EDGES[dataset])


def _check_dataset(dataset: str) -> None:
    if dataset not in BOTTOM_UP_EDGES:
        raise ValueError(f"no bottom-up edge graph for dataset {dataset!r}; expected one of {sorted(BOTTOM_UP_EDGES)}")


def channel_slices(dataset: str) -> Dict[str, slice]:
    """Channel ranges ``{"heatmaps", "short", "mid", "body"}`` of the layout for ``dataset``."""
    _check_dataset(dataset)
    joints = get_schema(dataset).num_joints
    edges = num_edges(dataset)
    short_end = 3 * joints
    mid_end = short_end + 2 * edges
    return {"heatmaps": slice(0, joints), "short": slice(joints, short_end),
            "mid": slice(short_end, mid_end), "body": slice(mid_end, mid_end + 1)}


def num_channels(dataset: str) -> int:
    """C = K + 2K + 2 * 2E + 1 for ``dataset`` (COCO: 17 + 34 + 84 + 1 = 136; MPII: 16 + 32 + 60 + 1 = 109)."""
    return channel_slices(dataset)["body"].stop


def split_channels(x, dataset: str) -> Dict[str, Any]:
    """Splits a (..., H, W, C) NumPy array or tensor into the four parts of the layout.

    Args:
        x: targets or model output, channels-last, C = :func:`num_channels`.
        dataset: keypoint schema name (``coco`` / ``mpii``).

    Returns:
        ``{"heatmaps": (..., K), "short": (..., K, 2), "mid": (..., 2E, 2), "body": (..., 1)}``
        over the same leading (..., H, W): offsets reshaped to (dx, dy) pairs.

    Raises:
        ValueError: the last axis is not C.
    """
    slices = channel_slices(dataset)
    channels = x.shape[-1]
    if channels is not None and int(channels) != slices["body"].stop:
        raise ValueError(f"expected {slices['body'].stop} channels for dataset {dataset!r}, got {channels}")
    joints = slices["heatmaps"].stop
    edges = num_edges(dataset)
    if isinstance(x, np.ndarray):
        lead = x.shape[:-1]
        return {"heatmaps": x[..., slices["heatmaps"]],
                "short": x[..., slices["short"]].reshape(*lead, joints, 2),
                "mid": x[..., slices["mid"]].reshape(*lead, edges, 2),
                "body": x[..., slices["body"]]}
    lead = tf.shape(x)[:-1]
    return {"heatmaps": x[..., slices["heatmaps"]],
            "short": tf.reshape(x[..., slices["short"]], tf.concat([lead, [joints, 2]], axis=0)),
            "mid": tf.reshape(x[..., slices["mid"]], tf.concat([lead, [edges, 2]], axis=0)),
            "body": x[..., slices["body"]]}


@functools.lru_cache(maxsize=None)
def flip_permutation(dataset: str) -> Tuple[np.ndarray, np.ndarray]:
    """The channel map of a horizontal flip: ``(source index (C,) int32, sign (C,) float32)``.

    Channel c of the flipped tensor is ``sign[c] * x[..., source[c]]`` (after
    the spatial mirror ``x -> W_out - 1 - x``): joints swap by the schema's
    flip pairs, every offset's dx changes sign, and directed edge (a -> b)
    takes the channels of its mirror (flip(a) -> flip(b)).

    Raises:
        ValueError: the mirror of an edge is not in the edge list (a graph that is not mirror-symmetric).
    """
    slices = channel_slices(dataset)
    flip = get_schema(dataset).flip_index
    edges = BOTTOM_UP_EDGES[dataset]
    position = {edge: index for index, edge in enumerate(edges)}
    try:
        edge_flip = np.asarray([position[(int(flip[a]), int(flip[b]))] for a, b in edges], dtype=np.int32)
    except KeyError as error:
        raise ValueError(f"bottom-up edge graph of {dataset!r} is not mirror-symmetric: "
                         f"no edge {error.args[0]}") from None
    source = np.concatenate([
        flip,
        slices["short"].start + (2 * flip[:, None] + np.arange(2)).ravel(),
        slices["mid"].start + (2 * edge_flip[:, None] + np.arange(2)).ravel(),
        [slices["body"].start],
    ]).astype(np.int32)
    sign = np.ones(num_channels(dataset), dtype=np.float32)
    sign[slices["short"].start:slices["mid"].stop:2] = -1.0  # every dx
    return source, sign


def flip_channels(x, dataset: str):
    """Remaps the channels of a spatially mirrored (..., C) array or tensor (see :func:`flip_permutation`).

    The caller mirrors the pixels (``x[..., ::-1, :]`` on (H, W, C)); this
    function only swaps left/right joints, negates dx and maps each directed
    edge to its mirrored edge. Applying it twice is the identity.
    """
    source, sign = flip_permutation(dataset)
    if isinstance(x, np.ndarray):
        return x[..., source] * sign.astype(x.dtype)
    x = tf.convert_to_tensor(x)
    return tf.gather(x, source, axis=-1) * tf.constant(sign, x.dtype)


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------

def encode_targets(targets: np.ndarray, dataset: str) -> Tuple[bytes, bytes]:
    """(H, W, C) float targets -> ``(heatmap bytes, offset bytes)`` (see the module docstring).

    Raises:
        ValueError: wrong shape, non-finite values, heatmaps outside [0, 1] or
            offsets beyond :data:`OFFSET_LIMIT`.
    """
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 3 or targets.shape[-1] != num_channels(dataset):
        raise ValueError(f"targets must be (H, W, {num_channels(dataset)}), got shape {targets.shape}")
    if not np.all(np.isfinite(targets)):
        raise ValueError("targets must be finite to be stored")
    slices = channel_slices(dataset)
    maps = np.concatenate([targets[..., slices["heatmaps"]], targets[..., slices["body"]]], axis=-1)
    offsets = targets[..., slices["short"].start:slices["mid"].stop]
    if maps.size and (maps.min() < 0.0 or maps.max() > 1.0 + 1e-6):
        raise ValueError("heatmap and body targets must lie in [0, 1] to be stored")
    if offsets.size and np.abs(offsets).max() > OFFSET_LIMIT:
        raise ValueError(f"offset targets must lie within +-{OFFSET_LIMIT:g} output pixels to be stored, "
                         f"got {np.abs(offsets).max():g}")
    maps_q = np.rint(np.clip(maps, 0.0, 1.0) * HEATMAP_SCALE)
    offsets_q = np.rint(offsets * OFFSET_SCALE)
    return (np.ascontiguousarray(np.moveaxis(maps_q, -1, 0), dtype=HEATMAP_DTYPE).tobytes(),
            np.ascontiguousarray(np.moveaxis(offsets_q, -1, 0), dtype=OFFSET_DTYPE).tobytes())


def decode_targets(heatmap_bytes: bytes, offset_bytes: bytes, size: Sequence[int], dataset: str) -> np.ndarray:
    """NumPy inverse of :func:`encode_targets`: -> (H, W, C) float32."""
    height, width = int(size[0]), int(size[1])
    slices = channel_slices(dataset)
    joints = slices["heatmaps"].stop
    maps = np.frombuffer(heatmap_bytes, dtype=HEATMAP_DTYPE)
    offsets = np.frombuffer(offset_bytes, dtype=OFFSET_DTYPE)
    num_offsets = slices["mid"].stop - slices["short"].start
    if maps.size != (joints + 1) * height * width or offsets.size != num_offsets * height * width:
        raise ValueError(f"target bytes hold {maps.size} + {offsets.size} values, expected "
                         f"{(joints + 1) * height * width} + {num_offsets * height * width}")
    maps = np.moveaxis(maps.reshape(joints + 1, height, width), 0, -1).astype(np.float32) / np.float32(HEATMAP_SCALE)
    offsets = np.moveaxis(offsets.reshape(num_offsets, height, width), 0, -1).astype(np.float32) / np.float32(
        OFFSET_SCALE)
    return np.concatenate([maps[..., :joints], offsets, maps[..., joints:]], axis=-1)


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) or (H, W, 1) 0/1 mask -> uint8 bytes."""
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return np.ascontiguousarray(mask > 0, dtype=MASK_DTYPE).tobytes()


def feature_spec() -> Dict[str, Any]:
    """The parsing spec of a bottom-up image record (same for every dataset)."""
    spec: Dict[str, Any] = {key: tf.io.FixedLenFeature([], tf.int64) for key in _SCALARS_INT}
    spec.update({key: tf.io.FixedLenFeature([], tf.string) for key in _SCALARS_BYTES})
    spec["affine"] = tf.io.FixedLenFeature([6], tf.float32)
    spec["person/annotation_id"] = tf.io.VarLenFeature(tf.int64)
    spec["person/area"] = tf.io.VarLenFeature(tf.float32)
    spec["person/keypoints"] = tf.io.VarLenFeature(tf.float32)
    return spec


_SCALARS_INT = ("schema/version", "image/id", "image/height", "image/width", "input/size",
                "targets/height", "targets/width", "person/count")
_SCALARS_BYTES = ("approach", "dataset", "image/encoded", "image/format", "targets/heatmaps",
                  "targets/offsets", "targets/mask")


def build_example(record: Mapping[str, Any]) -> tf.train.Example:
    """Builds the tf.Example of one image.

    Args:
        record: ``dataset``, ``image/encoded``, ``image/format``, ``image/id``,
            ``image/height``, ``image/width``, ``affine`` (2, 3), ``targets``
            (H, W, C) float, ``mask`` (H, W[, 1]) 0/1, ``person/annotation_id``
            (P,), ``person/area`` (P,), ``person/keypoints`` (P, K, 3) in input
            pixels.

    Raises:
        ValueError: a key is missing or has the wrong size.
    """
    required = ("dataset", "image/encoded", "image/format", "image/id", "image/height", "image/width",
                "input/size", "affine", "targets", "mask", "person/annotation_id", "person/area",
                "person/keypoints")
    missing = sorted(set(required) - set(record))
    if missing:
        raise ValueError(f"bottom-up record is missing keys {missing}")
    dataset = str(record["dataset"])
    joints = get_schema(dataset).num_joints
    targets = np.asarray(record["targets"], dtype=np.float32)
    mask = np.asarray(record["mask"])
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if mask.shape != targets.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the targets' {targets.shape[:2]}")
    keypoints = np.asarray(record["person/keypoints"], dtype=np.float32).reshape(-1, joints, 3)
    count = keypoints.shape[0]
    ids = np.asarray(record["person/annotation_id"], dtype=np.int64).ravel()
    areas = np.asarray(record["person/area"], dtype=np.float32).ravel()
    if ids.size != count or areas.size != count:
        raise ValueError(f"{count} persons but {ids.size} annotation ids and {areas.size} areas")
    affine = np.asarray(record["affine"], dtype=np.float32).ravel()
    if affine.size != 6:
        raise ValueError(f"affine must be (2, 3), got {affine.size} values")
    heatmap_bytes, offset_bytes = encode_targets(targets, dataset)
    features = {
        "schema/version": int_feature([record.get("schema/version", SCHEMA_VERSION)]),
        "approach": bytes_feature(APPROACH),
        "dataset": bytes_feature(dataset),
        "image/encoded": bytes_feature(record["image/encoded"]),
        "image/format": bytes_feature(record["image/format"]),
        "image/id": int_feature([record["image/id"]]),
        "image/height": int_feature([record["image/height"]]),
        "image/width": int_feature([record["image/width"]]),
        "input/size": int_feature([record["input/size"]]),
        "affine": float_feature(affine),
        "targets/height": int_feature([targets.shape[0]]),
        "targets/width": int_feature([targets.shape[1]]),
        "targets/heatmaps": bytes_feature(heatmap_bytes),
        "targets/offsets": bytes_feature(offset_bytes),
        "targets/mask": bytes_feature(encode_mask(mask)),
        "person/count": int_feature([count]),
        "person/annotation_id": int_feature(ids),
        "person/area": float_feature(areas),
        "person/keypoints": float_feature(keypoints),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def _channel_major_tf(data: tf.Tensor, dtype, channels: int, height: int, width: int) -> tf.Tensor:
    values = tf.io.decode_raw(data, dtype, little_endian=True)
    return tf.transpose(tf.reshape(values, [channels, height, width]), [1, 2, 0])


def parse_record_tf(serialized: tf.Tensor, config: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
    """Parses ONE serialized bottom-up record (a scalar string tensor) into dense tensors, image still encoded.

    Works in ``tf.data`` (``dataset.map(lambda s: parse_record_tf(s, config))``)
    and in a SavedModel. Sizes come from ``config`` (``data.input_size``,
    ``data.heatmap_size``, ``bottom_up.max_people``, ``dataset``).

    The image stays encoded (``image/encoded``): decoding it is the ``pose`` floor's job
    (:func:`pose.bottom_up_codec_tf.decode_record_tf` decodes it by the project's one rule,
    :func:`pose.images.decode_image_tf`), so this ground-floor record spec imports nothing above it.

    Returns:
        dict with ``image/encoded`` () string (the S x S letterboxed image, JPEG or PNG), ``targets`` (H, W, C) float32 in
        the layout above, ``mask`` (H, W, 1) float32, ``keypoints``
        (N, K, 3) float32 (x, y in INPUT pixels, v flag; zero rows after
        ``num_people``; the first N stored persons, largest area first as
        ExampleGen writes them), ``num_people`` () int32 (<= N),
        ``areas`` (N,) float32, ``annotation_ids`` (N,) int64 (-1 padding),
        ``affine`` (2, 3) float32 (original -> input), ``image_id`` () int64,
        ``image_size`` (2,) int32 (original height, width).
    """
    dataset = config["dataset"]
    joints = get_schema(dataset).num_joints
    height, width = (int(v) for v in config["data"]["heatmap_size"])
    max_people = int(config["bottom_up"]["max_people"])
    slices = channel_slices(dataset)
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    maps = tf.cast(_channel_major_tf(parsed["targets/heatmaps"], tf.uint16, joints + 1, height, width),
                   tf.float32) * (1.0 / HEATMAP_SCALE)
    num_offsets = slices["mid"].stop - slices["short"].start
    offsets = tf.cast(_channel_major_tf(parsed["targets/offsets"], tf.int16, num_offsets, height, width),
                      tf.float32) * (1.0 / OFFSET_SCALE)
    targets = tf.concat([maps[..., :joints], offsets, maps[..., joints:]], axis=-1)
    mask = tf.reshape(tf.cast(tf.io.decode_raw(parsed["targets/mask"], tf.uint8), tf.float32), [height, width, 1])
    keypoints = tf.reshape(tf.sparse.to_dense(parsed["person/keypoints"]), [-1, joints, 3])
    count = tf.minimum(tf.shape(keypoints)[0], max_people)
    pad = max_people - count
    keypoints = tf.pad(keypoints[:count], [[0, pad], [0, 0], [0, 0]])
    areas = tf.pad(tf.sparse.to_dense(parsed["person/area"])[:count], [[0, pad]])
    ids = tf.pad(tf.sparse.to_dense(parsed["person/annotation_id"])[:count], [[0, pad]], constant_values=-1)
    return {
        "image/encoded": parsed["image/encoded"],
        "targets": tf.ensure_shape(targets, [height, width, slices["body"].stop]),
        "mask": mask,
        "keypoints": tf.ensure_shape(keypoints, [max_people, joints, 3]),
        "num_people": count,
        "areas": tf.ensure_shape(areas, [max_people]),
        "annotation_ids": tf.ensure_shape(ids, [max_people]),
        "affine": tf.reshape(parsed["affine"], [2, 3]),
        "image_id": parsed["image/id"],
        "image_size": tf.cast(tf.stack([parsed["image/height"], parsed["image/width"]]), tf.int32),
    }
