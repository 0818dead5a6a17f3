"""DARK heatmap codec, TensorFlow half (tf.data targets, serving graph).

Twin of :mod:`pose.codec_np` (read its docstring for the algorithm and the
coordinate frame). Only tensor ops: works inside ``tf.function`` and a
SavedModel, for any static or dynamic batch size, with no Python loop over
batch or joints. Heatmaps are ``(B, H, W, K)`` channels-last; keypoints are
``(B, K, 2)`` (x, y) in heatmap coordinates.

Cost: :func:`decode` reads the batch once (the column maxima, a reduction
over contiguous rows of channels-last memory), then per map only its winning
column (H values) and the (k + 4)^2 neighbourhood the Taylor step needs; the
modulation is never computed on the whole map. ``jit_compile=True`` runs the
same algorithm as one XLA computation.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

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


def _first_argmax(values: tf.Tensor, axis: int) -> tf.Tensor:
    """Index (int32) of the first maximum of NaN-free ``values`` along ``axis``.

    Written as a max and a min over the positions equal to it, which XLA
    fuses into two plain reductions (its variadic argmax is slow on CPU).
    """
    size = tf.shape(values)[axis]
    largest = tf.reduce_max(values, axis=axis, keepdims=True)
    shape = [1] * values.shape.rank
    shape[axis] = -1
    positions = tf.reshape(tf.range(size), shape)
    return tf.reduce_min(tf.where(values == largest, positions, size), axis=axis)


def _without_nan(values: tf.Tensor) -> tf.Tensor:
    """NaN -> -inf, so that NaN never wins a maximum."""
    return tf.where(tf.math.is_nan(values), tf.constant(-np.inf, values.dtype), values)


def column_maxima(heatmaps: tf.Tensor, ignore_nan: bool = False) -> tf.Tensor:
    """(B, H, W, K) -> (B, W, K): the maximum of every column of every map.

    In channels-last memory this reduction runs over contiguous (W * K) rows,
    the cheap direction: it is the decoder's one full pass over the batch. A
    column holding a NaN has maximum NaN unless ``ignore_nan`` (free inside
    XLA, where the replacement fuses into the reduction; an extra pass outside).
    """
    shape = tf.shape(heatmaps)
    rows = tf.reshape(heatmaps, [shape[0], shape[1], shape[2] * shape[3]])
    if ignore_nan:
        rows = _without_nan(rows)
    return tf.reshape(tf.reduce_max(rows, axis=1), [shape[0], shape[2], shape[3]])


def _column_search(heatmaps: tf.Tensor, flat: tf.Tensor, column_max: tf.Tensor,
                   ignore_nan: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """Integer peaks (px, py), each (B, K) int32, from the column maxima of a (B, H, W, K) batch.

    Only the winning column of each map (H values) is read to find its row.
    Ties go to the smallest x, then the smallest y (the order of
    :func:`pose.codec_np._argmax`). The batch must be NaN-free, or
    ``column_max`` computed with ``ignore_nan`` and ``ignore_nan`` set here.
    """
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    px = _first_argmax(column_max, axis=1)                                          # (B, K)
    top = (tf.range(batch)[:, None] * (height * width) + px) * joints + tf.range(joints)[None, :]
    column = tf.gather(flat, top[..., None] + tf.range(height) * (width * joints))  # (B, K, H)
    return px, _first_argmax(_without_nan(column) if ignore_nan else column, axis=2)


def _full_scan(heatmaps: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Integer peaks (px, py) of any (B, H, W, K) batch, NaN included (it never wins); same ties."""
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    by_column = tf.reshape(tf.transpose(heatmaps, [0, 2, 1, 3]), [batch, width * height, joints])
    index = _first_argmax(_without_nan(by_column), axis=1)
    return index // height, index % height


def _holds_nan(column_max: tf.Tensor) -> tf.Tensor:
    """Whether a batch holds any NaN, read from its column maxima (reduce_max propagates NaN)."""
    return tf.reduce_any(tf.math.is_nan(column_max))


