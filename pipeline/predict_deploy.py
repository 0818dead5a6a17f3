"""``pipeline.predict --model <model.tflite | model.onnx>``: a deployment artifact in place of the SavedModel.

:class:`DeployModel` has the interface of :class:`pipeline.predict.ServingModel` (one image's encoded bytes and
its (N, 4) boxes in, ``keypoints`` (N, K, 2) image pixels, ``scores`` (N, K) and ``box_status`` (N,) out), so
``pipeline.predict``'s boxes, skips, rescoring / OKS-NMS, results file and overlays are the same code for both.
What the SavedModel's ``predict_image`` graph does (:mod:`trainer.export`) is done here with the same rules:

* the image decoded by ExampleGen's rule (:func:`pose.images.decode_image_tf`, the graph's decoder);
* the box rule :func:`pose.coordinates.clip_boxes` (NumPy twin of the graph's ``clip_boxes_tf``; boxes are
  clipped for every dataset but MPII, as the export does: ``clip_boxes`` in ``deploy.json``), the crop window
  :func:`pose.coordinates.box_to_center_scale` with the artifact's ``padding`` and aspect ratio, the crop
  affine :func:`pose.coordinates.crop_affine`;
* the bilinear warp :func:`pose.coordinates.warp_images_tf`, the very op of the graph, so the artifact sees
  the SavedModel's crop pixels;
* the artifact itself (:class:`components.deploy_runtime.DeployRunner`: LiteRT or ONNX Runtime; flip test and
  DARK are inside it) on the valid boxes' crops, one batch per image;
* its ``keypoints_crop`` back to image pixels with the inverse affine (:func:`pose.coordinates.apply_affine`,
  float64); invalid boxes get zeros, as the graph's ``scatter_nd``.

The keypoint schema is the one the artifact carries (``dataset_meta`` in ``deploy.json``), checked against
``--config`` / ``--dataset-meta`` when given; an artifact without ``deploy.json`` needs them (or is matched by
its joint count among COCO and MPII).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Dict, Tuple

import numpy as np

SUFFIXES = (".tflite", ".onnx")


def is_artifact(path: str) -> bool:
    """Whether ``--model`` names a deployment artifact file (``.tflite`` / ``.onnx``)."""
    return str(path).lower().endswith(SUFFIXES)


@dataclasses.dataclass
class DeployModel:
    """A loaded artifact with the crop rule of the export it came from (see the module docstring).

    Attributes:
        path: the artifact file.
        runner: its :class:`components.deploy_runtime.DeployRunner`.
        num_joints: K.
        input_size: (height, width) of the crops.
        schema: the keypoint schema (:mod:`schemas.dataset_meta`).
        padding: box padding of the crop window (``data.padding`` of the export).
        clip_boxes: boxes are clipped to the image before the window is made (all datasets but MPII).
    """

    box_free: ClassVar[bool] = False
    path: str
    runner: Any
    num_joints: int
    input_size: Tuple[int, int]
    schema: Any
    padding: float
    clip_boxes: bool

    def __call__(self, image_bytes: bytes, boxes: np.ndarray) -> Dict[str, np.ndarray]:
        """One image and its (N, 4) ``[x, y, w, h]`` boxes -> ``keypoints`` (N, K, 2) image pixels,
        ``scores`` (N, K), ``box_status`` (N,) int32 (:data:`pose.coordinates.BOX_STATUS`).

        Raises:
            tensorflow.errors.InvalidArgumentError: the bytes are not a JPEG / PNG (as ``predict_image``).
        """
        import tensorflow as tf

        from pose import coordinates
        from pose.images import decode_image_tf
        from schemas import serving

        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        image = tf.cast(decode_image_tf(tf.constant(image_bytes, tf.string)), tf.float32)
        height, width = int(image.shape[0]), int(image.shape[1])
        clipped, status = coordinates.clip_boxes(boxes, width, height)
        valid = status == coordinates.BOX_VALID
        keypoints = np.zeros([len(boxes), self.num_joints, 2], np.float32)
        scores = np.zeros([len(boxes), self.num_joints], np.float32)
        if valid.any():
            windows = (clipped if self.clip_boxes else boxes.astype(np.float64))[valid]
            in_h, in_w = self.input_size
            center, scale = coordinates.box_to_center_scale(windows, in_w / in_h, self.padding)
            matrix = coordinates.crop_affine(center, scale, self.input_size)                   # (M, 2, 3)
            crops = np.concatenate([coordinates.warp_images_tf(image[None], tf.constant(m[None], tf.float32),
                                                               self.input_size).numpy() for m in matrix])
            outputs = self.runner.run(crops)
            keypoints[valid] = coordinates.apply_affine(outputs[serving.OUTPUT_KEYPOINTS_CROP],
                                                        coordinates.invert_affine(matrix))
            scores[valid] = outputs[serving.OUTPUT_SCORES]
        return {serving.OUTPUT_KEYPOINTS: keypoints, serving.OUTPUT_SCORES: scores,
                serving.OUTPUT_BOX_STATUS: status}


def load(path: str, dataset: Any = None, padding: float | None = None, threads: int | None = None) -> DeployModel:
    """Loads ``model.tflite`` / ``model.onnx`` (its ``deploy.json`` beside it gives sizes, padding and layout).

    Args:
        path: the artifact file (local).
        dataset: a :class:`~schemas.dataset_meta.KeypointSchema` from ``--config`` / ``--dataset-meta`` (or None).
        padding: the config's ``data.padding``, used when the artifact has no ``deploy.json`` entry for it.
        threads: runtime CPU threads (None: the runtime's default).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the artifact breaks the deployment contract, its joint count differs from ``dataset``'s,
            or (no spec) the input size or layout cannot be told.
    """
    from components.deploy_runtime import DeployArtifactError, DeployRunner
    from pose.config import DEFAULTS
    from schemas import dataset_meta
    from schemas.keypoints import COCO, MPII

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model {path}: no such artifact file")
    try:
        runner = DeployRunner(path, threads=threads)
    except DeployArtifactError as error:
        raise ValueError(f"--model {error}") from error
    spec = runner.spec
    if "input_size" not in spec:
        raise ValueError(f"--model {path}: no deploy.json beside it (written by trainer.export_deploy); its input "
                         "size and crop rule are unknown")
    joints = int(spec["outputs"][0]["shape"][1])
    expected = dataset_meta.as_schema(dataset) if dataset is not None else None
    carried = dataset_meta.from_mapping(spec["dataset_meta"], f"{path} deploy.json") if spec.get("dataset_meta") else None
    if carried is not None and expected is not None and carried.hash != expected.hash:
        raise ValueError(f"--model {path}: the artifact carries the dataset meta {carried.name!r} "
                         f"({carried.num_joints} joints) but --config / --dataset-meta give {expected.name!r}")
    schema = carried or expected
    if schema is None:
        name = spec.get("dataset")
        matching = ([dataset_meta.bundled(name)] if name in dataset_meta.BUNDLED
                    else [s for s in (COCO, MPII) if s.num_joints == joints])
        if len(matching) != 1:
            raise ValueError(f"--model {path}: the artifact predicts {joints} joints and names no known layout; "
                             "pass --config or --dataset-meta")
        schema = matching[0]
    if schema.num_joints != joints:
        raise ValueError(f"--model {path}: the artifact predicts {joints} joints but the layout {schema.name!r} "
                         f"has {schema.num_joints}")
    if "padding" in spec:
        padding = float(spec["padding"])
    elif padding is None:
        padding = float(DEFAULTS["data"]["padding"])
    clip = bool(spec.get("clip_boxes", spec.get("dataset") != "mpii"))
    return DeployModel(path, runner, joints, tuple(int(v) for v in spec["input_size"]), schema, padding, clip)
