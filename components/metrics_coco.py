"""COCO keypoint evaluation core: OKS, rescoring, OKS-NMS, pycocotools stats.

Pure NumPy/pycocotools functions (no Beam, no TFMA), shared by the Evaluator,
the TFMA custom metric (:mod:`components.tfma_metrics`) and the scoring CLI
(:mod:`pipeline.score`), so all three report the same numbers.

Frames: every keypoint here is in original-image pixels (x, y), the frame of
COCO annotations and of the ``keypoints_image`` serving output
(:mod:`pose.coordinates`). A *person* is a dict with

* ``image_id`` (int), ``keypoints`` (K, 2) image pixels, ``keypoint_scores``
  (K,), ``box_score`` (float, 1 for ground-truth boxes), ``area`` (float,
  the area used to normalise OKS in NMS: the crop window w*h, as HRNet/mmpose).

The pipeline mirrors the reference top-down evaluation (HRNet / mmpose):
rescoring (box score x mean of keypoint scores above 0.2), per-image OKS-NMS
at 0.9 (or soft-OKS-NMS), then ``COCOeval(iouType="keypoints")``.

Example:

    stats, per_keypoint = evaluate_results(gt_json, results)  # results: COCO json list
    stats["AP"]
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from schemas.keypoints import COCO, KeypointSchema

STAT_NAMES: Tuple[str, ...] = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L")
"""Names of the ten ``COCOeval.stats`` entries for keypoints, in pycocotools order."""

PERSON_SIZE_RANGES: Dict[str, Tuple[float, float]] = {
    "medium": (32.0 ** 2, 96.0 ** 2),
    "large": (96.0 ** 2, 1e10),
}
"""COCO keypoint area ranges (pixels^2); COCO keypoints have no 'small' range."""

_EPSILON = np.spacing(1)


def person_size(area: float) -> str:
    """COCO size class of a person area (pixels^2): ``small``, ``medium`` or ``large``."""
    if area < PERSON_SIZE_RANGES["medium"][0]:
        return "small"
    return "medium" if area < PERSON_SIZE_RANGES["medium"][1] else "large"


# --------------------------------------------------------------------------
# OKS, rescoring, NMS
# --------------------------------------------------------------------------

def keypoint_similarity(pred_keypoints: np.ndarray, gt_keypoints: np.ndarray, gt_areas: np.ndarray,
                        sigmas: np.ndarray) -> np.ndarray:
    """Per-joint keypoint similarity ``exp(-d^2 / (2 s^2 (2 sigma)^2))`` with ``s^2 = area``.

    Args:
        pred_keypoints: (..., K, 2) image pixels.
        gt_keypoints: (..., K, 2) image pixels (broadcast against ``pred_keypoints``).
        gt_areas: (...) object areas, pixels^2.
        sigmas: (K,) COCO OKS sigmas.

    Returns:
        float64 (..., K) similarities in [0, 1] (the terms of COCO's OKS).
    """
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    squared = np.sum((np.asarray(pred_keypoints, np.float64) - np.asarray(gt_keypoints, np.float64)) ** 2, -1)
    area = np.asarray(gt_areas, np.float64)[..., None] + _EPSILON
    return np.exp(-squared / variances / area / 2.0)


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
               visibility_threshold: float | None = None, scores: np.ndarray | None = None) -> np.ndarray:
    """Pairwise OKS between N poses of one image, as used by OKS-NMS (HRNet's ``oks_iou``).

    The area of a pair is the mean of both areas; all joints count unless
    ``visibility_threshold`` is given, then only joints scored above it in both poses.

    Args:
        keypoints: (N, K, 2) image pixels.
        areas: (N,) areas, pixels^2.
        sigmas: (K,) OKS sigmas.
        visibility_threshold: optional joint score threshold.
        scores: (N, K) joint scores, required with ``visibility_threshold``.

    Returns:
        float64 (N, N) OKS matrix.
    """
    keypoints = np.asarray(keypoints, np.float64)
    areas = np.asarray(areas, np.float64)
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    squared = np.sum((keypoints[:, None] - keypoints[None, :]) ** 2, axis=-1)      # (N, N, K)
    pair_area = (areas[:, None] + areas[None, :]) / 2.0 + _EPSILON
    similarity = np.exp(-squared / variances / pair_area[..., None] / 2.0)
    if visibility_threshold is None:
        return similarity.mean(axis=-1)
    if scores is None:
        raise ValueError("scores are required when visibility_threshold is set")
    visible = np.asarray(scores) > visibility_threshold
    both = visible[:, None] & visible[None, :]
    count = both.sum(-1)
    return np.where(count > 0, (similarity * both).sum(-1) / np.maximum(count, 1), 0.0)


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Reference rescoring: box score x mean of the keypoint scores above ``threshold``.

    A pose with no joint above the threshold keeps a keypoint factor of 0.

    Args:
        keypoint_scores: (N, K) heatmap maxima.
        box_scores: (N,) detector scores (1 for ground-truth boxes).
        threshold: joint score threshold (0.2 in HRNet/mmpose).

    Returns:
        float64 (N,) pose scores.
    """
    keypoint_scores = np.asarray(keypoint_scores, np.float64)
    above = keypoint_scores > threshold
    count = above.sum(-1)
    mean = np.where(count > 0, (keypoint_scores * above).sum(-1) / np.maximum(count, 1), 0.0)
    return mean * np.asarray(box_scores, np.float64)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float,
            sigmas: np.ndarray) -> np.ndarray:
    """Greedy OKS-NMS over the poses of one image (HRNet ``oks_nms``).

    Args:
        keypoints: (N, K, 2); scores: (N,); areas: (N,); threshold: OKS above which a pose is dropped.
        sigmas: (K,) OKS sigmas.

    Returns:
        int64 indices of the kept poses, best first.
    """
    scores = np.asarray(scores, np.float64)
    if scores.size == 0:
        return np.zeros([0], np.int64)
    overlaps = oks_matrix(keypoints, areas, sigmas)
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        order = order[1:][overlaps[best, order[1:]] <= threshold]
    return np.asarray(keep, np.int64)


def soft_oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float,
                 sigmas: np.ndarray, max_detections: int = 20) -> Tuple[np.ndarray, np.ndarray]:
    """Soft OKS-NMS (linear decay): poses overlapping a kept one above ``threshold``
    have their score multiplied by ``1 - OKS`` instead of being dropped.

    Returns:
        ``(kept indices int64 (M,), their decayed scores float64 (M,))``, best first, ``M <= max_detections``.
    """
    scores = np.array(scores, np.float64, copy=True)
    if scores.size == 0:
        return np.zeros([0], np.int64), np.zeros([0])
    overlaps = oks_matrix(keypoints, areas, sigmas)
    remaining = np.arange(scores.size)
    keep, kept_scores = [], []
    while remaining.size and len(keep) < max_detections:
        best_position = int(np.argmax(scores[remaining]))
        best = remaining[best_position]
        keep.append(int(best))
        kept_scores.append(scores[best])
        remaining = np.delete(remaining, best_position)
        overlap = overlaps[best, remaining]
        decay = np.where(overlap >= threshold, 1.0 - overlap, 1.0)
        scores[remaining] = scores[remaining] * decay
    return np.asarray(keep, np.int64), np.asarray(kept_scores)


def persons_to_results(persons: Sequence[Mapping[str, Any]], rescore_threshold: float = 0.2,
                       nms_threshold: float | None = 0.9, soft_nms: bool = False,
                       sigmas: np.ndarray | None = None, category_id: int = 1) -> List[Dict[str, Any]]:
    """Turns model outputs into a COCO keypoint results list (rescoring + per-image OKS-NMS).

    Args:
        persons: dicts with ``image_id``, ``keypoints`` (K, 2) image pixels,
            ``keypoint_scores`` (K,), ``box_score``, ``area`` (crop window w*h).
        rescore_threshold: joint score threshold of the rescoring.
        nms_threshold: OKS-NMS threshold; ``None`` disables NMS.
        soft_nms: soft-OKS-NMS instead of greedy removal.
        sigmas: (K,) OKS sigmas; default COCO's.
        category_id: COCO category of the results.

    Returns:
        COCO results: ``[{"image_id", "category_id", "keypoints": [x, y, s]*K, "score"}]``,
        sorted by image id then descending score.
    """
    if nms_threshold is not None and not 0.0 < nms_threshold <= 1.0:
        raise ValueError(f"nms_threshold must be in (0, 1] or None, got {nms_threshold!r}")
    if not persons:
        return []
    sigmas = COCO.sigmas() if sigmas is None else np.asarray(sigmas, np.float64)
    image_ids = np.asarray([int(p["image_id"]) for p in persons], np.int64)
    keypoints = np.stack([np.asarray(p["keypoints"], np.float64).reshape(-1, 2) for p in persons])
    joint_scores = np.stack([np.asarray(p["keypoint_scores"], np.float64).reshape(-1) for p in persons])
    if keypoints.shape[1] != sigmas.size:
        raise ValueError(f"persons have {keypoints.shape[1]} joints but sigmas has {sigmas.size}")
    box_scores = np.asarray([float(p.get("box_score", 1.0)) for p in persons])
    areas = np.asarray([float(p["area"]) for p in persons])
    pose_scores = rescore(joint_scores, box_scores, rescore_threshold)
    results: List[Dict[str, Any]] = []
    for image_id in np.unique(image_ids):
        index = np.flatnonzero(image_ids == image_id)
        if nms_threshold is None:
            kept, kept_scores = index[np.argsort(-pose_scores[index], kind="stable")], None
        elif soft_nms:
            local, kept_scores = soft_oks_nms(keypoints[index], pose_scores[index], areas[index],
                                              nms_threshold, sigmas)
            kept = index[local]
        else:
            kept, kept_scores = index[oks_nms(keypoints[index], pose_scores[index], areas[index],
                                              nms_threshold, sigmas)], None
        for rank, person in enumerate(kept):
            triplets = np.concatenate([keypoints[person], joint_scores[person][:, None]], axis=-1)
            score = pose_scores[person] if kept_scores is None else kept_scores[rank]
            results.append({
                "image_id": int(image_id),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in triplets.ravel()],
                "score": float(score),
            })
    return results


