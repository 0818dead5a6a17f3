"""DARK decoding with only the ops every model converter maps: the deployment twin of :mod:`pose.codec_tf`.

LiteRT (TFLite) built-ins and default-domain ONNX ops only (TRANSPOSE, RESHAPE, ARG_MAX, REDUCE_MAX,
DEPTHWISE_CONV_2D, GATHER, LOG, arithmetic, comparisons, SELECT), float32, static map size: what
:mod:`trainer.export_deploy` puts inside the LiteRT and ONNX artifacts. :mod:`pose.codec_tf` is the serving
decoder (float64 Taylor step, column search, dynamic shapes, ops such as IS_FINITE that LiteRT lacks); this
module is the same maths in a converter-friendly form, held to :func:`pose.codec_np.decode` by
``tests/test_codec_portable.py``.

Algorithm (Zhang et al., CVPR 2020, Sec. 3.2; read :mod:`pose.codec_np` for the conventions): the argmax in
column-major order (ties to the smallest x, then y, as :mod:`pose.codec_np`); for ``dark`` the modulation as a
zero-padded depthwise Gaussian blur (the kernel of :func:`pose.codec_np.gaussian_kernel_1d`) rescaled by
original max / blurred max of each map (the global maxima, as :func:`pose.codec_np.modulate`), values floored
at :data:`pose.codec_np.LOG_FLOOR`, and the Taylor step from the thirteen stencil values gathered around the
peak, applied where the 5x5 neighbourhood is inside the map and det(H) != 0 (a non-finite step is dropped);
for ``standard`` the quarter-pixel shift towards the higher neighbour (Newell et al., ECCV 2016).
Keypoints are in heatmap pixels (the frame of :mod:`pose.coordinates`, contract 2).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf

from pose.codec_np import LOG_FLOOR, gaussian_kernel_1d, taylor_derivatives

# Largest finite float32: |x| <= this is "finite" (LiteRT has no IS_FINITE built-in; NaN compares false).
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def decode(heatmaps: tf.Tensor, method: str = "dark", blur_kernel: int = 11) -> Tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W, K) float32 heatmaps -> ``(keypoints (B, K, 2) heatmap pixels (x, y), scores (B, K))``.

    H, W, K must be static; B may be dynamic. ``method``: ``dark``, ``standard`` or ``argmax``
    (:data:`pose.codec_np.DECODING_METHODS`); ``blur_kernel``: odd DARK modulation kernel size.
    A map that is not finite at its maximum gives keypoint (0, 0) and score 0.

    Raises:
        ValueError: an unknown ``method``.
    """
    height, width, joints = (int(v) for v in heatmaps.shape[1:])
    batch = tf.shape(heatmaps)[0]
    by_column = tf.reshape(tf.transpose(heatmaps, [0, 3, 2, 1]), [-1, joints, width * height])
    index = tf.argmax(by_column, axis=-1, output_type=tf.int32)                       # (B, K), first max
    scores = tf.reduce_max(by_column, axis=-1)
    px = index // height
    py = index - px * height
    coords = tf.cast(tf.stack([px, py], axis=-1), tf.float32)
    zero = tf.constant(0.0)
    origin = tf.range(batch)[:, None] * (height * width * joints) + tf.range(joints)[None, :]   # (B, K)

    def gather(flat, dx, dy):
        rows = tf.clip_by_value(py + dy, 0, height - 1)
        cols = tf.clip_by_value(px + dx, 0, width - 1)
        return tf.gather(flat, origin + (rows * width + cols) * joints)

    if method == "standard":
        flat = tf.reshape(heatmaps, [-1])
        inner_x = tf.cast((px >= 1) & (px <= width - 2), tf.float32)
        inner_y = tf.cast((py >= 1) & (py <= height - 2), tf.float32)
        shift_x = inner_x * 0.25 * tf.sign(gather(flat, 1, 0) - gather(flat, -1, 0))
        shift_y = inner_y * 0.25 * tf.sign(gather(flat, 0, 1) - gather(flat, 0, -1))
        coords = coords + tf.stack([shift_x, shift_y], axis=-1)
    elif method == "dark":
        kernel = gaussian_kernel_1d(blur_kernel)
        kernel_2d = np.outer(kernel, kernel).astype(np.float32)
        depthwise = np.tile(kernel_2d[:, :, None, None], [1, 1, joints, 1])
        blurred = tf.nn.depthwise_conv2d(heatmaps, tf.constant(depthwise), strides=[1, 1, 1, 1], padding="SAME")
        blurred_max = tf.reduce_max(tf.reshape(blurred, [-1, height * width, joints]), axis=1)   # (B, K)
        positive = blurred_max > 0
        one = tf.constant(1.0)  # scalars broadcast by SELECT_V2: no ones_like tensor for the quantizer to touch
        ratio = tf.where(positive, scores / tf.where(positive, blurred_max, one), one)
        flat = tf.reshape(blurred, [-1])

        def log_at(dx, dy):
            return tf.math.log(tf.maximum(gather(flat, dx, dy) * ratio, LOG_FLOOR))

        dx, dy, dxx, dyy, dxy = taylor_derivatives(log_at)
        det = dxx * dyy - dxy * dxy
        inside = (px >= 2) & (px <= width - 3) & (py >= 2) & (py <= height - 3)
        apply = inside & tf.not_equal(det, 0.0)
        safe_det = tf.where(apply, det, one)
        offsets = tf.stack([-(dyy * dx - dxy * dy) / safe_det, -(dxx * dy - dxy * dx) / safe_det], axis=-1)
        keep = apply[..., None] & (tf.abs(offsets) <= _FLOAT32_MAX)
        coords = coords + tf.where(keep, offsets, zero)
    elif method != "argmax":
        raise ValueError(f"unknown decoding method {method!r}")
    valid = tf.abs(scores) <= _FLOAT32_MAX
    coords = tf.where(valid[..., None], coords, zero)
    scores = tf.where(valid, scores, zero)
    return coords, scores
