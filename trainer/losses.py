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