def _gather_patch(flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, radius: int,
                  height: tf.Tensor, width: tf.Tensor, joints: tf.Tensor) -> tf.Tensor:
    """Gathers (B, K, P, P) patches, P = 2 * radius + 1, centred on (px, py), zero outside the map.

    ``flat`` is the heatmap batch flattened in its native (B, H, W, K) order,
    so no transpose of the whole batch is needed. Rows and columns are clamped
    separately, so a read never leaves its own map; the clamped ones are then
    zeroed (the zero padding of the modulation).
    """
    batch = tf.shape(px)[0]
    offsets = tf.range(-radius, radius + 1)
    rows = py[..., None] + offsets                                                     # (B, K, P)
    cols = px[..., None] + offsets
    origin = tf.range(batch)[:, None] * (height * width * joints) + tf.range(joints)[None, :]  # (B, K)
    index = (origin[..., None, None] + (tf.clip_by_value(rows, 0, height - 1) * (width * joints))[..., :, None]
             + (tf.clip_by_value(cols, 0, width - 1) * joints)[..., None, :])
    inside = (((rows >= 0) & (rows < height))[..., :, None] & ((cols >= 0) & (cols < width))[..., None, :])
    values = tf.gather(flat, index)
    return tf.where(inside, values, tf.zeros_like(values))


def _local_log_modulated(patch: tf.Tensor, original_max: tf.Tensor, kernel_size: int,
                         fused: bool = False) -> tf.Tensor:
    """log(max(modulated map, floor)) on the 5x5 neighbourhood of each argmax: (B, K, 5, 5).

    ``patch`` is the (B, K, k + 4, k + 4) raw neighbourhood (zero outside the
    map) in the compute dtype. The modulation (zero-padded blur, then x c with
    c = original max / blurred max) is evaluated only where the Taylor step
    reads it. c shifts the log by a constant, which cancels in every
    derivative, so it only matters where a stencil value is clipped at the
    floor; there the blurred maximum of the neighbourhood stands in for the
    global one (they coincide whenever the blurred peak is within 2 px of the
    raw peak, i.e. for any real heatmap). This makes the decoder
    O(B K k^2) instead of O(B K H W k).

    ``fused=True`` writes the separable blur as k shifted multiply-adds per
    axis, which XLA fuses into one loop (faster there than its batched
    matmul); the graph executor prefers the two band-matrix products.
    """
    radius = kernel_size // 2
    kernel = gaussian_kernel_1d(kernel_size)
    if fused:
        rows = tf.add_n([float(kernel[j]) * patch[:, :, :, j:j + 5] for j in range(kernel_size)])   # (B, K, P, 5)
        blurred = tf.add_n([float(kernel[i]) * rows[:, :, i:i + 5, :] for i in range(kernel_size)])  # (B, K, 5, 5)
    else:
        band = np.zeros((5, 5 + 2 * radius))
        for row in range(5):
            band[row, row:row + kernel_size] = kernel
        band = tf.constant(band, patch.dtype)                                 # (5, P): 1-D blur as a band matrix
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


def _decode(heatmaps: tf.Tensor, column_max: tf.Tensor, method: str, blur_kernel: int,
            compute_dtype: tf.DType) -> Tuple[tf.Tensor, tf.Tensor]:
    """The graph decoder: (B, H, W, K) heatmaps and their (B, W, K) column maxima -> keypoints, scores."""
    flat = tf.reshape(heatmaps, [-1])
    px, py = tf.cond(_holds_nan(column_max), lambda: _full_scan(heatmaps),
                     lambda: _column_search(heatmaps, flat, column_max))
    return _decode_at(heatmaps, flat, px, py, method, blur_kernel, compute_dtype, fused=False)


def _decode_fused(heatmaps: tf.Tensor, method: str, blur_kernel: int,
                  compute_dtype: tf.DType) -> Tuple[tf.Tensor, tf.Tensor]:
    """The XLA decoder: NaN is ignored inside the fused reductions, so the column search alone
    handles every batch (the graph decoder needs the full scan when a batch holds NaN)."""
    flat = tf.reshape(heatmaps, [-1])
    px, py = _column_search(heatmaps, flat, column_maxima(heatmaps, ignore_nan=True), ignore_nan=True)
    return _decode_at(heatmaps, flat, px, py, method, blur_kernel, compute_dtype, fused=True)


