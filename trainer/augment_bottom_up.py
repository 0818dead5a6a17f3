"""Whole-image training augmentation for the bottom-up approach, with targets re-encoded in the graph.

A bottom-up record holds the letterboxed ``S x S`` input image, every
person's keypoints in input pixels and a loss mask at the output stride
(:func:`pose.bottom_up_codec_tf.decode_record_tf`). Each example of a batch gets one
random affine of the input square (in input pixels, :mod:`pose.coordinates`
convention), built like the top-down one (:func:`trainer.augment.transform_matrix`):

1. scale: the view window is ``(S - 1) * (1 + scale_factor * t)`` wide (t a
   standard normal truncated to [-1, 1], as :mod:`trainer.augment`): > S - 1
   zooms out, < S - 1 zooms in;
2. random crop / placement: the window centre moves uniformly by up to half
   the size difference ``|window - (S - 1)| / 2`` in x and y, so a zoomed-in
   window is a random crop inside the image square and a zoomed-out image
   lands at a random place of the frame (PersonLab trains on random crops,
   Papandreou et al. ECCV 2018, Sec. 4);
3. rotation (probability ``rotation_prob``): ``rotation_factor * t`` degrees
   about the window centre;
4. horizontal flip (probability 0.5 when ``flip``): ``x -> S - 1 - x``, and
   the left/right joints of every person swap through the schema's
   ``flip_index``.

The config's ``augmentation`` section is shared with the top-down trainer
(``scale_factor``, ``rotation_factor``, ``rotation_prob``, ``flip``; the
half-body keys do not apply to whole images).

The image is warped with :func:`pose.coordinates.warp_images_tf`, the
keypoints with :func:`pose.coordinates.apply_affine_tf`; keypoints that leave
the input square ``[-0.5, S - 0.5]`` become unlabelled (v = 0). The loss mask
is warped at the output resolution (same affine, translation scaled by
``(W_out - 1) / (S - 1)``): ignored regions move with the image, bilinear
(soft edges), and what comes from outside the frame counts (zero image, zero
targets). The targets and the offset disks are then **re-encoded** from the
moved keypoints with the encoder's TF twin
(:func:`pose.bottom_up_codec_tf.encode_with_weights`): the flip's channel
swap, the negated dx of every offset and the mirrored directed edges
(:func:`schemas.bottom_up.flip_channels`) follow from encoding the mirrored,
joint-swapped people (tested against ``flip_channels`` of the stored targets),
and the identity augmentation gives back the stored targets (tested).

Everything is vectorised over the batch, people and joints, runs eagerly or
inside ``tf.data``/``tf.function``, and is stateless-random: the same seed
gives the same augmentation.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np
import tensorflow as tf

from pose import bottom_up_codec_tf, coordinates
from pose.bottom_up_codec import target_geometry
from schemas.dataset_meta import schema_for
from trainer import augment


def validate_augmentation(augmentation: Mapping[str, Any]) -> None:
    """Checks the config's ``augmentation`` section (the same checks as the top-down trainer's).

    Raises:
        ValueError: naming the bad key.
    """
    augment.validate_augmentation(augmentation)


def sample_transform(batch_size: tf.Tensor | int, augmentation: Mapping[str, Any], input_size: int,
                     seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Draws one whole-image augmentation per example.

    Args:
        batch_size: B.
        augmentation: the config's ``augmentation`` section.
        input_size: S, the square input side.
        seed: (2,) int stateless seed.

    Returns:
        ``center`` (B, 2) and ``scale`` (B, 2) of the view window in input pixels,
        ``rotation`` (B,) degrees, ``flip`` (B,) bool: the arguments of
        :func:`trainer.augment.transform_matrix`.
    """
    validate_augmentation(augmentation)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    size = float(input_size) - 1.0
    zoom = 1.0 + float(augmentation["scale_factor"]) * augment._truncated_normal([batch_size], seeds[0])
    window = size * zoom                                                                      # (B,)
    reach = tf.abs(window - size) / 2.0
    shift = tf.random.stateless_uniform([batch_size, 2], seeds[1], minval=-1.0, maxval=1.0) * reach[:, None]
    center = size / 2.0 + shift
    rotate = tf.random.stateless_uniform([batch_size], seeds[2]) < float(augmentation["rotation_prob"])
    rotation = tf.where(rotate, float(augmentation["rotation_factor"])
                        * augment._truncated_normal([batch_size], seeds[3]), 0.0)
    if augmentation["flip"]:
        flip = tf.random.stateless_uniform([batch_size], seeds[4]) < 0.5
    else:
        flip = tf.zeros([batch_size], tf.bool)
    return {"center": center, "scale": tf.stack([window, window], axis=-1), "rotation": rotation, "flip": flip}


