"""Test helpers for the evaluator/pusher/gate tests (not a test module).

* :func:`write_coco_eval_records`: real COCO sample annotations + images ->
  ``Split-eval`` person-crop records built with :func:`schemas.features.build_example`
  (ground-truth boxes, the record spec and the coordinate convention of the project).
* :func:`pycocotools_stats`: COCOeval run directly on a GT dict and a results
  list, the outside reference for our scoring.
* :func:`export_fake_model`: a tiny SavedModel that honours :mod:`schemas.serving`
  exactly; its ``serving_default`` parses the records with
  :func:`schemas.features.parse_records` and returns the records' own
  keypoints, moved by a deterministic per-record offset of ``noise_px`` pixels.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf

from pose import coordinates
from pose.codec import HeatmapCodec
from schemas import features, serving
from schemas.keypoints import get_schema

INPUT_SIZE = (64, 48)
HEATMAP_SIZE = (16, 12)


def write_coco_eval_records(gt_json: str, image_dir: str, out_dir: str, limit: int | None = None,
                            extra_records: List[bytes] | None = None, dataset: str = "coco") -> Dict[str, Any]:
    """Writes ``<out_dir>/Split-eval/data_tfrecord-00000-of-00001.gz`` from real COCO annotations.

    Every non-crowd annotation with ``num_keypoints > 0`` becomes one GT-box record.
    ``extra_records`` (already serialized, possibly broken) are appended. ``dataset``: the
    records' ``dataset`` (a meta's ``dataset_name``; K comes from the annotations).

    Returns:
        ``{"count": records written, "annotation_ids": [...]}``.
    """
    import cv2

    with open(gt_json, encoding="utf-8") as handle:
        gt = json.load(handle)
    images = {image["id"]: image for image in gt["images"]}
    codec = HeatmapCodec(INPUT_SIZE, HEATMAP_SIZE, sigma=1.0, blur_kernel=3)
    aspect = INPUT_SIZE[1] / INPUT_SIZE[0]
    split = os.path.join(out_dir, "Split-eval")
    os.makedirs(split, exist_ok=True)
    def labelled(annotation):  # num_keypoints, or counted from the keypoints (OneHand10K has no num_keypoints)
        return annotation.get("num_keypoints", sum(1 for v in annotation.get("keypoints", [])[2::3] if v > 0))

    annotations = [a for a in gt["annotations"] if labelled(a) > 0 and not a.get("iscrowd", 0)]
    annotations = annotations[:limit] if limit else annotations
    cache: Dict[int, np.ndarray] = {}
    ids = []
    path = os.path.join(split, "data_tfrecord-00000-of-00001.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for annotation in annotations:
            info = images[annotation["image_id"]]
            if info["id"] not in cache:
                bgr = cv2.imread(os.path.join(image_dir, info["file_name"]))
                cache[info["id"]] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            image = cache[info["id"]]
            center, scale = coordinates.box_to_center_scale(np.asarray(annotation["bbox"]), aspect)
            matrix = coordinates.crop_affine(center, scale, INPUT_SIZE)
            crop = coordinates.warp_image(image, matrix, INPUT_SIZE)
            keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
            visibility = keypoints[:, 2].astype(np.int64)
            crop_points = coordinates.apply_affine(keypoints[:, :2], matrix)
            heatmaps, weights = codec.encode(crop_points, visibility)
            encoded = tf.io.encode_jpeg(crop.astype(np.uint8), quality=95).numpy()
            record = {
                "dataset": dataset, "image/encoded": encoded, "image/format": "jpeg",
                "image/id": info["id"], "image/height": info["height"], "image/width": info["width"],
                "annotation/id": annotation["id"], "crop/height": INPUT_SIZE[0], "crop/width": INPUT_SIZE[1],
                "bbox/center": center, "bbox/scale": scale, "bbox/score": 1.0,
                "person/area": annotation["area"], "keypoints/crop": crop_points,
                "keypoints/image": keypoints[:, :2], "keypoints/visibility": visibility,
                "heatmaps/encoded": heatmaps.astype(np.float32), "heatmap/height": HEATMAP_SIZE[0],
                "heatmap/width": HEATMAP_SIZE[1], "target_weight": weights,
            }
            writer.write(features.build_example(record).SerializeToString())
            ids.append(annotation["id"])
        for extra in extra_records or []:
            writer.write(extra)
    return {"count": len(ids), "annotation_ids": ids, "path": path}


class FakePoseModel(tf.Module):
    """Serving-contract model returning the records' keypoints + a deterministic offset."""

    def __init__(self, dataset: str = "coco", noise_px: float = 0.0, nan_annotation_id: int = -2):
        super().__init__()
        self._num_joints = get_schema(dataset).num_joints
        self.noise_px = tf.Variable(float(noise_px), trainable=False)
        self._nan_annotation_id = int(nan_annotation_id)

    def _offsets(self, annotation_id: tf.Tensor) -> tf.Tensor:
        joints = tf.range(self._num_joints, dtype=tf.float32)
        phase = tf.cast(annotation_id, tf.float32)[:, None] * 0.7071 + joints[None, :] * 1.618
        angle = phase * 12.9898
        direction = tf.stack([tf.cos(angle), tf.sin(angle)], axis=-1)
        return self.noise_px * direction  # (B, K, 2): noise_px pixels long, deterministic per record

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=serving.INPUT_EXAMPLES)])
    def serve(self, examples):
        parsed = features.parse_records(examples, self._num_joints)
        offsets = self._offsets(parsed["annotation/id"])
        keypoints_image = parsed["keypoints/image"] + offsets
        poison = tf.equal(parsed["annotation/id"], self._nan_annotation_id)[:, None, None]
        keypoints_image = tf.where(poison, tf.fill(tf.shape(keypoints_image), float("nan")), keypoints_image)
        visible = tf.cast(parsed["keypoints/visibility"] > 0, tf.float32)
        outputs = {
            serving.OUTPUT_KEYPOINTS_CROP: parsed["keypoints/crop"],
            serving.OUTPUT_KEYPOINTS_IMAGE: keypoints_image,
            serving.OUTPUT_SCORES: 0.1 + 0.8 * visible,
        }
        for output_name, record_key in serving.PASSTHROUGH.items():
            outputs[output_name] = parsed[record_key]
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="image"),
                                  tf.TensorSpec([None, 4], tf.float32, name="boxes")])
    def predict_image(self, image, boxes):
        count = tf.shape(boxes)[0]
        return {"keypoints": tf.zeros([count, self._num_joints, 2]), "scores": tf.zeros([count, self._num_joints]),
                serving.OUTPUT_BOX_VALID: tf.ones([count], tf.bool),
                serving.OUTPUT_BOX_STATUS: tf.zeros([count], tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE[0], INPUT_SIZE[1], 3], tf.float32, name="images")])
    def heatmaps(self, images):
        batch = tf.shape(images)[0]
        return {"heatmaps": tf.zeros([batch, HEATMAP_SIZE[0], HEATMAP_SIZE[1], self._num_joints])}


