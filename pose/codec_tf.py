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
    """Full-map DARK modulation of (B, H, W, K) maps: zero-padded separable blur, rescaled to each map's max.

    Runs in the dtype of ``heatmaps``. :func:`decode` does not need the whole
    modulated map (see there); this is kept for analysis and tests.
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


def _gather_patch(flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, radius: int,
                  height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Gathers (B, K, P, P) patches, P = 2 * radius + 1, centred on (px, py), zero outside the map.

    ``flat`` is the heatmap batch flattened in its native (B, H, W, K) order, so
    no transpose of the whole batch is needed. Work on the (B, K, P, P) patch is
    kept to a handful of ops: one add for the indices, one gather, one mask.
    """
    shape = tf.shape(px)
    joints = shape[1]
    offsets = tf.range(-radius, radius + 1)
    row_ok = (py[..., None] + offsets >= 0) & (py[..., None] + offsets < height)      # (B, K, P)
    col_ok = (px[..., None] + offsets >= 0) & (px[..., None] + offsets < width)       # (B, K, P)
    inside = row_ok[..., :, None] & col_ok[..., None, :]
    base = ((tf.range(shape[0])[:, None] * height + py) * width + px) * joints + tf.range(joints)[None, :]
    patch_offsets = (offsets[:, None] * width + offsets[None, :]) * joints                # (P, P)
    index = tf.clip_by_value(base[..., None, None] + patch_offsets, 0, tf.size(flat) - 1)
    values = tf.gather(flat, index)
    return tf.where(inside, values, tf.zeros_like(values))


def _local_log_modulated(flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, original_max: tf.Tensor,
                         kernel_size: int, height: tf.Tensor, width: tf.Tensor,
                         compute_dtype: tf.DType) -> tf.Tensor:
    """log(max(modulated map, floor)) on the 5x5 neighbourhood of each argmax: (B, K, 5, 5).

    The modulation (zero-padded blur, then x c with c = original max / blurred
    max) is evaluated only where the Taylor step reads it. c shifts the log by a
    constant, which cancels in every derivative, so it only matters where a
    stencil value is clipped at the floor; there the blurred maximum of the
    neighbourhood stands in for the global one (they coincide whenever the
    blurred peak is within 2 px of the raw peak, i.e. for any real heatmap).
    This makes the decoder O(B K k^2) instead of O(B K H W k).
    """
    radius = kernel_size // 2
    patch = tf.cast(_gather_patch(flat, px, py, radius + 2, height, width), compute_dtype)  # (B, K, P, P)
    kernel = gaussian_kernel_1d(kernel_size)
    band = np.zeros((5, 5 + 2 * radius))
    for row in range(5):
        band[row, row:row + kernel_size] = kernel
    band = tf.constant(band, compute_dtype)                              # (5, P): 1-D blur as a band matrix
    blurred = tf.matmul(tf.matmul(band, patch), band, transpose_b=True)   # (B, K, 5, 5)
    blurred_max = tf.reduce_max(blurred, axis=[2, 3])
    ratio = tf.where(blurred_max > 0, original_max / tf.where(blurred_max > 0, blurred_max, 1.0), 1.0)
    return tf.math.log(tf.maximum(blurred * ratio[..., None, None], LOG_FLOOR))


def _taylor_offsets(log_patch: tf.Tensor, px: tf.Tensor, py: tf.Tensor,
                    height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Taylor step from (B, K, 5, 5) log-neighbourhoods centred on (px, py) -> (B, K, 2) offsets."""
    inside = (px >= 2) & (px <= width - 3) & (py >= 2) & (py <= height - 3)

    def at(dx: int, dy: int) -> tf.Tensor:
        return log_patch[:, :, 2 + dy, 2 + dx]

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
            default) makes this twin agree with NumPy to ~1e-6 px even on
            ill-conditioned (random) maps, where the Hessian is nearly
            singular; use float32 on accelerators without float64 (TPU).

    Returns:
        ``(keypoints (B, K, 2) float32 in heatmap coordinates, scores (B, K) float32)``.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    heatmaps = tf.convert_to_tensor(heatmaps)
    shape = tf.shape(heatmaps)
    height, width = shape[1], shape[2]
    # One pass over the batch: the argmax (NaN never wins it); the score is read back at the argmax.
    index = tf.argmax(tf.reshape(heatmaps, [shape[0], height * width, shape[3]]), axis=1, output_type=tf.int32)
    px, py = index % width, index // width
    flat = tf.reshape(heatmaps, [-1])
    scores = _gather_patch(flat, px, py, 0, height, width)[:, :, 0, 0]
    valid = tf.math.is_finite(scores)
    coords = tf.cast(tf.stack([px, py], axis=-1), compute_dtype)
    if method == "standard":
        neighbours = _gather_patch(flat, px, py, 1, height, width)
        inner_x = (px >= 1) & (px <= width - 2)
        inner_y = (py >= 1) & (py <= height - 2)
        zero = tf.zeros_like(scores)
        shift_x = tf.where(inner_x, 0.25 * tf.sign(neighbours[:, :, 1, 2] - neighbours[:, :, 1, 0]), zero)
        shift_y = tf.where(inner_y, 0.25 * tf.sign(neighbours[:, :, 2, 1] - neighbours[:, :, 0, 1]), zero)
        coords = coords + tf.cast(tf.stack([shift_x, shift_y], axis=-1), compute_dtype)
    elif method == "dark":
        log_patch = _local_log_modulated(flat, px, py, tf.cast(scores, compute_dtype),
                                         blur_kernel, height, width, compute_dtype)
        coords = coords + _taylor_offsets(log_patch, px, py, height, width)
    shift = coords - tf.cast(tf.stack([px, py], axis=-1), compute_dtype)
    coords = tf.where(tf.math.is_finite(shift), coords, tf.cast(tf.stack([px, py], axis=-1), compute_dtype))
    coords = tf.where(valid[..., None], coords, tf.zeros_like(coords))
    scores = tf.where(valid, scores, tf.zeros_like(scores))
    return tf.cast(coords, tf.float32), tf.cast(scores, tf.float32)


def flip_back(heatmaps: tf.Tensor, flip_index: np.ndarray) -> tf.Tensor:
    """Mirrors (B, H, W, K) heatmaps of a flipped crop back and swaps left/right channels.

    Under the UDP convention ``x -> W_hm - 1 - x`` is an exact mirror, so no
    shift is applied (unlike the biased convention's 1-pixel fix-up).
    """
    return tf.gather(tf.reverse(heatmaps, axis=[2]), tf.constant(flip_index, tf.int32), axis=3)