def identity_transform(batch_size: int, input_size: int) -> Dict[str, tf.Tensor]:
    """The parameters of no augmentation (window = the input square, no rotation, no flip)."""
    size = float(input_size) - 1.0
    return {"center": tf.fill([batch_size, 2], size / 2.0), "scale": tf.fill([batch_size, 2], size),
            "rotation": tf.zeros([batch_size]), "flip": tf.zeros([batch_size], tf.bool)}


def apply_transform(images: tf.Tensor, keypoints: tf.Tensor, mask: tf.Tensor, params: Mapping[str, tf.Tensor],
                    config: Mapping[str, Any]) -> Dict[str, tf.Tensor]:
    """Applies per-example whole-image affines and re-encodes the bottom-up targets.

    Args:
        images: (B, S, S, 3) letterboxed inputs, any numeric dtype, RGB 0..255.
        keypoints: (B, N, K, 3) ``(x, y, v)``, x, y in input pixels (zero rows = no person).
        mask: (B, H_out, W_out, 1) float loss mask.
        params: :func:`sample_transform` or :func:`identity_transform` output.
        config: the loaded bottom-up config (geometry and ``dataset``).

    Returns:
        Dict with ``image`` (B, S, S, 3) float32, ``targets`` (B, H_out, W_out, C) float32,
        ``offset_weights`` (B, H_out, W_out, K + 2E) float32 (disk indicators, short then mid),
        ``mask`` (B, H_out, W_out, 1) float32, ``keypoints`` (B, N, K, 3) moved (joints
        swapped where flipped, v = 0 where outside the square) and ``matrix`` (B, 2, 3).
    """
    geometry = target_geometry(config)
    size = geometry.input_size
    height, width = geometry.output_size
    flip_index = tf.constant(np.asarray(schema_for(config).flip_index, np.int32))
    flip = tf.cast(params["flip"], tf.bool)
    matrix = augment.transform_matrix(params["center"], params["scale"], params["rotation"], flip, (size, size))

    image = coordinates.warp_images_tf(images, matrix, (size, size))
    keypoints = tf.convert_to_tensor(keypoints, tf.float32)
    shape = tf.shape(keypoints)
    points = tf.reshape(keypoints[..., :2], [shape[0], -1, 2])
    moved = tf.reshape(coordinates.apply_affine_tf(points, matrix), tf.shape(keypoints[..., :2]))
    inside = tf.reduce_all((moved >= -0.5) & (moved <= size - 0.5), axis=-1)
    visibility = tf.where(inside, keypoints[..., 2], 0.0)
    moved = tf.concat([tf.where(visibility[..., None] > 0, moved, 0.0), visibility[..., None]], axis=-1)
    moved = tf.where(flip[:, None, None, None], tf.gather(moved, flip_index, axis=2), moved)

    # The same affine on the output grid: the linear part is scale-free, the translation scales by the factor.
    factor = tf.constant(geometry.factor[0], tf.float32)
    output_matrix = tf.concat([matrix[..., :2], matrix[..., 2:] * factor], axis=-1)
    ignored = coordinates.warp_images_tf(1.0 - tf.cast(mask, tf.float32), output_matrix, (height, width))
    warped_mask = tf.clip_by_value(1.0 - ignored, 0.0, 1.0)

    targets, weights = bottom_up_codec_tf.encode_with_weights(moved, geometry)
    return {"image": image, "targets": targets, "offset_weights": weights, "mask": warped_mask,
            "keypoints": moved, "matrix": matrix}


def augment_batch(images: tf.Tensor, keypoints: tf.Tensor, mask: tf.Tensor, config: Mapping[str, Any],
                  seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Random whole-image augmentation of a batch with re-encoded targets (module docstring).

    Args:
        images: (B, S, S, 3); keypoints: (B, N, K, 3) input pixels; mask: (B, H_out, W_out, 1).
        config: the loaded bottom-up config (uses ``augmentation``, geometry, ``dataset``).
        seed: (2,) int stateless seed.

    Returns:
        As :func:`apply_transform`.

    Example:

        out = augment_batch(batch["image"], batch["keypoints"], batch["mask"], config, seed=[0, step])
    """
    batch_size = tf.shape(images)[0]
    params = sample_transform(batch_size, config["augmentation"], int(config["data"]["input_size"][0]), seed)
    return apply_transform(images, keypoints, mask, params, config)
