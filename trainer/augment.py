"""Training augmentation: one random affine per person crop, batched, with DARK targets re-encoded.

The records already hold the padded person window warped to the model input
size (see :mod:`schemas.features`), so every augmentation is an affine *of
the stored crop*, in crop pixel coordinates (:mod:`pose.coordinates`):

1. half-body (probability ``half_body_prob``, only for examples with more than
   ``half_body_min_joints`` labelled joints): the window is re-centred on the
   mean of the upper- or lower-body joints and sized to their box grown to the
   crop's aspect ratio, times ``half_body_padding`` (1.5 as the references);
2. scale: the window size is multiplied by ``1 + scale_factor * t``;
3. rotation (probability ``rotation_prob``): ``rotation_factor * t`` degrees,
   counter-clockwise, about the window centre;
4. horizontal flip (probability 0.5 when ``flip``): ``x -> W_in - 1 - x``
   (exact under our pixel-centre convention) and the left/right joints swap
   through the schema's ``flip_index``.

``t`` is a standard normal truncated to [-1, 1], so scales lie in
``[1 - scale_factor, 1 + scale_factor]`` and rotations in
``[-rotation_factor, rotation_factor]`` (mmpose's ``RandomBBoxTransform``).

The composed affine (stored crop -> augmented crop, (B, 2, 3)) warps the
images with :func:`pose.coordinates.warp_images_tf` and the keypoints with
:func:`pose.coordinates.apply_affine_tf`; the heatmaps and target weights are
then re-encoded with :meth:`pose.codec.HeatmapCodec.encode_tf`, so joints that
leave the crop get weight 0.

Limitation: the stored crop is all the context there is, so zooming out or
rotating shows zero (black) borders where the references would show the
surrounding image.

Everything is vectorised over the batch and the joints and runs eagerly or
inside ``tf.data``/``tf.function``. Randomness is stateless: the same ``seed``
gives the same augmentation.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pose import coordinates
from pose.codec import HeatmapCodec

_PHI_MINUS_ONE = 0.15865525393145707
"""Standard normal CDF at -1: bounds of the uniform fed to the inverse CDF."""


def validate_augmentation(augmentation: Mapping[str, Any]) -> None:
    """Checks the config's ``augmentation`` section; raises ValueError naming the bad key."""
    def number(key: str) -> float:
        value = augmentation.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"augmentation.{key} must be a number, got {value!r}")
        return float(value)

    if not 0.0 <= number("scale_factor") < 1.0:
        raise ValueError(f"augmentation.scale_factor must be in [0, 1), got {augmentation['scale_factor']!r}")
    if not 0.0 <= number("rotation_factor") <= 180.0:
        raise ValueError(f"augmentation.rotation_factor must be in [0, 180] degrees, "
                         f"got {augmentation['rotation_factor']!r}")
    for key in ("rotation_prob", "half_body_prob"):
        if not 0.0 <= number(key) <= 1.0:
            raise ValueError(f"augmentation.{key} must be in [0, 1], got {augmentation[key]!r}")
    if not number("half_body_padding") > 0.0:
        raise ValueError(f"augmentation.half_body_padding must be > 0, got {augmentation['half_body_padding']!r}")
    minimum = augmentation.get("half_body_min_joints")
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
        raise ValueError(f"augmentation.half_body_min_joints must be a non-negative integer, got {minimum!r}")
    if not isinstance(augmentation.get("flip"), bool):
        raise ValueError(f"augmentation.flip must be true or false, got {augmentation.get('flip')!r}")


def identity_window(batch_size: tf.Tensor | int, input_size: Sequence[int]) -> Tuple[tf.Tensor, tf.Tensor]:
    """The stored crop's own window in crop coordinates.

    Returns:
        ``(center (B, 2), scale (B, 2))`` float32: centre ``((W-1)/2, (H-1)/2)``
        and size ``(W-1, H-1)``, which :func:`pose.coordinates.crop_affine_tf`
        maps onto the identity.
    """
    height, width = int(input_size[0]), int(input_size[1])
    center = tf.constant([(width - 1.0) / 2.0, (height - 1.0) / 2.0], tf.float32)
    scale = tf.constant([width - 1.0, height - 1.0], tf.float32)
    return tf.tile(center[None], [batch_size, 1]), tf.tile(scale[None], [batch_size, 1])


