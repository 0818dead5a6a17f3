"""Maps (attention, heatmaps) blended over the crops they were computed from, for people to inspect.

Used by the TensorBoard previews (:mod:`trainer.train_loop`) and the evaluator's
report (:mod:`components.report`). Vectorised over the batch: one resize, one
colour-map call and one blend for all images.
"""
from __future__ import annotations

import numpy as np


def blend_maps(images: np.ndarray, maps: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Colours ``maps`` (jet: 0 blue, 1 red) and blends them over ``images``.

    The maps live on the heatmap grid of the crops; they are resized to the
    crop bilinearly with corners aligned, which is our convention
    (:mod:`pose.coordinates`: heatmap coordinates are crop coordinates times
    ``(W_hm - 1) / (W_in - 1)``, first and last pixel centres coincide).
    Several maps per image (part-wise attention: one per joint) are shown as
    their maximum.

    Args:
        images: (N, H, W, 3) RGB 0..255 (any numeric dtype).
        maps: (N, h, w, A) or (N, h, w) values in [0, 1] (clipped), channels-last.
        opacity: weight of the coloured map, in [0, 1].

    Returns:
        (N, H, W, 3) uint8 RGB.

    Raises:
        ValueError: shapes that do not pair up, or ``opacity`` outside [0, 1].
    """
    import cv2

    images = np.asarray(images, np.float32)
    maps = np.asarray(maps, np.float32)
    if maps.ndim == 3:
        maps = maps[..., None]
    if images.ndim != 4 or images.shape[-1] != 3 or maps.ndim != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"images must be (N, H, W, 3) and maps (N, h, w[, A]) with the same N, "
                         f"got {images.shape} and {maps.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity!r}")
    height, width = images.shape[1:3]
    if images.shape[0] == 0:
        return np.zeros((0, height, width, 3), np.uint8)
    strongest = np.clip(np.nan_to_num(maps.max(axis=-1, keepdims=True)), 0.0, 1.0)     # (N, h, w, 1)
    resized = _resize_corners_aligned(strongest[..., 0], height, width)
    levels = np.rint(np.clip(resized, 0.0, 1.0) * 255.0).astype(np.uint8)              # (N, H, W)
    coloured = cv2.applyColorMap(levels.reshape(-1, width), cv2.COLORMAP_JET)          # one call, BGR
    coloured = coloured.reshape(*levels.shape, 3)[..., ::-1].astype(np.float32)
    blended = (1.0 - opacity) * np.clip(images, 0.0, 255.0) + opacity * coloured
    return np.rint(blended).astype(np.uint8)


def _resize_corners_aligned(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (N, h, w) to (N, height, width) with corner pixel centres aligned (vectorised)."""
    def axis(source: int, target: int):
        position = np.linspace(0.0, source - 1.0, target) if target > 1 else np.zeros(1)
        low = np.clip(np.floor(position).astype(np.int64), 0, source - 1)
        high = np.minimum(low + 1, source - 1)
        return low, high, (position - low)

    row_low, row_high, row_weight = axis(maps.shape[1], height)
    col_low, col_high, col_weight = axis(maps.shape[2], width)
    rows = (maps[:, row_low] * (1.0 - row_weight)[None, :, None]
            + maps[:, row_high] * row_weight[None, :, None])                         # (N, height, w)
    return rows[:, :, col_low] * (1.0 - col_weight) + rows[:, :, col_high] * col_weight
