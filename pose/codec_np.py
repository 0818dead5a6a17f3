"""DARK heatmap codec, NumPy half (Beam workers, tests, reference numbers).

Twin of :mod:`pose.codec_tf`; tests tie the two together numerically.
Everything here works in *heatmap coordinates* (see :mod:`pose.coordinates`):
the centre of heatmap pixel (col, row) is at (x=col, y=row). Heatmaps are
channels-last: ``(..., H, W, K)`` with K joints; keypoints are ``(..., K, 2)``
as (x, y). No Python loop runs over batch or joints.

Encoding (Zhang et al., CVPR 2020, "unbiased" targets): a Gaussian centred at
the real-valued keypoint over the whole grid, no rounding, no 3-sigma window.

Decoding methods:

* ``"argmax"``: integer argmax.
* ``"standard"``: argmax + quarter-pixel shift toward the higher neighbour
  (the pre-DARK SimpleBaseline/HRNet post-processing).
* ``"dark"``: distribution modulation (Gaussian blur, zero-padded, rescaled to
  the original maximum), log, and one second-order Taylor step at the argmax,
  ``x <- x - H^-1 grad`` with the paper's central-difference stencils, applied
  where the 5x5 neighbourhood lies in the map and det(H) != 0.

Scores are the maxima of the raw heatmaps. NaN never wins the argmax; a map
whose maximum is not finite (all NaN, or +inf) decodes to (0, 0) with score 0,
and a sub-pixel step that comes out non-finite (NaN near the peak) is dropped.
An all-zero map decodes to (0, 0) with score 0.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import numpy as np

DECODING_METHODS = ("argmax", "standard", "dark")
LOG_FLOOR = 1e-10
"""Heatmap values are clipped to this before the log (DARK)."""

# OpenCV's fixed kernels for ksize 1..7 with sigma <= 0 (cv2.getGaussianKernel);
# DarkPose calls cv2.GaussianBlur(hm, (k, k), 0), so we reproduce them exactly.
_SMALL_GAUSSIAN_KERNELS = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


def gaussian_kernel_1d(kernel_size: int) -> np.ndarray:
    """1-D blur kernel of odd size ``k``, identical to ``cv2.getGaussianKernel(k, 0)``.

    Returns:
        float64 (k,) weights summing to 1.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel must be a positive odd integer, got {kernel_size}")
    if kernel_size in _SMALL_GAUSSIAN_KERNELS:
        return np.asarray(_SMALL_GAUSSIAN_KERNELS[kernel_size], dtype=np.float64)
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1.0) + 0.8
    offsets = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2.0
    kernel = np.exp(-(offsets ** 2) / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def in_heatmap_weight(keypoints: np.ndarray, visible: np.ndarray,
                      heatmap_size: Sequence[int], sigma: float) -> np.ndarray:
    """Target weights (..., K) float32: 1 for labelled joints whose 3-sigma box meets the map.

    A joint gets weight 0 when it is not labelled (``visible <= 0``), has a
    non-finite coordinate, or its ``[mu - 3 sigma, mu + 3 sigma]`` square lies
    wholly outside ``[0, W-1] x [0, H-1]``.
    """
    height, width = heatmap_size
    keypoints = np.asarray(keypoints, dtype=np.float64)
    x, y = keypoints[..., 0], keypoints[..., 1]
    radius = 3.0 * sigma
    with np.errstate(invalid="ignore"):
        inside = (x + radius >= 0) & (x - radius <= width - 1) & (y + radius >= 0) & (y - radius <= height - 1)
    finite = np.isfinite(x) & np.isfinite(y)
    return (inside & finite & (np.asarray(visible) > 0)).astype(np.float32)


def encode(keypoints: np.ndarray, visible: np.ndarray, heatmap_size: Sequence[int],
           sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Unbiased Gaussian heatmaps for keypoints in heatmap coordinates.

    Args:
        keypoints: (..., K, 2) float (x, y) in heatmap coordinates.
        visible: (..., K) visibility flags; > 0 means labelled.
        heatmap_size: (H, W).
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
        ``(heatmaps, weights)``: float32 (..., H, W, K) with peak 1 at the
        keypoint (zeros where the weight is 0; a view of joint-major memory),
        and float32 (..., K) weights.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    height, width = int(heatmap_size[0]), int(heatmap_size[1])
    keypoints = np.asarray(keypoints, dtype=np.float64)
    weights = in_heatmap_weight(keypoints, visible, (height, width), sigma)
    safe = np.where(np.isfinite(keypoints), keypoints, 0.0)
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    gx = np.exp(-((xs - safe[..., 0:1]) ** 2) / (2.0 * sigma ** 2))  # (..., K, W)
    gy = np.exp(-((ys - safe[..., 1:2]) ** 2) / (2.0 * sigma ** 2))  # (..., K, H)
    # Joint-major product (cheap, contiguous), returned as a channels-last view:
    # storage (schemas.features) wants joint-major, so it then needs no copy.
    joint_major = (gy[..., :, :, None] * (gx * weights[..., None])[..., :, None, :]).astype(np.float32)
    return np.moveaxis(joint_major, -3, -1), weights


def _argmax(maps: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps (M, H, W) -> integer px (M,), py (M,), max values (M,).

    NaN never wins. Ties go to the smallest x, then the smallest y: the order
    in which the TF twin searches channels-last memory cheaply (column maxima
    first, see :func:`pose.codec_tf._column_search`). Ties only occur on flat or
    clipped maps; a constant map decodes to (0, 0) either way.
    """
    count, height = maps.shape[0], maps.shape[1]
    by_column = np.swapaxes(maps, 1, 2).reshape(count, -1)
    index = np.argmax(np.where(np.isnan(by_column), -np.inf, by_column), axis=1)
    return index // height, index % height, by_column[np.arange(count), index]


def blur(maps: np.ndarray, kernel_size: int) -> np.ndarray:
    """Separable Gaussian blur of (M, H, W) maps on a zero-padded border."""
    kernel = gaussian_kernel_1d(kernel_size)
    radius = kernel_size // 2
    height, width = maps.shape[1:]
    padded = np.pad(maps, ((0, 0), (radius, radius), (radius, radius)))
    rows = sum(kernel[i] * padded[:, i:i + height, :] for i in range(kernel_size))
    return sum(kernel[i] * rows[:, :, i:i + width] for i in range(kernel_size))


def modulate(maps: np.ndarray, kernel_size: int) -> np.ndarray:
    """DARK distribution modulation: blur, then rescale each map to its original max."""
    original_max = np.nanmax(np.where(np.isnan(maps), -np.inf, maps), axis=(1, 2), keepdims=True)
    blurred = blur(maps, kernel_size)
    blurred_max = np.nanmax(np.where(np.isnan(blurred), -np.inf, blurred), axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore"):
        ratio = np.divide(original_max, blurred_max, out=np.ones_like(blurred_max), where=blurred_max > 0)
    return blurred * ratio


def taylor_derivatives(at: Callable[[int, int], Any]) -> Tuple[Any, Any, Any, Any, Any]:
    """Central differences of a log-heatmap around its maximum: ``(dx, dy, dxx, dyy, dxy)``.

    ``at(dx, dy)`` returns the log values at offset (dx, dy) from each maximum (x right, y down), as NumPy
    arrays or TF tensors alike (only arithmetic is applied): the stencil of DARK's Taylor step (Zhang et al.,
    CVPR 2020, Sec. 3.2, Eq. 6-7), shared by :func:`taylor_offsets` and :mod:`pose.codec_portable`.
    """
    center = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2.0 * center + at(-2, 0))
    dyy = 0.25 * (at(0, 2) - 2.0 * center + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    return dx, dy, dxx, dyy, dxy


def taylor_offsets(log_maps: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Second-order Taylor step at integer maxima of (M, H, W) log-heatmaps.

    Returns:
        float64 (M, 2) offsets (dx, dy) to add to (px, py); zero where the
        5x5 neighbourhood leaves the map or the Hessian is singular.
    """
    count, height, width = log_maps.shape
    inside = (px >= 2) & (px <= width - 3) & (py >= 2) & (py <= height - 3)
    m = np.arange(count)

    def at(dx: int, dy: int) -> np.ndarray:
        return log_maps[m, np.clip(py + dy, 0, height - 1), np.clip(px + dx, 0, width - 1)]

    dx, dy, dxx, dyy, dxy = taylor_derivatives(at)
    det = dxx * dyy - dxy ** 2
    apply = inside & (det != 0)
    safe_det = np.where(apply, det, 1.0)
    offset_x = -(dyy * dx - dxy * dy) / safe_det
    offset_y = -(dxx * dy - dxy * dx) / safe_det
    offsets = np.stack([offset_x, offset_y], axis=-1)
    offsets = np.where(apply[:, None] & np.isfinite(offsets), offsets, 0.0)
    return offsets


def decode(heatmaps: np.ndarray, method: str = "dark", blur_kernel: int = 11) -> Tuple[np.ndarray, np.ndarray]:
    """Decodes heatmaps to keypoints in heatmap coordinates.

    Args:
        heatmaps: (..., H, W, K) float, channels-last.
        method: one of ``"argmax"``, ``"standard"``, ``"dark"``.
        blur_kernel: odd modulation kernel size for ``"dark"`` (11 by default,
            3 for small heatmaps).

    Returns:
        ``(keypoints, scores)``: float64 (..., K, 2) (x, y) in heatmap
        coordinates and float64 (..., K) raw heatmap maxima.
    """
    if method not in DECODING_METHODS:
        raise ValueError(f"method must be one of {DECODING_METHODS}, got {method!r}")
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim < 3:
        raise ValueError(f"heatmaps must be (..., H, W, K), got shape {heatmaps.shape}")
    lead, (height, width, joints) = heatmaps.shape[:-3], heatmaps.shape[-3:]
    maps = np.moveaxis(heatmaps, -1, -3).reshape(-1, height, width)
    px, py, scores = _argmax(maps)
    coords = np.stack([px, py], axis=-1).astype(np.float64)
    m = np.arange(maps.shape[0])
    if method == "standard":
        inner_x = (px >= 1) & (px <= width - 2)
        inner_y = (py >= 1) & (py <= height - 2)
        diff_x = maps[m, py, np.clip(px + 1, 0, width - 1)] - maps[m, py, np.clip(px - 1, 0, width - 1)]
        diff_y = maps[m, np.clip(py + 1, 0, height - 1), px] - maps[m, np.clip(py - 1, 0, height - 1), px]
        coords[:, 0] += np.where(inner_x, 0.25 * np.sign(diff_x), 0.0)
        coords[:, 1] += np.where(inner_y, 0.25 * np.sign(diff_y), 0.0)
    elif method == "dark":
        with np.errstate(invalid="ignore"):
            log_maps = np.log(np.maximum(modulate(maps, blur_kernel), LOG_FLOOR))
        coords += taylor_offsets(log_maps, px, py)
    integer = np.stack([px, py], axis=-1).astype(np.float64)
    coords = np.where(np.isfinite(coords), coords, integer)
    valid = np.isfinite(scores)
    coords = np.where(valid[:, None], coords, 0.0)
    scores = np.where(valid, scores, 0.0)
    return coords.reshape(*lead, joints, 2), scores.reshape(*lead, joints)
