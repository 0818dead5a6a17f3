"""Heatmap losses: target-weighted MSE, with online hard keypoint mining as an option.

The reference systems (SimpleBaseline, HRNet, DarkPose) train with
``JointsMSELoss``: per joint, 0.5 * the mean over heatmap pixels of
``(w_k * (pred - true))^2``, averaged over joints. With OHKM
(``JointsOHKMMSELoss``) only the ``topk`` largest joint losses of each
example are averaged.

Heatmaps are channels-last ``(B, H_hm, W_hm, K)``. The loss is returned *per
example* ``(B,)`` so the training loop decides the reduction (e.g.
``tf.nn.compute_average_loss`` with the global batch under a distribution
strategy).
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def joint_losses(heatmaps_true: tf.Tensor, heatmaps_pred: tf.Tensor, target_weight: tf.Tensor) -> tf.Tensor:
    """Per-joint losses ``0.5 * mean_pixels((w_k * (pred - true))^2)``.

    Args:
        heatmaps_true: (B, H, W, K) target heatmaps.
        heatmaps_pred: (B, H, W, K) predicted heatmaps (any float dtype; cast to float32).
        target_weight: (B, K) per-joint weights.

    Returns:
        float32 (B, K).
    """
    heatmaps_true = tf.cast(heatmaps_true, tf.float32)
    heatmaps_pred = tf.cast(heatmaps_pred, tf.float32)
    target_weight = tf.cast(target_weight, tf.float32)
    difference = (heatmaps_pred - heatmaps_true) * target_weight[:, None, None, :]
    return 0.5 * tf.reduce_mean(tf.square(difference), axis=[1, 2])


def _example_losses(heatmaps_true, heatmaps_pred, target_weight, ohkm_topk):
    per_joint = joint_losses(heatmaps_true, heatmaps_pred, target_weight)
    if ohkm_topk is None:
        return tf.reduce_mean(per_joint, axis=-1)
    hardest, _ = tf.math.top_k(per_joint, k=ohkm_topk, sorted=False)
    return tf.reduce_mean(hardest, axis=-1)


def keypoint_mse(heatmaps_true: tf.Tensor, heatmaps_pred: tf.Tensor | Sequence[tf.Tensor],
                 target_weight: tf.Tensor, ohkm_topk: int | None = None) -> tf.Tensor:
    """Target-weighted heatmap MSE per example (the references' JointsMSELoss / OHKM loss).

    ``loss_b = 0.5 * mean_k mean_{h,w} (w_bk * (pred_bhwk - true_bhwk))^2``; with
    ``ohkm_topk`` the mean over joints is replaced by the mean of the
    ``ohkm_topk`` largest joint losses of each example.

    Args:
        heatmaps_true: (B, H, W, K) float targets.
        heatmaps_pred: (B, H, W, K) predictions, or a list of them (intermediate
            supervision, e.g. stacked hourglass): the per-example losses of all
            elements are summed.
        target_weight: (B, K) float per-joint weights (0 masks a joint out).
        ohkm_topk: None (plain mean over joints) or the number of hardest joints
            to keep, 1 <= ohkm_topk <= K.

    Returns:
        float32 (B,) per-example losses.

    Raises:
        ValueError: mismatched static shapes, an empty prediction list, or a bad
            ``ohkm_topk``.

    Example:

        per_example = keypoint_mse(targets["heatmaps"], model(images), targets["target_weight"])
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
    """
    predictions = list(heatmaps_pred) if isinstance(heatmaps_pred, (list, tuple)) else [heatmaps_pred]
    if not predictions:
        raise ValueError("heatmaps_pred must be a tensor or a non-empty list of tensors, got an empty list")
    heatmaps_true = tf.convert_to_tensor(heatmaps_true)
    target_weight = tf.convert_to_tensor(target_weight)
    if heatmaps_true.shape.rank is not None and heatmaps_true.shape.rank != 4:
        raise ValueError(f"heatmaps_true must be (B, H, W, K), got shape {heatmaps_true.shape}")
    num_joints = heatmaps_true.shape[-1]
    if target_weight.shape.rank is not None and target_weight.shape.rank != 2:
        raise ValueError(f"target_weight must be (B, K), got shape {target_weight.shape}")
    if num_joints is not None and target_weight.shape[-1] is not None and target_weight.shape[-1] != num_joints:
        raise ValueError(f"target_weight has {target_weight.shape[-1]} joints, heatmaps_true has {num_joints}")
    for index, prediction in enumerate(predictions):
        shape = tf.TensorShape(getattr(prediction, "shape", None))
        if shape.rank is not None and not shape.is_compatible_with(heatmaps_true.shape):
            raise ValueError(f"heatmaps_pred[{index}] has shape {shape}, expected {heatmaps_true.shape}")
    if ohkm_topk is not None:
        if isinstance(ohkm_topk, bool) or not isinstance(ohkm_topk, int) or ohkm_topk < 1:
            raise ValueError(f"ohkm_topk must be None or a positive integer, got {ohkm_topk!r}")
        if num_joints is not None and ohkm_topk > num_joints:
            raise ValueError(f"ohkm_topk must be <= the number of joints {num_joints}, got {ohkm_topk}")
    total = _example_losses(heatmaps_true, predictions[0], target_weight, ohkm_topk)
    for prediction in predictions[1:]:
        total = total + _example_losses(heatmaps_true, prediction, target_weight, ohkm_topk)
    return total


# --------------------------------------------------------------------------
# Bottom-up (issue 16): one loss over the four outputs of schemas.bottom_up
# --------------------------------------------------------------------------

PERSONLAB_LOSS_WEIGHTS = {"heatmap": 4.0, "short": 1.0, "mid": 0.25, "body": 2.0}
"""PersonLab's relative loss weights (Papandreou et al., ECCV 2018): keypoint heatmaps 4, short-range
offsets 1, mid-range offsets 0.25, person segmentation 2, as the public Keras re-implementation of
PersonLab sets them (octiapp/KerasPersonLab ``config.LOSS_WEIGHTS``; the paper's own text could not be
read in this project's sources). Our body heatmap (StrongPose) takes the weight of PersonLab's
segmentation output, its other whole-person channel. Note our heatmap term is an MSE on Gaussians
(StrongPose, DARK) where PersonLab's is a logistic loss on disks, so the balance is a starting point,
overridable with ``bottom_up.loss_weights``."""


def _offset_l1(true_offsets: tf.Tensor, pred_offsets: tf.Tensor, in_disk: tf.Tensor | None, mask: tf.Tensor,
               radius: float) -> tf.Tensor:
    """Per-example mean L1 of (dx, dy) inside the target disks, in units of ``radius`` (PersonLab's 1/R).

    Args:
        true_offsets, pred_offsets: (B, H, W, J, 2) output pixels.
        in_disk: (B, H, W, J) 1 inside a target disk (the encoder's weights,
            :func:`pose.bottom_up_codec_tf.encode_with_weights`), or None: then a pixel counts where its
            target vector is not (0, 0) (the encoder writes exact zeros outside the disks, contract 5;
            the one pixel that sits exactly on its keypoint is then missed).
        mask: (B, H, W, 1) loss mask.
        radius: disk radius in output pixels.

    Returns:
        (B,) ``sum(mask * w * |pred - true|_1) / (radius * max(sum(mask * w), 1))``.
    """
    if in_disk is None:
        in_disk = tf.cast(tf.reduce_any(tf.not_equal(true_offsets, 0.0), axis=-1), tf.float32)
    weight = tf.cast(in_disk, tf.float32) * mask                                                   # (B, H, W, J)
    error = tf.reduce_sum(tf.abs(pred_offsets - true_offsets), axis=-1)                           # (B, H, W, J)
    total = tf.reduce_sum(weight * error, axis=[1, 2, 3])
    count = tf.reduce_sum(weight, axis=[1, 2, 3])
    return total / (float(radius) * tf.maximum(count, 1.0))


def bottom_up_terms(targets: tf.Tensor, outputs: tf.Tensor, mask: tf.Tensor, dataset: str,
                    short_radius: float, mid_radius: float, offset_weights: tf.Tensor | None = None) -> dict:
    """The four per-example bottom-up loss terms, unweighted.

    * ``heatmap``: ``0.5 * mean_{h,w,k} mask * (pred - true)^2`` (the top-down JointsMSELoss form,
      every pixel of every joint, under the loss mask);
    * ``short`` / ``mid``: L1 of the (dx, dy) offsets, only inside their disks and under the mask,
      averaged over the disk pixels and divided by the disk radius (PersonLab, Sec. 3.1-3.2: the
      offset losses are L1 over the disks, normalised by R);
    * ``body``: ``0.5 * mean_{h,w} mask * (pred - true)^2``.

    Args:
        targets: (B, H, W, C) float targets in the layout of :mod:`schemas.bottom_up`.
        outputs: (B, H, W, C) model output (any float dtype; cast to float32).
        mask: (B, H, W, 1) float loss mask (1 counts, 0 ignored: crowds, unlabelled persons).
        dataset: keypoint schema name (channel layout).
        short_radius, mid_radius: disk radii in OUTPUT pixels (> 0).
        offset_weights: (B, H, W, K + 2E) disk indicators of the short (K) then mid (2E) offsets
            (:func:`pose.bottom_up_codec_tf.encode_with_weights`), or None (the non-zero rule of
            :func:`_offset_l1`).

    Returns:
        ``{"heatmap", "short", "mid", "body"}`` -> float32 (B,).

    Raises:
        ValueError: shapes that do not match the layout, or a radius <= 0.
    """
    from schemas.bottom_up import split_channels  # the layout's one owner

    if not short_radius > 0 or not mid_radius > 0:
        raise ValueError(f"short_radius and mid_radius must be > 0 output pixels, got {short_radius!r}, "
                         f"{mid_radius!r}")
    targets = tf.cast(targets, tf.float32)
    outputs = tf.cast(outputs, tf.float32)
    mask = tf.cast(mask, tf.float32)
    if targets.shape.rank is not None and targets.shape.rank != 4:
        raise ValueError(f"targets must be (B, H, W, C), got shape {targets.shape}")
    if not outputs.shape.is_compatible_with(targets.shape):
        raise ValueError(f"outputs have shape {outputs.shape}, targets {targets.shape}")
    if mask.shape.rank is not None and (mask.shape.rank != 4 or mask.shape[-1] not in (None, 1)):
        raise ValueError(f"mask must be (B, H, W, 1), got shape {mask.shape}")
    true, pred = split_channels(targets, dataset), split_channels(outputs, dataset)
    joints = true["heatmaps"].shape[-1]
    short_in = mid_in = None
    if offset_weights is not None:
        offset_weights = tf.cast(offset_weights, tf.float32)
        short_in, mid_in = offset_weights[..., :joints], offset_weights[..., joints:]
    return {
        "heatmap": 0.5 * tf.reduce_mean(mask * tf.square(pred["heatmaps"] - true["heatmaps"]), axis=[1, 2, 3]),
        "short": _offset_l1(true["short"], pred["short"], short_in, mask, short_radius),
        "mid": _offset_l1(true["mid"], pred["mid"], mid_in, mask, mid_radius),
        "body": 0.5 * tf.reduce_mean(mask * tf.square(pred["body"] - true["body"]), axis=[1, 2, 3]),
    }


def bottom_up_loss(targets: tf.Tensor, outputs: tf.Tensor, mask: tf.Tensor, dataset: str,
                   short_radius: float, mid_radius: float, weights=None,
                   offset_weights: tf.Tensor | None = None) -> tf.Tensor:
    """Weighted bottom-up loss per example: ``sum_t weights[t] * term_t`` (:func:`bottom_up_terms`).

    Args:
        targets, outputs, mask, dataset, short_radius, mid_radius, offset_weights: as
            :func:`bottom_up_terms`.
        weights: ``{"heatmap", "short", "mid", "body"}`` -> float >= 0; default
            :data:`PERSONLAB_LOSS_WEIGHTS`.

    Returns:
        float32 (B,) per-example losses (reduce with ``tf.nn.compute_average_loss`` like
        :func:`keypoint_mse`).

    Raises:
        ValueError: as :func:`bottom_up_terms`, or ``weights`` with other keys or negative values.

    Example:

        per_example = bottom_up_loss(targets["targets"], model(images), targets["mask"], "coco", 4.0, 4.0)
    """
    weights = dict(PERSONLAB_LOSS_WEIGHTS if weights is None else weights)
    if set(weights) != set(PERSONLAB_LOSS_WEIGHTS) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in weights.values()):
        raise ValueError(f"loss weights must map {sorted(PERSONLAB_LOSS_WEIGHTS)} to numbers >= 0, got {weights!r}")
    terms = bottom_up_terms(targets, outputs, mask, dataset, short_radius, mid_radius, offset_weights)
    return tf.add_n([float(weights[name]) * terms[name] for name in PERSONLAB_LOSS_WEIGHTS])


def make_loss_fn(config):
    """The per-example training loss ``(targets dict, outputs) -> (B,)`` of an experiment config.

    ``approach: bottom_up``: :func:`bottom_up_loss` on ``targets["targets"]`` and ``targets["mask"]``
    (and ``targets["offset_weights"]`` when the input pipeline re-encoded them), with the disk radii
    of the config in output pixels (:func:`pose.bottom_up_codec.target_geometry`) and the weights of
    ``bottom_up.loss_weights`` when the config has that key, else :data:`PERSONLAB_LOSS_WEIGHTS`.
    Otherwise (top-down) None: the training step's default :func:`keypoint_mse`.
    """
    if config.get("approach") != "bottom_up":
        return None
    from pose.bottom_up_codec import target_geometry

    geometry = target_geometry(config)
    dataset = config["dataset"]
    weights = config.get("bottom_up", {}).get("loss_weights") or PERSONLAB_LOSS_WEIGHTS

    def loss_fn(targets, outputs):
        outputs = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
        return bottom_up_loss(targets["targets"], outputs, targets["mask"], dataset, geometry.short_radius,
                              geometry.mid_radius, weights, targets.get("offset_weights"))
    return loss_fn
