"""Evaluation report: Markdown tables + PNG overlays of predicted skeletons.

:func:`write_report` writes ``<evaluation_dir>/report.md`` and
``<evaluation_dir>/overlays/*.png``. Overlays are drawn on the eval records'
own crops (the model input), so no source image is needed: predicted joints
(image pixels) are mapped into the crop with the record's crop affine
(:func:`pose.coordinates.crop_affine`); the skeleton is the schema's.
Predicted limbs are drawn in colour, ground-truth joints as small white
rings, joints scored below 0.2 are left out. For a candidate with attention
heads (its ``heatmaps`` signature has an ``attention`` output), the same crops
with the attention map blended over them go to ``overlays/attention/*.png``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pose import coordinates
from pose.images import decode_image_tf
from schemas import features as record_features
from schemas import serving
from schemas.dataset_meta import KeypointSchema, as_schema, schema_for

_SCORE_THRESHOLD = 0.2


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(cell) if not isinstance(cell, str) else cell for cell in row) + " |"
              for row in rows]
    return "\n".join(lines)


def draw_skeleton(image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, schema: KeypointSchema,
                  gt_keypoints: np.ndarray | None = None, gt_visible: np.ndarray | None = None,
                  upscale: int | None = None) -> np.ndarray:
    """Draws a skeleton on an RGB uint8 image (H, W, 3); returns a new (H*upscale, W*upscale, 3) image.

    ``upscale`` defaults to enlarging the image to about 256 rows.

    Args:
        keypoints: (K, 2) in the image's pixel frame; scores: (K,).
        gt_keypoints, gt_visible: optional (K, 2) / (K,) ground truth, drawn as rings.
    """
    import cv2

    if upscale is None:  # small crops are enlarged to about 256 rows so the skeleton is readable
        upscale = max(1, int(np.ceil(256 / image.shape[0])))
    canvas = cv2.resize(np.ascontiguousarray(image), None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR)
    # Pixel centres: x_up = (x + 0.5) * upscale - 0.5 keeps pixel-centre alignment after resizing.
    points = (np.asarray(keypoints, np.float64) + 0.5) * upscale - 0.5
    show = np.asarray(scores) > _SCORE_THRESHOLD
    palette = [(255, 64, 64), (64, 255, 64), (64, 128, 255), (255, 200, 0), (255, 0, 255), (0, 255, 255)]
    for index, (a, b) in enumerate(schema.skeleton):
        if show[a] and show[b]:
            cv2.line(canvas, tuple(int(round(v)) for v in points[a]), tuple(int(round(v)) for v in points[b]),
                     palette[index % len(palette)], 2, cv2.LINE_AA)
    for k in np.flatnonzero(show):
        cv2.circle(canvas, tuple(int(round(v)) for v in points[k]), 3, (255, 0, 0), -1, cv2.LINE_AA)
    if gt_keypoints is not None:
        gt_points = (np.asarray(gt_keypoints, np.float64) + 0.5) * upscale - 0.5
        for k in np.flatnonzero(np.asarray(gt_visible) > 0):
            cv2.circle(canvas, tuple(int(round(v)) for v in gt_points[k]), 4, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _overlay_people(pattern: str, persons: Sequence[Mapping[str, Any]], dataset: KeypointSchema | str,
                    count: int) -> Iterator[Tuple[Dict[str, Any], Mapping[str, Any], Tuple[int, int, float, float]]]:
    """The first ``count`` eval records that have a prediction: ``(parsed record, person, key)``, in file order."""
    schema = as_schema(dataset)
    lookup = {(int(p["image_id"]), int(p["annotation_id"]), round(float(p["center"][0]), 2),
               round(float(p["center"][1]), 2)): p for p in persons}
    files = sorted(f for f in tf.io.gfile.glob(pattern) if not os.path.basename(f).startswith("."))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    found = 0
    for serialized in tf.data.TFRecordDataset(files, compression_type=compression).take(count * 4):
        if found >= count:
            return
        try:
            record = {key: value.numpy()[0] for key, value in
                      record_features.parse_records(serialized[None], schema.num_joints).items()}
        except tf.errors.InvalidArgumentError:
            continue
        center = record["bbox/center"]
        key = (int(record["image/id"]), int(record["annotation/id"]), round(float(center[0]), 2),
               round(float(center[1]), 2))
        person = lookup.get(key)
        if person is None:
            continue
        found += 1
        yield record, person, key


def _write_png(path: str, image: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode overlay {path}")
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(encoded.tobytes())


def _fresh_directory(directory: str) -> None:
    tf.io.gfile.makedirs(directory)
    for stale in tf.io.gfile.glob(os.path.join(directory, "*.png")):
        tf.io.gfile.remove(stale)


def write_overlays(evaluation_dir: str, pattern: str, persons: Sequence[Mapping[str, Any]],
                   dataset: KeypointSchema | str, count: int) -> List[str]:
    """Draws the predictions of the first ``count`` eval records on their crops (the meta's skeleton;
    ``dataset``: a dataset meta or bundled name); returns PNG paths."""
    if count <= 0:
        return []
    directory = os.path.join(evaluation_dir, "overlays")
    _fresh_directory(directory)
    schema = as_schema(dataset)
    written: List[str] = []
    for record, person, key in _overlay_people(pattern, persons, dataset, count):
        image = decode_image_tf(record["image/encoded"]).numpy()
        input_size = (int(record["crop/height"]), int(record["crop/width"]))
        matrix = coordinates.crop_affine(record["bbox/center"], record["bbox/scale"], input_size)
        prediction = np.asarray(person["prediction"], np.float64).reshape(-1, 3)
        crop_points = coordinates.apply_affine(prediction[:, :2], matrix)
        gt_points = coordinates.apply_affine(np.asarray(person["gt_keypoints"], np.float64).reshape(-1, 2), matrix)
        canvas = draw_skeleton(image, crop_points, prediction[:, 2], schema, gt_points,
                               np.asarray(person["visibility"]))
        path = os.path.join(directory, f"{len(written):02d}_img{key[0]}_ann{key[1]}.png")
        _write_png(path, canvas)
        written.append(path)
    return written


def saved_model_attention_channels(model_path: str) -> int:
    """Channels A of the ``attention`` output of a SavedModel's ``heatmaps`` signature, 0 if it has none.

    Reads ``saved_model.pb`` only (no variables are restored), so it is cheap for every model.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(model_path, "saved_model.pb")
    if not tf.io.gfile.exists(path):
        return 0
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        signature = meta_graph.signature_def.get(serving.HEATMAPS)
        if signature is not None and serving.OUTPUT_ATTENTION in signature.outputs:
            dims = signature.outputs[serving.OUTPUT_ATTENTION].tensor_shape.dim
            return int(dims[-1].size) if dims else 1
    return 0


