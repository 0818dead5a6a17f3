"""MPII PCKh core (HRNet's protocol), from a ``gt_valid.mat``-layout file or our records.

Pure NumPy. Conventions:

* Frames: everything in this module is in MPII's MATLAB 1-based pixels, the
  frame of ``gt_valid.mat`` (``pos_gt_src``). Our predictions are 0-based
  (:mod:`pose.coordinates`); :func:`zero_based_to_matlab` adds the 1 back,
  exactly as HRNet's evaluation does with its predictions.
* Head size = ``0.6 * ||headbox[1] - headbox[0]||`` (the head box diagonal).
* A joint counts when it is labelled (``jnt_missing == 0``); it is correct
  when its error is ``<= threshold * head size``.
* Groups (Head, Shoulder, ...) are the plain mean of their joints' PCKh.
  ``Mean`` is HRNet's: pelvis and thorax masked, joints weighted by their
  labelled counts. ``Mean14`` is the plain mean of those 14 joints.
  ``threshold=0.1`` is a true 0.1 (HRNet's table uses 0.11 there; we do not).

Arrays are person-major: keypoints (N, K, 2), visibility (N, K), head sizes (N,).
The ``.mat`` file stores (K, 2, N) / (K, N) / (2, 2, N); :func:`load_gt_valid` transposes.

Example:

    gt = load_gt_valid("gt_valid.mat")
    table = pckh_table(gt["pos_pred_src"], gt["keypoints"], gt["visible"], gt["head_sizes"])
    table["Mean"], table["Mean@0.1"]
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from schemas.keypoints import MPII, KeypointSchema

GROUP_NAMES = tuple(name for name, _ in MPII.pckh_groups)


def zero_based_to_matlab(keypoints: np.ndarray) -> np.ndarray:
    """Our 0-based image pixels (..., 2) -> MATLAB 1-based pixels (HRNet adds 1 to its predictions)."""
    return np.asarray(keypoints, np.float64) + 1.0


def head_sizes_from_boxes(headboxes: np.ndarray, factor: float = MPII.head_size_factor) -> np.ndarray:
    """Head boxes (N, 2, 2) as ``[[x1, y1], [x2, y2]]`` -> head sizes (N,) = factor * diagonal."""
    headboxes = np.asarray(headboxes, np.float64)
    if headboxes.ndim != 3 or headboxes.shape[1:] != (2, 2):
        raise ValueError(f"headboxes must be (N, 2, 2), got {headboxes.shape}")
    return factor * np.linalg.norm(headboxes[:, 1] - headboxes[:, 0], axis=-1)


def load_gt_valid(path: str) -> Dict[str, np.ndarray]:
    """Reads a ``gt_valid.mat``-layout file.

    Returns:
        dict with ``keypoints`` (N, 16, 2) 1-based, ``visible`` (N, 16) bool,
        ``headboxes`` (N, 2, 2), ``head_sizes`` (N,), and ``pos_pred_src``
        (N, 16, 2) 1-based when the file holds predictions.

    Raises:
        ValueError: a required key is missing or shapes disagree.
    """
    from scipy.io import loadmat

    mat = loadmat(path)
    for key in ("pos_gt_src", "jnt_missing", "headboxes_src"):
        if key not in mat:
            raise ValueError(f"{path}: not a gt_valid.mat layout, missing {key!r}")
    keypoints = np.transpose(mat["pos_gt_src"], (2, 0, 1)).astype(np.float64)
    visible = np.transpose(mat["jnt_missing"], (1, 0)) == 0
    headboxes = np.transpose(mat["headboxes_src"], (2, 0, 1)).astype(np.float64)
    if keypoints.shape[1:] != (MPII.num_joints, 2) or visible.shape != keypoints.shape[:2]:
        raise ValueError(f"{path}: pos_gt_src {mat['pos_gt_src'].shape} / jnt_missing "
                         f"{mat['jnt_missing'].shape} do not describe 16 joints of N persons")
    if headboxes.shape[0] != keypoints.shape[0]:
        raise ValueError(f"{path}: headboxes_src has {headboxes.shape[0]} rows, pos_gt_src {keypoints.shape[0]}")
    result = {"keypoints": keypoints, "visible": visible, "headboxes": headboxes,
              "head_sizes": head_sizes_from_boxes(headboxes)}
    if "pos_pred_src" in mat:
        result["pos_pred_src"] = np.transpose(mat["pos_pred_src"], (2, 0, 1)).astype(np.float64)
    return result


def load_predictions(path: str) -> np.ndarray:
    """Reads predictions from a ``.mat``: ``pos_pred_src`` (16, 2, N), 1-based (used as is), or
    ``preds`` (N, 16, 2+), 0-based like HRNet's ``pred.mat`` (1 is added).

    Returns:
        (N, 16, 2) float64, 1-based MATLAB pixels.
    """
    from scipy.io import loadmat

    mat = loadmat(path)
    if "pos_pred_src" in mat:
        return np.transpose(mat["pos_pred_src"], (2, 0, 1)).astype(np.float64)
    if "preds" in mat:
        preds = np.asarray(mat["preds"], np.float64)
        if preds.ndim != 3 or preds.shape[1] != MPII.num_joints:
            raise ValueError(f"{path}: preds must be (N, 16, 2), got {preds.shape}")
        return zero_based_to_matlab(preds[..., :2])
    raise ValueError(f"{path}: holds neither 'pos_pred_src' nor 'preds'")


def joint_pckh(predictions: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
               head_sizes: np.ndarray, threshold: float = 0.5):
    """Per-joint PCKh.

    Args:
        predictions: (N, K, 2) predicted joints, same frame as ``keypoints``.
        keypoints: (N, K, 2) ground truth.
        visible: (N, K) labelled joints.
        head_sizes: (N,) head sizes, pixels.
        threshold: fraction of the head size.

    Returns:
        ``(pckh (K,) percent, counts (K,) labelled joints)``; joints with no
        labelled instance get PCKh 0.

    Raises:
        ValueError: shape mismatch or non-positive head sizes.
    """
    predictions = np.asarray(predictions, np.float64)
    keypoints = np.asarray(keypoints, np.float64)
    visible = np.asarray(visible, bool)
    head_sizes = np.asarray(head_sizes, np.float64)
    if predictions.shape != keypoints.shape or predictions.ndim != 3 or predictions.shape[-1] != 2:
        raise ValueError(f"predictions {predictions.shape} and keypoints {keypoints.shape} must both be (N, K, 2)")
    if visible.shape != keypoints.shape[:2] or head_sizes.shape != keypoints.shape[:1]:
        raise ValueError(f"visible {visible.shape} / head_sizes {head_sizes.shape} do not match keypoints {keypoints.shape}")
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    if np.any(head_sizes[visible.any(-1)] <= 0):
        raise ValueError("head_sizes must be > 0 for persons with labelled joints")
    errors = np.linalg.norm(predictions - keypoints, axis=-1) / np.where(head_sizes > 0, head_sizes, 1.0)[:, None]
    correct = (errors <= threshold) & visible
    counts = visible.sum(0)
    return 100.0 * correct.sum(0) / np.maximum(counts, 1), counts


def pckh_summary(pckh: np.ndarray, counts: np.ndarray, schema: KeypointSchema = MPII) -> Dict[str, float]:
    """Group table from per-joint PCKh: groups, ``Mean`` (HRNet, masked, count-weighted), ``Mean14``."""
    summary = {name: float(np.mean(pckh[list(joints)])) for name, joints in schema.pckh_groups}
    keep = np.ones(schema.num_joints, bool)
    keep[list(schema.pckh_masked)] = False
    weights = counts * keep
    summary["Mean"] = float(np.sum(pckh * weights) / max(np.sum(weights), 1))
    summary["Mean14"] = float(np.mean(pckh[keep]))
    return summary


def pckh_table(predictions: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
               head_sizes: np.ndarray, schema: KeypointSchema = MPII) -> Dict[str, Any]:
    """PCKh@0.5 and a true PCKh@0.1 table.

    Returns:
        flat dict: ``Head``..``Ankle``, ``Mean``, ``Mean14`` (at 0.5), the same
        names suffixed ``@0.1``, ``PCKh@0.5`` (= ``Mean``), ``PCKh@0.1`` (= ``Mean@0.1``),
        ``num_persons``, and ``per_joint`` {joint name: {"PCKh@0.5", "PCKh@0.1", "count"}}.
    """
    table: Dict[str, Any] = {}
    per_joint: Dict[str, Dict[str, float]] = {name: {} for name in schema.joint_names}
    for threshold, suffix in ((0.5, ""), (0.1, "@0.1")):
        pckh, counts = joint_pckh(predictions, keypoints, visible, head_sizes, threshold)
        for name, value in pckh_summary(pckh, counts, schema).items():
            table[name + suffix] = value
        for k, name in enumerate(schema.joint_names):
            per_joint[name][f"PCKh@{threshold}"] = float(pckh[k])
            per_joint[name]["count"] = int(counts[k])
    table["PCKh@0.5"] = table["Mean"]
    table["PCKh@0.1"] = table["Mean@0.1"]
    table["num_persons"] = int(np.asarray(keypoints).shape[0])
    table["per_joint"] = per_joint
    return table


def match_rows(keypoints: np.ndarray, visible: np.ndarray, gt: Mapping[str, np.ndarray],
               tolerance: float = 0.05, chunk: int = 256) -> np.ndarray:
    """Finds the ``gt_valid`` row of each record by its ground-truth joints.

    Our MPII records hold the annotation joints (0-based); ``gt_valid.mat``
    holds the same joints 1-based. A record matches the row whose labelled
    joints agree within ``tolerance`` pixels (after adding 1) with the same labelled set.

    Args:
        keypoints: (N, 16, 2) record GT joints, 0-based image pixels.
        visible: (N, 16) labelled joints of the records.
        gt: :func:`load_gt_valid` output.

    Returns:
        int64 (N,) row indices.

    Raises:
        ValueError: a record matches no row (or several rows).
    """
    query = zero_based_to_matlab(keypoints)
    query_visible = np.asarray(visible, bool)
    rows = np.full(query.shape[0], -1, np.int64)
    for start in range(0, query.shape[0], chunk):
        q, qv = query[start:start + chunk], query_visible[start:start + chunk]
        difference = np.abs(q[:, None] - gt["keypoints"][None]).max(-1)              # (n, M, K)
        same_set = np.all(qv[:, None] == gt["visible"][None], axis=-1)               # (n, M)
        close = np.all((difference <= tolerance) | ~qv[:, None], axis=-1)            # (n, M)
        hits = same_set & close
        counts = hits.sum(-1)
        if np.any(counts != 1):
            bad = int(start + np.flatnonzero(counts != 1)[0])
            raise ValueError(f"record {bad} matches {int(counts[bad - start])} gt_valid rows (expected 1): "
                             "the gt_annotations file does not describe these records")
        rows[start:start + chunk] = np.argmax(hits, axis=-1)
    return rows
