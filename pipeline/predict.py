"""Run an exported pose model on your own images or a video: COCO keypoint results and skeleton overlays.

Command line::

    python -m pipeline.predict --model <model dir | SavedModel dir | push destination | pushed version
                                       | model.tflite | model.onnx> \\
        --images <folder | image file | video file> [--det-file <COCO detections json>] \\
        [--det-score-threshold T] [--detector <SavedModel dir>] [--smooth] \\
        [--config <yaml>] [--draw-threshold 0.2] --out <dir>

A LiteRT or ONNX deployment artifact (``--model .../model.tflite | model.onnx``, :mod:`trainer.export_deploy`)
runs through :mod:`pipeline.predict_deploy` with the same box rule, crop and rescoring, so the results file
and overlays are the SavedModel's within the artifact's accuracy. Otherwise every prediction comes from the
SavedModel's ``predict_image`` signature
(:mod:`schemas.serving`; box rule, crop, flip test and DARK decoding in the
graph), called once per image with all of that image's boxes; nothing is
decoded in Python. A bottom-up model's ``predict_image`` takes the image
alone and returns the people it finds (:mod:`pipeline.predict_bottom_up`;
no boxes). ``--detector`` runs a person detector SavedModel in the TF Object
Detection API convention on each image and gives its boxes to a top-down
model (:mod:`pipeline.detector`). The people of a video's frames get track
ids (:mod:`pipeline.predict_tracks`: :mod:`pose.tracking`, and with
``--smooth`` One-Euro smoothing, :mod:`pose.smoothing`). What it writes into
``--out``:

* ``keypoint_results.json``: COCO keypoint results
  (``[{image_id, category_id: 1, keypoints: [x, y, s] * K, score}]``, strict
  JSON, :mod:`schemas.jsonio`), ``s`` the joint score (heatmap maximum) and
  ``score`` the evaluator's pose score: box score x mean of the joint scores
  above ``eval.rescore_threshold``, then per-image OKS-NMS
  (``eval.oks_nms_threshold``, ``eval.soft_nms``) for COCO models, i.e.
  :func:`components.metrics_coco.persons_to_results`, the function behind the
  Evaluator's and ``pipeline.score``'s results files. MPII models (16 joints, no
  OKS sigmas) get :func:`components.metrics_coco.rescore` without NMS.
* ``overlays/<relative path>``: each image with the skeletons of its results
  drawn (:func:`pose.draw.draw_poses`; joints scored below ``--draw-threshold``
  are not drawn), same size as the original, JPEG for JPEG inputs and PNG for
  PNG inputs. For a video: ``<video stem>_pose.mp4`` (OpenCV ``mp4v``, the
  source's frame rate and size), one annotated frame per input frame (skeletons
  coloured by track, :mod:`pose.draw_tracks`), and ``image_id`` = frame index
  (0-based) and ``track_id`` in the results.
* ``predict_summary.json``: counts (images, people, skips by reason, boxes left
  out by the selection rules), every skip with its file and entry, the image
  id of every file, the model and the settings used; for a video its frame
  rate, frame count, frames read, unreadable and dropped, and the tracks.

Boxes. Without ``--det-file`` each image is one box, the whole image
``[0, 0, W, H]`` with box score 1. With one, the boxes come from a COCO
detection results file (``[{image_id, category_id, bbox: [x, y, w, h], score}]``)
under ExampleGen's rules (:func:`components.ingest_core.load_coco` with a
det file): category 1 only (others counted as ``not_person``), ``score >=``
the threshold (``--det-score-threshold``, else ``data.det_score_threshold`` of
``--config``, 0.0 by default: the evaluation protocol; use 0.5 or so to look
at the overlays), a non-number ``score`` / ``bbox`` or a missing key is
``malformed_annotation``, an unknown image is ``unknown_image``; boxes that
fail the serving box rule (NaN, ``w <= 0``, outside the image) are counted
with the signature's ``box_status`` name (``invalid_box``,
``box_outside_image``). Every skip names the detection entry (0-based index)
and the file.

Image ids (how detections find their image). A file's image id is the integer
of its file stem when the stem is all digits (COCO's ``000000000785.jpg`` ->
785, MPII's ``052475643.jpg`` -> 52475643), otherwise the CRC32 of its path
relative to ``--images`` (:func:`components.ingest_core.mpii_image_id`, the
rule ExampleGen uses for MPII). A detection entry that has a ``file_name``
(a string, the path relative to ``--images``) is matched by that name, and
its results carry the file's image id; otherwise its ``image_id`` (an
integer) is matched against the files' ids. Two files with the same id stop
the run before any work (the message names both). The folder is read
recursively, hidden files and folders excluded, in sorted order; every file is
tried (JPEG and PNG by their magic bytes, :mod:`pose.images`), others are
counted skips.

Images are decoded by :mod:`pose.images`' rule (the Pillow half for the
overlay and the size, the same pixels the graph decodes); a missing,
corrupt, unsupported or too large image (``data.max_image_pixels``) is a
counted skip naming the file. Video frames are read with OpenCV and passed
to ``predict_image`` as lossless PNGs, so the graph sees the frame's pixels.

Atomicity: everything is written into ``<out>/.predict-*`` and moved into
place at the end, ``keypoint_results.json`` last; a run that fails or is
interrupted leaves the previous outputs (or none), never a partial set.
A run in which no image could be read writes nothing and exits with 2.

Exit status: 0 done (skips are reported, not errors), 2 bad arguments or
inputs (no model at ``--model``, unreadable det file, no readable image) or
any other failure (:func:`toolkit.cli.run`).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
from collections import Counter
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from pipeline import predict_bottom_up
from schemas.dataset_meta import BUNDLED
from toolkit import cli

RESULTS_FILE = "keypoint_results.json"
SUMMARY_FILE = "predict_summary.json"
OVERLAY_DIR = "overlays"
VIDEO_SUFFIX = "_pose.mp4"
STAGING_PREFIX = ".predict-"
VIDEO_FOURCC = "mp4v"
DEFAULT_FPS = 25.0
"""Frame rate of the annotated video when the source does not report one."""

SKIP_NON_FINITE = "non_finite_prediction"
"""A valid box whose keypoints or scores came back NaN/infinite (the Evaluator's reason name)."""
SKIP_MODEL_ERROR = "model_error"
"""``predict_image`` rejected an image that the Pillow half decoded (should not happen: the twins agree)."""

_FORMAT_EXTENSIONS = {"jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"), "png": (".png",)}


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

