"""PCK of the box, AUC and EPE: the metric of keypoint sets without OKS sigmas (hands, some animals).

Pure NumPy, shared by :mod:`pipeline.score` and the Evaluator, so both report the
same numbers. Definitions (as mmpose's ``keypoint_pck_accuracy`` /
``keypoint_auc`` / ``keypoint_epe`` for OneHand10K, with the box normaliser):

* a joint is *scored* when its ground-truth visibility is > 0;
* its normalised error is ``|pred - gt| / max(box w, box h)`` (image pixels, the
  ground-truth box of its annotation);
* ``PCK@a``: per joint, the share of scored instances with normalised error
  ``< a``; then the mean over the joints scored at least once (mmpose's
  ``avg_acc``);
* ``AUC``: the mean of ``PCK@a`` over the 20 thresholds ``a = 0.5 * i / 20``,
  ``i = 0 .. 19`` (mmpose's rectangle rule with ``num_thrs=20``, here over
  ``a`` from 0 to 0.5 of the box's longer side rather than mmpose's fixed 30 px);
* ``EPE``: the mean pixel distance over every scored joint (pooled).

Results are matched to annotations one to one: a result with ``annotation_id``
goes to that ground-truth annotation; otherwise the
i-th result of an (image, category) goes to the i-th annotation of that
(image, category) in file order (top-down results on ground-truth boxes).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

PCK_ALPHA = 0.2
"""The reported PCK threshold (share of the box's longer side)."""

AUC_MAX_ALPHA = 0.5
AUC_NUM_THRESHOLDS = 20

STAT_NAMES: Tuple[str, ...] = ("PCK@0.2", "AUC", "EPE")
"""Names of the three stats, in report order (EPE in pixels)."""


def normalised_errors(pred: np.ndarray, gt: np.ndarray, box_sizes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel distances (N, K) and distances / box size (N, K).

    Args:
        pred, gt: (N, K, 2) image pixels.
        box_sizes: (N,) longer side of each ground-truth box, pixels (> 0).
    """
    distances = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    return distances, distances / np.asarray(box_sizes, np.float64)[:, None]


def pck(normalised: np.ndarray, scored: np.ndarray, alpha: float) -> float:
    """Mean over joints (scored at least once) of the per-joint share with normalised error < ``alpha``.

    Args:
        normalised: (N, K) errors / box size.
        scored: (N, K) bool, the joints that count.

    Returns:
        PCK in [0, 1]; NaN when no joint is scored.
    """
    counts = scored.sum(0)
    hits = ((normalised < alpha) & scored).sum(0)
    valid = counts > 0
    if not valid.any():
        return float("nan")
    return float(np.mean(hits[valid] / counts[valid]))


def pck_auc_epe(pred: np.ndarray, gt: np.ndarray, scored: np.ndarray, box_sizes: np.ndarray) -> Dict[str, Any]:
    """The three stats (module docstring) of matched predictions.

    Args:
        pred, gt: (N, K, 2) image pixels; scored: (N, K) bool; box_sizes: (N,) pixels.

    Returns:
        ``{"PCK@0.2", "AUC", "EPE" (pixels), "joints_scored", "instances"}``; NaN stats when nothing is scored.
    """
    scored = np.asarray(scored, bool)
    distances, normalised = normalised_errors(pred, gt, box_sizes)
    thresholds = AUC_MAX_ALPHA * np.arange(AUC_NUM_THRESHOLDS) / AUC_NUM_THRESHOLDS
    count = int(scored.sum())
    return {
        "PCK@0.2": pck(normalised, scored, PCK_ALPHA),
        "AUC": float(np.mean([pck(normalised, scored, a) for a in thresholds])) if count else float("nan"),
        "EPE": float(distances[scored].mean()) if count else float("nan"),
        "joints_scored": count,
        "instances": int(len(scored)),
    }


LOWER_IS_BETTER: Tuple[str, ...] = ("EPE",)
"""Stats where a smaller value is better (a gate on them is an ``upper_bound``; ``max_drop`` is a rise)."""


def per_joint(pred: np.ndarray, gt: np.ndarray, scored: np.ndarray, box_sizes: np.ndarray,
              joint_names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Per-joint ``{"PCK@0.2", "EPE" (pixels), "count"}`` (NaN where a joint is never scored).

    Args:
        pred, gt: (N, K, 2) image pixels; scored: (N, K) bool; box_sizes: (N,) pixels;
        joint_names: K names (the keys, in joint order).
    """
    scored = np.asarray(scored, bool).reshape(-1, len(joint_names))
    distances, normalised = normalised_errors(np.asarray(pred).reshape(-1, len(joint_names), 2),
                                              np.asarray(gt).reshape(-1, len(joint_names), 2), box_sizes)
    counts = scored.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pck_joint = ((normalised < PCK_ALPHA) & scored).sum(0) / counts
        epe_joint = np.where(scored, distances, 0.0).sum(0) / counts
    return {name: {"PCK@0.2": float(pck_joint[k]), "EPE": float(epe_joint[k]), "count": int(counts[k])}
            for k, name in enumerate(joint_names)}


def match_results(dataset: Mapping[str, Any], results: Sequence[Mapping[str, Any]], num_joints: int,
                  category_ids: Sequence[int], source: str = "results", gt_source: str = "ground truth",
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs results with the labelled annotations (module docstring) and returns the arrays.

    Args:
        dataset: COCO ground-truth dict; results: COCO keypoint results (already checked for
            ids, ``3 * K`` finite values and scores, e.g. by ``metrics_coco.normalise_results``).
        num_joints: K; category_ids: the categories scored.

    Returns:
        ``(pred (N, K, 2), gt (N, K, 2), scored (N, K) bool, box_sizes (N,))`` over the
        annotations with at least one labelled joint (crowd annotations left out).

    Raises:
        ValueError: an annotation with labelled joints has no result, a result has no annotation
            left to match, an annotation has no usable ``bbox`` (naming file and entry).
    """
    chosen = set(int(c) for c in category_ids)
    annotations = [a for a in dataset["annotations"] if int(a.get("category_id", 1)) in chosen
                   and not a.get("iscrowd", 0) and a.get("keypoints")]
    by_id = {int(a["id"]): a for a in annotations if "id" in a}
    queues: Dict[Tuple[int, int], List[Mapping[str, Any]]] = {}
    for annotation in annotations:
        queues.setdefault((int(annotation["image_id"]), int(annotation.get("category_id", 1))), []).append(annotation)
    matched: Dict[int, Mapping[str, Any]] = {}
    for index, result in enumerate(results):
        key = (int(result["image_id"]), int(result.get("category_id", 1)))
        wanted = result.get("annotation_id")
        if wanted is not None:
            annotation = by_id.get(int(wanted))
            if annotation is None:
                raise ValueError(f"{source}: result {index}: annotation_id {wanted} is not a scored annotation")
            queue = queues.get(key, [])
            if annotation in queue:
                queue.remove(annotation)
        else:
            queue = queues.get(key) or []
            if not queue:
                raise ValueError(f"{source}: result {index} (image_id {key[0]}, category_id {key[1]}) has no "
                                 f"annotation left to match (one result per annotation, in file order)")
            annotation = queue.pop(0)
        matched[id(annotation)] = result
    pred, gt, scored, sizes = [], [], [], []
    for annotation in annotations:
        keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(num_joints, 3)
        if not (keypoints[:, 2] > 0).any():
            continue
        result = matched.get(id(annotation))
        if result is None:
            raise ValueError(f"{source}: no result for annotation id {annotation.get('id')} (image_id "
                             f"{annotation['image_id']}) of {gt_source}, which has labelled joints")
        bbox = annotation.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not max(float(bbox[2]), float(bbox[3])) > 0:
            raise ValueError(f"{gt_source}: annotation id {annotation.get('id')}: bbox {bbox!r} has no positive "
                             "side to normalise PCK by")
        pred.append(np.asarray(result["keypoints"], np.float64).reshape(num_joints, 3)[:, :2])
        gt.append(keypoints[:, :2])
        scored.append(keypoints[:, 2] > 0)
        sizes.append(max(float(bbox[2]), float(bbox[3])))
    shape = (-1, num_joints, 2)
    return (np.asarray(pred).reshape(shape), np.asarray(gt).reshape(shape),
            np.asarray(scored, bool).reshape(-1, num_joints), np.asarray(sizes, np.float64))