def compose_affine(outer: tf.Tensor, inner: tf.Tensor) -> tf.Tensor:
    """Composition ``outer o inner`` of (..., 2, 3) affines (apply ``inner`` first)."""
    linear = tf.matmul(outer[..., :2], inner[..., :2])
    translation = tf.einsum("...ij,...j->...i", outer[..., :2], inner[..., 2]) + outer[..., 2]
    return tf.concat([linear, translation[..., None]], axis=-1)


def flip_affine(flip: tf.Tensor, width: int) -> tf.Tensor:
    """(B, 2, 3) affines that mirror ``x -> width - 1 - x`` where ``flip`` (B,) is true, else identity."""
    sign = tf.where(flip, -1.0, 1.0)
    shift = tf.where(flip, width - 1.0, 0.0)
    zero, one = tf.zeros_like(sign), tf.ones_like(sign)
    row0 = tf.stack([sign, zero, shift], axis=-1)
    row1 = tf.stack([zero, one, zero], axis=-1)
    return tf.stack([row0, row1], axis=-2)


def transform_matrix(center: tf.Tensor, scale: tf.Tensor, rotation: tf.Tensor, flip: tf.Tensor,
                     input_size: Sequence[int]) -> tf.Tensor:
    """Stored-crop -> augmented-crop affines.

    The window (``center``, ``scale``, ``rotation``) is given in the *unflipped*
    stored crop; when ``flip`` the crop is mirrored first and the window
    centre with it (as the references flip the image and the centre before
    the crop affine).

    Args:
        center: (B, 2) window centres (x, y), stored-crop pixels.
        scale: (B, 2) window sizes (w, h), stored-crop pixels.
        rotation: (B,) degrees, counter-clockwise.
        flip: (B,) bool.
        input_size: (H_in, W_in).

    Returns:
        float32 (B, 2, 3) matrices ``M`` with ``augmented = M @ [x, y, 1]``.
    """
    width = int(input_size[1])
    mirror = flip_affine(tf.cast(flip, tf.bool), width)
    center = tf.convert_to_tensor(center, tf.float32)
    flipped_center = tf.stack([mirror[:, 0, 0] * center[:, 0] + mirror[:, 0, 2], center[:, 1]], axis=-1)
    window = coordinates.crop_affine_tf(flipped_center, scale, input_size, rotation)
    return compose_affine(window, mirror)


def _truncated_normal(shape, seed: tf.Tensor) -> tf.Tensor:
    """Standard normal truncated to [-1, 1], by the inverse CDF (exact, no rejection loop)."""
    uniform = tf.random.stateless_uniform(shape, seed, minval=_PHI_MINUS_ONE, maxval=1.0 - _PHI_MINUS_ONE)
    return tf.math.ndtri(uniform)


