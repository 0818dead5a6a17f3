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

Files written by others are checked before pycocotools sees them
(:func:`prepare_ground_truth`, :func:`normalise_results`): integer-string ids
are converted, bad entries raise ``ValueError`` naming the file and entry, a
missing ``area`` follows the one rule :func:`oks_area` (``0.53 * w * h`` of the
box, as xtcocotools / mmpose), and results are put in the fixed order of
:func:`result_sort_key` so that equal scores never make the AP depend on the
input order. Stats are pycocotools' own, ``-1`` included (no ground truth in an
area range).

Example:

    stats, per_keypoint = evaluate_results(gt_json, results)  # results: COCO json list
    stats["AP"]
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
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

AREA_FROM_BOX_FACTOR = 0.53
"""OKS area of a person annotation that has no usable ``area``: ``0.53 * w * h`` of its box.

The factor is xtcocotools' (``COCOeval`` with ``use_area=False``, or an annotation
without ``area``), the COCO evaluator of mmpose for datasets without areas
(CrowdPose, AIC): about the share of a person's box covered by its segmentation.
"""

AREA_FROM_BOX = "area_from_box"
"""Name of the count of annotations whose OKS area was derived (manifest, notes, metrics)."""


def oks_area(area: Any, bbox: Any) -> Tuple[float, bool]:
    """The OKS normaliser (pixels^2) of one person annotation, and whether it was derived.

    The one rule for a missing area, applied the same way by ExampleGen (the
    record's ``person/area``), the Evaluator's ground truth rebuilt from records
    and :mod:`pipeline.score`: a finite ``area > 0`` is used as given; a missing
    (``None``), zero, negative or non-finite one is replaced by
    ``AREA_FROM_BOX_FACTOR * w * h`` of ``bbox`` ``[x, y, w, h]`` (image pixels),
    as xtcocotools / mmpose do. Callers count the derived ones (:data:`AREA_FROM_BOX`).

    Args:
        area: the annotation's ``area`` value (may be ``None``).
        bbox: the annotation's ``bbox`` ``[x, y, w, h]`` (only read when the area is derived).

    Returns:
        ``(area, derived)``.

    Raises:
        ValueError: ``area`` is not a number (e.g. a string), or it must be derived
            and ``bbox`` is not 4 finite numbers with ``w, h > 0``.
    """
    if area is not None:
        if isinstance(area, bool) or not isinstance(area, (int, float, np.integer, np.floating)):
            raise ValueError(f"area {area!r} is not a number")
        if math.isfinite(float(area)) and float(area) > 0:
            return float(area), False
    try:
        if isinstance(bbox, (str, bytes)) or bbox is None or len(bbox) != 4:
            raise ValueError
        values = [float(v) for v in bbox if not isinstance(v, (bool, str, bytes))]
        if len(values) != 4:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"no usable area ({area!r}) and bbox {bbox!r} is not [x, y, w, h]") from None
    width, height = values[2], values[3]
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"no usable area ({area!r}) and bbox {list(bbox)!r} has no positive finite w, h "
                         "to derive it from")
    return AREA_FROM_BOX_FACTOR * width * height, True


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
        category_id: COCO category of the results (a person's own ``category_id``, when it
            carries one, wins: multi-category metas such as AP-10K).

    Returns:
        COCO results: ``[{"image_id", "category_id", "keypoints": [x, y, s]*K, "score"}]``,
        in the order of :func:`result_sort_key` (image id, descending score, keypoint
        triplets). Equal-score ties in NMS and COCOeval are broken by that content key (then
        area and box score), so the output does not depend on the order of ``persons``.
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
    categories = np.asarray([int(p.get("category_id", category_id)) for p in persons], np.int64)
    pose_scores = rescore(joint_scores, box_scores, rescore_threshold)
    # A fixed order before NMS (whose ties go to the first pose) and COCOeval (whose
    # stable sort keeps ties in input order): the verdict must not depend on Beam's order.
    # The key is result_sort_key's (image, -score, keypoint triplets), then area and box score.
    triplets_all = np.concatenate([keypoints, joint_scores[..., None]], axis=-1).reshape(len(persons), -1)

    def person_key(i: int) -> Tuple[Any, ...]:
        return (int(image_ids[i]), -float(pose_scores[i]), triplets_all[i].tolist(), float(areas[i]),
                -float(box_scores[i]))

    order = sorted(range(len(persons)), key=person_key)
    order = np.asarray(order, np.int64)
    image_ids, keypoints, joint_scores = image_ids[order], keypoints[order], joint_scores[order]
    areas, pose_scores, categories = areas[order], pose_scores[order], categories[order]
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
                "category_id": int(categories[person]),
                "keypoints": [float(v) for v in triplets.ravel()],
                "score": float(score),
            })
    results.sort(key=result_sort_key)  # soft-NMS decays scores: re-establish the canonical order
    return results


