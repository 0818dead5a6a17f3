"""Bottom-up (PersonLab / StrongPose) target encoder, NumPy half (ExampleGen, tests).

Twin of :mod:`pose.bottom_up_codec_tf` (tf.data re-encoding after the
whole-image augmentation); tests tie the two together numerically. The
channel layout is :mod:`schemas.bottom_up`'s: ``[heatmaps K | short 2K | mid
2*2E | body 1]``, channels-last ``(H_out, W_out, C)`` float32.

Frames (:mod:`pose.coordinates`): keypoints come in INPUT pixels of the
square ``S x S`` model input; they are mapped to OUTPUT pixels with the
corner-aligned scaling ``x_out = x_in * (W_out - 1) / (S - 1)``
(:func:`pose.coordinates.crop_to_heatmap`), and every target below lives on
the output grid, whose pixel ``(col, row)`` is the point ``(col, row)``.

Targets (N persons, K joints, directed edges (a -> b) of
:data:`schemas.bottom_up.BOTTOM_UP_EDGES`; a joint counts when its flag v > 0
and its coordinates are finite):

* heatmaps: per joint, the max over persons of the unbiased Gaussian at the
  real-valued keypoint (the DARK codec's, :func:`pose.codec_np.encode`: no
  rounding, zero where the joint's 3-sigma square misses the map), sigma =
  ``bottom_up.sigma`` output pixels.
* short offsets (PersonLab Sec. 3.1): at each output pixel and joint j, the
  vector (output pixels) from the pixel to the NEAREST labelled joint j of any
  person, where that distance is at most the disk radius
  ``R = bottom_up.short_radius`` (input pixels, i.e. ``R * (W_out-1)/(S-1)``
  output pixels); 0 elsewhere.
* mid offsets (PersonLab Sec. 3.2): for directed edge e = (a -> b), at each
  output pixel within the mid disk (``bottom_up.mid_radius``) of joint a of a
  person p with both a and b labelled, the vector from the pixel to joint b
  of p; where disks of several persons overlap, the person whose joint a is
  nearest wins (as for the short offsets); 0 elsewhere.
* body (StrongPose's body heatmap, our choice of form): the max over persons
  of an unbiased Gaussian at the person's centre, the mean of its labelled
  joints, with sigma ``bottom_up.body_sigma`` output pixels (2 x sigma by
  default). A centre heatmap gives one peak per person that the decoder can
  use to score and localise persons; PersonLab has no such channel (it
  predicts a segmentation mask instead).

Offset loss weights (:func:`encode_with_weights`): 1 inside the disks above
(per joint for the short offsets, per directed edge for the mid offsets), 0
outside. They are not stored in the records: the trainer recomputes them
from the stored keypoints (:func:`pose.bottom_up_codec_tf.offset_weights`),
since a vector can be exactly (0, 0) inside a disk (a keypoint on a pixel
centre).

No Python loop runs over persons, joints or edges.

Example:

    config = pose.config.build_config({"approach": "bottom_up", "data": {"input_size": [257, 257]}})
    targets = encode(keypoints, config)            # (N, K, 3) input px -> (65, 65, 136)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import numpy as np

from pose import codec_np, coordinates
from schemas import bottom_up as layout
from schemas.keypoints import get_schema


@dataclasses.dataclass(frozen=True)
class TargetGeometry:
    """Sizes and radii of the bottom-up targets, from one config (:func:`target_geometry`).

    Attributes:
        dataset: keypoint schema name.
        input_size: S, the square model input side, pixels.
        output_size: (H_out, W_out) of the targets.
        factor: input -> output scale (x, y), ``(W_out - 1) / (S - 1)``.
        sigma: keypoint Gaussian sigma, output pixels.
        body_sigma: body Gaussian sigma, output pixels.
        short_radius: short-offset disk radius, OUTPUT pixels.
        mid_radius: mid-offset disk radius, OUTPUT pixels.
        edges: (2E, 2) int32 directed edges (a, b).
    """

    dataset: str
    input_size: int
    output_size: Tuple[int, int]
    factor: Tuple[float, float]
    sigma: float
    body_sigma: float
    short_radius: float
    mid_radius: float
    edges: np.ndarray = dataclasses.field(compare=False)

    @property
    def num_joints(self) -> int:
        return get_schema(self.dataset).num_joints

    @property
    def num_channels(self) -> int:
        return layout.num_channels(self.dataset)


def target_geometry(config: Mapping[str, Any]) -> TargetGeometry:
    """The :class:`TargetGeometry` of a loaded ``approach: bottom_up`` config.

    Raises:
        ValueError: the config is not a bottom-up config.
    """
    if config.get("approach") != "bottom_up":
        raise ValueError(f"config approach must be 'bottom_up', got {config.get('approach')!r}")
    data, section = config["data"], config["bottom_up"]
    size = int(data["input_size"][0])
    output = (int(data["heatmap_size"][0]), int(data["heatmap_size"][1]))
    factor = coordinates.crop_to_heatmap_factor((size, size), output)
    return TargetGeometry(
        dataset=config["dataset"], input_size=size, output_size=output,
        factor=(float(factor[0]), float(factor[1])), sigma=float(section["sigma"]),
        body_sigma=float(section["body_sigma"]),
        short_radius=float(section["short_radius"]) * float(factor[0]),
        mid_radius=float(section["mid_radius"]) * float(factor[0]),
        edges=np.asarray(layout.BOTTOM_UP_EDGES[config["dataset"]], dtype=np.int32))


def _check_keypoints(keypoints: np.ndarray, joints: int) -> np.ndarray:
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1:] != (joints, 3):
        raise ValueError(f"keypoints must be (N, {joints}, 3) (x, y, v) in input pixels, got shape {keypoints.shape}")
    return keypoints


def _nearest_offsets(points: np.ndarray, valid: np.ndarray, targets: np.ndarray, radius: float,
                     height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Disk offsets on the output grid.

    Args:
        points: (N, M, 2) disk centres (x, y), output pixels.
        valid: (N, M) bool, which centres count.
        targets: (N, M, 2) the point each disk points to (output pixels).
        radius: disk radius, output pixels.

    Returns:
        ``(offsets (H, W, M, 2) float64, inside (H, W, M) bool)``: at each
        pixel and channel m, ``targets[n*] - pixel`` for the nearest valid
        centre n* (first index on ties) when it lies within ``radius``.
    """
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    count, channels = valid.shape
    if count == 0:
        return np.zeros((height, width, channels, 2)), np.zeros((height, width, channels), dtype=bool)
    safe = np.where(valid[..., None], points, 0.0)
    dx = safe[:, None, None, :, 0] - xs[None, None, :, None]        # (N, 1, W, M)
    dy = safe[:, None, None, :, 1] - ys[None, :, None, None]        # (N, H, 1, M)
    distance2 = np.where(valid[:, None, None, :], dx ** 2 + dy ** 2, np.inf)  # (N, H, W, M)
    nearest = np.argmin(distance2, axis=0)                           # (H, W, M)
    inside = np.take_along_axis(distance2, nearest[None], axis=0)[0] <= radius ** 2
    goal = np.where(valid[..., None], targets, 0.0)[nearest, np.arange(channels)]  # (H, W, M, 2)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)[:, :, None, :]  # (H, W, 1, 2)
    offsets = np.where(inside[..., None], goal - grid, 0.0)
    return offsets, inside