def resolve_model(path: str) -> Tuple[str, str]:
    """The SavedModel directory a user means by ``path``, and how it was found.

    Accepted, in this order:

    * a Trainer model dir (or TFX Model artifact): ``<path>/Format-Serving/saved_model.pb``;
    * a SavedModel dir: ``<path>/saved_model.pb`` (a pushed version ``<destination>/<version>``
      of either Pusher layout). A version of our Pusher that has ``push_record.json`` but no
      ``PUSH_COMPLETE`` marker is a push cut short and is refused;
    * a push destination: its newest blessed, completely pushed version, ours or TFX's
      ``<unix time>/`` (:func:`components.pusher.latest_blessed_version`, the rule of
      ``pipeline.gate --baseline auto``).

    Args:
        path: local or ``gs://`` path.

    Returns:
        ``(saved_model_dir, description)``.

    Raises:
        FileNotFoundError: none of the above (the message lists what was looked for).
        ValueError: ``path`` is an uncommitted push.
    """
    import tensorflow as tf

    from components import pusher
    from schemas.serving import SAVED_MODEL_DIR

    path = path.rstrip("/") or path
    if tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_DIR, "saved_model.pb")):
        return os.path.join(path, SAVED_MODEL_DIR), "model dir"
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        if (tf.io.gfile.exists(os.path.join(path, pusher.PUSH_RECORD))
                and not tf.io.gfile.exists(os.path.join(path, pusher.COMMIT_MARKER))):
            raise ValueError(f"--model {path}: a push that did not complete (no {pusher.COMMIT_MARKER}); "
                             "use a committed version")
        return path, "SavedModel dir"
    if tf.io.gfile.isdir(path):
        latest = pusher.latest_blessed_version(path)
        if latest is not None:
            return latest, f"newest pushed version of {path}"
    raise FileNotFoundError(
        f"--model {path}: no SavedModel found: looked for {SAVED_MODEL_DIR}/saved_model.pb (a Trainer model "
        f"dir), saved_model.pb (a SavedModel or pushed version) and committed versions <N>/ or TFX <unix time>/ "
        f"(a push destination)")


@dataclasses.dataclass
class ServingModel:
    """The loaded ``predict_image`` signature and what the SavedModel tells about the model.

    Attributes:
        path: SavedModel directory.
        predict_image: the signature, ``(image=() string, boxes=(N, 4) float32) -> dict``.
        num_joints: K, from the signature's ``keypoints`` output (N, K, 2).
        input_size: (height, width) of the model input, from the ``heatmaps`` signature.
        schema: the keypoint schema with K joints (:mod:`schemas.keypoints`: 17 COCO, 16 MPII).
    """

    box_free: ClassVar[bool] = False    # a top-down model: boxes in (pipeline.predict_bottom_up: True)
    path: str
    predict_image: Callable[..., Mapping[str, Any]]
    num_joints: int
    input_size: Tuple[int, int]
    schema: Any
    _loaded: Any = None

    def __call__(self, image_bytes: bytes, boxes: np.ndarray) -> Dict[str, np.ndarray]:
        """One image and its (N, 4) boxes -> ``keypoints`` (N, K, 2), ``scores`` (N, K), ``box_status`` (N,)."""
        import tensorflow as tf

        from schemas import serving

        outputs = self.predict_image(**{serving.INPUT_IMAGE: tf.constant(image_bytes, tf.string),
                                        serving.INPUT_BOXES: tf.constant(np.asarray(boxes, np.float32).reshape(-1, 4))})
        return {serving.OUTPUT_KEYPOINTS: outputs[serving.OUTPUT_KEYPOINTS].numpy(),
                serving.OUTPUT_SCORES: outputs[serving.OUTPUT_SCORES].numpy(),
                serving.OUTPUT_BOX_STATUS: outputs[serving.OUTPUT_BOX_STATUS].numpy()}


def load_model(saved_model_dir: str, dataset: Any = None) -> ServingModel:
    """Loads a SavedModel (TF2 loader) and reads K and the input size from its signatures.

    An export carries its dataset meta (``assets.extra/dataset_meta.json``,
    :func:`schemas.dataset_meta.read_serving_meta`): its names and skeleton are drawn.
    An older export without one is matched by its joint count (COCO 17, MPII 16).
    ``dataset`` (a :class:`~schemas.dataset_meta.KeypointSchema` from ``--config`` /
    ``--dataset-meta``, or a bundled name) must agree with it; for an export without a
    meta it names the layout to draw.

    A bottom-up model (``predict_image`` without ``boxes``) gives a
    :class:`pipeline.predict_bottom_up.BottomUpModel` (``box_free``).

    Raises:
        ValueError: no ``predict_image`` / ``heatmaps`` signature, no schema with K joints, or
            ``dataset`` has another joint count.
    """
    import tensorflow as tf

    from schemas import serving

    loaded = tf.saved_model.load(saved_model_dir)
    missing = [name for name in (serving.PREDICT_IMAGE, serving.HEATMAPS) if name not in loaded.signatures]
    if missing:
        raise ValueError(f"{saved_model_dir}: the SavedModel has no {missing} signature(s) "
                         f"(has {sorted(loaded.signatures)}); export it with trainer/export.py")
    signature = loaded.signatures[serving.PREDICT_IMAGE]

    def schema_for(num_joints: int):
        return _schema_for(saved_model_dir, num_joints, dataset)

    if predict_bottom_up.is_bottom_up(signature):
        return predict_bottom_up.load(loaded, saved_model_dir, schema_for)
    num_joints = signature.structured_outputs[serving.OUTPUT_KEYPOINTS].shape[1]
    crops = loaded.signatures[serving.HEATMAPS].structured_input_signature[1][serving.INPUT_IMAGES]
    input_size = tuple(int(v) for v in crops.shape[1:3])
    return ServingModel(saved_model_dir, signature, int(num_joints), input_size, schema_for(num_joints), loaded)