def _decode_at(heatmaps: tf.Tensor, flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, method: str,
               blur_kernel: int, compute_dtype: tf.DType, fused: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sub-pixel keypoints and scores from the integer peaks (px, py) (B, K) of (B, H, W, K) heatmaps.

    ``fused=True``: the op forms that suit XLA (see :func:`_local_log_modulated`).
    """
    shape = tf.shape(heatmaps)
    height, width, joints = shape[1], shape[2], shape[3]
    radius = {"argmax": 0, "standard": 1, "dark": blur_kernel // 2 + 2}[method]
    patch = _gather_patch(flat, px, py, radius, height, width, joints)     # (B, K, P, P)
    scores = patch[:, :, radius, radius]
    valid = tf.math.is_finite(scores)
    integer = tf.cast(tf.stack([px, py], axis=-1), compute_dtype)
    coords = integer
    if method == "standard":
        inner_x = (px >= 1) & (px <= width - 2)
        inner_y = (py >= 1) & (py <= height - 2)
        zero = tf.zeros_like(scores)
        shift_x = tf.where(inner_x, 0.25 * tf.sign(patch[:, :, 1, 2] - patch[:, :, 1, 0]), zero)
        shift_y = tf.where(inner_y, 0.25 * tf.sign(patch[:, :, 2, 1] - patch[:, :, 0, 1]), zero)
        coords = coords + tf.cast(tf.stack([shift_x, shift_y], axis=-1), compute_dtype)
    elif method == "dark":
        log_patch = _local_log_modulated(tf.cast(patch, compute_dtype), tf.cast(scores, compute_dtype),
                                         blur_kernel, fused)
        coords = coords + _taylor_offsets(log_patch, px, py, height, width)
    coords = tf.where(tf.math.is_finite(coords - integer), coords, integer)
    coords = tf.where(valid[..., None], coords, tf.zeros_like(coords))
    scores = tf.where(valid, scores, tf.zeros_like(scores))
    return tf.cast(coords, tf.float32), tf.cast(scores, tf.float32)


_XLA_DECODERS: Dict[Tuple[str, int, tf.DType], Callable] = {}


def decode(heatmaps: tf.Tensor, method: str = "dark", blur_kernel: int = 11,
           compute_dtype: tf.DType = tf.float64, jit_compile: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """Batched TF twin of :func:`pose.codec_np.decode`.

    Args:
        heatmaps: (B, H, W, K) float tensor, channels-last; B may be dynamic.
        method: ``"argmax"``, ``"standard"`` or ``"dark"``.
        blur_kernel: odd modulation kernel size for ``"dark"``.
        compute_dtype: dtype of the modulation and Taylor step. float64 (the
            default) makes this twin agree with NumPy to ~1e-6 px even on
            ill-conditioned (random) maps, where the Hessian is nearly
            singular; use float32 on accelerators without float64 (TPU).
        jit_compile: run the decoder as one XLA computation (about 1.3x faster
            on this CPU, see ``bench/codec.py``). A graph that contains it needs XLA at
            run time: TensorFlow itself has it, TF Serving does not by default
            (CPU: ``--xla_cpu_compilation_enabled``), so export keeps it off
            unless ``codec.decode_jit_compile`` is set. Each new input shape is
            compiled once.

    Returns:
        ``(keypoints (B, K, 2) float32 in heatmap coordinates, scores (B, K) float32)``.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    gaussian_kernel_1d(blur_kernel)  # validates the kernel size
    heatmaps = tf.convert_to_tensor(heatmaps)
    if not jit_compile:
        return _decode(heatmaps, column_maxima(heatmaps), method, blur_kernel, compute_dtype)
    key = (method, int(blur_kernel), compute_dtype)
    if key not in _XLA_DECODERS:
        _XLA_DECODERS[key] = tf.function(lambda maps: _decode_fused(maps, method, int(blur_kernel), compute_dtype),
                                         jit_compile=True, autograph=False)
    return _XLA_DECODERS[key](heatmaps)


def flip_back(heatmaps: tf.Tensor, flip_index: np.ndarray) -> tf.Tensor:
    """Mirrors (B, H, W, K) heatmaps of a flipped crop back and swaps left/right channels.

    Under the UDP convention ``x -> W_hm - 1 - x`` is an exact mirror, so no
    shift is applied (unlike the biased convention's 1-pixel fix-up).
    """
    return tf.gather(tf.reverse(heatmaps, axis=[2]), tf.constant(flip_index, tf.int32), axis=3)