def encode_with_weights(keypoints: np.ndarray, config: Mapping[str, Any] | TargetGeometry
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Bottom-up targets and offset loss weights of one image.

    Args:
        keypoints: (N, K, 3) float, ``(x, y, v)`` with x, y in INPUT pixels and
            v the COCO flag (0 = unlabelled, ignored); N may be 0.
        config: a loaded bottom-up config, or its :class:`TargetGeometry`.

    Returns:
        ``(targets, weights)``: float32 (H_out, W_out, C) in the layout of
        :mod:`schemas.bottom_up`, and float32 (H_out, W_out, K + 2E): 1 inside
        the short-offset disk of joint k (channels 0..K-1) and the mid-offset
        disk of directed edge e (channels K + e), else 0.

    Raises:
        ValueError: keypoints of the wrong shape, or a config that is not bottom-up.
    """
    geometry = config if isinstance(config, TargetGeometry) else target_geometry(config)
    joints = geometry.num_joints
    keypoints = _check_keypoints(keypoints, joints)
    height, width = geometry.output_size
    points = keypoints[..., :2] * np.asarray(geometry.factor)                         # (N, K, 2) output px
    labelled = (keypoints[..., 2] > 0) & np.all(np.isfinite(keypoints[..., :2]), axis=-1)  # (N, K)
    count = keypoints.shape[0]

    heatmaps = np.zeros((height, width, joints), dtype=np.float32)
    body = np.zeros((height, width, 1), dtype=np.float32)
    if count:
        person_maps, _ = codec_np.encode(points, labelled.astype(np.int64), (height, width), geometry.sigma)
        heatmaps = person_maps.max(axis=0)
        has_joint = labelled.any(axis=1)                                                # (N,)
        centre = (np.where(labelled[..., None], points, 0.0).sum(axis=1)
                  / np.maximum(labelled.sum(axis=1), 1)[:, None])                       # (N, 2)
        centre_maps, _ = codec_np.encode(centre[:, None, :], has_joint[:, None].astype(np.int64),
                                         (height, width), geometry.body_sigma)
        body = centre_maps.max(axis=0)

    short, short_in = _nearest_offsets(points, labelled, points, geometry.short_radius, height, width)
    source, target = geometry.edges[:, 0], geometry.edges[:, 1]
    mid, mid_in = _nearest_offsets(points[:, source], labelled[:, source] & labelled[:, target],
                                   points[:, target], geometry.mid_radius, height, width)
    targets = np.concatenate([
        heatmaps, short.reshape(height, width, -1), mid.reshape(height, width, -1), body], axis=-1)
    weights = np.concatenate([short_in, mid_in], axis=-1)
    return targets.astype(np.float32), weights.astype(np.float32)


def encode(keypoints: np.ndarray, config: Mapping[str, Any] | TargetGeometry) -> np.ndarray:
    """Bottom-up targets (H_out, W_out, C) float32 of one image; see :func:`encode_with_weights`."""
    return encode_with_weights(keypoints, config)[0]


def offset_weights(keypoints: np.ndarray, config: Mapping[str, Any] | TargetGeometry) -> np.ndarray:
    """Offset loss weights (H_out, W_out, K + 2E) float32 of one image; see :func:`encode_with_weights`."""
    return encode_with_weights(keypoints, config)[1]