def export_fake_model(model_dir: str, noise_px: float = 0.0, dataset: str = "coco",
                      nan_annotation_id: int = -2) -> str:
    """Writes ``<model_dir>/Format-Serving`` (the trainer's layout); returns ``model_dir``."""
    module = FakePoseModel(dataset, noise_px, nan_annotation_id)
    tf.saved_model.save(module, os.path.join(model_dir, serving.SAVED_MODEL_DIR), signatures={
        serving.SERVING_DEFAULT: module.serve,
        serving.PREDICT_IMAGE: module.predict_image,
        serving.HEATMAPS: module.heatmaps,
    })
    return model_dir


def mpii_records(json_path: str, image_dir: str) -> List[bytes]:
    """Serialized MPII person-crop records from an HRNet-format json (joints converted to 0-based)."""
    import cv2

    from pose.coordinates import MATLAB_TO_ZERO_BASED

    with open(json_path, encoding="utf-8") as handle:
        people = json.load(handle)
    codec = HeatmapCodec(INPUT_SIZE, HEATMAP_SIZE, sigma=1.0, blur_kernel=3)
    records = []
    for index, person in enumerate(people):
        bgr = cv2.imread(os.path.join(image_dir, person["image"]))
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        joints = np.asarray(person["joints"], np.float64) + MATLAB_TO_ZERO_BASED
        visibility = np.asarray(person["joints_vis"], np.int64) * 2
        labelled = joints[visibility > 0]
        low, high = labelled.min(0), labelled.max(0)
        center, scale = coordinates.box_to_center_scale(np.concatenate([low, high - low]), INPUT_SIZE[1] / INPUT_SIZE[0])
        matrix = coordinates.crop_affine(center, scale, INPUT_SIZE)
        crop_points = coordinates.apply_affine(joints, matrix)
        heatmaps, weights = codec.encode(crop_points, visibility)
        record = {
            "dataset": "mpii", "image/encoded": tf.io.encode_jpeg(
                coordinates.warp_image(image, matrix, INPUT_SIZE)).numpy(), "image/format": "jpeg",
            "image/id": int(person["image"].split(".")[0]), "image/height": image.shape[0],
            "image/width": image.shape[1], "annotation/id": index, "crop/height": INPUT_SIZE[0],
            "crop/width": INPUT_SIZE[1], "bbox/center": center, "bbox/scale": scale, "bbox/score": 1.0,
            "person/area": float(np.prod(high - low)), "keypoints/crop": crop_points, "keypoints/image": joints,
            "keypoints/visibility": visibility, "heatmaps/encoded": heatmaps.astype(np.float32),
            "heatmap/height": HEATMAP_SIZE[0], "heatmap/width": HEATMAP_SIZE[1], "target_weight": weights,
        }
        records.append(features.build_example(record).SerializeToString())
    return records


def pycocotools_stats(gt_dataset, results):
    """COCOeval run directly (the outside reference), on a GT dict and a results list."""
    import contextlib
    import io

    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        api = CocoApi()
        api.dataset = gt_dataset
        api.createIndex()
        evaluator = COCOeval(api, api.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats
