"""Bottom-up target encoder, TensorFlow half (tf.data re-encoding after augmentation).

Twin of :mod:`pose.bottom_up_codec` (read its docstring for the targets, the
frames and the sources); tests tie the two together numerically (float32
here, float64 there). Only tensor ops, batched over any leading axes: works
inside ``tf.function``, ``tf.data`` and a SavedModel, with no Python loop over
batch, persons, joints or edges. Zero-padded persons (v = 0 everywhere, as
:func:`schemas.bottom_up.parse_record_tf` pads) encode to nothing.

Memory: the distance tensors are ``(..., N, H_out, W_out, K)`` and
``(..., N, H_out, W_out, 2E)`` float32: ~17 MB per image at N = 30, 65 x 65,
COCO; map over the batch (``tf.map_fn``) where that is too much.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import tensorflow as tf

from pose import codec_tf
from pose.bottom_up_codec import TargetGeometry, target_geometry
from pose.images import decode_image_tf
from schemas import bottom_up as layout


def _first_min_one_hot(values: tf.Tensor, axis: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """One-hot (float32, same shape) of the FIRST minimum along ``axis`` and the minimum (keepdims).

    Same tie rule as ``np.argmin`` (the NumPy twin); an empty axis gives an
    all-zero one-hot and a +inf minimum.
    """
    smallest = tf.reduce_min(values, axis=axis, keepdims=True)
    size = tf.shape(values)[axis]
    shape = [1] * values.shape.rank
    shape[axis] = -1
    positions = tf.reshape(tf.range(size), shape)
    first = tf.reduce_min(tf.where(values == smallest, positions, size), axis=axis, keepdims=True)
    return tf.cast(tf.equal(positions, first), tf.float32), smallest


def _nearest_offsets(points: tf.Tensor, valid: tf.Tensor, targets: tf.Tensor, radius: float,
                     height: int, width: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """TF twin of :func:`pose.bottom_up_codec._nearest_offsets` over leading axes.

    points, targets (..., N, M, 2), valid (..., N, M) bool ->
    offsets (..., H, W, M, 2) float32, inside (..., H, W, M) bool.
    """
    xs = tf.range(width, dtype=tf.float32)
    ys = tf.range(height, dtype=tf.float32)
    safe = tf.where(valid[..., None], points, tf.zeros_like(points))
    goal = tf.where(valid[..., None], targets, tf.zeros_like(targets))
    dx = safe[..., :, None, None, :, 0] - xs[None, :, None]          # (..., N, 1, W, M)
    dy = safe[..., :, None, None, :, 1] - ys[:, None, None]          # (..., N, H, 1, M)
    distance2 = tf.where(valid[..., :, None, None, :], tf.square(dx) + tf.square(dy), float("inf"))
    one_hot, smallest = _first_min_one_hot(distance2, axis=-4)        # (..., N, H, W, M), (..., 1, H, W, M)
    inside = smallest[..., 0, :, :, :] <= radius * radius              # (..., H, W, M)
    goal_x = tf.reduce_sum(one_hot * goal[..., :, None, None, :, 0], axis=-4)  # (..., H, W, M)
    goal_y = tf.reduce_sum(one_hot * goal[..., :, None, None, :, 1], axis=-4)
    offset_x = goal_x - xs[None, :, None]
    offset_y = goal_y - ys[:, None, None]
    offsets = tf.stack([offset_x, offset_y], axis=-1)
    return tf.where(inside[..., None], offsets, tf.zeros_like(offsets)), inside


def encode_with_weights(keypoints: tf.Tensor, config: Mapping[str, Any] | TargetGeometry
                        ) -> Tuple[tf.Tensor, tf.Tensor]:
    """TF twin of :func:`pose.bottom_up_codec.encode_with_weights`.

    Args:
        keypoints: (..., N, K, 3) float, ``(x, y, v)``, x, y in INPUT pixels
            (e.g. (N, K, 3) for one image or (B, N, K, 3) for a batch).
        config: a loaded bottom-up config, or its :class:`TargetGeometry`.

    Returns:
        ``(targets (..., H_out, W_out, C) float32, weights (..., H_out, W_out, K + 2E) float32)``.
    """
    geometry = config if isinstance(config, TargetGeometry) else target_geometry(config)
    joints = geometry.num_joints
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    if keypoints.shape.rank is not None and (keypoints.shape.rank < 3 or keypoints.shape[-2:] != (joints, 3)):
        raise ValueError(f"keypoints must be (..., N, {joints}, 3) (x, y, v) in input pixels, "
                         f"got shape {keypoints.shape}")
    height, width = geometry.output_size
    points = keypoints[..., :2] * tf.constant(geometry.factor, tf.float32)                 # (..., N, K, 2)
    labelled = (keypoints[..., 2] > 0) & tf.reduce_all(tf.math.is_finite(keypoints[..., :2]), axis=-1)

    person_maps, _ = codec_tf.encode(points, labelled, (height, width), geometry.sigma)   # (..., N, H, W, K)
    heatmaps = tf.maximum(tf.reduce_max(person_maps, axis=-4), 0.0)  # empty N: -inf -> 0
    has_joint = tf.reduce_any(labelled, axis=-1)                                            # (..., N)
    labelled_f = tf.cast(labelled, tf.float32)
    safe_points = tf.where(labelled[..., None], points, tf.zeros_like(points))
    centre = tf.reduce_sum(safe_points, axis=-2) / tf.maximum(tf.reduce_sum(labelled_f, axis=-1), 1.0)[..., None]
    centre_maps, _ = codec_tf.encode(centre[..., None, :], has_joint[..., None], (height, width),
                                     geometry.body_sigma)                                   # (..., N, H, W, 1)
    body = tf.maximum(tf.reduce_max(centre_maps, axis=-4), 0.0)

    short, short_in = _nearest_offsets(points, labelled, points, geometry.short_radius, height, width)
    source = tf.constant(geometry.edges[:, 0])
    target = tf.constant(geometry.edges[:, 1])
    points_a = tf.gather(points, source, axis=-2)
    points_b = tf.gather(points, target, axis=-2)
    valid = tf.gather(labelled, source, axis=-1) & tf.gather(labelled, target, axis=-1)
    mid, mid_in = _nearest_offsets(points_a, valid, points_b, geometry.mid_radius, height, width)
    lead = tf.shape(short)[:-2]
    targets = tf.concat([
        heatmaps,
        tf.reshape(short, tf.concat([lead, [2 * joints]], axis=0)),
        tf.reshape(mid, tf.concat([lead, [2 * len(geometry.edges)]], axis=0)),
        body], axis=-1)
    weights = tf.cast(tf.concat([short_in, mid_in], axis=-1), tf.float32)
    return targets, weights


def encode(keypoints: tf.Tensor, config: Mapping[str, Any] | TargetGeometry) -> tf.Tensor:
    """TF twin of :func:`pose.bottom_up_codec.encode`: (..., N, K, 3) -> (..., H_out, W_out, C) float32."""
    return encode_with_weights(keypoints, config)[0]


def offset_weights(keypoints: tf.Tensor, config: Mapping[str, Any] | TargetGeometry) -> tf.Tensor:
    """Offset loss weights (..., H_out, W_out, K + 2E) float32 from (..., N, K, 3) input-pixel keypoints.

    Channel k < K: inside the short disk of joint k; channel K + e: inside the
    mid disk of directed edge e (multiply into the (dx, dy) pair of each).
    """
    return encode_with_weights(keypoints, config)[1]


def decode_record_tf(serialized: tf.Tensor, config: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
    """Parses ONE serialized bottom-up record and decodes its image: what the trainer and the tests read.

    :func:`schemas.bottom_up.parse_record_tf` (the record spec) with ``image/encoded`` replaced by
    ``image`` (S, S, 3) uint8, decoded by :func:`pose.images.decode_image_tf` (the rule of ExampleGen and
    ``predict_image``: JPEG with the accurate integer IDCT). Works in ``tf.data`` and in a SavedModel.

    Raises:
        tf.errors.InvalidArgumentError: the image is not S x S (``data.input_size``) or not JPEG/PNG.
    """
    record = layout.parse_record_tf(serialized, config)
    size = int(config["data"]["input_size"][0])
    record["image"] = tf.ensure_shape(decode_image_tf(record.pop("image/encoded")), [size, size, 3])
    return record