def write_attention_overlays(evaluation_dir: str, model_path: str, pattern: str,
                             persons: Sequence[Mapping[str, Any]], dataset: KeypointSchema | str,
                             count: int) -> List[str]:
    """Person crops with the model's attention map blended over them (models with attention heads).

    The crops are the same first ``count`` eval records as :func:`write_overlays`;
    the maps come from the SavedModel's ``heatmaps`` signature (``attention``
    output, :mod:`schemas.serving`), resized to the crop and coloured
    (:func:`pose.overlay.blend_maps`; part-wise maps: their maximum over
    joints), enlarged like the skeleton overlays. Writes
    ``<evaluation_dir>/overlays/attention/*.png``; returns the paths (none for
    a model without attention).
    """
    import cv2

    from pose.overlay import blend_maps

    directory = os.path.join(evaluation_dir, "overlays", "attention")
    if tf.io.gfile.exists(directory):      # a re-run must not show an earlier model's maps
        _fresh_directory(directory)
    if count <= 0 or not saved_model_attention_channels(model_path):
        return []
    _fresh_directory(directory)
    people = list(_overlay_people(pattern, persons, dataset, count))
    if not people:
        return []
    crops = np.stack([decode_image_tf(record["image/encoded"]).numpy() for record, _, _ in people])
    signature = tf.saved_model.load(model_path).signatures[serving.HEATMAPS]
    attention = signature(**{serving.INPUT_IMAGES: tf.constant(crops, tf.float32)})[serving.OUTPUT_ATTENTION]
    blended = blend_maps(crops, attention.numpy())
    upscale = max(1, int(np.ceil(256 / crops.shape[1])))   # as draw_skeleton enlarges the crops
    written: List[str] = []
    for index, ((_, _, key), image) in enumerate(zip(people, blended)):
        path = os.path.join(directory, f"{index:02d}_img{key[0]}_ann{key[1]}.png")
        _write_png(path, cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_LINEAR))
        written.append(path)
    return written


