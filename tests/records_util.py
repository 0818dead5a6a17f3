"""Test helper: small, valid person-crop TFRecord shards for the trainer tests and benches.

Two sources, both producing records with :func:`schemas.features.build_example`
and targets from the experiment's :class:`pose.codec.HeatmapCodec`:

* :func:`coco_person_records`: real people from a COCO keypoint JSON and its
  images (e.g. ``../shared/data/coco_train2017_mini28``), cropped like
  ExampleGen does (GT box -> padded window -> UDP crop affine, bilinear warp);
* :func:`synthetic_records`: random keypoints on a noise image with a bright
  disc drawn at every labelled joint (no files needed).

:func:`write_split` writes them as ``<out_dir>/Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz``
the way ExampleGen lays out its output.

Example:

    records = coco_person_records(annotations, image_dir, config, codec, limit=40)
    paths = write_split(records, tmp_path, "train", num_shards=2)
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Sequence

import cv2
import numpy as np
import tensorflow as tf

from pose import coordinates
from pose.codec import HeatmapCodec
from schemas import examples as examples_layout
from schemas import features
from schemas.keypoints import get_schema


def _encode_jpeg(image_bgr: np.ndarray, quality: int = 95) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


def _record(config: Mapping[str, Any], codec: HeatmapCodec, crop_bgr: np.ndarray, center, scale,
            keypoints_image: np.ndarray, keypoints_crop: np.ndarray, visibility: np.ndarray, *,
            image_id: int, image_size: Sequence[int], annotation_id: int, area: float) -> Dict[str, Any]:
    heatmaps, weights = codec.encode(keypoints_crop, visibility)
    in_h, in_w = codec.input_size
    return {
        "dataset": config["dataset"],
        "image/encoded": _encode_jpeg(crop_bgr, config["data"].get("jpeg_quality", 95)),
        "image/format": "jpeg",
        "image/id": int(image_id),
        "image/height": int(image_size[0]),
        "image/width": int(image_size[1]),
        "annotation/id": int(annotation_id),
        "crop/height": in_h,
        "crop/width": in_w,
        "bbox/center": np.asarray(center, np.float32),
        "bbox/scale": np.asarray(scale, np.float32),
        "bbox/score": 1.0,
        "person/area": float(area),
        "keypoints/crop": np.asarray(keypoints_crop, np.float32),
        "keypoints/image": np.asarray(keypoints_image, np.float32),
        "keypoints/visibility": np.asarray(visibility, np.int64),
        "heatmaps/encoded": heatmaps.astype(np.float32),
        "heatmap/height": codec.heatmap_size[0],
        "heatmap/width": codec.heatmap_size[1],
        "target_weight": weights.astype(np.float32),
    }


def coco_person_records(annotation_file: str, image_dir: str, config: Mapping[str, Any], codec: HeatmapCodec,
                        limit: int | None = None, min_keypoints: int = 1) -> List[Dict[str, Any]]:
    """Person-crop records of the non-crowd COCO annotations with >= ``min_keypoints`` labelled joints.

    Returns:
        Record dicts for :func:`schemas.features.build_example`, in annotation order.
    """
    with open(annotation_file, encoding="utf-8") as handle:
        coco = json.load(handle)
    images = {image["id"]: image for image in coco["images"]}
    in_h, in_w = codec.input_size
    padding = float(config["data"].get("padding", coordinates.PADDING))
    records: List[Dict[str, Any]] = []
    cache: Dict[int, np.ndarray] = {}
    for annotation in coco["annotations"]:
        if annotation.get("iscrowd") or annotation.get("num_keypoints", 0) < min_keypoints:
            continue
        x, y, w, h = annotation["bbox"]
        if w < 1 or h < 1:
            continue
        info = images[annotation["image_id"]]
        if info["id"] not in cache:
            image = cv2.imread(os.path.join(image_dir, info["file_name"]), cv2.IMREAD_COLOR)
            if image is None:
                raise FileNotFoundError(f"cannot read image {info['file_name']} in {image_dir}")
            cache[info["id"]] = image
        image = cache[info["id"]]
        center, scale = coordinates.box_to_center_scale(np.array([x, y, w, h]), in_w / in_h, padding)
        matrix = coordinates.crop_affine(center, scale, (in_h, in_w))
        crop = coordinates.warp_image(image, matrix, (in_h, in_w))
        raw = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        keypoints_image, visibility = raw[:, :2], raw[:, 2].astype(np.int64)
        keypoints_crop = coordinates.apply_affine(keypoints_image, matrix)
        keypoints_crop[visibility == 0] = 0.0
        records.append(_record(config, codec, crop, center, scale, keypoints_image, keypoints_crop, visibility,
                               image_id=info["id"], image_size=(info["height"], info["width"]),
                               annotation_id=annotation["id"], area=annotation["area"]))
        if limit is not None and len(records) >= limit:
            break
    return records


def synthetic_records(config: Mapping[str, Any], codec: HeatmapCodec, num_records: int,
                      seed: int = 0) -> List[Dict[str, Any]]:
    """Random person crops: noise images with a bright disc at each labelled joint.

    About 15% of the joints are unlabelled (visibility 0, keypoint (0, 0)).
    """
    rng = np.random.default_rng(seed)
    num_joints = get_schema(config["dataset"]).num_joints
    in_h, in_w = codec.input_size
    records = []
    for index in range(num_records):
        keypoints = rng.uniform([0.1 * in_w, 0.05 * in_h], [0.9 * in_w, 0.95 * in_h], size=(num_joints, 2))
        visibility = rng.choice([0, 1, 2], size=num_joints, p=[0.15, 0.15, 0.7]).astype(np.int64)
        keypoints[visibility == 0] = 0.0
        image = rng.integers(0, 60, size=(in_h, in_w, 3), dtype=np.uint8)
        for (x, y), flag in zip(keypoints, visibility):
            if flag:
                cv2.circle(image, (int(round(x)), int(round(y))), max(1, in_w // 24), (255, 255, 255), -1)
        center = np.array([200.0 + index, 150.0])
        scale = np.array([in_w * 2.0, in_h * 2.0])
        keypoints_image = coordinates.crop_to_image(keypoints[None], center, scale, (in_h, in_w))[0]
        records.append(_record(config, codec, image, center, scale, keypoints_image, keypoints, visibility,
                               image_id=index, image_size=(600, 800), annotation_id=index, area=1000.0))
    return records


def write_split(records: Sequence[Mapping[str, Any]], out_dir: str, split: str = "train",
                num_shards: int = 2) -> List[str]:
    """Writes records round-robin into ``<out_dir>/Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz``.

    Returns:
        The shard paths, sorted.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    split_dir = examples_layout.split_dir(os.fspath(out_dir), split)
    os.makedirs(split_dir, exist_ok=True)
    paths = [examples_layout.shard_path(os.fspath(out_dir), split, shard, num_shards)
             for shard in range(num_shards)]
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [tf.io.TFRecordWriter(path, options) for path in paths]
    try:
        for index, record in enumerate(records):
            writers[index % num_shards].write(features.build_example(record).SerializeToString())
    finally:
        for writer in writers:
            writer.close()
    return paths