# --------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------

def load_ground_truth(gt: str | Mapping[str, Any]):
    """Returns a ``pycocotools.coco.COCO`` from a json path or an already-loaded dict."""
    from pycocotools.coco import COCO as CocoApi

    if isinstance(gt, str):
        with open(gt, encoding="utf-8") as handle:
            dataset = json.load(handle)
    elif isinstance(gt, Mapping):
        dataset = copy.deepcopy(dict(gt))
    else:
        raise ValueError(f"gt must be a json path or a COCO dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in dataset:
            raise ValueError(f"COCO ground truth is missing {key!r}")
    api = CocoApi()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def ground_truth_from_persons(persons: Sequence[Mapping[str, Any]], schema: KeypointSchema = COCO,
                              padding: float = 1.25) -> Dict[str, Any]:
    """Rebuilds a COCO ground-truth dict from ground-truth-box records.

    Each person must carry ``image_id``, ``annotation_id`` (>= 0), ``image_height``,
    ``image_width``, ``gt_keypoints`` (K, 2) image pixels, ``visibility`` (K,),
    ``gt_area`` and ``center``/``scale`` (the crop window; the box is taken as
    ``scale / padding`` around ``center``, only used for un-keypointed GT, which
    records never hold).

    Note: crowd regions and ``num_keypoints == 0`` annotations are not in the
    records, so numbers can differ slightly from an evaluation against the
    original annotation file (pass ``gt_annotations`` for the exact protocol).

    Raises:
        ValueError: a detector-box record (``annotation_id < 0``) or duplicate annotation ids.
    """
    images: Dict[int, Dict[str, Any]] = {}
    annotations: Dict[int, Dict[str, Any]] = {}
    for person in persons:
        annotation_id = int(person["annotation_id"])
        if annotation_id < 0:
            raise ValueError("records come from detector boxes (annotation id -1): "
                             "pass gt_annotations (the COCO keypoint json) to evaluate them")
        if annotation_id in annotations:
            raise ValueError(f"duplicate annotation id {annotation_id} in the eval records")
        image_id = int(person["image_id"])
        images[image_id] = {"id": image_id, "height": int(person["image_height"]),
                            "width": int(person["image_width"])}
        keypoints = np.asarray(person["gt_keypoints"], np.float64).reshape(-1, 2)
        visibility = np.asarray(person["visibility"], np.int64).reshape(-1)
        center = np.asarray(person["center"], np.float64)
        size = np.asarray(person["scale"], np.float64) / padding
        triplets = np.concatenate([keypoints, visibility[:, None]], -1)
        triplets[visibility == 0, :2] = 0.0
        annotations[annotation_id] = {
            "id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(v) for v in triplets.ravel()],
            "num_keypoints": int(np.count_nonzero(visibility > 0)),
            "area": float(person["gt_area"]),
            "bbox": [float(center[0] - size[0] / 2), float(center[1] - size[1] / 2), float(size[0]), float(size[1])],
        }
    return {
        "images": [images[key] for key in sorted(images)],
        "annotations": [annotations[key] for key in sorted(annotations)],
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(schema.joint_names),
                        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton]}],
    }


