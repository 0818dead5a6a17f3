"""ExampleGen's pure core: annotation selection, safe image reading, crops and records.

Nothing here knows about Beam; :mod:`components.example_gen` wraps these
functions in DoFns. Every function is deterministic: the same inputs give the
same outputs, byte for byte.

The work is split in three steps, mirroring the Beam stages:

1. :func:`load_coco` / :func:`load_mpii` (driver side): read the annotation
   JSON, apply the selection rules and group the persons by image into
   *image tasks* (plain, picklable dicts). Selection-rule skips (crowd,
   ``num_keypoints == 0``, detector score below threshold, other categories)
   are counted; bad annotations (unknown image, unsafe file name, malformed
   entries) become skip entries carried by the tasks, so the pipeline reports
   them through its dead-letter output.
2. :func:`read_image` + :func:`crop_persons` (one image -> its persons):
   read and decode the image with safety checks, clip boxes to the image,
   compute the crop windows (:func:`pose.coordinates.box_to_center_scale`,
   aspect ratio of the model input, padding 1.25), warp and JPEG-encode the
   crops and map the keypoints into the crop frame.
3. :func:`build_record` (one person): DARK heatmaps and target weights with
   :class:`pose.codec.HeatmapCodec` and the tf.Example of
   :func:`schemas.features.build_example`, serialized deterministically.

Coordinates follow :mod:`pose.coordinates`: COCO keypoints and boxes are used
as they are; MPII's 1-based MATLAB joints and centres are shifted by
:data:`pose.coordinates.MATLAB_TO_ZERO_BASED` once, in :func:`load_mpii`.

Skip reasons (``SKIP_*`` constants) and what they count:

============================  =====  ==============================================
reason                        unit   meaning
============================  =====  ==============================================
crowd                         anno   ``iscrowd`` region (selection rule)
no_keypoints                  anno   no labelled keypoint (selection rule, COCO)
not_person                    anno   a category the dataset meta does not read (COCO: ``!= 1``;
                                     a meta: its ``category_ids``, default every category
                                     with K keypoint names) (selection rule)
det_score_below_threshold     box    detector score < ``data.det_score_threshold``
malformed_annotation          anno   missing/non-numeric fields
keypoint_count_mismatch       anno   ``keypoints`` length is not 3 K of the dataset meta
unknown_image                 anno   ``image_id`` not in the ``images`` list
invalid_box                   anno   non-finite box, or width/height <= 0
box_outside_image             anno   zero area after clipping to the image
keypoint_outside_image        joint  labelled keypoint outside the image (joint dropped)
unsafe_file_name              image  absolute path or ``..`` in ``file_name``
missing_image                 image  file not found
corrupt_image                 image  undecodable or truncated file
unsupported_image_format      image  an image, but neither JPEG nor PNG (:mod:`pose.images`)
image_too_large               image  header claims > ``data.max_image_pixels`` pixels
image_size_mismatch           image  decoded size differs from the JSON's width/height
============================  =====  ==============================================

Image-level reasons count images (the dead-letter entry says how many persons
were lost); the others count annotations, detector boxes or joints.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import warnings
import zlib
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from components import metrics_coco
from pose import coordinates
from pose.images import pillow_to_rgb8, sniff_format
from schemas import features
from schemas import dataset_meta
from schemas.dataset_meta import schema_for
from schemas.keypoints import get_schema

SPLITS = ("train", "eval")

SKIP_CROWD = "crowd"
SKIP_NO_KEYPOINTS = "no_keypoints"
SKIP_NOT_PERSON = "not_person"
SKIP_DET_SCORE = "det_score_below_threshold"
SKIP_MALFORMED = "malformed_annotation"
SKIP_KEYPOINT_COUNT = "keypoint_count_mismatch"   # an annotation with another joint count than the meta's
SKIP_UNKNOWN_IMAGE = "unknown_image"
SKIP_INVALID_BOX = coordinates.BOX_STATUS[coordinates.BOX_INVALID]          # "invalid_box"
SKIP_BOX_OUTSIDE = coordinates.BOX_STATUS[coordinates.BOX_OUTSIDE_IMAGE]    # "box_outside_image"
SKIP_KEYPOINT_OUTSIDE = "keypoint_outside_image"
SKIP_UNSAFE_NAME = "unsafe_file_name"
SKIP_MISSING_IMAGE = "missing_image"
SKIP_CORRUPT_IMAGE = "corrupt_image"
SKIP_UNSUPPORTED_FORMAT = "unsupported_image_format"
SKIP_IMAGE_TOO_LARGE = "image_too_large"
SKIP_SIZE_MISMATCH = "image_size_mismatch"

SELECTION_REASONS = (SKIP_CROWD, SKIP_NO_KEYPOINTS, SKIP_NOT_PERSON, SKIP_DET_SCORE)
"""Skips made by the selection rules (counted, not dead-lettered)."""

PERSON_CATEGORY_ID = 1
MPII_SCALE_UNIT = 200.0
"""MPII ``scale`` is the person height in units of 200 pixels."""
MPII_CENTER_SHIFT = 15.0
"""The references move the MPII centre down by 15 * scale pixels before cropping."""


class InputError(ValueError):
    """An input file is missing, unreadable or malformed (the whole run fails)."""


class ImageError(Exception):
    """One image cannot be used; ``reason`` is one of the image-level ``SKIP_*``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------