def _schema_for(saved_model_dir: str, num_joints: int, dataset: str | None):
    """The keypoint schema of a model with ``num_joints`` joints; ``dataset`` (the config's) must agree.

    The export's own dataset meta (``assets.extra/dataset_meta.json``) when it carries one; an older
    export without one is matched by its joint count among COCO (17) and MPII (16).

    Raises:
        ValueError: the carried meta or ``dataset`` has another joint count, or no single schema has K joints.
    """
    from schemas import dataset_meta
    from schemas.keypoints import COCO, MPII

    carried = dataset_meta.read_serving_meta(saved_model_dir)  # the export's own meta (skeleton, names)
    expected = dataset_meta.as_schema(dataset) if dataset is not None else None
    if carried is not None and expected is not None and expected.hash != carried.hash:
        raise ValueError(f"{saved_model_dir}: the model carries the dataset meta {carried.name!r} "
                         f"({carried.num_joints} joints) but --config / --dataset-meta give {expected.name!r} "
                         f"({expected.num_joints} joints); leave them out to use the model's own")
    if carried is not None:
        schema = carried
        if schema.num_joints != num_joints:
            raise ValueError(f"{saved_model_dir}: the model predicts {num_joints} joints but its dataset meta "
                             f"{schema.name!r} has {schema.num_joints}")
    elif expected is not None:
        schema = expected
        if schema.num_joints != num_joints:
            raise ValueError(f"{saved_model_dir}: the model predicts {num_joints} joints but the config's "
                             f"dataset {schema.name!r} has {schema.num_joints}")
    else:
        matching = [schema for schema in (COCO, MPII) if schema.num_joints == num_joints]  # exports without a meta
        if len(matching) != 1:
            raise ValueError(f"{saved_model_dir}: the model predicts {num_joints} joints and carries no dataset "
                             f"meta; no single keypoint schema has that many ({ {s.name: s.num_joints for s in (COCO, MPII)} })")
        schema = matching[0]
    return schema


# --------------------------------------------------------------------------
# Inputs: image files, video frames, detections
# --------------------------------------------------------------------------

def image_id_of(relative_path: str) -> int:
    """A file's image id: the numeric file stem, else the CRC32 of ``relative_path``
    (:func:`components.ingest_core.mpii_image_id`)."""
    from components.ingest_core import mpii_image_id

    return mpii_image_id(relative_path)


def list_images(folder: str, exclude: str | None = None) -> List[Tuple[str, str, int]]:
    """The files of ``folder`` (recursive, hidden ones excluded, sorted): ``(relative path, path, image id)``.

    ``exclude``: a folder left out (``--out`` when it lies inside ``--images``).

    Raises:
        ValueError: two files get the same image id (both named).
    """
    found = []
    excluded = os.path.realpath(exclude) if exclude else None
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith(".")
                                   and os.path.realpath(os.path.join(directory, d)) != excluded)
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, folder).replace(os.sep, "/")
            found.append((relative, path, image_id_of(relative)))
    found.sort()
    seen: Dict[int, str] = {}
    for relative, _, image_id in found:
        if image_id in seen:
            raise ValueError(f"--images {folder}: {seen[image_id]} and {relative} both get image id {image_id} "
                             "(numeric file stem, else CRC32 of the path); rename one")
        seen[image_id] = relative
    return found