def render_markdown(blessing: Mapping[str, Any], per_keypoint: Mapping[str, Mapping[str, Any]],
                    overlays: Sequence[str], evaluation_dir: str, attention_overlays: Sequence[str] = ()) -> str:
    """The report text."""
    dataset = blessing["dataset"]
    metric = blessing.get("metric") or ("oks" if dataset == "coco" else "pckh")
    lines = [f"# Evaluation report ({dataset})", "",
             f"Verdict: **{'BLESSED' if blessing['blessed'] else 'NOT_BLESSED'}**  ",
             f"Candidate: `{blessing['candidate']}`  ",
             f"Baseline: `{blessing.get('baseline') or 'none (change thresholds skipped)'}`  ",
             f"Persons evaluated: {blessing['num_persons']}; skipped: {blessing.get('skipped') or 'none'}", ""]
    if blessing.get("reasons"):
        lines += ["Reasons:", ""] + [f"- {reason}" for reason in blessing["reasons"]] + [""]
    baseline = blessing.get("baseline_metrics") or {}
    rows = [[name, value, baseline.get(name), (value - baseline[name]) if name in baseline else None,
             blessing.get("tfma_metrics", {}).get(name)] for name, value in blessing["metrics"].items()]
    title = {"oks": "COCO keypoint stats (pycocotools)" if dataset == "coco" else
             "OKS keypoint stats (pycocotools, the dataset meta's sigmas and categories)",
             "pck": "PCK@0.2 of the box's longer side, AUC (alpha 0..0.5), EPE (pixels)",
             "pckh": "MPII PCKh (%)"}[metric]
    lines += [f"## {title}", "", markdown_table(["metric", "candidate", "baseline", "change", "TFMA"], rows), ""]
    if blessing.get("checks"):
        lines += ["## Thresholds", "", markdown_table(
            ["metric", "kind", "bound", "value", "passed"],
            [[c["metric"], c["kind"], c["bound"], c["value"], "skipped (no baseline)" if c["skipped"] else c["passed"]]
             for c in blessing["checks"]]), ""]
    slices = {name: table for name, table in (blessing.get("slices") or {}).items() if name != "overall"}
    if slices:
        key = {"oks": "AP", "pck": "PCK@0.2", "pckh": "PCKh@0.5"}[metric]
        lines += ["## Slices (TFMA)", "", markdown_table(
            ["slice", key, "persons"],
            [[name, table.get("candidate", {}).get(key), int(table.get("candidate", {}).get("example_count", 0))]
             for name, table in sorted(slices.items())]), ""]
    if metric == "pck":
        lines += ["## Per joint", "", markdown_table(
            ["joint", "PCK@0.2", "EPE (px)", "labelled"],
            [[name, v["PCK@0.2"], v["EPE"], v["count"]] for name, v in per_keypoint.items()]), ""]
    elif metric == "oks":
        lines += ["## Per keypoint (detections matched at OKS 0.5)", "", markdown_table(
            ["joint", "mean OKS term", "share >= 0.5", "labelled"],
            [[name, v["similarity"], v["accuracy"], v["count"]] for name, v in per_keypoint.items()]), ""]
    else:
        lines += ["## Per joint", "", markdown_table(
            ["joint", "PCKh@0.5", "PCKh@0.1", "labelled"],
            [[name, v["PCKh@0.5"], v["PCKh@0.1"], v["count"]] for name, v in per_keypoint.items()]), ""]
    if overlays:
        lines += ["## Overlays", "", "Predicted skeletons on eval crops (white rings: ground truth).", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, evaluation_dir)})" for p in overlays] + [""]
    if attention_overlays:
        lines += ["## Attention maps", "", "The model's attention maps blended over the same crops (jet colours: "
                  "blue 0, red 1; part-wise models: the maximum over joints).", ""]
        lines += [f"![{os.path.basename(p)}]({os.path.relpath(p, evaluation_dir)})" for p in attention_overlays]
        lines += [""]
    return "\n".join(lines)


def write_report(evaluation_dir: str, blessing: Mapping[str, Any], per_keypoint: Mapping[str, Any],
                 pattern: str, persons: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                 num_overlays: int = 6) -> Dict[str, Any]:
    """Writes ``report.md`` and the overlays; returns ``{"markdown": path, "overlays": [paths],
    "attention_overlays": [paths]}`` (the latter for candidates with attention heads, from
    ``blessing["candidate"]``'s SavedModel)."""
    schema = schema_for(config)
    overlays = write_overlays(evaluation_dir, pattern, persons, schema, num_overlays)
    attention_overlays = []
    if blessing.get("candidate"):
        attention_overlays = write_attention_overlays(evaluation_dir, blessing["candidate"], pattern, persons,
                                                      schema, num_overlays)
    path = os.path.join(evaluation_dir, "report.md")
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(render_markdown(blessing, per_keypoint, overlays, evaluation_dir, attention_overlays))
    return {"markdown": path, "overlays": overlays, "attention_overlays": attention_overlays}