def _gfile():
    import tensorflow as tf  # tf.io.gfile handles local paths and gs://

    return tf.io.gfile


def read_bytes(path: str) -> bytes:
    """Reads a whole file (local or ``gs://``). Raises FileNotFoundError."""
    gfile = _gfile()
    if not gfile.exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    with gfile.GFile(path, "rb") as handle:
        return handle.read()


def load_json(path: str, what: str) -> Tuple[Any, str]:
    """Loads a JSON input file; returns ``(data, sha256 hex of its bytes)``.

    Raises:
        InputError: the file is missing, empty or not valid JSON (``what`` names it).
    """
    if not path:
        raise InputError(f"{what}: no path given")
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{what} {path} is not valid JSON: {error}") from None
    return parsed, hashlib.sha256(data).hexdigest()


def safe_join(images_dir: str, file_name: Any) -> str | None:
    """Joins ``images_dir`` and a relative ``file_name``; None when the name is unsafe.

    Unsafe: not a non-empty string, absolute, containing a NUL byte, a
    backslash, a URL scheme or a ``..`` component (path traversal).
    """
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name or "\\" in file_name:
        return None
    if file_name.startswith("/") or "://" in file_name or ".." in file_name.split("/"):
        return None
    return images_dir.rstrip("/") + "/" + posixpath.normpath(file_name)