def result_sort_key(result: Mapping[str, Any]) -> Tuple[Any, ...]:
    """The fixed order of COCO results: image id, descending score, category, then the keypoint
    triplets, so equal scores are matched in the same order whatever order the input came in."""
    return (int(result["image_id"]), -float(result["score"]), int(result.get("category_id", 1)),
            [float(v) for v in result["keypoints"]])


# --------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------

def _integer_id(value: Any, what: str) -> int:
    """An id as int: ints, integral floats and integer strings (``"785"``); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r} is not an integer id")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        try:
            return int(value.strip())
        except ValueError:  # e.g. "--5"
            pass
    raise ValueError(f"{what} {value!r} is not an integer id")


def prepare_ground_truth(dataset: Mapping[str, Any], source: str = "ground truth",
                         ) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """Checks a COCO keypoint ground-truth dict and fills what pycocotools would trip on.

    * ``images[].id``, ``annotations[].image_id``/``id``/``category_id``,
      ``categories[].id``: integers (integer strings are converted).
    * ``area``: the rule of :func:`oks_area` (missing/unusable -> ``0.53 * w * h`` of the box).
    * ``iscrowd`` missing -> 0; ``num_keypoints`` missing -> the count of labelled keypoints
      (as mmpose does).

    Args:
        dataset: the loaded COCO json (not modified; a deep copy is returned).
        source: the file name, for messages.

    Returns:
        ``(dataset copy, notes)``; ``notes`` counts ``area_from_box``, ``num_keypoints_filled``,
        ``ids_converted``.

    Raises:
        ValueError: ``"<source>: annotations[i] (id N): <what is wrong>"`` for the first bad entry,
            or a missing ``images``/``annotations``/``categories`` list.
    """
    if not isinstance(dataset, Mapping):
        raise ValueError(f"{source}: a COCO ground truth must be a JSON object, got {type(dataset).__name__}")
    dataset = copy.deepcopy(dict(dataset))
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: COCO ground truth is missing the {key!r} list")
    notes = {AREA_FROM_BOX: 0, "num_keypoints_filled": 0, "ids_converted": 0}
    keypoint_categories = set()

    def as_id(entry: Dict[str, Any], key: str, where: str) -> None:
        if key not in entry:
            raise ValueError(f"{source}: {where}: missing {key!r}")
        try:
            value = _integer_id(entry[key], f"{where}: {key}")
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        notes["ids_converted"] += int(not isinstance(entry[key], (int, np.integer)))
        entry[key] = value

    for key in ("images", "categories"):
        for index, entry in enumerate(dataset[key]):
            if not isinstance(entry, dict):
                raise ValueError(f"{source}: {key}[{index}] is not an object")
            as_id(entry, "id", f"{key}[{index}]")
            if key == "categories" and entry.get("keypoints"):
                keypoint_categories.add(entry["id"])
    for index, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"{source}: annotations[{index}] is not an object")
        as_id(ann, "id", f"annotations[{index}]")
        where = f"annotations[{index}] (id {ann['id']})"
        as_id(ann, "image_id", where)
        as_id(ann, "category_id", where)
        ann.setdefault("iscrowd", 0)
        keypoints = ann.get("keypoints")
        if keypoints is None and ann["category_id"] not in keypoint_categories:
            keypoints = []  # another category's object: no keypoints to check
        elif not isinstance(keypoints, list) or len(keypoints) % 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in keypoints):
            raise ValueError(f"{source}: {where}: keypoints must be a list of [x, y, v] finite numbers")
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(keypoints, np.float64)[2::3] > 0))
            notes["num_keypoints_filled"] += 1
        try:
            ann["area"], derived = oks_area(ann.get("area"), ann.get("bbox"))
        except ValueError as error:
            raise ValueError(f"{source}: {where}: {error}") from None
        notes[AREA_FROM_BOX] += int(derived)
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise ValueError(f"{source}: {where}: bbox {bbox!r} is not [x, y, w, h] (pycocotools needs it)")
    return dataset, notes


def _open_text(path: str):
    """A text file handle for a local path or a URL-style path (``gs://``) through ``tf.io.gfile``."""
    if "://" in path:
        import tensorflow as tf  # only for remote paths: this module stays TensorFlow-free otherwise

        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        return tf.io.gfile.GFile(path, "r")
    return open(path, encoding="utf-8")


def load_ground_truth(gt: str | Mapping[str, Any]):
    """Returns a ``pycocotools.coco.COCO`` from a json path or an already-loaded dict.

    The dataset goes through :func:`prepare_ground_truth` first (area rule, ids, defaults);
    its counts are on the returned object as ``notes`` (``{"area_from_box": n, ...}``).

    Raises:
        ValueError: unreadable json or a malformed entry (the message names the file and entry).
        FileNotFoundError: ``gt`` path does not exist.
    """
    from pycocotools.coco import COCO as CocoApi

    if isinstance(gt, str):
        source = gt
        with _open_text(gt) as handle:
            try:
                dataset = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{gt}: not valid JSON ({error})") from None
    elif isinstance(gt, Mapping):
        source, dataset = "ground truth", gt
    else:
        raise ValueError(f"gt must be a json path or a COCO dict, got {type(gt).__name__}")
    dataset, notes = prepare_ground_truth(dataset, source)
    api = CocoApi()
    api.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    api.notes = notes
    api.source = source
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

    Area: the records' ``gt_area`` under the rule of :func:`oks_area`. ExampleGen
    already applies it from the annotation's box, so a record's area is only
    derived here for records written without it (area 0): then from the
    ``scale / padding`` box, which is the annotation box widened to the crop's
    aspect ratio (an upper bound). The count is ``info.area_from_box`` of the result.

    Raises:
        ValueError: a detector-box record (``annotation_id < 0``) or duplicate annotation ids.
    """
    images: Dict[int, Dict[str, Any]] = {}
    annotations: Dict[int, Dict[str, Any]] = {}
    derived_areas = 0
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
        bbox = [float(center[0] - size[0] / 2), float(center[1] - size[1] / 2), float(size[0]), float(size[1])]
        try:
            area, derived = oks_area(float(person["gt_area"]), bbox)
        except ValueError as error:
            raise ValueError(f"eval record of annotation {annotation_id} (image {image_id}): {error}") from None
        derived_areas += int(derived)
        annotations[annotation_id] = {
            "id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "keypoints": [float(v) for v in triplets.ravel()],
            "num_keypoints": int(np.count_nonzero(visibility > 0)),
            "area": area, "bbox": bbox,
        }
    return {
        "info": {AREA_FROM_BOX: derived_areas},
        "images": [images[key] for key in sorted(images)],
        "annotations": [annotations[key] for key in sorted(annotations)],
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(schema.joint_names),
                        "skeleton": [[a + 1, b + 1] for a, b in schema.skeleton]}],
    }


# --------------------------------------------------------------------------
# pycocotools stats and per-keypoint numbers
# --------------------------------------------------------------------------

def _finite_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and math.isfinite(value))


def normalise_results(results: Any, num_joints: int, image_ids: Iterable[int] | None = None,
                      category_ids: Iterable[int] | None = None, source: str = "results",
                      ) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """Checks a COCO keypoint results list and puts it in a fixed order.

    Each entry must be an object with ``image_id`` (an integer; integer strings such as
    ``"785"`` and integral floats are converted), ``keypoints`` (``3 * num_joints``
    finite numbers), ``score`` (a finite number) and optionally ``category_id`` (default 1,
    converted like ``image_id``). With ``image_ids`` / ``category_ids`` given, the ids must
    be among them (pycocotools would assert or silently ignore the entry).

    The output is sorted by image id, descending score, category, then keypoints, so
    persons with equal scores are matched in the same order whatever the input order
    (``COCOeval`` sorts with a stable sort).

    Returns:
        ``(results, notes)``: new dicts (with ``image_id``, ``category_id``, ``keypoints``,
        ``score`` only) and ``{"ids_converted": n}``.

    Raises:
        ValueError: ``"<source>: entry <i>: <what is wrong>"`` for the first bad entry.
    """
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"{source}: a COCO results file must hold a list, got {type(results).__name__}")
    image_ids = None if image_ids is None else set(image_ids)
    category_ids = None if category_ids is None else set(category_ids)
    converted, notes = [], {"ids_converted": 0}
    for index, result in enumerate(results):
        where = f"{source}: entry {index}"
        if not isinstance(result, Mapping):
            raise ValueError(f"{where}: not an object ({type(result).__name__})")
        for key in ("image_id", "keypoints", "score"):
            if key not in result:
                raise ValueError(f"{where}: missing {key!r}")
        try:
            image_id = _integer_id(result["image_id"], "image_id")
            category_id = _integer_id(result.get("category_id", 1), "category_id")
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        notes["ids_converted"] += int(not isinstance(result["image_id"], (int, np.integer)))
        keypoints = result["keypoints"]
        if not isinstance(keypoints, (list, tuple)) or len(keypoints) != 3 * num_joints:
            length = len(keypoints) if isinstance(keypoints, (list, tuple)) else type(keypoints).__name__
            raise ValueError(f"{where}: keypoints must be a list of {3 * num_joints} numbers "
                             f"({num_joints} x [x, y, score]), got {length}")
        if not all(_finite_number(v) for v in keypoints):
            raise ValueError(f"{where}: keypoints hold a non-number or a non-finite value")
        if not _finite_number(result["score"]):
            raise ValueError(f"{where}: score {result['score']!r} is not a finite number")
        if image_ids is not None and image_id not in image_ids:
            raise ValueError(f"{where}: image_id {image_id} is not in the ground truth")
        if category_ids is not None and category_id not in category_ids:
            raise ValueError(f"{where}: category_id {category_id} is not a ground-truth category "
                             f"{sorted(category_ids)}")
        converted.append({"image_id": image_id, "category_id": category_id,
                          "keypoints": [float(v) for v in keypoints], "score": float(result["score"])})
    converted.sort(key=result_sort_key)
    return converted, notes


def _empty_detections(api):
    """A pycocotools COCO object with the ground truth's images and no detection."""
    from pycocotools.coco import COCO as CocoApi

    detections = CocoApi()
    detections.dataset = {"images": list(api.dataset["images"]), "categories": copy.deepcopy(api.dataset["categories"]),
                          "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        detections.createIndex()
    return detections


def evaluate_results(gt: Any, results: Sequence[Mapping[str, Any]], sigmas: np.ndarray | None = None,
                     restrict_to_result_images: bool = False, source: str = "results",
                     category_ids: Sequence[int] | None = None, joint_names: Sequence[str] | None = None,
                     ) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]]]:
    """Runs ``COCOeval(iouType="keypoints")`` on a results list, as given (no NMS, no rescoring).

    Args:
        gt: COCO keypoint json path, dict, or ``pycocotools.coco.COCO``; paths and dicts go
            through :func:`prepare_ground_truth` (area rule).
        results: COCO keypoint results (``image_id``, ``category_id``, ``keypoints`` [x, y, s]*K,
            ``score``), checked and ordered by :func:`normalise_results`.
        sigmas: (K,) OKS sigmas; default COCO's.
        restrict_to_result_images: evaluate only the images that have results
            (a subset evaluation); default all ground-truth images (the COCO protocol).
        source: name of the results (file) for messages.
        category_ids: pycocotools ``params.catIds`` (the categories of a dataset meta, e.g.
            AP-10K's 54 species); default every ground-truth category, as pycocotools.
        joint_names: K names for the per-keypoint table (default: the first category's).

    Returns:
        ``(stats, per_keypoint)``: ``stats`` maps :data:`STAT_NAMES` to pycocotools' floats
        (``-1`` where pycocotools reports -1: no ground truth in that area range; an empty
        results list is evaluated too, giving 0 / -1 as pycocotools would) plus
        ``num_results``/``num_gt``/``area_from_box``/``ids_converted``; ``per_keypoint`` maps
        joint name to ``{"similarity": mean OKS term, "accuracy": share with term >= 0.5, "count"}``
        over detections matched at OKS 0.5 (all areas, maxDets 20).

    Raises:
        ValueError: malformed ground truth or results, unknown image or category ids
            (the message names the file and the entry).
    """
    from pycocotools.cocoeval import COCOeval

    api = gt if hasattr(gt, "loadRes") else load_ground_truth(gt)
    sigmas = COCO.sigmas() if sigmas is None else np.asarray(sigmas, np.float64)
    joint_names = list(joint_names) if joint_names is not None else _joint_names(api, sigmas.size)
    gt_source = getattr(api, "source", "ground truth")
    for annotation in api.dataset["annotations"]:
        if annotation.get("keypoints") and len(annotation["keypoints"]) != 3 * sigmas.size:
            raise ValueError(f"{gt_source}: annotation id {annotation.get('id')}: {len(annotation['keypoints'])} "
                             f"keypoint values, expected {3 * sigmas.size} ({sigmas.size} joints)")
    results, result_notes = normalise_results(results, sigmas.size, api.getImgIds(),
                                              api.getCatIds() if category_ids is None else category_ids, source)
    scored = set(api.getCatIds() if category_ids is None else category_ids)
    num_gt = sum(1 for a in api.dataset["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)
                 and a.get("category_id", 1) in scored)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = api.loadRes(copy.deepcopy(results)) if results else _empty_detections(api)
        evaluator = COCOeval(api, detections, "keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        if category_ids is not None:
            evaluator.params.catIds = sorted(int(c) for c in category_ids)
        if restrict_to_result_images:
            evaluator.params.imgIds = sorted({int(r["image_id"]) for r in results})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}
    stats.update(num_results=len(results), num_gt=num_gt,
                 area_from_box=int(getattr(api, "notes", {}).get(AREA_FROM_BOX, 0)),
                 ids_converted=result_notes["ids_converted"])
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
                     schema: KeypointSchema | None = None, category_ids: Sequence[int] | None = None,
                     ) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]], List[Dict[str, Any]]]:
    """The whole COCO path for model outputs: rescoring, OKS-NMS, results list, COCOeval.

    Args:
        persons: see :func:`persons_to_results`; with ``gt=None`` they must also
            carry the ground-truth fields of :func:`ground_truth_from_persons`.
        gt: COCO keypoint json path/dict/COCO object, or ``None`` to rebuild it from the persons.
        restrict_to_result_images: evaluate only images that have results
            (default: every ground-truth image, the COCO protocol).
        schema: the dataset meta (default COCO): its sigmas (unless ``sigmas`` is given), joint
            names and skeleton (for a ground truth rebuilt from the persons).
        category_ids: pycocotools ``params.catIds`` (a meta's categories); a person's own
            ``category_id`` (when it carries one) becomes its result's category.

    Returns:
        ``(stats, per_keypoint, results)``; ``stats["area_from_box"]`` counts the ground-truth
        areas derived from boxes (:func:`oks_area`).

    Raises:
        ValueError: a schema without sigmas (no OKS for that layout), malformed persons / ground truth.
    """
    if sigmas is None and schema is not None:
        sigmas = schema.sigmas()
    derived_areas = None
    if gt is None:
        gt = ground_truth_from_persons(persons, schema or COCO)
        derived_areas = gt["info"][AREA_FROM_BOX]
    results = persons_to_results(persons, rescore_threshold, nms_threshold, soft_nms, sigmas)
    stats, per_keypoint = evaluate_results(gt, results, sigmas, restrict_to_result_images=restrict_to_result_images,
                                           category_ids=category_ids,
                                           joint_names=schema.joint_names if schema is not None else None)
    if derived_areas is not None:
        stats[AREA_FROM_BOX] = derived_areas
    return stats, per_keypoint, results


def load_results(path: str) -> List[Dict[str, Any]]:
    """Reads a COCO keypoint results json (a list).

    Raises:
        ValueError: not JSON, or not a list (the entries are checked by :func:`normalise_results`).
        FileNotFoundError: no such file.
    """
    with _open_text(path) as handle:
        try:
            results = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results, list):
        raise ValueError(f"{path}: a COCO results file must hold a list, got {type(results).__name__}")
    return results


def iter_stat_items(stats: Mapping[str, float]) -> Iterable[Tuple[str, float]]:
    """Yields ``(name, value)`` for the ten COCO stats in order."""
    for name in STAT_NAMES:
        yield name, float(stats[name])