def half_body_window(keypoints: tf.Tensor, visibility: tf.Tensor, upper_body_mask: np.ndarray,
                     choose_upper_draw: tf.Tensor, input_size: Sequence[int],
                     padding: float) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Half-body windows (the references' ``half_body_transform``), batched.

    Picks the upper body when the draw is < 0.5 and more than 2 upper joints
    are labelled, otherwise the lower body when more than 2 lower joints are
    labelled, otherwise the upper body. The window is centred on the mean of
    the chosen joints and covers their box grown to the crop aspect ratio
    ``(W-1)/(H-1)``, times ``padding``.

    Args:
        keypoints: (B, K, 2) stored-crop pixels.
        visibility: (B, K) 0 unlabelled, > 0 labelled.
        upper_body_mask: (K,) bool.
        choose_upper_draw: (B,) uniform draws in [0, 1).
        input_size: (H_in, W_in).
        padding: window growth factor.

    Returns:
        ``(center (B, 2), scale (B, 2), usable (B,) bool)``; ``usable`` is false
        where fewer than 2 joints were chosen or their box is degenerate.
    """
    height, width = int(input_size[0]), int(input_size[1])
    aspect_ratio = (width - 1.0) / (height - 1.0)
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    labelled = (tf.convert_to_tensor(visibility) > 0) & tf.reduce_all(tf.math.is_finite(keypoints), axis=-1)
    upper = tf.constant(np.asarray(upper_body_mask, bool))[None, :]
    num_upper = tf.reduce_sum(tf.cast(labelled & upper, tf.int32), axis=-1)
    num_lower = tf.reduce_sum(tf.cast(labelled & ~upper, tf.int32), axis=-1)
    use_upper = ((choose_upper_draw < 0.5) & (num_upper > 2)) | (num_lower <= 2)
    chosen = labelled & tf.where(use_upper[:, None], upper, ~upper)
    count = tf.reduce_sum(tf.cast(chosen, tf.float32), axis=-1)
    safe_points = tf.where(chosen[..., None], keypoints, tf.zeros_like(keypoints))
    center = tf.reduce_sum(safe_points, axis=1) / tf.maximum(count, 1.0)[:, None]
    low = tf.reduce_min(tf.where(chosen[..., None], keypoints, np.inf), axis=1)
    high = tf.reduce_max(tf.where(chosen[..., None], keypoints, -np.inf), axis=1)
    box_w = high[:, 0] - low[:, 0]
    box_h = high[:, 1] - low[:, 1]
    wider = box_w > aspect_ratio * box_h
    window_w = tf.where(wider, box_w, box_h * aspect_ratio)
    window_h = tf.where(wider, box_w / aspect_ratio, box_h)
    usable = (count >= 2.0) & tf.math.is_finite(window_w) & (window_w >= 1.0) & (window_h >= 1.0)
    scale = tf.stack([window_w, window_h], axis=-1) * padding
    return center, scale, usable


def sample_transform(keypoints: tf.Tensor, visibility: tf.Tensor, augmentation: Mapping[str, Any],
                     input_size: Sequence[int], upper_body_mask: np.ndarray,
                     seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Draws one augmentation per example.

    Args:
        keypoints: (B, K, 2) stored-crop pixels.
        visibility: (B, K) visibility flags (> 0 labelled).
        augmentation: the config's ``augmentation`` section.
        input_size: (H_in, W_in).
        upper_body_mask: (K,) bool, from the keypoint schema.
        seed: (2,) int32/int64 stateless seed.

    Returns:
        Dict of (B, ...) tensors: ``center`` (B, 2) and ``scale`` (B, 2) of the
        window in stored-crop pixels, ``rotation`` (B,) degrees, ``flip`` (B,)
        bool, ``half_body`` (B,) bool; feed them to :func:`transform_matrix`.
    """
    validate_augmentation(augmentation)
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    batch_size = tf.shape(keypoints)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)
    center, scale = identity_window(batch_size, input_size)

    labelled = tf.reduce_sum(tf.cast(tf.convert_to_tensor(visibility) > 0, tf.int32), axis=-1)
    half_body_draw = tf.random.stateless_uniform([batch_size], seeds[0])
    upper_draw = tf.random.stateless_uniform([batch_size], seeds[1])
    body_center, body_scale, usable = half_body_window(
        keypoints, visibility, upper_body_mask, upper_draw, input_size,
        float(augmentation["half_body_padding"]))
    half_body = ((half_body_draw < float(augmentation["half_body_prob"]))
                 & (labelled > int(augmentation["half_body_min_joints"])) & usable)
    center = tf.where(half_body[:, None], body_center, center)
    scale = tf.where(half_body[:, None], body_scale, scale)

    scale_factor = float(augmentation["scale_factor"])
    scale = scale * (1.0 + scale_factor * _truncated_normal([batch_size], seeds[2]))[:, None]

    rotation_factor = float(augmentation["rotation_factor"])
    rotate = tf.random.stateless_uniform([batch_size], seeds[3]) < float(augmentation["rotation_prob"])
    rotation = tf.where(rotate, rotation_factor * _truncated_normal([batch_size], seeds[4]), 0.0)

    if augmentation["flip"]:
        flip = tf.random.stateless_uniform([batch_size], seeds[5]) < 0.5
    else:
        flip = tf.zeros([batch_size], tf.bool)
    return {"center": center, "scale": scale, "rotation": rotation, "flip": flip, "half_body": half_body}