def _number(value: Any) -> float:
    """float(value) for real numbers (bool excluded); raises ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    return float(value)


def _skip(reason: str, **details: Any) -> Dict[str, Any]:
    entry = {"reason": reason}
    entry.update(details)
    return entry


# --------------------------------------------------------------------------
# Annotation loading (driver side)
# --------------------------------------------------------------------------

def _new_task(split: str, dataset: str, image_id: int, file_name: Any, image_path: str | None,
              width: int | None, height: int | None) -> Dict[str, Any]:
    return {"split": split, "dataset": dataset, "image_id": int(image_id), "file_name": file_name,
            "image_path": image_path, "width": width, "height": height, "persons": [], "skips": []}


def _coco_images(data: Mapping[str, Any], images_dir: str, split: str, dataset: str,
                 path: str) -> Tuple[Dict[int, Dict[str, Any]], List[Dict[str, Any]]]:
    """image id -> task skeleton; plus skips for malformed image entries."""
    images = data.get("images")
    if not isinstance(images, list):
        raise InputError(f"{path}: 'images' must be a list")
    tasks: Dict[int, Dict[str, Any]] = {}
    skips = []
    for position, entry in enumerate(images):
        try:
            image_id = int(_number(entry["id"]))
            width, height = int(_number(entry["width"])), int(_number(entry["height"]))
            file_name = entry["file_name"]
        except (KeyError, TypeError, ValueError):
            skips.append(_skip(SKIP_MALFORMED, split=split, image_entry=position))
            continue
        image_path = safe_join(images_dir, file_name)
        task = _new_task(split, dataset, image_id, str(file_name), image_path, width, height)
        if image_path is None:
            task["skips"].append(_skip(SKIP_UNSAFE_NAME, split=split, image_id=image_id,
                                       file_name=str(file_name)))
        tasks[image_id] = task
    return tasks, skips


def _coco_keypoints(values: Any, num_joints: int) -> Tuple[np.ndarray, np.ndarray]:
    array = np.asarray([_number(v) for v in values], dtype=np.float64)
    if array.size != num_joints * 3 or not np.all(np.isfinite(array)):
        raise ValueError("keypoints must hold K*3 finite numbers")
    array = array.reshape(num_joints, 3)
    visibility = np.clip(array[:, 2], 0, 2).astype(np.int64)
    points = np.where(visibility[:, None] > 0, array[:, :2], 0.0)
    return points, visibility


def load_coco(split: str, annotations: str, images_dir: str, config: Mapping[str, Any],
              det_file: str | None = None) -> Dict[str, Any]:
    """Loads a COCO person-keypoints split and applies the selection rules.

    Ground-truth boxes (``det_file`` None): every annotation of category 1
    with ``iscrowd == 0`` and at least one labelled keypoint (the reference
    systems' rule, for train and GT-box eval alike). Detector boxes
    (``det_file`` given, eval): every category-1 box with
    ``score >= data.det_score_threshold``; its keypoints are zero with
    visibility 0, ``annotation_id = -1``, ``area`` = box area.

    Area of ground-truth persons (``person/area``, the OKS normaliser): the
    annotation's ``area``; when it is missing (or zero, negative, non-finite),
    ``0.53 * w * h`` of its box, the rule of :func:`components.metrics_coco.oks_area`
    shared with the Evaluator and ``pipeline.score``; such annotations are counted
    in the result's ``area_from_box`` (the manifest's ``area_from_box``). A
    non-numeric ``area`` is a ``malformed_annotation``.

    Args:
        split: ``"train"`` or ``"eval"``.
        annotations: COCO ``person_keypoints_*.json`` (local or gs://).
        images_dir: folder holding the ``file_name`` of each image.
        config: loaded experiment config (uses ``dataset`` and ``data``).
        det_file: optional COCO detection results JSON (list of
            ``{image_id, category_id, bbox, score}``).

    Returns:
        ``{"tasks": [image task, ...] sorted by image id, "selection_skips":
        {reason: n}, "planned": persons, "sources": {role: {path, sha256}},
        "area_from_box": n}``.

    Raises:
        InputError: a file is missing or malformed.
    """
    schema = schema_for(config)
    num_joints = schema.num_joints
    name = config.get("dataset", "coco")
    data, digest = load_json(annotations, f"{split} annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"{annotations}: expected a COCO keypoints object with 'images' and 'annotations' lists")
    if config.get("dataset_meta") is None and name == "coco":
        categories = {PERSON_CATEGORY_ID}  # COCO person keypoints, as always
    else:  # a dataset meta: its categories (AP-10K: 54 species), checked against the file before any work
        try:
            categories = set(dataset_meta.check_annotations(schema, data, annotations))
        except dataset_meta.DatasetMetaError as error:
            raise InputError(str(error)) from None
    tasks, loose_skips = _coco_images(data, images_dir, split, name, annotations)
    sources = {f"{split}_annotations": {"path": annotations, "sha256": digest}}
    selection: Counter = Counter()
    unknown = _new_task(split, name, -1, None, None, None, None)
    unknown["skips"].extend(loose_skips)
    areas_from_box = 0  # selected annotations whose OKS area was derived from their box

    if det_file is None:
        for position, ann in enumerate(data["annotations"]):
            try:
                ann_id = int(_number(ann["id"]))
                image_id = int(_number(ann["image_id"]))
                category = int(_number(ann.get("category_id", PERSON_CATEGORY_ID)))
                crowd = bool(ann.get("iscrowd", 0))
            except (KeyError, TypeError, ValueError):
                unknown["skips"].append(_skip(SKIP_MALFORMED, split=split, annotation_entry=position))
                continue
            if category not in categories:
                selection[SKIP_NOT_PERSON] += 1
                continue
            if crowd:
                selection[SKIP_CROWD] += 1
                continue
            values = ann.get("keypoints")
            if isinstance(values, (list, tuple)) and len(values) != 3 * num_joints:
                unknown["skips"].append(_skip(SKIP_KEYPOINT_COUNT, split=split, annotation_id=ann_id,
                                              values=len(values), expected=3 * num_joints))
                continue
            try:
                points, visibility = _coco_keypoints(ann["keypoints"], num_joints)
                box = [_number(v) for v in ann["bbox"]]
                if ann.get("area") is not None:
                    _number(ann["area"])  # a non-number area is malformed; a missing one is derived below
                if len(box) != 4:
                    raise ValueError("bbox must have 4 numbers")
            except (KeyError, TypeError, ValueError):
                unknown["skips"].append(_skip(SKIP_MALFORMED, split=split, annotation_id=ann_id))
                continue
            try:  # the one area rule (metrics_coco.oks_area): no usable area -> 0.53 * box w * h, counted
                area, area_derived = metrics_coco.oks_area(ann.get("area"), box)
            except ValueError:  # no area and an impossible box: skipped as invalid_box when cropping
                area, area_derived = 0.0, False
            if not np.any(visibility > 0):
                selection[SKIP_NO_KEYPOINTS] += 1
                continue
            if image_id not in tasks:
                unknown["skips"].append(_skip(SKIP_UNKNOWN_IMAGE, split=split, annotation_id=ann_id,
                                              image_id=image_id))
                continue
            areas_from_box += int(area_derived)
            tasks[image_id]["persons"].append({
                "annotation_id": ann_id, "box_index": 0, "bbox": box, "score": 1.0, "area": area,
                "keypoints": points.tolist(), "visibility": visibility.tolist(), "require_keypoints": True})
    else:
        detections, det_digest = load_json(det_file, "detection results")
        sources["det_file"] = {"path": det_file, "sha256": det_digest}
        if not isinstance(detections, list):
            raise InputError(f"{det_file}: expected a list of detections")
        threshold = float(config["data"]["det_score_threshold"])
        per_image: Counter = Counter()
        for position, det in enumerate(detections):
            try:
                image_id = int(_number(det["image_id"]))
                category = int(_number(det.get("category_id", PERSON_CATEGORY_ID)))
                score = _number(det["score"])
                box = [_number(v) for v in det["bbox"]]
                if len(box) != 4:
                    raise ValueError("bbox must have 4 numbers")
            except (KeyError, TypeError, ValueError):
                unknown["skips"].append(_skip(SKIP_MALFORMED, split=split, detection_entry=position))
                continue
            if category not in categories:
                selection[SKIP_NOT_PERSON] += 1
                continue
            if not score >= threshold:
                selection[SKIP_DET_SCORE] += 1
                continue
            if image_id not in tasks:
                unknown["skips"].append(_skip(SKIP_UNKNOWN_IMAGE, split=split, detection_entry=position,
                                              image_id=image_id))
                continue
            box_index = per_image[image_id]
            per_image[image_id] += 1
            tasks[image_id]["persons"].append({
                "annotation_id": -1, "box_index": box_index, "bbox": box, "score": score,
                "area": float(box[2] * box[3]) if all(map(math.isfinite, box)) else 0.0,
                "keypoints": [[0.0, 0.0]] * num_joints, "visibility": [0] * num_joints,
                "require_keypoints": False})

    result = _finish(tasks, unknown, selection, sources)
    result[metrics_coco.AREA_FROM_BOX] = areas_from_box
    return result


def _finish(tasks: Dict[int, Dict[str, Any]], unknown: Dict[str, Any], selection: Counter,
            sources: Dict[str, Any]) -> Dict[str, Any]:
    kept = [task for _, task in sorted(tasks.items()) if task["persons"]]
    for task in kept:
        task["persons"].sort(key=lambda person: (person["annotation_id"], person["box_index"]))
        if task["image_path"] is None:  # unsafe name: report the persons it would have had
            task["skips"][0]["num_persons"] = len(task["persons"])
    if selection:  # carried to the workers for the Beam counters only
        unknown["selection_skips"] = dict(sorted(selection.items()))
    if unknown["skips"] or selection:
        kept.insert(0, unknown)
    planned = sum(len(task["persons"]) for task in kept if task["image_path"] is not None)
    return {"tasks": kept, "selection_skips": dict(sorted(selection.items())), "planned": planned,
            "sources": sources}


def mpii_image_id(file_name: str) -> int:
    """MPII image id: the numeric file stem (``052475643.jpg`` -> 52475643), else a CRC32."""
    stem = posixpath.splitext(posixpath.basename(file_name))[0]
    return int(stem) if stem.isdigit() else zlib.crc32(file_name.encode("utf-8"))


def load_mpii(split: str, annotations: str, images_dir: str, config: Mapping[str, Any]) -> Dict[str, Any]:
    """Loads an MPII split in the HRNet JSON list format.

    Each row: ``image``, ``center`` (x, y), ``scale`` (person height / 200),
    ``joints`` (16 x 2, 1-based MATLAB pixels) and ``joints_vis`` (16). As in
    the references, the centre moves down by ``15 * scale`` pixels and the
    window is ``200 * scale`` pixels square before the 1.25 padding; the
    aspect ratio is then fixed to the model input's; the window is not
    clipped to the image (it must only overlap it). This is the only place
    where :data:`pose.coordinates.MATLAB_TO_ZERO_BASED` is applied (to the
    joints and the centre). Labelled joints get visibility 2.
    ``annotation_id`` is the row index; ``area`` is ``(200 * scale)^2``.

    Returns:
        Same layout as :func:`load_coco`.
    """
    num_joints = get_schema("mpii").num_joints
    rows, digest = load_json(annotations, f"{split} annotations")
    if not isinstance(rows, list):
        raise InputError(f"{annotations}: expected the HRNet MPII list format (a JSON list)")
    sources = {f"{split}_annotations": {"path": annotations, "sha256": digest}}
    unknown = _new_task(split, "mpii", -1, None, None, None, None)
    tasks: Dict[int, Dict[str, Any]] = {}
    for row_index, row in enumerate(rows):
        try:
            file_name = row["image"]
            center = np.asarray([_number(v) for v in row["center"]], dtype=np.float64)
            scale = _number(row["scale"])
            joints = np.asarray([[_number(v) for v in joint] for joint in row["joints"]], dtype=np.float64)
            joints_vis = np.asarray([_number(v) for v in row["joints_vis"]], dtype=np.float64)
            if center.shape != (2,) or joints.shape != (num_joints, 2) or joints_vis.shape != (num_joints,):
                raise ValueError("wrong shapes")
            if not (np.all(np.isfinite(center)) and np.all(np.isfinite(joints)) and math.isfinite(scale)):
                raise ValueError("non-finite values")
            if not isinstance(file_name, str):
                raise ValueError("image must be a string")
        except (KeyError, TypeError, ValueError):
            unknown["skips"].append(_skip(SKIP_MALFORMED, split=split, annotation_id=row_index))
            continue
        if scale <= 0:
            unknown["skips"].append(_skip(SKIP_INVALID_BOX, split=split, annotation_id=row_index))
            continue
        visibility = np.where(joints_vis > 0, 2, 0).astype(np.int64)
        points = np.where(visibility[:, None] > 0, joints + coordinates.MATLAB_TO_ZERO_BASED, 0.0)
        center_x = center[0] + coordinates.MATLAB_TO_ZERO_BASED
        center_y = center[1] + MPII_CENTER_SHIFT * scale + coordinates.MATLAB_TO_ZERO_BASED
        side = MPII_SCALE_UNIT * scale
        box = [center_x - 0.5 * side, center_y - 0.5 * side, side, side]
        image_id = mpii_image_id(file_name)
        if image_id not in tasks:
            image_path = safe_join(images_dir, file_name)
            tasks[image_id] = _new_task(split, "mpii", image_id, file_name, image_path, None, None)
            if image_path is None:
                tasks[image_id]["skips"].append(_skip(SKIP_UNSAFE_NAME, split=split, image_id=image_id,
                                                      file_name=file_name))
        tasks[image_id]["persons"].append({
            "annotation_id": row_index, "box_index": 0, "bbox": box, "score": 1.0, "area": side * side, "clip": False,
            "keypoints": points.tolist(), "visibility": visibility.tolist(), "require_keypoints": False})
    return _finish(tasks, unknown, Counter(), sources)


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decodes an encoded image to RGB uint8 (H, W, 3) with safety checks.

    Pixels follow :mod:`pose.images`, the rule the serving signature
    ``predict_image`` applies in its graph (bit-identical pixels for the same
    file): JPEG (accurate integer IDCT) and PNG of any colour type and bit
    depth (16-bit scaled to 8 by the high byte, alpha dropped); EXIF
    orientation is ignored, as COCO's annotations are on the raw pixels.
    Other formats are rejected by their magic bytes. The header is read
    first; an image claiming more than ``max_pixels`` pixels is rejected
    before any pixel is decoded (decompression bombs). Truncated or corrupt
    files raise instead of returning partial pixels.

    Raises:
        ImageError: ``unsupported_image_format``, ``corrupt_image`` or ``image_too_large``.
    """
    from PIL import Image  # Pillow reads the header lazily and raises on truncation

    if not data:
        raise ImageError(SKIP_CORRUPT_IMAGE, "empty file")
    image_format = sniff_format(data)
    if image_format is None:
        try:  # name the format when Pillow knows it (GIF, BMP, TIFF, WebP, ...); header only
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = Image.open(io.BytesIO(data)).format
        except Exception:  # noqa: BLE001 -- any failure here means "not an image we can name"
            raise ImageError(SKIP_CORRUPT_IMAGE, f"not an image (unrecognised first bytes {bytes(data[:8])!r})") from None
        raise ImageError(SKIP_UNSUPPORTED_FORMAT,
                         f"{other} image; supported formats: JPEG, PNG (pose/images.py, the serving decoder's rule)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # palette + tRNS conversion notice
            image = Image.open(io.BytesIO(data), formats=[image_format.upper()])
            width, height = image.size
            if width < 1 or height < 1:
                raise ImageError(SKIP_CORRUPT_IMAGE, f"header claims size {width}x{height}")
            if width * height > max_pixels:
                raise ImageError(SKIP_IMAGE_TOO_LARGE,
                                 f"header claims {width}x{height} pixels > data.max_image_pixels={max_pixels}")
            image.load()
            pixels = pillow_to_rgb8(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(SKIP_IMAGE_TOO_LARGE, f"header claims more than data.max_image_pixels={max_pixels} "
                                               f"pixels ({error})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as error:
        raise ImageError(SKIP_CORRUPT_IMAGE, f"cannot decode: {error}") from None
    if pixels.shape != (height, width, 3):
        raise ImageError(SKIP_CORRUPT_IMAGE, f"decoded to shape {pixels.shape}, header says {width}x{height}")
    return pixels


def read_image(path: str, max_pixels: int) -> Tuple[np.ndarray, str]:
    """Reads and decodes one image; returns (RGB uint8 (H, W, 3), sha256 hex of the file).

    Raises:
        ImageError: ``missing_image``, ``corrupt_image`` or ``image_too_large``.
    """
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise ImageError(SKIP_MISSING_IMAGE, f"image not found: {path}") from None
    except Exception as error:  # gfile raises tf.errors.* for unreadable paths
        raise ImageError(SKIP_MISSING_IMAGE, f"cannot read {path}: {error}") from None
    return decode_image(data, max_pixels), hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------
# Crops (one image -> its persons)
# --------------------------------------------------------------------------

def clip_boxes(boxes: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Clips COCO ``[x, y, w, h]`` boxes (N, 4) to the pixel-centre extent of an image.

    The rule is :func:`pose.coordinates.clip_boxes` (shared with the serving
    signature ``predict_image``): corners clipped to ``[0, W-1] x [0, H-1]``.

    Returns:
        ``(clipped (N, 4) float64, reason (N,) object)`` with reason None for
        kept boxes, ``invalid_box`` or ``box_outside_image`` otherwise
        (clipped rows of skipped boxes are zeros).
    """
    clipped, status = coordinates.clip_boxes(boxes, width, height)
    names = np.asarray([None, SKIP_INVALID_BOX, SKIP_BOX_OUTSIDE], dtype=object)
    return clipped, names[status]


def encode_crop(crop: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    """RGB uint8 crop (H, W, 3) -> encoded bytes (``jpeg`` or ``png``), deterministic."""
    import cv2

    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    if image_format == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif image_format == "png":
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"data.image_format must be 'jpeg' or 'png', got {image_format!r}")
    if not ok:
        raise RuntimeError("OpenCV failed to encode a crop")
    return buffer.tobytes()


def crop_persons(image: np.ndarray, task: Mapping[str, Any], config: Mapping[str, Any]
                 ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Crops every person of one image task.

    Boxes are clipped to the image (invalid ones skipped), grown to the input
    aspect ratio and padded (``data.padding``); labelled keypoints outside
    the image lose their label (counted per joint). Geometry is vectorised
    over persons; only the warp/encode runs per person.

    Args:
        image: RGB uint8 (H, W, 3), the decoded image of ``task``.
        task: an image task from :func:`load_coco` / :func:`load_mpii`.
        config: loaded experiment config.

    Returns:
        ``(persons, skips)``. Each person is a dict with the metadata of a
        record (see :mod:`schemas.features`), ``crop`` (encoded bytes),
        ``keypoints_crop`` (K, 2) and ``visibility`` (K,) in the crop frame,
        and ``sort_key`` (image id, annotation id, box index).

    Raises:
        ImageError: ``image_size_mismatch`` when the decoded size differs
        from the annotation's width/height.
    """
    data = config["data"]
    height, width = int(image.shape[0]), int(image.shape[1])
    if task.get("width") is not None and (task["width"], task["height"]) != (width, height):
        raise ImageError(SKIP_SIZE_MISMATCH, f"annotation says {task['width']}x{task['height']}, "
                                             f"image is {width}x{height}")
    persons = task["persons"]
    if not persons:
        return [], []
    input_size = tuple(data["input_size"])
    split, image_id = task["split"], task["image_id"]
    boxes = np.asarray([person["bbox"] for person in persons], dtype=np.float64)
    keypoints = np.asarray([person["keypoints"] for person in persons], dtype=np.float64)  # (N, K, 2)
    visibility = np.asarray([person["visibility"] for person in persons], dtype=np.int64)  # (N, K)
    clipped, box_reason = clip_boxes(boxes, width, height)
    # COCO boxes are clipped to the image; MPII windows are used as given (the references).
    clip = np.asarray([person.get("clip", True) for person in persons], dtype=bool)
    clipped = np.where(clip[:, None], clipped, boxes)
    clipped = np.where((box_reason == None)[:, None], clipped, [0.0, 0.0, 1.0, 1.0])  # noqa: E711 (skipped below)
    center, scale = coordinates.box_to_center_scale(clipped, input_size[1] / input_size[0], float(data["padding"]))
    labelled = visibility > 0
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = labelled & ((x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5))
    visibility = np.where(outside, 0, visibility)
    keypoints = np.where(visibility[..., None] > 0, keypoints, 0.0)
    matrices = coordinates.crop_affine(center, scale, input_size)  # (N, 2, 3)
    keypoints_crop = np.where(visibility[..., None] > 0, coordinates.apply_affine(keypoints, matrices), 0.0)

    kept, skips = [], []
    for index, person in enumerate(persons):
        ids = {"split": split, "image_id": image_id, "annotation_id": person["annotation_id"],
               "box_index": person["box_index"]}
        if box_reason[index] is not None:
            skips.append(_skip(box_reason[index], **ids, bbox=person["bbox"]))
            continue
        if outside[index].any():
            joints = np.flatnonzero(outside[index]).tolist()
            skips.append(_skip(SKIP_KEYPOINT_OUTSIDE, **ids, joints=joints, count=len(joints)))
        if person["require_keypoints"] and not visibility[index].any():
            skips.append(_skip(SKIP_NO_KEYPOINTS, **ids))
            continue
        crop = coordinates.warp_image(image, matrices[index], input_size)
        kept.append({
            "sort_key": (int(image_id), int(person["annotation_id"]), int(person["box_index"])),
            "split": split, "dataset": task["dataset"], "image_id": int(image_id),
            "annotation_id": int(person["annotation_id"]), "image_height": height, "image_width": width,
            "center": center[index], "scale": scale[index], "score": float(person["score"]),
            "area": float(person["area"]), "keypoints_image": keypoints[index],
            "keypoints_crop": keypoints_crop[index], "visibility": visibility[index],
            "crop": encode_crop(crop, data["image_format"], data["jpeg_quality"]),
        })
    return kept, skips


# --------------------------------------------------------------------------
# Records (one person)
# --------------------------------------------------------------------------

def build_record(person: Mapping[str, Any], codec, config: Mapping[str, Any]) -> bytes:
    """One cropped person -> serialized tf.Example (deterministic bytes).

    Heatmaps (H_hm, W_hm, K) channels-last and target weights (K,) come from
    ``codec.encode`` on the crop-frame keypoints; storage follows
    :func:`schemas.features.encode_heatmaps`.
    """
    heatmaps, weights = codec.encode(person["keypoints_crop"], person["visibility"])
    data = config["data"]
    record = {
        "dataset": person["dataset"],
        "image/encoded": person["crop"],
        "image/format": data["image_format"],
        "image/id": person["image_id"],
        "image/height": person["image_height"],
        "image/width": person["image_width"],
        "annotation/id": person["annotation_id"],
        "crop/height": codec.input_size[0],
        "crop/width": codec.input_size[1],
        "bbox/center": person["center"],
        "bbox/scale": person["scale"],
        "bbox/score": person["score"],
        "person/area": person["area"],
        "keypoints/crop": person["keypoints_crop"],
        "keypoints/image": person["keypoints_image"],
        "keypoints/visibility": person["visibility"],
        "heatmaps/encoded": heatmaps,
        "heatmap/height": codec.heatmap_size[0],
        "heatmap/width": codec.heatmap_size[1],
        "target_weight": weights,
    }
    return features.build_example(record).SerializeToString(deterministic=True)


def shard_of(sort_key: Sequence[int], num_shards: int) -> int:
    """Deterministic shard index of a record (CRC32 of its sort key)."""
    return zlib.crc32(",".join(str(int(v)) for v in sort_key).encode("ascii")) % num_shards


def count_reasons(skips: Iterable[Mapping[str, Any]]) -> Dict[str, int]:
    """Skip entries -> {reason: count}; ``count`` (joints) and ``num_persons`` aside, one per entry."""
    counts: Counter = Counter()
    for skip in skips:
        counts[skip["reason"]] += int(skip.get("count", 1))
    return dict(sorted(counts.items()))
