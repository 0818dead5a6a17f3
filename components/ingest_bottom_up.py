"""ExampleGen's bottom-up core: COCO annotations -> one whole-image record per image.

Nothing here knows about Beam; :mod:`components.example_gen` wraps these
functions in DoFns when ``config["approach"] == "bottom_up"``. Deterministic:
the same inputs give the same bytes. Reading, decoding and the safety checks
of images are :mod:`components.ingest_core`'s (and so :mod:`pose.images`'),
and so are the skip reasons they produce.

Two steps, mirroring the Beam stages:

1. :func:`load_coco` (driver side): read the annotation JSON and group the
   annotations by image into *image tasks* (plain, picklable dicts). Each
   task holds its *persons* (non-crowd person annotations with at least one
   labelled keypoint) and its *ignore regions* (crowd annotations, and person
   annotations without keypoints: PersonLab/HigherHRNet's loss mask). Train
   images without any person are skipped (``no_people``, counted, as
   HigherHRNet's training set); eval keeps every listed image (a detector-free
   evaluation must see the images with nobody in them).
2. :func:`build_image_record` (one image): letterbox the image into the
   ``S x S`` input (:func:`pose.coordinates.letterbox_affine`), map the
   keypoints into the input frame, keep the ``bottom_up.max_people`` largest
   persons (the others become ignore regions, ``too_many_people``), encode
   the targets (:func:`pose.bottom_up_codec.encode`), rasterise the ignore
   regions with pycocotools' mask API (polygons and RLE, compressed or not)
   and warp them to the output grid (:func:`ignore_to_output_mask`), and build
   the record (:func:`schemas.bottom_up.build_example`).

Loss-mask rule: an output pixel gets mask 0 when any of its ``k x k``
sub-samples (spread over the pixel's footprint in the original image, ``k`` =
the footprint's size in original pixels, 1..8) falls inside an ignore region;
1 elsewhere, padding included. Conservative on purpose: a pixel that touches a
crowd is never penalised.

Reasons added to :mod:`components.ingest_core`'s (same dead-letter/manifest
machinery):

=========================  ======  ==============================================
reason                     unit    meaning
=========================  ======  ==============================================
no_people                  image   train image without any person (selection rule)
too_many_people            person  beyond ``bottom_up.max_people`` (masked instead)
malformed_segmentation     anno    ignore region without a usable ``segmentation``:
                                   its (clipped) bbox is masked instead
=========================  ======  ==============================================

Masked regions are counted per reason in the manifest's ``masked``
(``crowd``, ``no_keypoints``, ``too_many_people``); they are not skips (the
image record is written).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from components import ingest_core as core
from components import metrics_coco
from pose import coordinates
from schemas.keypoints import get_schema

SKIP_NO_PEOPLE = "no_people"
SKIP_TOO_MANY_PEOPLE = "too_many_people"
SKIP_MALFORMED_SEGMENTATION = "malformed_segmentation"
MASK_CROWD = core.SKIP_CROWD
MASK_NO_KEYPOINTS = core.SKIP_NO_KEYPOINTS
MASK_TOO_MANY_PEOPLE = SKIP_TOO_MANY_PEOPLE
MAX_SUBSAMPLES = 8
"""Largest k of the k x k sub-sampling of :func:`ignore_to_output_mask`."""


# --------------------------------------------------------------------------
# Annotation loading (driver side)
# --------------------------------------------------------------------------

def load_coco(split: str, annotations: str, images_dir: str, config: Mapping[str, Any]) -> Dict[str, Any]:
    """Loads a COCO person-keypoints split into bottom-up image tasks.

    Args:
        split: ``"train"`` or ``"eval"``.
        annotations: COCO ``person_keypoints_*.json`` (local or gs://).
        images_dir: folder holding the ``file_name`` of each image.
        config: loaded bottom-up config.

    Returns:
        ``{"tasks": [image task, ...] sorted by image id, "selection_skips":
        {reason: n}, "planned": images, "sources": {...}, "area_from_box": n}``.
        A task is :func:`components.ingest_core._new_task`'s dict plus
        ``persons`` (``annotation_id``, ``keypoints`` (K, 2), ``visibility``
        (K,), ``area``, ``bbox``, ``segmentation``: masked when the person
        cannot be kept) and ``ignore`` (``annotation_id``,
        ``reason``, ``segmentation``, ``bbox``).

    Raises:
        InputError: the file is missing or malformed.
    """
    num_joints = get_schema("coco").num_joints
    data, digest = core.load_json(annotations, f"{split} annotations")
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise core.InputError(f"{annotations}: expected a COCO keypoints object with 'images' and 'annotations' lists")
    tasks, loose_skips = core._coco_images(data, images_dir, split, "coco", annotations)
    for task in tasks.values():
        task["ignore"] = []
    selection: Counter = Counter()
    unknown = core._new_task(split, "coco", -1, None, None, None, None)
    unknown["skips"].extend(loose_skips)
    areas_from_box = 0
    for position, ann in enumerate(data["annotations"]):
        try:
            ann_id = int(core._number(ann["id"]))
            image_id = int(core._number(ann["image_id"]))
            category = int(core._number(ann.get("category_id", core.PERSON_CATEGORY_ID)))
            crowd = bool(ann.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError):
            unknown["skips"].append(core._skip(core.SKIP_MALFORMED, split=split, annotation_entry=position))
            continue
        if category != core.PERSON_CATEGORY_ID:
            selection[core.SKIP_NOT_PERSON] += 1
            continue
        if image_id not in tasks:
            unknown["skips"].append(core._skip(core.SKIP_UNKNOWN_IMAGE, split=split, annotation_id=ann_id,
                                               image_id=image_id))
            continue
        region = {"annotation_id": ann_id, "segmentation": ann.get("segmentation"), "bbox": ann.get("bbox")}
        if crowd:
            tasks[image_id]["ignore"].append(dict(region, reason=MASK_CROWD))
            continue
        try:
            points, visibility = core._coco_keypoints(ann["keypoints"], num_joints)
            box = [core._number(v) for v in ann["bbox"]]
            if len(box) != 4:
                raise ValueError("bbox must have 4 numbers")
            if ann.get("area") is not None:
                core._number(ann["area"])
        except (KeyError, TypeError, ValueError):
            unknown["skips"].append(core._skip(core.SKIP_MALFORMED, split=split, annotation_id=ann_id))
            continue
        if not np.any(visibility > 0):
            tasks[image_id]["ignore"].append(dict(region, reason=MASK_NO_KEYPOINTS))
            continue
        try:  # the one area rule of the product (metrics_coco.oks_area)
            area, derived = metrics_coco.oks_area(ann.get("area"), box)
        except ValueError:
            area, derived = 0.0, False
        areas_from_box += int(derived)
        tasks[image_id]["persons"].append({
            "annotation_id": ann_id, "bbox": box, "area": float(area), "segmentation": ann.get("segmentation"),
            "keypoints": points.tolist(), "visibility": visibility.tolist()})

    kept = []
    for image_id, task in sorted(tasks.items()):
        task["persons"].sort(key=lambda person: person["annotation_id"])
        task["ignore"].sort(key=lambda region: region["annotation_id"])
        if split == "train" and not task["persons"]:
            selection[SKIP_NO_PEOPLE] += 1
            continue
        if task["image_path"] is None:
            task["skips"][0]["num_persons"] = len(task["persons"])
        kept.append(task)
    if selection:
        unknown["selection_skips"] = dict(sorted(selection.items()))
    if unknown["skips"] or selection:
        kept.insert(0, unknown)
    planned = sum(1 for task in kept if task["image_path"] is not None)
    return {"tasks": kept, "selection_skips": dict(sorted(selection.items())), "planned": planned,
            "sources": {f"{split}_annotations": {"path": annotations, "sha256": digest}},
            metrics_coco.AREA_FROM_BOX: areas_from_box}


# --------------------------------------------------------------------------
# Loss mask
# --------------------------------------------------------------------------

def _bbox_mask(bbox: Any, height: int, width: int) -> np.ndarray | None:
    """The clipped box as an (H, W) uint8 mask; None when the box is unusable."""
    try:
        box = np.asarray([core._number(v) for v in bbox], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if box.shape != (4,):
        return None
    clipped, status = coordinates.clip_boxes(box[None], width, height)
    if status[0] != coordinates.BOX_VALID:
        return None
    x, y, w, h = clipped[0]
    mask = np.zeros((height, width), np.uint8)
    mask[int(math.floor(y)):int(math.ceil(y + h)) + 1, int(math.floor(x)):int(math.ceil(x + w)) + 1] = 1
    return mask


def segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterises one COCO ``segmentation`` with pycocotools' mask API.

    Args:
        segmentation: polygons (list of flat ``[x0, y0, x1, y1, ...]`` lists),
            uncompressed RLE (``{"size": [H, W], "counts": [ints]}``) or
            compressed RLE (``counts`` a string).
        height, width: the image size.

    Returns:
        (H, W) uint8 mask, 1 inside.

    Raises:
        ValueError: anything else, an RLE of another size, or a polygon with
        fewer than 3 points or non-finite coordinates.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            values = np.asarray([core._number(v) for v in polygon], dtype=np.float64)
            if values.size < 6 or values.size % 2 or not np.all(np.isfinite(values)):
                raise ValueError("a polygon needs >= 3 finite (x, y) points")
            polygons.append(values.tolist())
        if not polygons:
            raise ValueError("empty polygon list")
        rles = mask_utils.frPyObjects(polygons, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(core._number(v)) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} (height, width) differs from the image's {[height, width]}")
        if isinstance(segmentation["counts"], list):
            counts = [int(core._number(v)) for v in segmentation["counts"]]
            if any(v < 0 for v in counts) or sum(counts) != height * width:
                raise ValueError("RLE counts must be >= 0 and sum to H * W")
            rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        elif isinstance(segmentation["counts"], (str, bytes)):
            counts = segmentation["counts"]
            rle = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            if int(mask_utils.area(rle)) > height * width:
                raise ValueError("compressed RLE decodes past the image")
        else:
            raise ValueError("RLE counts must be a list or a string")
    else:
        raise ValueError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    mask = np.asarray(mask_utils.decode(rle), dtype=np.uint8)
    if mask.shape != (height, width):
        raise ValueError(f"decoded mask has shape {mask.shape}, expected {(height, width)}")
    return mask


def ignore_to_output_mask(ignore: np.ndarray, image_to_output: np.ndarray, output_size: Tuple[int, int]
                          ) -> np.ndarray:
    """Warps an (H, W) ignore mask (1 = ignore) to the loss mask (H_out, W_out) float32 (1 = count).

    Each output pixel is sampled at ``k x k`` points spread over its footprint
    (``k`` = its size in original pixels, clipped to 1..:data:`MAX_SUBSAMPLES`,
    nearest-neighbour sampling with OpenCV); it is 0 when any sample is ignored.
    """
    import cv2

    out_h, out_w = int(output_size[0]), int(output_size[1])
    matrix = np.asarray(image_to_output, dtype=np.float64)
    footprint = 1.0 / max(abs(np.linalg.det(matrix[:, :2])) ** 0.5, 1e-12)  # original px per output px
    count = int(min(max(math.ceil(footprint), 1), MAX_SUBSAMPLES))
    steps = (np.arange(count) + 0.5) / count - 0.5
    hit = np.zeros((out_h, out_w), np.uint8)
    for du in steps:
        for dv in steps:
            shifted = matrix.copy()
            shifted[:, 2] -= (du, dv)  # dst(o) = src(M^-1 (o + d)): sample at the sub-pixel o + d
            hit |= cv2.warpAffine(ignore, shifted, (out_w, out_h), flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (hit == 0).astype(np.float32)


# --------------------------------------------------------------------------
# One image -> one record
# --------------------------------------------------------------------------

def build_image_record(image: np.ndarray, task: Mapping[str, Any], config: Mapping[str, Any]
                       ) -> Tuple[bytes, List[Dict[str, Any]], Dict[str, int]]:
    """One decoded image and its task -> (serialized record, skip entries, masked counts).

    Args:
        image: RGB uint8 (H, W, 3), the decoded image of ``task``.
        task: an image task from :func:`load_coco`.
        config: loaded bottom-up config.

    Returns:
        ``(record bytes, skips, masked {reason: regions})``. Skips:
        ``keypoint_outside_image`` (per joint, label dropped),
        ``too_many_people`` (per person, masked), ``malformed_segmentation``
        (per region, bbox masked).

    Raises:
        ImageError: ``image_size_mismatch``.
    """
    from pose import bottom_up_codec
    from schemas import bottom_up as layout

    data = config["data"]
    height, width = int(image.shape[0]), int(image.shape[1])
    if task.get("width") is not None and (task["width"], task["height"]) != (width, height):
        raise core.ImageError(core.SKIP_SIZE_MISMATCH, f"annotation says {task['width']}x{task['height']}, "
                                                       f"image is {width}x{height}")
    geometry = bottom_up_codec.target_geometry(config)
    size = geometry.input_size
    split, image_id = task["split"], int(task["image_id"])
    affine = coordinates.letterbox_affine(height, width, size)
    skips: List[Dict[str, Any]] = []
    masked: Counter = Counter()

    persons = list(task["persons"])
    ignore = [dict(region) for region in task.get("ignore", [])]
    joints = geometry.num_joints
    if persons:
        keypoints = np.asarray([person["keypoints"] for person in persons], dtype=np.float64).reshape(-1, joints, 2)
        visibility = np.asarray([person["visibility"] for person in persons], dtype=np.int64).reshape(-1, joints)
    else:
        keypoints, visibility = np.zeros((0, joints, 2)), np.zeros((0, joints), np.int64)
    x, y = keypoints[..., 0], keypoints[..., 1]
    outside = (visibility > 0) & ((x < -0.5) | (x > width - 0.5) | (y < -0.5) | (y > height - 0.5))
    visibility = np.where(outside, 0, visibility)
    for index in np.flatnonzero(outside.any(axis=1)):
        joints_out = np.flatnonzero(outside[index]).tolist()
        skips.append(core._skip(core.SKIP_KEYPOINT_OUTSIDE, split=split, image_id=image_id,
                                annotation_id=persons[index]["annotation_id"], joints=joints_out,
                                count=len(joints_out)))
    # Persons left without a label are masked like persons without keypoints; then the largest max_people are kept.
    has_label = visibility.any(axis=1)
    order = sorted((index for index in range(len(persons)) if has_label[index]),
                   key=lambda index: (-persons[index]["area"], persons[index]["annotation_id"]))
    max_people = int(config["bottom_up"]["max_people"])
    kept = order[:max_people]
    for index in range(len(persons)):
        if not has_label[index]:
            ignore.append({"annotation_id": persons[index]["annotation_id"], "reason": MASK_NO_KEYPOINTS,
                           "bbox": persons[index]["bbox"], "segmentation": persons[index].get("segmentation")})
    for index in order[max_people:]:
        skips.append(core._skip(SKIP_TOO_MANY_PEOPLE, split=split, image_id=image_id,
                                annotation_id=persons[index]["annotation_id"]))
        ignore.append({"annotation_id": persons[index]["annotation_id"], "reason": MASK_TOO_MANY_PEOPLE,
                       "bbox": persons[index]["bbox"], "segmentation": persons[index].get("segmentation")})

    input_points = coordinates.apply_affine(keypoints[kept], affine) if kept else np.zeros((0, joints, 2))
    flags = visibility[kept].astype(np.float64)
    input_keypoints = np.concatenate([np.where(flags[..., None] > 0, input_points, 0.0), flags[..., None]], axis=-1)
    targets = bottom_up_codec.encode(input_keypoints, geometry)

    ignore_mask = np.zeros((height, width), np.uint8)
    for region in ignore:
        try:
            region_mask = segmentation_mask(region.get("segmentation"), height, width)
        except (ValueError, TypeError, KeyError) as error:
            why = f"{type(error).__name__}: {error}" if isinstance(error, KeyError) else str(error)
            region_mask = _bbox_mask(region.get("bbox"), height, width)
            if region_mask is None:
                region_mask = np.zeros((height, width), np.uint8)
                skips.append(core._skip(SKIP_MALFORMED_SEGMENTATION, split=split, image_id=image_id,
                                        annotation_id=region["annotation_id"], mask_reason=region["reason"],
                                        message=f"no usable segmentation ({why}) or bbox: region not masked"))
            else:
                skips.append(core._skip(SKIP_MALFORMED_SEGMENTATION, split=split, image_id=image_id,
                                        annotation_id=region["annotation_id"], mask_reason=region["reason"],
                                        message=f"no usable segmentation ({why}): bbox masked instead"))
        ignore_mask |= region_mask
        masked[region["reason"]] += 1
    image_to_output = affine * np.asarray(geometry.factor)[:, None]
    mask = ignore_to_output_mask(ignore_mask, image_to_output, geometry.output_size)

    warped = coordinates.warp_image(image, affine, (size, size))
    record = layout.build_example({
        "dataset": task["dataset"],
        "image/encoded": core.encode_crop(warped, data["image_format"], data["jpeg_quality"]),
        "image/format": data["image_format"],
        "image/id": image_id, "image/height": height, "image/width": width, "input/size": size,
        "affine": affine, "targets": targets, "mask": mask,
        "person/annotation_id": [persons[index]["annotation_id"] for index in kept],
        "person/area": [persons[index]["area"] for index in kept],
        "person/keypoints": input_keypoints,
    })
    return record.SerializeToString(deterministic=True), skips, dict(sorted(masked.items()))