# --------------------------------------------------------------------------
# pycocotools stats and per-keypoint numbers
# --------------------------------------------------------------------------

def _validate_results(results: Sequence[Mapping[str, Any]], num_joints: int) -> None:
    for index, result in enumerate(results):
        for key in ("image_id", "keypoints", "score"):
            if key not in result:
                raise ValueError(f"result {index} is missing {key!r}")
        if len(result["keypoints"]) != 3 * num_joints:
            raise ValueError(f"result {index} has {len(result['keypoints'])} keypoint values, "
                             f"expected {3 * num_joints}")


def evaluate_results(gt: Any, results: Sequence[Mapping[str, Any]], sigmas: np.ndarray | None = None,
                     restrict_to_result_images: bool = False,
                     ) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """Runs ``COCOeval(iouType="keypoints")`` on a results list, as given (no NMS, no rescoring).

    Args:
        gt: COCO keypoint json path, dict, or ``pycocotools.coco.COCO``.
        results: COCO keypoint results (``image_id``, ``category_id``, ``keypoints`` [x, y, s]*K, ``score``).
        sigmas: (K,) OKS sigmas; default COCO's.
        restrict_to_result_images: evaluate only the images that have results
            (a subset evaluation); default all ground-truth images (the COCO protocol).

    Returns:
        ``(stats, per_keypoint)``: ``stats`` maps :data:`STAT_NAMES` to floats plus
        ``num_results``/``num_gt``; ``per_keypoint`` maps joint name to
        ``{"similarity": mean OKS term, "accuracy": share with term >= 0.5, "count"}``
        over detections matched at OKS 0.5 (all areas, maxDets 20).

    Raises:
        ValueError: malformed results or unknown image ids.
    """
    from pycocotools.cocoeval import COCOeval

    api = gt if hasattr(gt, "loadRes") else load_ground_truth(gt)
    sigmas = COCO.sigmas() if sigmas is None else np.asarray(sigmas, np.float64)
    joint_names = _joint_names(api, sigmas.size)
    results = [dict(result, category_id=int(result.get("category_id", 1))) for result in results]
    _validate_results(results, sigmas.size)
    unknown = {int(r["image_id"]) for r in results} - set(api.getImgIds())
    if unknown:
        raise ValueError(f"results reference {len(unknown)} image ids missing from the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    num_gt = sum(1 for a in api.dataset["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0))
    if not results:
        stats = {name: 0.0 for name in STAT_NAMES}
        stats.update(num_results=0, num_gt=num_gt)
        return stats, {name: {"similarity": 0.0, "accuracy": 0.0, "count": 0} for name in joint_names}
    with contextlib.redirect_stdout(io.StringIO()):
        detections = api.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(api, detections, "keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        if restrict_to_result_images:
            evaluator.params.imgIds = sorted({int(r["image_id"]) for r in results})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    stats.update(num_results=len(results), num_gt=num_gt)
    return stats, _per_keypoint(evaluator, api, detections, sigmas, joint_names)


def _joint_names(api, num_joints: int) -> List[str]:
    categories = api.dataset.get("categories") or [{}]
    names = categories[0].get("keypoints") or []
    if len(names) == num_joints:
        return list(names)
    if num_joints == COCO.num_joints:
        return list(COCO.joint_names)
    return [f"joint_{index}" for index in range(num_joints)]


def _per_keypoint(evaluator, api, detections, sigmas: np.ndarray, joint_names: List[str]) -> Dict[str, Dict[str, float]]:
    """Per-joint similarity/accuracy over the detection-GT pairs matched at OKS 0.5."""
    pairs = []
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != evaluator.params.areaRng[0] or entry["maxDet"] != evaluator.params.maxDets[-1]:
            continue
        matches = entry["dtMatches"][0]            # OKS threshold 0.5
        ignored = entry["dtIgnore"][0]
        for detection_id, gt_id, is_ignored in zip(entry["dtIds"], matches, ignored):
            if gt_id > 0 and not is_ignored:
                pairs.append((int(detection_id), int(gt_id)))
    num_joints = sigmas.size
    if not pairs:
        return {name: {"similarity": 0.0, "accuracy": 0.0, "count": 0} for name in joint_names}
    dt = np.asarray([detections.anns[d]["keypoints"] for d, _ in pairs], np.float64).reshape(-1, num_joints, 3)
    gt = np.asarray([api.anns[g]["keypoints"] for _, g in pairs], np.float64).reshape(-1, num_joints, 3)
    areas = np.asarray([api.anns[g]["area"] for _, g in pairs], np.float64)
    similarity = keypoint_similarity(dt[..., :2], gt[..., :2], areas, sigmas)
    labelled = gt[..., 2] > 0
    count = labelled.sum(0)
    mean_similarity = (similarity * labelled).sum(0) / np.maximum(count, 1)
    accuracy = ((similarity >= 0.5) & labelled).sum(0) / np.maximum(count, 1)
    return {name: {"similarity": float(mean_similarity[k]), "accuracy": float(accuracy[k]), "count": int(count[k])}
            for k, name in enumerate(joint_names)}


def evaluate_persons(persons: Sequence[Mapping[str, Any]], gt: Any = None, rescore_threshold: float = 0.2,
                     nms_threshold: float | None = 0.9, soft_nms: bool = False,
                     sigmas: np.ndarray | None = None, restrict_to_result_images: bool = False,
                     ) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]], List[Dict[str, Any]]]:
    """The whole COCO path for model outputs: rescoring, OKS-NMS, results list, COCOeval.

    Args:
        persons: see :func:`persons_to_results`; with ``gt=None`` they must also
            carry the ground-truth fields of :func:`ground_truth_from_persons`.
        gt: COCO keypoint json path/dict/COCO object, or ``None`` to rebuild it from the persons.
        restrict_to_result_images: evaluate only images that have results
            (default: every ground-truth image, the COCO protocol).

    Returns:
        ``(stats, per_keypoint, results)``.
    """
    if gt is None:
        gt = ground_truth_from_persons(persons)
    results = persons_to_results(persons, rescore_threshold, nms_threshold, soft_nms, sigmas)
    stats, per_keypoint = evaluate_results(gt, results, sigmas, restrict_to_result_images=restrict_to_result_images)
    return stats, per_keypoint, results


def load_results(path: str) -> List[Dict[str, Any]]:
    """Reads a COCO keypoint results json (a list). Raises ValueError for other layouts."""
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)
    if not isinstance(results, list):
        raise ValueError(f"{path}: a COCO results file must hold a list, got {type(results).__name__}")
    return results


def iter_stat_items(stats: Mapping[str, float]) -> Iterable[Tuple[str, float]]:
    """Yields ``(name, value)`` for the ten COCO stats in order."""
    for name in STAT_NAMES:
        yield name, float(stats[name])