def _number(value: Any) -> float:
    """float(value) for real numbers (bool and strings excluded), as ExampleGen reads detections."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


@dataclasses.dataclass
class Detections:
    """Parsed detection boxes, by image id and by file name.

    Attributes:
        by_id: image id -> list of ``(entry index, box [x, y, w, h], score)``.
        by_name: ``file_name`` -> the same, for entries that name their file.
        selection: boxes left out by the selection rules, ``{reason: n}``.
        skips: malformed entries, ``[{reason, detection_entry, ...}]``.
    """

    by_id: Dict[int, List[Tuple[int, List[float], float]]]
    by_name: Dict[str, List[Tuple[int, List[float], float]]]
    selection: Dict[str, int]
    skips: List[Dict[str, Any]]
    total: int


def load_detections(det_file: str, threshold: float) -> Detections:
    """Reads a COCO detection results file under ExampleGen's selection rules (module docstring).

    Raises:
        ValueError: the file is missing, not JSON, or not a list (the message names it).
    """
    from components import ingest_core

    data, _ = ingest_core.load_json(det_file, "detection results")   # InputError (a ValueError) names the file
    if not isinstance(data, list):
        raise ValueError(f"{det_file}: expected a list of detections, got {type(data).__name__}")
    by_id: Dict[int, list] = {}
    by_name: Dict[str, list] = {}
    selection: Counter = Counter()
    skips = []
    for position, det in enumerate(data):
        try:
            if not isinstance(det, dict):
                raise TypeError("not an object")
            file_name = det.get("file_name")
            if file_name is not None and not isinstance(file_name, str):
                raise TypeError("file_name is not a string")
            image_id = None if file_name is not None else int(_number(det["image_id"]))
            category = int(_number(det.get("category_id", ingest_core.PERSON_CATEGORY_ID)))
            score = _number(det["score"])
            box = [_number(v) for v in det["bbox"]]
            if len(box) != 4:
                raise ValueError("bbox must have 4 numbers")
        except (KeyError, TypeError, ValueError) as error:
            detail = f"missing key {error.args[0]!r}" if isinstance(error, KeyError) else str(error)
            skips.append({"reason": ingest_core.SKIP_MALFORMED, "detection_entry": position, "detail": detail})
            continue
        if category != ingest_core.PERSON_CATEGORY_ID:
            selection[ingest_core.SKIP_NOT_PERSON] += 1
            continue
        if not score >= threshold:   # NaN scores too, as in ExampleGen
            selection[ingest_core.SKIP_DET_SCORE] += 1
            continue
        target = by_name.setdefault(file_name, []) if file_name is not None else by_id.setdefault(image_id, [])
        target.append((position, box, score))
    return Detections(by_id, by_name, dict(sorted(selection.items())), skips, len(data))


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------

def image_results(model: ServingModel, image_id: int, outputs: Mapping[str, np.ndarray], keep: np.ndarray,
                  boxes: np.ndarray, box_scores: np.ndarray, image_size: Tuple[int, int],
                  eval_config: Mapping[str, Any], padding: float) -> List[Dict[str, Any]]:
    """COCO results of one image from ``predict_image``'s outputs, scored as the Evaluator scores them.

    COCO: :func:`components.metrics_coco.persons_to_results` (rescoring + per-image OKS-NMS;
    the NMS areas are the crop windows, ``w * h`` of the clipped box padded to the input aspect
    ratio, the Evaluator's ``window_area``). MPII: :func:`components.metrics_coco.rescore`, no NMS.

    Args:
        outputs: ``keypoints`` (N, K, 2), ``scores`` (N, K) of ``predict_image``.
        keep: (N,) bool, the boxes to report (valid, finite predictions).
        boxes: (N, 4) the boxes sent; box_scores: (N,) their detector scores.
        image_size: (height, width) of the image.
        eval_config: the config's ``eval`` section (``rescore_threshold``, ``oks_nms_threshold``, ``soft_nms``).
        padding: ``data.padding`` (window size for the NMS areas).

    Returns:
        results in :func:`components.metrics_coco.result_sort_key` order.
    """
    from components import metrics_coco
    from pose import coordinates
    from schemas import serving

    keep = np.asarray(keep, bool)
    if not keep.any():
        return []
    keypoints = outputs[serving.OUTPUT_KEYPOINTS][keep].astype(np.float64)
    scores = outputs[serving.OUTPUT_SCORES][keep].astype(np.float64)
    box_scores = np.asarray(box_scores, np.float64)[keep]
    rescore_threshold = float(eval_config["rescore_threshold"])
    if model.schema.oks_sigmas is None:
        pose_scores = metrics_coco.rescore(scores, box_scores, rescore_threshold)
        triplets = np.concatenate([keypoints, scores[..., None]], axis=-1).reshape(len(scores), -1)
        results = [{"image_id": int(image_id), "category_id": 1, "keypoints": [float(v) for v in row],
                    "score": float(score)} for row, score in zip(triplets, pose_scores)]
        return sorted(results, key=metrics_coco.result_sort_key)
    height, width = model.input_size
    clipped, _ = coordinates.clip_boxes(np.asarray(boxes, np.float64)[keep], image_size[1], image_size[0])
    _, scale = coordinates.box_to_center_scale(clipped, width / height, padding)
    areas = scale[:, 0] * scale[:, 1]
    persons = [{"image_id": int(image_id), "keypoints": keypoints[i], "keypoint_scores": scores[i],
                "box_score": float(box_scores[i]), "area": float(areas[i])} for i in range(len(scores))]
    nms = eval_config.get("oks_nms_threshold")
    return metrics_coco.persons_to_results(persons, rescore_threshold=rescore_threshold,
                                           nms_threshold=None if nms is None else float(nms),
                                           soft_nms=bool(eval_config.get("soft_nms", False)),
                                           sigmas=model.schema.sigmas())


def results_arrays(results: Sequence[Mapping[str, Any]], num_joints: int) -> Tuple[np.ndarray, np.ndarray]:
    """COCO results -> ``(keypoints (N, K, 2), scores (N, K))`` for drawing."""
    if not results:
        return np.zeros([0, num_joints, 2]), np.zeros([0, num_joints])
    triplets = np.asarray([r["keypoints"] for r in results], np.float64).reshape(len(results), num_joints, 3)
    return triplets[..., :2], triplets[..., 2]


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------

class _Counter:
    """A plain stderr counter, used when tqdm is not installed."""

    def __init__(self, total: int | None, unit: str):
        self.count, self.total, self.unit = 0, total, unit

    def update(self, step: int = 1) -> None:
        self.count += step
        if self.count == 1 or self.count % 10 == 0 or self.count == self.total:
            total = f"/{self.total}" if self.total else ""
            print(f"\rpredict: {self.count}{total} {self.unit}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.count:
            print(file=sys.stderr, flush=True)


def progress(total: int | None, unit: str):
    """A progress bar on stderr: tqdm's when it is installed, else a counter line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Counter(total, unit)
    return tqdm(total=total or None, unit=f" {unit}", desc="predict", file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

@dataclasses.dataclass
class _Frame:
    """One image to run: its name (for messages and the overlay), id, encoded bytes and RGB pixels."""

    name: str
    image_id: int
    data: bytes
    pixels: np.ndarray
    image_format: str


class _Run:
    """State of one predict run: the model, the boxes, counters, the staging folder."""

    def __init__(self, model: ServingModel, detections: Detections | None, eval_config: Mapping[str, Any],
                 padding: float, draw_threshold: float, staging: str, detector: Any = None):
        self.model, self.detections, self.eval_config = model, detections, eval_config
        self.padding, self.draw_threshold, self.staging = padding, draw_threshold, staging
        self.detector = detector                   # pipeline.detector.Detector or None
        self.tracks = None                         # pipeline.predict_tracks.VideoTracks for a video
        self.detector_selection: Counter = Counter()
        self.detector_boxes = 0
        self.results: List[Dict[str, Any]] = []
        self.skips: List[Dict[str, Any]] = list(detections.skips) if detections else []
        self.images = 0
        self.without_boxes = 0
        self.seen_ids: set = set()
        self.seen_names: set = set()

    def boxes_for(self, frame: _Frame) -> Tuple[np.ndarray, np.ndarray, List[int | None]]:
        """(N, 4) float32 boxes, (N,) box scores and the detection entry of each box, for one image."""
        if self.detector is not None:
            boxes, scores, left_out = self.detector(frame.pixels, frame.data)
            self.detector_selection.update(left_out)
            self.detector_boxes += len(boxes) + sum(left_out.values())
            with np.errstate(over="ignore"):
                return boxes.astype(np.float32), scores, [None] * len(boxes)
        if self.detections is None:
            height, width = frame.pixels.shape[:2]
            return np.array([[0.0, 0.0, width, height]], np.float32), np.ones(1), [None]
        entries = (self.detections.by_id.get(frame.image_id, [])
                   + self.detections.by_name.get(frame.name, []))
        entries.sort(key=lambda entry: entry[0])
        boxes = np.asarray([box for _, box, _ in entries], np.float64).reshape(-1, 4)
        # float64 -> float32 for the signature: a finite box that overflows float32 becomes inf and
        # is then an invalid_box, as it would be in the graph.
        with np.errstate(over="ignore"):
            boxes = boxes.astype(np.float32)
        return boxes, np.asarray([score for _, _, score in entries], np.float64), [e[0] for e in entries]

    def run_frame(self, frame: _Frame) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        """Predicts one image; returns its overlay (RGB) and its results (with ``track_id`` in a video)."""
        import tensorflow as tf

        from pose import draw, draw_tracks

        self.seen_ids.add(frame.image_id)
        self.seen_names.add(frame.name)
        try:
            results = self._box_free_results(frame) if self.model.box_free else self._top_down_results(frame)
        except tf.errors.InvalidArgumentError as error:
            self.skips.append({"reason": SKIP_MODEL_ERROR, "file": frame.name, "image_id": frame.image_id,
                               "detail": " ".join(error.message.split())[:300]})
            return None, []
        self.results.extend(results)
        keypoints, scores = results_arrays(results, self.model.num_joints)
        if self.tracks is not None:
            track_ids = self.tracks.update(results)
            keypoints, _ = results_arrays(results, self.model.num_joints)     # smoothed, with --smooth
            overlay = draw_tracks.draw_tracked_poses(frame.pixels, keypoints, scores, track_ids, self.model.schema,
                                                     self.draw_threshold)
        else:
            overlay = draw.draw_poses(frame.pixels, keypoints, scores, self.model.schema, self.draw_threshold)
        return overlay, results

    def _box_free_results(self, frame: _Frame) -> List[Dict[str, Any]]:
        """A bottom-up model's people of one image (:mod:`pipeline.predict_bottom_up`); non-finite ones skipped."""
        people = self.model(frame.data)
        self.images += 1
        finite = (np.all(np.isfinite(people["keypoints"]), axis=(1, 2)) & np.all(np.isfinite(people["scores"]), axis=1))
        for index in np.flatnonzero(~finite):
            self.skips.append({"reason": SKIP_NON_FINITE, "file": frame.name, "image_id": frame.image_id,
                               "person": int(index)})
        if len(finite) == 0:
            self.without_boxes += 1                # no person found
        return predict_bottom_up.image_results(self.model.schema, frame.image_id, people["keypoints"][finite],
                                               people["scores"][finite], self.eval_config)

    def _top_down_results(self, frame: _Frame) -> List[Dict[str, Any]]:
        """``predict_image`` on one image's boxes (det file, detector or the whole image); bad boxes skipped."""
        from pose import coordinates
        from schemas import serving

        boxes, box_scores, entries = self.boxes_for(frame)
        outputs = self.model(frame.data, boxes)
        self.images += 1
        if len(boxes) == 0:
            self.without_boxes += 1
        status = outputs[serving.OUTPUT_BOX_STATUS]
        valid = status == coordinates.BOX_VALID
        finite = (np.all(np.isfinite(outputs[serving.OUTPUT_KEYPOINTS]), axis=(1, 2))
                  & np.all(np.isfinite(outputs[serving.OUTPUT_SCORES]), axis=1))
        for index in np.flatnonzero(~valid | ~finite):
            reason = coordinates.BOX_STATUS[int(status[index])] if not valid[index] else SKIP_NON_FINITE
            skip = {"reason": reason, "file": frame.name, "image_id": frame.image_id, "bbox": boxes[index].tolist()}
            if entries[index] is not None:
                skip["detection_entry"] = entries[index]
            self.skips.append(skip)
        return image_results(self.model, frame.image_id, outputs, valid & finite, boxes, box_scores,
                             frame.pixels.shape[:2], self.eval_config, self.padding)

    def unmatched_detections(self) -> None:
        """Counts detections whose image was never seen as ``unknown_image`` skips."""
        from components import ingest_core

        if self.detections is None:
            return
        for image_id, entries in sorted(self.detections.by_id.items()):
            if image_id not in self.seen_ids:
                self.skips.extend({"reason": ingest_core.SKIP_UNKNOWN_IMAGE, "detection_entry": position,
                                   "image_id": image_id} for position, _, _ in entries)
        for name, entries in sorted(self.detections.by_name.items()):
            if name not in self.seen_names:
                self.skips.extend({"reason": ingest_core.SKIP_UNKNOWN_IMAGE, "detection_entry": position,
                                   "file_name": name} for position, _, _ in entries)


def _read_image_file(name: str, path: str, image_id: int, max_pixels: int) -> _Frame:
    """Reads and decodes one file by :mod:`pose.images`' rule. Raises ingest_core.ImageError."""
    from components import ingest_core
    from pose.images import sniff_format

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:   # vanished since listed, or unreadable
        raise ingest_core.ImageError(ingest_core.SKIP_MISSING_IMAGE, f"cannot read {path}: {error}") from None
    pixels = ingest_core.decode_image(data, max_pixels)
    return _Frame(name, image_id, data, pixels, sniff_format(data))


def _overlay_name(name: str, image_format: str, taken: set) -> str:
    """``overlays/`` path of an image: its relative path, with the format's extension added when it
    has another one (``photo`` -> ``photo.jpg``); unique."""
    stem, extension = os.path.splitext(name)
    if extension.lower() not in _FORMAT_EXTENSIONS[image_format]:
        name = name + _FORMAT_EXTENSIONS[image_format][0]
        stem, extension = os.path.splitext(name)
    candidate, counter = name, 1
    while candidate in taken:
        candidate, counter = f"{stem}-{counter}{extension}", counter + 1
    taken.add(candidate)
    return candidate


def _write_image(path: str, rgb: np.ndarray, image_format: str) -> None:
    import cv2

    os.makedirs(os.path.dirname(path), exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if image_format == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buffer = cv2.imencode(".jpg" if image_format == "jpeg" else ".png",
                              cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode the overlay {path}")
    with open(path, "wb") as handle:
        handle.write(buffer.tobytes())


def _run_folder(run: _Run, files: Sequence[Tuple[str, str, int]], max_pixels: int) -> Dict[str, Any]:
    from components import ingest_core

    taken: set = set()
    overlays = {}
    bar = progress(len(files), "images")
    try:
        for name, path, image_id in files:
            run.seen_ids.add(image_id)     # its detections belong to a known file, even if it cannot be read
            run.seen_names.add(name)
            try:
                frame = _read_image_file(name, path, image_id, max_pixels)
            except ingest_core.ImageError as error:
                skip = {"reason": error.reason, "file": name, "image_id": image_id, "detail": str(error)}
                if run.detections is not None:
                    skip["num_boxes"] = len(run.detections.by_id.get(image_id, [])
                                            + run.detections.by_name.get(name, []))
                run.skips.append(skip)
                bar.update(1)
                continue
            overlay, _ = run.run_frame(frame)
            if overlay is not None:
                overlay_name = _overlay_name(name, frame.image_format, taken)
                _write_image(os.path.join(run.staging, OVERLAY_DIR, overlay_name), overlay, frame.image_format)
                overlays[name] = f"{OVERLAY_DIR}/{overlay_name}"
            bar.update(1)
    finally:
        bar.close()
    return {"overlays": overlays}


MAX_FAILED_READS = 25
"""Failed frame reads in a row, before the container's frame count is reached, after which a video is
taken to end there (the rest counted as dropped)."""


def _video_frames(path: str) -> Tuple[Iterator[np.ndarray], Dict[str, Any]]:
    """OpenCV frames (BGR uint8) of a video and its properties. Raises ValueError when it cannot be opened.

    ``info``: ``fps`` (the container's, :data:`DEFAULT_FPS` when it reports none), ``fps_reported``
    (bool), ``frame_count`` (the container's count, 0 when unknown), and, filled while reading,
    ``frames_unreadable``: failed reads followed by a good frame (a frame that could not be decoded, skipped).
    """
    import cv2

    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"--images {path}: not a folder, and neither a JPEG/PNG image nor a video OpenCV can open")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    reported = bool(np.isfinite(fps) and fps > 0)
    info = {"fps": float(fps) if reported else DEFAULT_FPS, "fps_reported": reported,
            "frame_count": int(count) if np.isfinite(count) and count > 0 else 0, "frames_unreadable": 0}

    def frames() -> Iterator[np.ndarray]:
        read, failed = 0, 0
        try:
            while True:
                ok, frame = capture.read()
                if ok:
                    info["frames_unreadable"] += failed
                    read, failed = read + 1, 0
                    yield frame
                    continue
                failed += 1     # past the reported count, or too many in a row: the end
                if read + info["frames_unreadable"] + failed >= info["frame_count"] or failed >= MAX_FAILED_READS:
                    return
        finally:
            capture.release()

    return frames(), info


def _run_video(run: _Run, path: str, tracking: Mapping[str, Any]) -> Dict[str, Any]:
    import cv2

    from pipeline.predict_tracks import VideoTracks

    frames, info = _video_frames(path)
    run.tracks = VideoTracks(run.model.schema, info["fps"], **tracking)
    output_name = os.path.splitext(os.path.basename(path))[0] + VIDEO_SUFFIX
    writer = None
    written = 0
    bar = progress(info["frame_count"], "frames")
    try:
        for index, bgr in enumerate(frames):
            ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])   # lossless
            if not ok:
                raise RuntimeError(f"OpenCV failed to encode frame {index} of {path}")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            frame = _Frame(f"{os.path.basename(path)}#{index}", index, encoded.tobytes(), rgb, "png")
            overlay, _ = run.run_frame(frame)
            if writer is None:
                height, width = rgb.shape[:2]
                writer = cv2.VideoWriter(os.path.join(run.staging, output_name),
                                         cv2.VideoWriter_fourcc(*VIDEO_FOURCC), info["fps"], (width, height))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write an {VIDEO_FOURCC} video ({output_name})")
            writer.write(cv2.cvtColor(overlay if overlay is not None else rgb, cv2.COLOR_RGB2BGR))
            written += 1
            bar.update(1)
    finally:
        bar.close()
        if writer is not None:
            writer.release()
    if written == 0:
        raise ValueError(f"--images {path}: no frame could be read from the video "
                         f"(it reports {info['frame_count']} frames)")
    dropped = max(info["frame_count"] - written, 0)
    return {"video": output_name, "frames": written, "fps": info["fps"], "fps_reported": info["fps_reported"],
            "frame_count": info["frame_count"], "frames_unreadable": info["frames_unreadable"],
            "frames_dropped": dropped, "tracks": run.tracks.tracker.next_id,
            "smoothing": ({"filter": "one_euro", "min_cutoff_hz": run.tracks.smoother.min_cutoff,
                           "beta_per_pixel": run.tracks.smoother.beta, "d_cutoff_hz": run.tracks.smoother.d_cutoff}
                          if run.tracks.smoother is not None else None)}


def _publish(staging: str, out: str, names: Sequence[str]) -> None:
    """Moves ``names`` from ``staging`` into ``out``: the previous results first go, the new ones come last."""
    old_results = os.path.join(out, RESULTS_FILE)
    if os.path.exists(old_results):
        os.remove(old_results)   # from here on, until the new one lands, ``out`` holds no complete result set
    for name in names:
        target = os.path.join(out, name)
        if os.path.isdir(target) and not os.path.islink(target):
            trash = tempfile.mkdtemp(prefix=STAGING_PREFIX + "old-", dir=out)
            os.replace(target, os.path.join(trash, name))
            shutil.rmtree(trash)
        os.replace(os.path.join(staging, name), target)
    os.replace(os.path.join(staging, RESULTS_FILE), old_results)


def predict(model_path: str, images: str, out: str, det_file: str | None = None,
            det_score_threshold: float | None = None, config: Mapping[str, Any] | None = None,
            draw_threshold: float | None = None, detector: str | None = None,
            detector_person_class: int = 1, detector_score_threshold: float = 0.5, smooth: bool = False,
            smooth_min_cutoff: float | None = None, smooth_beta: float | None = None) -> Dict[str, Any]:
    """Runs ``predict_image`` on a folder, an image or a video and writes results and overlays to ``out``.

    Args:
        model_path: see :func:`resolve_model`.
        images: a folder (recursive), one JPEG/PNG file, or a video file (OpenCV).
        out: output folder (local; created).
        det_file: COCO detection results; None: each image is one whole-image box.
        det_score_threshold: detector score threshold; None: ``config["data"]["det_score_threshold"]``.
        config: loaded experiment config (``dataset``, ``data.padding``, ``data.max_image_pixels``,
            ``eval``); None: :data:`pose.config.DEFAULTS` with the model's dataset.
        draw_threshold: joint score below which a joint is not drawn (default :data:`pose.draw.DEFAULT_THRESHOLD`).
        detector: a person detector SavedModel (:mod:`pipeline.detector`) giving the boxes (top-down models).
        detector_person_class, detector_score_threshold: the detector's person class id and score threshold.
        smooth: One-Euro smoothing of the keypoints along the tracks of a video (:mod:`pose.smoothing`).
        smooth_min_cutoff, smooth_beta: its parameters (Hz, 1/pixel); None: the defaults.

    Returns:
        the summary written to ``predict_summary.json``.

    Raises:
        FileNotFoundError: no model at ``model_path``, no detector at ``detector``, or ``images`` does not exist.
        ValueError: bad det file, a detector outside the convention, boxes for a bottom-up model,
            duplicate image ids, an unreadable video, or no readable image.
    """
    from pose import draw
    from pose.config import build_config
    from pose.images import sniff_format
    from schemas import jsonio

    if "://" in out:
        raise ValueError(f"--out {out}: a local folder is needed (the results are moved into place atomically)")
    if not os.path.exists(images):
        raise FileNotFoundError(f"--images {images} does not exist")
    if det_file and detector:
        raise ValueError("--det-file and --detector both give boxes; use one")
    from pose import smoothing

    tracking = {"smooth": bool(smooth),
                "min_cutoff": smoothing.DEFAULT_MIN_CUTOFF if smooth_min_cutoff is None else float(smooth_min_cutoff),
                "beta": smoothing.DEFAULT_BETA if smooth_beta is None else float(smooth_beta)}
    smoothing.TrackSmoother(DEFAULT_FPS, tracking["min_cutoff"], tracking["beta"])   # checks the parameters
    from pipeline import predict_deploy
    from schemas import dataset_meta

    if predict_deploy.is_artifact(model_path):   # LiteRT / ONNX: the same crop rule, run by its own runtime
        model = predict_deploy.load(model_path, dataset_meta.schema_for(config) if config else None,
                                    float(config["data"]["padding"]) if config else None)
        saved_model_dir, found_as = model_path, f"deployment artifact ({model.runner.spec.get('format')})"
    else:
        saved_model_dir, found_as = resolve_model(model_path)
        model = load_model(saved_model_dir, dataset_meta.schema_for(config) if config else None)
    if model.box_free and (det_file or detector):
        raise ValueError(f"--model {model_path}: a bottom-up (box-free) model finds the people itself; "
                         f"{'--det-file' if det_file else '--detector'} gives boxes to top-down models only")
    if detector:
        from pipeline.detector import load_detector

        detector_model = load_detector(detector, detector_person_class, detector_score_threshold)
    else:
        detector_model = None
    if config is None:   # the model's own layout: a bundled name, or its carried meta inline
        bundled = model.schema.name in dataset_meta.BUNDLED and \
            dataset_meta.bundled(model.schema.name).hash == model.schema.hash
        config = build_config({"dataset": model.schema.name} if bundled else {"dataset_meta": model.schema.to_meta()},
                              name="predict")
    threshold = float(config["data"]["det_score_threshold"] if det_score_threshold is None else det_score_threshold)
    draw_threshold = draw.DEFAULT_THRESHOLD if draw_threshold is None else float(draw_threshold)
    max_pixels = int(config["data"]["max_image_pixels"])

    files: List[Tuple[str, str, int]] = []
    video = None
    if os.path.isdir(images):
        files = list_images(images, exclude=out)
        if not files:
            raise ValueError(f"--images {images}: the folder holds no file")
    else:
        with open(images, "rb") as handle:
            head = handle.read(8)
        if sniff_format(head) is not None:
            name = os.path.basename(images)
            files = [(name, images, image_id_of(name))]
        else:
            video = images
    if smooth and not video:
        raise ValueError(f"--smooth: smoothing follows people along a video's frames; --images {images} is not a video")
    detections = load_detections(det_file, threshold) if det_file else None

    os.makedirs(out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out)
    try:
        run = _Run(model, detections, config["eval"], float(config["data"]["padding"]),
                   draw_threshold, staging, detector_model)
        outputs = _run_video(run, video, tracking) if video else _run_folder(run, files, max_pixels)
        run.unmatched_detections()
        if run.images == 0:
            reasons = dict(Counter(skip["reason"] for skip in run.skips))
            raise ValueError(f"--images {images}: no image could be read (skipped: {reasons}); nothing written")
        from components.metrics_coco import result_sort_key

        run.results.sort(key=result_sort_key)
        skipped = dict(sorted(Counter(skip["reason"] for skip in run.skips).items()))
        summary = {
            "model": saved_model_dir, "model_found_as": found_as, "dataset": model.schema.name,
            "num_joints": model.num_joints, "input_size": list(model.input_size),
            "images": run.images, "people": len(run.results), "skipped": skipped, "skips": run.skips,
            "images_without_boxes": run.without_boxes,
            "det_file": det_file, "det_score_threshold": threshold if det_file else None,
            "detections": detections.total if detections else None,
            "selection": (detections.selection if detections else dict(sorted(run.detector_selection.items()))),
            "box_free": model.box_free,
            "detector": detector, "detector_person_class": int(detector_person_class) if detector else None,
            "detector_score_threshold": float(detector_score_threshold) if detector else None,
            "detector_boxes": run.detector_boxes if detector else None,
            "draw_threshold": draw_threshold,
            "rescore_threshold": float(config["eval"]["rescore_threshold"]),
            "oks_nms_threshold": (config["eval"].get("oks_nms_threshold")
                                  if model.schema.oks_sigmas is not None else None),
            "results": RESULTS_FILE,
        }
        if video:
            summary.update(outputs)
        else:
            summary["image_ids"] = {name: image_id for name, _, image_id in files}
            summary["overlays"] = outputs["overlays"]
        # Skips show what the bad input held (a NaN box as "NaN"), as dead letters do.
        jsonio.write(os.path.join(staging, SUMMARY_FILE), summary, nonfinite=jsonio.NONFINITE_STRING, indent=1)
        jsonio.write(os.path.join(staging, RESULTS_FILE), run.results)
        produced = [outputs["video"]] if video else ([OVERLAY_DIR] if outputs["overlays"] else [])
        _publish(staging, out, produced + [SUMMARY_FILE])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["out"] = out
    return summary


def summary_line(summary: Mapping[str, Any]) -> str:
    """``predict: 4 images, 13 people, 2 skipped (corrupt_image 1, invalid_box 1) -> <out>``."""
    skipped = summary["skipped"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
    total = sum(skipped.values())
    left_out = ", ".join(f"{reason} {count}" for reason, count in summary.get("selection", {}).items())
    unit = "frame" if summary.get("video") else "image"
    text = (f"predict: {summary['images']} {unit}{'' if summary['images'] == 1 else 's'}, "
            f"{summary['people']} people, {total} skipped" + (f" ({reasons})" if total else ""))
    if left_out:
        text += f", boxes left out: {left_out}"
    if summary.get("video"):
        text += f", {summary['tracks']} tracks"
        if summary.get("frames_dropped"):
            text += (f", {summary['frames_dropped']} of {summary['frame_count']} frames dropped "
                     f"({summary['frames_unreadable']} unreadable)")
    return text + f" -> {os.path.join(summary['out'], RESULTS_FILE)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="Trainer model dir (with Format-Serving/), a SavedModel dir, a pushed version, "
                             "a push destination (its newest blessed version), or a deployment artifact "
                             "model.tflite / model.onnx (with its deploy.json)")
    parser.add_argument("--images", required=True, help="folder of JPEG/PNG images (recursive), one image, "
                                                        "or a video file")
    parser.add_argument("--out", required=True, help="output folder: keypoint_results.json, overlays/ or "
                                                     "<video>_pose.mp4, predict_summary.json")
    parser.add_argument("--det-file", default=None, help="COCO person detection results json "
                                                         "([{image_id or file_name, category_id, bbox, score}])")
    parser.add_argument("--det-score-threshold", type=float, default=None,
                        help="skip detector boxes scored below (default: data.det_score_threshold, 0.0)")
    parser.add_argument("--config", default=None, help="experiment YAML: eval rescoring/NMS, data.padding, "
                                                       "data.max_image_pixels (default: the built-in defaults)")
    parser.add_argument("--draw-threshold", type=float, default=None,
                        help="joints scored below are not drawn (default 0.2)")
    parser.add_argument("--detector", default=None,
                        help="person detector SavedModel dir, TF Object Detection API outputs (detection_boxes "
                             "normalised [ymin, xmin, ymax, xmax], detection_scores, detection_classes)")
    parser.add_argument("--detector-person-class", type=int, default=1,
                        help="the detector's class id of a person (default 1, the COCO label map)")
    parser.add_argument("--detector-score-threshold", type=float, default=0.5,
                        help="detector boxes scored below are left out (default 0.5)")
    parser.add_argument("--smooth", action="store_true",
                        help="video: One-Euro smoothing of the keypoints along each track (off by default)")
    parser.add_argument("--smooth-min-cutoff", type=float, default=None,
                        help="One-Euro cutoff of a still joint, Hz (default 1.0)")
    parser.add_argument("--smooth-beta", type=float, default=None,
                        help="One-Euro speed coefficient, 1/pixel (default 0.05)")
    parser.add_argument("--dataset", default=None, choices=sorted(BUNDLED),
                        help="bundled dataset meta (default: the meta the export carries)")
    parser.add_argument("--dataset-meta", default=None,
                        help="dataset meta file (YAML/JSON): joint names and skeleton for an export that carries "
                             "none; must agree with one that does")
    args = parser.parse_args(argv)
    try:
        from pose.config import build_config, load_config, meta_overrides

        config = None
        overrides = meta_overrides(args.dataset, args.dataset_meta)
        if args.config:
            config = load_config(args.config, overrides=overrides)
        elif overrides:
            config = build_config(dict(overrides), name="predict")
        summary = predict(args.model, args.images, args.out, args.det_file, args.det_score_threshold, config,
                          args.draw_threshold, args.detector, args.detector_person_class,
                          args.detector_score_threshold, args.smooth, args.smooth_min_cutoff, args.smooth_beta)
    except (ValueError, OSError) as error:   # ours: the message names the file or flag
        print(f"predict: error: {error}", file=sys.stderr)
        return cli.EXIT_ERROR
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m pipeline.predict"))
