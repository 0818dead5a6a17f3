"""Identities of people across video frames: greedy matching on OKS between consecutive frames, box IoU as fallback.

The rule (:meth:`PoseTracker.update`, once per frame, frames in order):

1. Every person, of the previous frame and of the current one, gets a box: the
   extent ``[x0, y0, x1, y1]`` of its confident joints (joint score
   ``>= joint_threshold``; a person without a confident joint: all its finite
   joints), and an area ``max((x1 - x0) * (y1 - y0), 1)`` in pixels^2.
2. OKS stage. For a pair (previous person i, current person j) that shares at
   least ``min_joints`` joints confident in both, and when the schema has OKS
   sigmas, the similarity is COCO's object keypoint similarity over those
   joints, ``mean_k exp(-d_k^2 / (2 a (2 sigma_k)^2))``, with ``d_k`` the
   distance in pixels between the two positions of joint k and ``a`` the mean
   of the two areas (COCO's formula, Lin et al., ECCV 2014; the previous frame
   plays the ground truth). Pairs are taken greedily in order of decreasing
   OKS (ties: lower previous index, then lower current index), a pair when
   neither person is taken yet and its OKS is ``>= oks_threshold``.
3. IoU fallback. Among the people still free, the pairs for which OKS was not
   defined (fewer than ``min_joints`` shared confident joints, or no sigmas)
   are taken greedily in order of decreasing box IoU, a pair when its IoU is
   ``>= iou_threshold``. A pair whose OKS was defined but too low is never
   matched on IoU (two people standing close have overlapping boxes).
4. A matched current person carries its previous person's id. Every
   unmatched current person gets a new id: the next integer of a counter that
   starts at 0 and only grows (in the current frame's order), so ids are never
   reused, within one tracker. A previous person left unmatched ends its
   track: matching looks back one frame only, so someone missed for a frame,
   or leaving and coming back, gets a new id.

Known limit (the documented crossings): when two people cross and overlap,
the pose of one in the previous frame may be closer to the other's current
pose than to its own; greedy matching then swaps their ids at the crossing,
and they keep the swapped ids afterwards. A swap needs the two people's
poses to come closer than one frame's motion (with the default thresholds,
on the synthetic clips of ``tests/test_tracking.py``: their boxes overlap).

Pure NumPy, vectorised over people and joints: the OKS of all pairs is one
(N_prev, N_cur, K) computation; only the greedy assignment walks the pairs.
Coordinates are image pixels (x, y) (:mod:`pose.coordinates`).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

DEFAULT_OKS_THRESHOLD = 0.5
"""OKS at or above which two poses of consecutive frames are the same person."""
DEFAULT_IOU_THRESHOLD = 0.3
"""Box IoU at or above which two people of consecutive frames are the same person (fallback)."""
DEFAULT_JOINT_THRESHOLD = 0.2
"""Joint score from which a joint counts as found (the rescoring / drawing threshold)."""
DEFAULT_MIN_JOINTS = 3
"""Shared confident joints needed for OKS; fewer: the IoU fallback."""


def joint_boxes(keypoints: np.ndarray, confident: np.ndarray) -> np.ndarray:
    """Boxes ``[x0, y0, x1, y1]`` of the confident joints of N people: (N, 4) float64.

    Args:
        keypoints: (N, K, 2) pixels (x, y).
        confident: (N, K) bool; a person with no confident joint uses all its finite joints,
            a person with no finite joint gets a zero box ``[0, 0, 0, 0]``.
    """
    keypoints = np.asarray(keypoints, np.float64)
    finite = np.all(np.isfinite(keypoints), axis=-1)
    use = np.asarray(confident, bool) & finite
    use = np.where(use.any(axis=1, keepdims=True), use, finite)
    empty = ~use.any(axis=1)
    low = np.where(use[..., None], keypoints, np.inf).min(axis=1)
    high = np.where(use[..., None], keypoints, -np.inf).max(axis=1)
    boxes = np.concatenate([low, high], axis=1)
    boxes[empty] = 0.0
    return boxes


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(N,) areas ``max(w * h, 1)`` of (N, 4) ``[x0, y0, x1, y1]`` boxes, pixels^2."""
    boxes = np.asarray(boxes, np.float64)
    return np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of (N, 4) and (M, 4) ``[x0, y0, x1, y1]`` boxes (0 for empty boxes)."""
    first = np.asarray(first, np.float64)[:, None, :]
    second = np.asarray(second, np.float64)[None, :, :]
    width = np.clip(np.minimum(first[..., 2], second[..., 2]) - np.maximum(first[..., 0], second[..., 0]), 0, None)
    height = np.clip(np.minimum(first[..., 3], second[..., 3]) - np.maximum(first[..., 1], second[..., 1]), 0, None)
    intersection = width * height
    area_first = (first[..., 2] - first[..., 0]) * (first[..., 3] - first[..., 1])
    area_second = (second[..., 2] - second[..., 0]) * (second[..., 3] - second[..., 1])
    union = area_first + area_second - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


def pair_oks(previous: np.ndarray, current: np.ndarray, shared: np.ndarray, areas: np.ndarray,
             sigmas: np.ndarray) -> np.ndarray:
    """OKS of every (previous, current) pair over its shared joints: (N, M) float64 (0 where none is shared).

    Args:
        previous: (N, K, 2), current: (M, K, 2) pixels.
        shared: (N, M, K) bool, the joints compared for each pair.
        areas: (N, M) pair areas ``a`` in pixels^2.
        sigmas: (K,) COCO OKS sigmas (:meth:`schemas.keypoints.KeypointSchema.sigmas`).
    """
    squared = np.sum((np.asarray(previous, np.float64)[:, None] - np.asarray(current, np.float64)[None]) ** 2,
                     axis=-1)                                                          # (N, M, K)
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    with np.errstate(invalid="ignore", over="ignore"):
        similarity = np.exp(-squared / variances / areas[..., None] / 2.0)
    similarity = np.where(shared, np.nan_to_num(similarity), 0.0)
    counts = shared.sum(axis=-1)
    return similarity.sum(axis=-1) / np.maximum(counts, 1)


def greedy_pairs(similarity: np.ndarray, allowed: np.ndarray, threshold: float,
                 previous_free: np.ndarray, current_free: np.ndarray) -> np.ndarray:
    """Greedy one-to-one matching: (P, 2) ``(previous, current)`` index pairs, taken in order.

    Pairs with ``allowed`` and ``similarity >= threshold`` are visited by decreasing
    similarity (ties: lower previous, then lower current index); a pair is taken
    when both sides are still free. ``previous_free`` (N,) and ``current_free`` (M,)
    bool arrays are updated in place.
    """
    candidates = np.argwhere(allowed & (similarity >= threshold)
                             & previous_free[:, None] & current_free[None, :])
    if len(candidates) == 0:
        return np.zeros((0, 2), np.int64)
    values = similarity[candidates[:, 0], candidates[:, 1]]
    order = np.lexsort((candidates[:, 1], candidates[:, 0], -values))
    taken = []
    for previous, current in candidates[order]:
        if previous_free[previous] and current_free[current]:
            previous_free[previous] = current_free[current] = False
            taken.append((previous, current))
    return np.asarray(taken, np.int64).reshape(-1, 2)


class PoseTracker:
    """Track ids for the people of consecutive frames (the rule of the module docstring).

    Args:
        sigmas: (K,) OKS sigmas, or None (e.g. MPII: no sigmas): IoU matching only.
        oks_threshold, iou_threshold: matching thresholds (module docstring).
        joint_threshold: joint score from which a joint is confident.
        min_joints: shared confident joints needed for OKS.

    Raises:
        ValueError: a threshold outside [0, 1] or ``min_joints < 1``.
    """

    def __init__(self, sigmas: np.ndarray | None = None, oks_threshold: float = DEFAULT_OKS_THRESHOLD,
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD, joint_threshold: float = DEFAULT_JOINT_THRESHOLD,
                 min_joints: int = DEFAULT_MIN_JOINTS):
        for name, value in (("oks_threshold", oks_threshold), ("iou_threshold", iou_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if int(min_joints) < 1:
            raise ValueError(f"min_joints must be >= 1, got {min_joints!r}")
        self.sigmas = None if sigmas is None else np.asarray(sigmas, np.float64)
        self.oks_threshold, self.iou_threshold = float(oks_threshold), float(iou_threshold)
        self.joint_threshold, self.min_joints = float(joint_threshold), int(min_joints)
        self.next_id = 0
        self._previous: Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def update(self, keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Ids of the people of the next frame.

        Args:
            keypoints: (M, K, 2) image pixels (x, y) of the frame's people (M may be 0).
            scores: (M, K) joint scores.

        Returns:
            (M,) int64 track ids.

        Raises:
            ValueError: shapes that do not fit (M, K, 2) / (M, K), or K differs from the sigmas'.
        """
        keypoints = np.asarray(keypoints, np.float64)
        scores = np.asarray(scores, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[2] != 2 or scores.shape != keypoints.shape[:2]:
            raise ValueError(f"keypoints must be (M, K, 2) and scores (M, K), got {keypoints.shape} and {scores.shape}")
        if self.sigmas is not None and keypoints.shape[1] != len(self.sigmas):
            raise ValueError(f"{keypoints.shape[1]} joints, but {len(self.sigmas)} OKS sigmas")
        confident = (scores >= self.joint_threshold) & np.all(np.isfinite(keypoints), axis=-1)
        boxes = joint_boxes(keypoints, confident)
        ids = np.full(len(keypoints), -1, np.int64)
        if self._previous is not None and len(keypoints) and len(self._previous[0]):
            previous_points, previous_confident, previous_boxes, previous_ids = self._previous
            previous_free = np.ones(len(previous_points), bool)
            current_free = np.ones(len(keypoints), bool)
            shared = previous_confident[:, None, :] & confident[None, :, :]                # (N, M, K)
            oks_defined = shared.sum(axis=-1) >= self.min_joints
            if self.sigmas is None:
                oks_defined[:] = False
            pairs = []
            if oks_defined.any():
                areas = (box_areas(previous_boxes)[:, None] + box_areas(boxes)[None, :]) / 2.0
                oks = pair_oks(previous_points, keypoints, shared, areas, self.sigmas)
                pairs.append(greedy_pairs(oks, oks_defined, self.oks_threshold, previous_free, current_free))
            iou = box_iou(previous_boxes, boxes)
            pairs.append(greedy_pairs(iou, ~oks_defined, self.iou_threshold, previous_free, current_free))
            matched = np.concatenate(pairs)
            ids[matched[:, 1]] = previous_ids[matched[:, 0]]
        new = ids < 0
        ids[new] = self.next_id + np.arange(int(new.sum()))
        self.next_id += int(new.sum())
        self._previous = (keypoints, confident, boxes, ids.copy())
        return ids
