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

    Written as a max and a min over the positions equal to it: cheaper than
    ArgMax in TF's executor, and on the full scan's whole-batch tensor also
    under XLA (its variadic argmax is slow there on CPU; on the small column
    tensors the XLA path uses ArgMax, see :func:`_column_search`).
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


def _rows(heatmaps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, K) -> (B, H, W * K): each image row as one contiguous row of channels-last memory."""
    shape = tf.shape(heatmaps)
    return tf.reshape(heatmaps, [shape[0], shape[1], shape[2] * shape[3]])


def column_maxima(heatmaps: tf.Tensor) -> tf.Tensor:
    """(B, H, W, K) -> (B, W, K): the maximum of every column of every map.

    In channels-last memory this reduction runs over contiguous (W * K) rows,
    the cheap direction: it is the decoder's one full pass over the batch.
    NaN: TF's executor returns NaN for a column holding one; XLA's CPU
    reduction gives no such guarantee (it may skip a NaN or restart after it).
    """
    shape = tf.shape(heatmaps)
    return tf.reshape(tf.reduce_max(_rows(heatmaps), axis=1), [shape[0], shape[2], shape[3]])


def _column_search(heatmaps: tf.Tensor, flat: tf.Tensor, column_max: tf.Tensor,
                   xla: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """Integer peaks (px, py), each (B, K) int32, of a NaN-free (B, H, W, K) batch from its column maxima.

    Only the winning column of each map (H values) is read to find its row.
    Ties go to the smallest x, then the smallest y (the order of
    :func:`pose.codec_np._argmax`). ``xla``: argmax ops (XLA's are fast on
    these small tensors; TF's executor prefers a max and a min).
    """
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    argmax = (lambda values, axis: tf.argmax(values, axis=axis, output_type=tf.int32)) if xla else _first_argmax
    px = argmax(column_max, 1)                                                      # (B, K)
    top = (tf.range(batch)[:, None] * (height * width) + px) * joints + tf.range(joints)[None, :]
    column = tf.gather(flat, top[..., None] + tf.range(height) * (width * joints))  # (B, K, H)
    return px, argmax(column, 2)


def _full_scan(heatmaps: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Integer peaks (px, py) of any (B, H, W, K) batch, NaN included (it never wins); same ties."""
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    by_column = tf.reshape(tf.transpose(heatmaps, [0, 2, 1, 3]), [batch, width * height, joints])
    index = _first_argmax(_without_nan(by_column), axis=1)
    return index // height, index % height


def _holds_nan(witness: tf.Tensor) -> tf.Tensor:
    """Whether a batch holds any NaN, read from a reduction of it that propagates NaN."""
    return tf.reduce_any(tf.math.is_nan(witness))


def _gather_patch(flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, radius: int,
                  height: tf.Tensor, width: tf.Tensor, joints: tf.Tensor,
                  channels: tf.Tensor | None = None) -> tf.Tensor:
    """Gathers (B, K, P, P) patches, P = 2 * radius + 1, centred on (px, py), zero outside the map.

    ``flat`` is the heatmap batch flattened in its native (B, H, W, K) order,
    so no transpose of the whole batch is needed. Rows and columns are clamped
    separately, so a read never leaves its own map; the clamped ones are then
    zeroed (the zero padding of the modulation). ``channels``: (B, M) int32
    map index of each peak when the peaks are not one per map (then px, py
    are (B, M) too); by default peak k is on map k.
    """
    batch = tf.shape(px)[0]
    offsets = tf.range(-radius, radius + 1)
    rows = py[..., None] + offsets                                                     # (B, K, P)
    cols = px[..., None] + offsets
    channels = tf.range(joints)[None, :] if channels is None else channels
    origin = tf.range(batch)[:, None] * (height * width * joints) + channels           # (B, K)
    index = (origin[..., None, None] + (tf.clip_by_value(rows, 0, height - 1) * (width * joints))[..., :, None]
             + (tf.clip_by_value(cols, 0, width - 1) * joints)[..., None, :])
    inside = (((rows >= 0) & (rows < height))[..., :, None] & ((cols >= 0) & (cols < width))[..., None, :])
    values = tf.gather(flat, index)
    return tf.where(inside, values, tf.zeros_like(values))


def _blur_neighbourhood(patch: tf.Tensor, kernel_size: int, flat_products: bool) -> tf.Tensor:
    """Zero-padded separable blur of (B, K, k + 4, k + 4) neighbourhoods, evaluated on their central 5x5: (B, K, 5, 5).

    The 1-D blur is a (5, k + 4) band matrix. ``flat_products=True`` applies
    it as two plain matrix products over all maps at once (rows of every
    neighbourhood, then columns after a small transpose), which XLA runs as
    two GEMMs; the graph executor prefers the broadcast batched products.
    """
    radius = kernel_size // 2
    size = 5 + 2 * radius
    band = np.zeros((5, size))
    for row in range(5):
        band[row, row:row + kernel_size] = gaussian_kernel_1d(kernel_size)
    band = tf.constant(band, patch.dtype)
    if not flat_products:
        return tf.matmul(tf.matmul(band, patch), band, transpose_b=True)
    shape = tf.shape(patch)
    maps = shape[0] * shape[1]
    across = tf.matmul(tf.reshape(patch, [-1, size]), band, transpose_b=True)            # (B*K*P, 5): (map, y, x)
    across = tf.transpose(tf.reshape(across, [maps, size, 5]), [1, 0, 2])                 # (P, B*K, 5): (y, map, x)
    both = tf.reshape(tf.matmul(band, tf.reshape(across, [size, -1])), [5, shape[0], shape[1], 5])
    return tf.transpose(both, [1, 2, 0, 3])


def _local_modulated(patch: tf.Tensor, original_max: tf.Tensor, kernel_size: int,
                     flat_products: bool = False) -> tf.Tensor:
    """max(modulated map, floor) on the 5x5 neighbourhood of each argmax: (B, K, 5, 5).

    ``patch`` is the (B, K, k + 4, k + 4) raw neighbourhood (zero outside the
    map) in the compute dtype. The modulation (zero-padded blur, then x c with
    c = original max / blurred max) is evaluated only where the Taylor step
    reads it. c shifts the log by a constant, which cancels in every
    derivative, so it only matters where a stencil value is clipped at the
    floor; there the blurred maximum of the neighbourhood stands in for the
    global one (they coincide whenever the blurred peak is within 2 px of the
    raw peak, i.e. for any real heatmap). This makes the decoder
    O(B K k^2) instead of O(B K H W k).
    """
    blurred = _blur_neighbourhood(patch, kernel_size, flat_products)
    blurred_max = tf.reduce_max(blurred, axis=[2, 3])
    ratio = tf.where(blurred_max > 0, original_max / tf.where(blurred_max > 0, blurred_max, 1.0), 1.0)
    return tf.maximum(blurred * ratio[..., None, None], LOG_FLOOR)


def _taylor_offsets(modulated: tf.Tensor, px: tf.Tensor, py: tf.Tensor,
                    height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Taylor step from (B, K, 5, 5) positive modulated neighbourhoods centred on (px, py) -> (B, K, 2) offsets.

    The paper's stencils on the log map, each written as one log of ratios
    (log a - log b = log(a / b); ratios, not products, so float32 cannot
    overflow): five logs per map instead of thirteen.
    """
    inside = (px >= 2) & (px <= width - 3) & (py >= 2) & (py <= height - 3)

    def at(dx: int, dy: int) -> tf.Tensor:
        return modulated[:, :, 2 + dy, 2 + dx]

    center = at(0, 0)
    dx = 0.5 * tf.math.log(at(1, 0) / at(-1, 0))
    dy = 0.5 * tf.math.log(at(0, 1) / at(0, -1))
    dxx = 0.25 * tf.math.log((at(2, 0) / center) * (at(-2, 0) / center))
    dyy = 0.25 * tf.math.log((at(0, 2) / center) * (at(0, -2) / center))
    dxy = 0.25 * tf.math.log((at(1, 1) / at(1, -1)) * (at(-1, -1) / at(-1, 1)))
    det = dxx * dyy - dxy * dxy
    apply = inside & tf.not_equal(det, 0.0)
    safe_det = tf.where(apply, det, tf.ones_like(det))
    offsets = tf.stack([-(dyy * dx - dxy * dy) / safe_det, -(dxx * dy - dxy * dx) / safe_det], axis=-1)
    keep = apply[..., None] & tf.math.is_finite(offsets)
    return tf.where(keep, offsets, tf.zeros_like(offsets))


def _decode(heatmaps: tf.Tensor, method: str, blur_kernel: int, compute_dtype: tf.DType,
            xla: bool = False) -> Tuple[tf.Tensor, tf.Tensor]:
    """(B, H, W, K) heatmaps -> keypoints, scores. ``xla``: the op forms that suit XLA.

    A batch holding NaN takes the full scan, where NaN never wins. The test
    reads the column maxima in TF's executor (its max propagates NaN); under
    XLA, whose CPU max does not reliably, it reads the column sums instead
    (NaN + x is NaN in any order), which XLA computes in the same pass.
    """
    flat = tf.reshape(heatmaps, [-1])
    column_max = column_maxima(heatmaps)
    witness = tf.reduce_sum(_rows(heatmaps), axis=1) if xla else column_max
    px, py = tf.cond(_holds_nan(witness), lambda: _full_scan(heatmaps),
                     lambda: _column_search(heatmaps, flat, column_max, xla))
    return _decode_at(heatmaps, flat, px, py, method, blur_kernel, compute_dtype, flat_products=xla)


def _decode_at(heatmaps: tf.Tensor, flat: tf.Tensor, px: tf.Tensor, py: tf.Tensor, method: str,
               blur_kernel: int, compute_dtype: tf.DType, flat_products: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sub-pixel keypoints and scores from the integer peaks (px, py) (B, K) of (B, H, W, K) heatmaps.

    ``flat_products``: see :func:`_blur_neighbourhood`.
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
        modulated = _local_modulated(tf.cast(patch, compute_dtype), tf.cast(scores, compute_dtype),
                                     blur_kernel, flat_products)
        coords = coords + _taylor_offsets(modulated, px, py, height, width)
    coords = tf.where(tf.math.is_finite(coords - integer), coords, integer)
    coords = tf.where(valid[..., None], coords, tf.zeros_like(coords))
    scores = tf.where(valid, scores, tf.zeros_like(scores))
    return tf.cast(coords, tf.float32), tf.cast(scores, tf.float32)


def refine_peaks(heatmaps: tf.Tensor, px: tf.Tensor, py: tf.Tensor, channels: tf.Tensor,
                 blur_kernel: int = 11, compute_dtype: tf.DType = tf.float64) -> Tuple[tf.Tensor, tf.Tensor]:
    """The DARK sub-pixel step (modulation + Taylor, as :func:`decode`) at given integer peaks, several per map.

    :func:`decode` refines the one argmax of every map; this refines any set
    of integer peaks, e.g. the local maxima of the bottom-up decoder
    (:mod:`pose.bottom_up_decode_tf`), with the same maths (Zhang et al.,
    CVPR 2020, Sec. 3.2; the neighbourhood evaluation of :func:`_local_modulated`).

    Args:
        heatmaps: (B, H, W, K) float, channels-last.
        px, py: (B, M) int32 integer peak columns and rows.
        channels: (B, M) int32 map (joint) index of each peak.
        blur_kernel: odd modulation kernel size.
        compute_dtype: dtype of the modulation and Taylor step.

    Returns:
        ``(keypoints (B, M, 2) float32 (x, y) heatmap coordinates, scores (B, M)
        float32 heatmap values at the integer peaks)``.
    """
    gaussian_kernel_1d(blur_kernel)  # validates the kernel size
    heatmaps = tf.convert_to_tensor(heatmaps)
    shape = tf.shape(heatmaps)
    height, width, joints = shape[1], shape[2], shape[3]
    radius = blur_kernel // 2 + 2
    patch = _gather_patch(tf.reshape(heatmaps, [-1]), px, py, radius, height, width, joints, channels)
    scores = patch[:, :, radius, radius]
    modulated = _local_modulated(tf.cast(patch, compute_dtype), tf.cast(scores, compute_dtype), blur_kernel)
    integer = tf.cast(tf.stack([px, py], axis=-1), compute_dtype)
    coords = integer + _taylor_offsets(modulated, px, py, height, width)
    coords = tf.where(tf.math.is_finite(coords - integer), coords, integer)
    return tf.cast(coords, tf.float32), tf.cast(scores, tf.float32)


def _check_options(method: str, blur_kernel: int) -> None:
    if method not in DECODING_METHODS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    gaussian_kernel_1d(blur_kernel)  # validates the kernel size


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
        jit_compile: run the decoder as one XLA computation
            (:func:`compiled_decoder`; about 1.4x faster on this CPU, see
            ``bench/codec.py``). A graph that contains it needs XLA at run
            time: TensorFlow itself has it, TF Serving does not by default
            (CPU: ``--xla_cpu_compilation_enabled``), so export keeps it off
            unless ``codec.decode_jit_compile`` is set. Each new input shape
            is compiled once.

    Returns:
        ``(keypoints (B, K, 2) float32 in heatmap coordinates, scores (B, K) float32)``.
    """
    if jit_compile:
        return compiled_decoder(method, blur_kernel, compute_dtype)(heatmaps)
    _check_options(method, blur_kernel)
    return _decode(tf.convert_to_tensor(heatmaps), method, blur_kernel, compute_dtype)


def compiled_decoder(method: str = "dark", blur_kernel: int = 11,
                     compute_dtype: tf.DType = tf.float64) -> Callable:
    """The XLA-compiled decoder, a ``tf.function(jit_compile=True)`` of (B, H, W, K) heatmaps -> (keypoints, scores).

    What :func:`decode` calls with ``jit_compile=True``; one per (method,
    kernel, dtype), each new input shape compiled once.
    """
    _check_options(method, blur_kernel)
    key = (method, int(blur_kernel), compute_dtype)
    if key not in _XLA_DECODERS:
        _XLA_DECODERS[key] = tf.function(lambda maps: _decode(maps, method, int(blur_kernel), compute_dtype, xla=True),
                                         jit_compile=True, autograph=False)
    return _XLA_DECODERS[key]


def flip_back(heatmaps: tf.Tensor, flip_index: np.ndarray) -> tf.Tensor:
    """Mirrors (B, H, W, K) heatmaps of a flipped crop back and swaps left/right channels.

    Under the UDP convention ``x -> W_hm - 1 - x`` is an exact mirror, so no
    shift is applied (unlike the biased convention's 1-pixel fix-up).
    """
    return tf.gather(tf.reverse(heatmaps, axis=[2]), tf.constant(flip_index, tf.int32), axis=3)