def apply_transform(images: tf.Tensor, keypoints: tf.Tensor, visibility: tf.Tensor, matrix: tf.Tensor,
                    flip: tf.Tensor, flip_index: np.ndarray, input_size: Sequence[int]):
    """Warps crops and keypoints with per-example affines and swaps joints of flipped examples.

    Args:
        images: (B, H_in, W_in, 3) stored crops, any numeric dtype.
        keypoints: (B, K, 2) stored-crop pixels.
        visibility: (B, K) visibility flags.
        matrix: (B, 2, 3) stored-crop -> augmented-crop affines (:func:`transform_matrix`).
        flip: (B,) bool, examples whose matrix mirrors the crop.
        flip_index: (K,) joint permutation of the schema.
        input_size: (H_in, W_in) of the output crops.

    Returns:
        ``(images (B, H_in, W_in, 3) float32 0..255, keypoints (B, K, 2) float32
        augmented-crop pixels, visibility (B, K))``.
    """
    warped = coordinates.warp_images_tf(images, matrix, input_size)
    moved = coordinates.apply_affine_tf(keypoints, matrix)
    index = tf.constant(np.asarray(flip_index, np.int32))
    flip = tf.cast(flip, tf.bool)
    moved = tf.where(flip[:, None, None], tf.gather(moved, index, axis=1), moved)
    visibility = tf.convert_to_tensor(visibility)
    visibility = tf.where(flip[:, None], tf.gather(visibility, index, axis=1), visibility)
    return warped, moved, visibility


def augment_batch(images: tf.Tensor, keypoints: tf.Tensor, visibility: tf.Tensor, codec: HeatmapCodec,
                  augmentation: Mapping[str, Any], flip_index: np.ndarray, upper_body_mask: np.ndarray,
                  seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Random affine augmentation of a batch of crops with re-encoded DARK targets.

    Args:
        images: (B, H_in, W_in, 3) stored crops, RGB 0..255.
        keypoints: (B, K, 2) keypoints, stored-crop pixels.
        visibility: (B, K) 0 unlabelled, 1 occluded, 2 visible.
        codec: the experiment's :class:`~pose.codec.HeatmapCodec`.
        augmentation: the config's ``augmentation`` section.
        flip_index: (K,) schema flip permutation.
        upper_body_mask: (K,) bool schema upper-body mask.
        seed: (2,) int stateless seed.

    Returns:
        Dict with ``image`` (B, H_in, W_in, 3) float32, ``heatmaps``
        (B, H_hm, W_hm, K) float32, ``target_weight`` (B, K) float32,
        ``keypoints`` (B, K, 2) augmented-crop pixels, ``visibility`` (B, K),
        ``matrix`` (B, 2, 3).

    Example:

        out = augment_batch(images, keypoints, visibility, codec, config["augmentation"],
                            schema.flip_index, schema.upper_body_mask, seed=[0, step])
    """
    params = sample_transform(keypoints, visibility, augmentation, codec.input_size, upper_body_mask, seed)
    matrix = transform_matrix(params["center"], params["scale"], params["rotation"], params["flip"],
                              codec.input_size)
    image, moved, visibility = apply_transform(images, keypoints, visibility, matrix, params["flip"],
                                               flip_index, codec.input_size)
    heatmaps, target_weight = codec.encode_tf(moved, visibility)
    return {"image": image, "heatmaps": heatmaps, "target_weight": target_weight, "keypoints": moved,
            "visibility": visibility, "matrix": matrix}
