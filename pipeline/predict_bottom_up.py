"""Box-free predict: a bottom-up SavedModel's own ``predict_image(image)`` for :mod:`pipeline.predict`.

A bottom-up model (``approach: bottom_up``, :mod:`trainer.export_bottom_up`) finds
the people itself: its ``predict_image`` takes the encoded image alone and returns
``keypoints`` (N, K, 3) (x, y original-image pixels, joint score), ``person_scores``
(N,) best first and ``num_people`` () (rows after ``num_people`` are zeros;
:mod:`schemas.serving`). Each found person becomes one COCO result, scored as the
Evaluator's bottom-up path scores it (:class:`components.evaluator.BottomUpInferenceFn`
and :func:`components.metrics_coco.persons_to_results`): box score 1, pose score the
mean of the joint scores above ``eval.rescore_threshold``, per-image OKS-NMS whose
area is the box of the person's joints with a score above 0
(``(x_max - x_min + 1) * (y_max - y_min + 1)`` pixels^2, 1 without such a joint).
So ``pipeline.score`` on the results of a folder gives the AP the Evaluator reports
for the same model and images.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Tuple

import numpy as np


def is_bottom_up(signature) -> bool:
    """True when a ``predict_image`` concrete function takes the image alone (no ``boxes`` input)."""
    from schemas import serving

    return serving.INPUT_BOXES not in signature.structured_input_signature[1]


@dataclasses.dataclass
class BottomUpModel:
    """The loaded bottom-up ``predict_image`` signature and what the SavedModel tells about the model.

    Attributes:
        path: SavedModel directory.
        predict_image: the signature, ``(image=() string) -> dict`` (module docstring).
        num_joints: K, from the ``keypoints`` output (N, K, 3).
        input_size: (S, S), the letterboxed input of the ``heatmaps`` signature.
        schema: the keypoint schema with K joints (:mod:`schemas.keypoints`).
        max_people: N, the most people one image can give (``bottom_up.max_people`` of its config).
    """

    box_free: ClassVar[bool] = True
    path: str
    predict_image: Callable[..., Mapping[str, Any]]
    num_joints: int
    input_size: Tuple[int, int]
    schema: Any
    max_people: int | None
    _loaded: Any = None

    def __call__(self, image_bytes: bytes) -> Dict[str, np.ndarray]:
        """One encoded image -> ``keypoints`` (n, K, 2) and ``scores`` (n, K) float64, ``person_scores`` (n,),
        n = ``num_people``. Raises tf.errors.InvalidArgumentError for an image the graph cannot decode."""
        import tensorflow as tf

        from schemas import serving

        outputs = self.predict_image(**{serving.INPUT_IMAGE: tf.constant(image_bytes, tf.string)})
        count = int(outputs[serving.OUTPUT_NUM_PEOPLE].numpy())
        keypoints = outputs[serving.OUTPUT_KEYPOINTS].numpy()[:count].astype(np.float64)
        return {"keypoints": keypoints[..., :2], "scores": keypoints[..., 2],
                "person_scores": outputs[serving.OUTPUT_PERSON_SCORES].numpy()[:count].astype(np.float64)}


def load(loaded: Any, saved_model_dir: str, schema_for: Callable[[int], Any]) -> BottomUpModel:
    """The :class:`BottomUpModel` of a loaded bottom-up SavedModel.

    Args:
        loaded: ``tf.saved_model.load`` of ``saved_model_dir`` (has ``predict_image`` and ``heatmaps``).
        schema_for: K -> keypoint schema (raises ValueError when none fits).

    Raises:
        ValueError: ``keypoints`` is not (N, K, 3).
    """
    from schemas import serving

    signature = loaded.signatures[serving.PREDICT_IMAGE]
    shape = signature.structured_outputs[serving.OUTPUT_KEYPOINTS].shape
    if shape.rank != 3 or shape[2] != 3:
        raise ValueError(f"{saved_model_dir}: bottom-up predict_image returns keypoints {shape}, expected (N, K, 3)")
    images = loaded.signatures[serving.HEATMAPS].structured_input_signature[1][serving.INPUT_IMAGES]
    return BottomUpModel(saved_model_dir, signature, int(shape[1]), tuple(int(v) for v in images.shape[1:3]),
                         schema_for(int(shape[1])), None if shape[0] is None else int(shape[0]), loaded)


def joint_box_areas(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n,) OKS-NMS areas of bottom-up people: ``w * h`` of the box of the joints scored above 0, each side
    + 1 pixel (the Evaluator's ``window_area`` of a bottom-up person); 1 for a person without such a joint.

    Args:
        keypoints: (n, K, 2) pixels; scores: (n, K).
    """
    keypoints = np.asarray(keypoints, np.float64)
    seen = np.asarray(scores, np.float64) > 0
    low = np.where(seen[..., None], keypoints, np.inf).min(axis=1)
    high = np.where(seen[..., None], keypoints, -np.inf).max(axis=1)
    extent = np.where(seen.any(axis=1)[:, None], high - low + 1.0, 1.0)
    return extent[:, 0] * extent[:, 1]


def image_results(schema: Any, image_id: int, keypoints: np.ndarray, scores: np.ndarray,
                  eval_config: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """COCO results of one image's bottom-up people, scored as the Evaluator scores them (module docstring).

    Args:
        schema: keypoint schema (OKS-NMS only when it has sigmas).
        keypoints: (n, K, 2) image pixels; scores: (n, K) joint scores (finite).
        eval_config: the config's ``eval`` section (``rescore_threshold``, ``oks_nms_threshold``, ``soft_nms``).

    Returns:
        results in :func:`components.metrics_coco.result_sort_key` order.
    """
    from components import metrics_coco

    if len(keypoints) == 0:
        return []
    rescore_threshold = float(eval_config["rescore_threshold"])
    if schema.oks_sigmas is None:        # no OKS: rescored, no NMS (as the top-down MPII path)
        pose_scores = metrics_coco.rescore(scores, np.ones(len(scores)), rescore_threshold)
        triplets = np.concatenate([keypoints, scores[..., None]], axis=-1).reshape(len(scores), -1)
        results = [{"image_id": int(image_id), "category_id": 1, "keypoints": [float(v) for v in row],
                    "score": float(score)} for row, score in zip(triplets, pose_scores)]
        return sorted(results, key=metrics_coco.result_sort_key)
    areas = joint_box_areas(keypoints, scores)
    persons = [{"image_id": int(image_id), "keypoints": keypoints[i], "keypoint_scores": scores[i],
                "box_score": 1.0, "area": float(areas[i])} for i in range(len(keypoints))]
    nms = eval_config.get("oks_nms_threshold")
    return metrics_coco.persons_to_results(persons, rescore_threshold=rescore_threshold,
                                           nms_threshold=None if nms is None else float(nms),
                                           soft_nms=bool(eval_config.get("soft_nms", False)),
                                           sigmas=schema.sigmas())
