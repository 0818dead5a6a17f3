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

import io
from typing import Any, Dict, Mapping

import numpy as np

from schemas.keypoints import MPII, KeypointSchema

GROUP_NAMES = tuple(name for name, _ in MPII.pckh_groups)

MATLAB_JOINT_NAMES = ("rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
                      "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri")
"""``dataset_joints`` of ``gt_valid.mat`` (the order of :data:`schemas.keypoints.MPII`)."""

PREDICTION_INDEX_BASE = 1
"""Default index base of prediction files: 1, MATLAB pixels. HRNet's and DarkPose's
``MPIIDataset.evaluate`` add 1 to their 0-based predictions *before* saving ``pred.mat``
(``lib/dataset/mpii.py``); bearpaw/pytorch-pose's ``preds`` and Tompson's ``pos_pred_src``
are 1-based as well."""


def _loadmat(path: str) -> Dict[str, Any]:
    """scipy's ``loadmat`` with any failure (not a .mat, truncated, v7.3/HDF5) as a ValueError naming the file."""
    from scipy.io import loadmat

    try:
        if "://" in path:  # gs:// and other remote paths through tf.io.gfile
            import tensorflow as tf

            if not tf.io.gfile.exists(path):
                raise FileNotFoundError(f"{path} does not exist")
            with tf.io.gfile.GFile(path, "rb") as handle:
                return loadmat(io.BytesIO(handle.read()))
        return loadmat(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # scipy raises ValueError, TypeError, MatReadError, OSError, ...
        hint = " (MATLAB v7.3 files are HDF5: save with -v7)" if "HDF" in str(error) else ""
        raise ValueError(f"{path}: not a readable .mat file: {type(error).__name__}: {error}{hint}") from None


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
    mat = _loadmat(path)
    for key in ("pos_gt_src", "jnt_missing", "headboxes_src"):
        if key not in mat:
            raise ValueError(f"{path}: not a gt_valid.mat layout, missing {key!r}")
    if "dataset_joints" in mat:
        names = tuple(str(np.asarray(name).reshape(-1)[0]) if np.asarray(name).size else ""
                      for name in np.asarray(mat["dataset_joints"], dtype=object).reshape(-1))
        if names != MATLAB_JOINT_NAMES:
            raise ValueError(f"{path}: dataset_joints {names} are not MPII's order {MATLAB_JOINT_NAMES}")
    for key in ("pos_gt_src", "jnt_missing", "headboxes_src"):
        if not np.issubdtype(np.asarray(mat[key]).dtype, np.number):
            raise ValueError(f"{path}: {key} is not numeric ({np.asarray(mat[key]).dtype})")
    if mat["pos_gt_src"].ndim != 3 or mat["jnt_missing"].ndim != 2 or mat["headboxes_src"].ndim != 3:
        raise ValueError(f"{path}: pos_gt_src {mat['pos_gt_src'].shape}, jnt_missing {mat['jnt_missing'].shape}, "
                         f"headboxes_src {mat['headboxes_src'].shape} must be (16, 2, N), (16, N), (2, 2, N)")
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


def load_predictions(path: str, index_base: int = PREDICTION_INDEX_BASE) -> np.ndarray:
    """Reads MPII predictions from a ``.mat`` file, in the layouts users bring.

    * ``preds`` (N, 16, 2) or (N, 16, 3) (scores dropped): HRNet's / DarkPose's
      ``pred.mat``, bearpaw/pytorch-pose's prediction files, mmpose's ``pred.mat``.
    * ``pos_pred_src`` (16, 2, N): Tompson's / the MPII toolkit's layout (``gt_valid.mat``
      with predictions).

    Both are read as 1-based MATLAB pixels by default (:data:`PREDICTION_INDEX_BASE`; the
    references save them so). ``index_base=0`` is for files holding 0-based pixels (our
    frame, :mod:`pose.coordinates`): 1 is added. When both keys are present, ``preds`` wins
    (it is what the HRNet family writes).

    Returns:
        (N, 16, 2) float64, 1-based MATLAB pixels (the frame of ``gt_valid.mat``).

    Raises:
        ValueError: unreadable file, neither key, a wrong shape or non-numeric values,
            or ``index_base`` not 0/1.
    """
    if index_base not in (0, 1):
        raise ValueError(f"index_base must be 0 or 1, got {index_base!r}")
    mat = _loadmat(path)
    if "preds" in mat:
        key, preds = "preds", np.asarray(mat["preds"])
        if preds.ndim != 3 or preds.shape[1] != MPII.num_joints or preds.shape[2] not in (2, 3):
            raise ValueError(f"{path}: preds must be (N, 16, 2) or (N, 16, 3), got {preds.shape}")
        preds = preds[..., :2]
    elif "pos_pred_src" in mat:
        key, preds = "pos_pred_src", np.asarray(mat["pos_pred_src"])
        if preds.ndim != 3 or preds.shape[:2] != (MPII.num_joints, 2):
            raise ValueError(f"{path}: pos_pred_src must be (16, 2, N), got {preds.shape}")
        preds = np.transpose(preds, (2, 0, 1))
    else:
        raise ValueError(f"{path}: holds neither 'preds' (N, 16, 2) nor 'pos_pred_src' (16, 2, N)")
    if not np.issubdtype(preds.dtype, np.number):
        raise ValueError(f"{path}: {key} is not numeric ({preds.dtype})")
    preds = preds.astype(np.float64)
    return zero_based_to_matlab(preds) if index_base == 0 else preds


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
