"""DARK heatmap codec, TensorFlow half (tf.data targets, serving graph).

Twin of :mod:`pose.codec_np` (read its docstring for the algorithm and the
coordinate frame). Only tensor ops: works inside ``tf.function`` and a
SavedModel, for any static or dynamic batch size, with no Python loop over
batch or joints. Heatmaps are ``(B, H, W, K)`` channels-last; keypoints are
``(B, K, 2)`` (x, y) in heatmap coordinates.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from pose.codec_np import DECODING_METHODS, LOG_FLOOR, gaussian_kernel_1d


def in_heatmap_weight(keypoints: tf.Tensor, visible: tf.Tensor, heatmap_size: Sequence[int],
                      sigma: float) -> tf.Tensor:
    """TF twin of :func:`pose.codec_np.in_heatmap_weight`: (B, K, 2), (B, K) -> (B, K) float32."""
    height, width = int(heatmap_size[0]), int(heatmap_size[1])
    keypoints = tf.cast(keypoints, tf.float32)
    x, y = keypoints[..., 0], keypoints[..., 1]
    radius = 3.0 * sigma
    inside = (x + radius >= 0) & (x - radius <= width - 1) & (y + radius >= 0) & (y - radius <= height - 1)
    finite = tf.math.is_finite(x) & tf.math.is_finite(y)
    labelled = tf.cast(visible, tf.float32) > 0
    return tf.cast(inside & finite & labelled, tf.float32)


def encode(keypoints: tf.Tensor, visible: tf.Tensor, heatmap_size: Sequence[int],
           sigma: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """TF twin of :func:`pose.codec_np.encode`.

    Args:
        keypoints: (..., K, 2) float, heatmap coordinates.
        visible: (..., K) visibility flags.
        heatmap_size: (H, W).
        sigma: Gaussian sigma in heatmap pixels.

    Returns:
        ``(heatmaps (..., H, W, K) float32, weights (..., K) float32)``.
    """
    height, width = int(heatmap_size[0]), int(heatmap_size[1])
    keypoints = tf.cast(keypoints, tf.float32)
    weights = in_heatmap_weight(keypoints, visible, heatmap_size, sigma)
    safe = tf.where(tf.math.is_finite(keypoints), keypoints, tf.zeros_like(keypoints))
    xs = tf.range(width, dtype=tf.float32)
    ys = tf.range(height, dtype=tf.float32)
    denominator = 2.0 * sigma * sigma
    gx = tf.exp(-tf.square(xs - safe[..., 0:1]) / denominator)  # (..., K, W)
    gy = tf.exp(-tf.square(ys - safe[..., 1:2]) / denominator)  # (..., K, H)
    heatmaps = tf.einsum("...kh,...kw,...k->...hwk", gy, gx, weights)
    return heatmaps, weights


def modulate(heatmaps: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """DARK modulation of (B, H, W, K) maps: zero-padded separable blur, rescaled to each map's max.

    Runs in the dtype of ``heatmaps`` (float32 or float64).
    """
    kernel = tf.constant(gaussian_kernel_1d(kernel_size), heatmaps.dtype)
    joints = tf.shape(heatmaps)[-1]
    kernel_y = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]), [1, 1, joints, 1])
    kernel_x = tf.tile(tf.reshape(kernel, [1, kernel_size, 1, 1]), [1, 1, joints, 1])
    blurred = tf.nn.depthwise_conv2d(heatmaps, kernel_y, strides=[1, 1, 1, 1], padding="SAME")
    blurred = tf.nn.depthwise_conv2d(blurred, kernel_x, strides=[1, 1, 1, 1], padding="SAME")
    original_max = tf.reduce_max(heatmaps, axis=[1, 2], keepdims=True)
    blurred_max = tf.reduce_max(blurred, axis=[1, 2], keepdims=True)
    ratio = tf.where(blurred_max > 0, original_max / tf.where(blurred_max > 0, blurred_max, 1.0), 1.0)
    return blurred * ratio


def _taylor_offsets(log_maps: tf.Tensor, px: tf.Tensor, py: tf.Tensor) -> tf.Tensor:
    """Taylor step at integer maxima. log_maps (B, K, H, W); px, py (B, K) int32 -> (B, K, 2).

    Returns offsets in the dtype of ``log_maps``.
    """
    shape = tf.shape(log_maps)
    height, width = shape[2], shape[3]
    flat = tf.reshape(log_maps, [shape[0], shape[1], height * width])
    inside = (px >= 2) & (px <= width - 3) & (py >= 2) & (py <= height - 3)

    def at(dx: int, dy: int) -> tf.Tensor:
        index = tf.clip_by_value(py + dy, 0, height - 1) * width + tf.clip_by_value(px + dx, 0, width - 1)
        return tf.gather(flat, index[..., None], batch_dims=2)[..., 0]

    center = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2.0 * center + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2.0 * center + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy * dxy
    apply = inside & tf.not_equal(det, 0.0)
    safe_det = tf.where(apply, det, tf.ones_like(det))
    offsets = tf.stack([-(dyy * dx - dxy * dy) / safe_det, -(dxx * dy - dxy * dx) / safe_det], axis=-1)
    keep = apply[..., None] & tf.math.is_finite(offsets)
    return tf.where(keep, offsets, tf.zeros_like(offsets))


def decode(heatmaps: tf.Tensor, method: str = "dark", blur_kernel: int = 11,
           compute_dtype: tf.DType = tf.float64) -> Tuple[tf.Tensor, tf.Tensor]:
    """Batched TF twin of :func:`pose.codec_np.decode`.

    Args:
        heatmaps: (B, H, W, K) float tensor, channels-last; B may be dynamic.
        method: ``"argmax"``, ``"standard"`` or ``"dark"``.
        blur_kernel: odd modulation kernel size for ``"dark"``.
        compute_dtype: dtype of the modulation and Taylor step. float64 (the
            default) makes this twin agree with NumPy within 1e-6 px even on
            ill-conditioned (random) maps, where the Hessian is nearly
            singular; use float32 on accelerators without float64 (TPU).

    Returns:
        ``(keypoints (B, K, 2) float32 in heatmap coordinates, scores (B, K) float32)``.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    heatmaps = tf.cast(tf.convert_to_tensor(heatmaps), compute_dtype)
    heatmaps = tf.where(tf.math.is_finite(heatmaps), heatmaps, tf.zeros_like(heatmaps))
    maps = tf.transpose(heatmaps, [0, 3, 1, 2])  # (B, K, H, W)
    shape = tf.shape(maps)
    height, width = shape[2], shape[3]
    flat = tf.reshape(maps, [shape[0], shape[1], height * width])
    index = tf.argmax(flat, axis=-1, output_type=tf.int32)
    scores = tf.reduce_max(flat, axis=-1)
    px, py = index % width, index // width
    coords = tf.cast(tf.stack([px, py], axis=-1), compute_dtype)
    if method == "standard":
        def at(dx: int, dy: int) -> tf.Tensor:
            neighbour = tf.clip_by_value(py + dy, 0, height - 1) * width + tf.clip_by_value(px + dx, 0, width - 1)
            return tf.gather(flat, neighbour[..., None], batch_dims=2)[..., 0]

        inner_x = (px >= 1) & (px <= width - 2)
        inner_y = (py >= 1) & (py <= height - 2)
        zero = tf.zeros_like(scores)
        shift_x = tf.where(inner_x, 0.25 * tf.sign(at(1, 0) - at(-1, 0)), zero)
        shift_y = tf.where(inner_y, 0.25 * tf.sign(at(0, 1) - at(0, -1)), zero)
        coords = coords + tf.stack([shift_x, shift_y], axis=-1)
    elif method == "dark":
        log_maps = tf.math.log(tf.maximum(modulate(heatmaps, blur_kernel), LOG_FLOOR))
        coords = coords + _taylor_offsets(tf.transpose(log_maps, [0, 3, 1, 2]), px, py)
    return tf.cast(coords, tf.float32), tf.cast(scores, tf.float32)


def flip_back(heatmaps: tf.Tensor, flip_index: np.ndarray) -> tf.Tensor:
    """Mirrors (B, H, W, K) heatmaps of a flipped crop back and swaps left/right channels.

    Under the UDP convention ``x -> W_hm - 1 - x`` is an exact mirror, so no
    shift is applied (unlike the biased convention's 1-pixel fix-up).
    """
    return tf.gather(tf.reverse(heatmaps, axis=[2]), tf.constant(flip_index, tf.int32), axis=3)
