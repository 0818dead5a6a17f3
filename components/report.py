"""Evaluation report: Markdown tables + PNG overlays of predicted skeletons.

:func:`write_report` writes ``<evaluation_dir>/report.md`` and
``<evaluation_dir>/overlays/*.png``. Overlays are drawn on the eval records'
own crops (the model input), so no source image is needed: predicted joints
(image pixels) are mapped into the crop with the record's crop affine
(:func:`pose.coordinates.crop_affine`); the skeleton is the schema's.
Predicted limbs are drawn in colour, ground-truth joints as small white
rings, joints scored below 0.2 are left out.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from pose import coordinates
from pose.images import decode_image_tf
from schemas import features as record_features
from schemas.keypoints import KeypointSchema, get_schema

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


def write_overlays(evaluation_dir: str, pattern: str, persons: Sequence[Mapping[str, Any]], dataset: str,
                   count: int) -> List[str]:
    """Draws the predictions of the first ``count`` eval records on their crops; returns PNG paths."""
    import cv2

    if count <= 0:
        return []
    schema = get_schema(dataset)
    lookup = {(int(p["image_id"]), int(p["annotation_id"]), round(float(p["center"][0]), 2),
               round(float(p["center"][1]), 2)): p for p in persons}
    directory = os.path.join(evaluation_dir, "overlays")
    tf.io.gfile.makedirs(directory)
    for stale in tf.io.gfile.glob(os.path.join(directory, "*.png")):
        tf.io.gfile.remove(stale)
    written: List[str] = []
    files = sorted(f for f in tf.io.gfile.glob(pattern) if not os.path.basename(f).startswith("."))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    for serialized in tf.data.TFRecordDataset(files, compression_type=compression).take(count * 4):
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
        image = decode_image_tf(record["image/encoded"]).numpy()
        input_size = (int(record["crop/height"]), int(record["crop/width"]))
        matrix = coordinates.crop_affine(center, record["bbox/scale"], input_size)
        prediction = np.asarray(person["prediction"], np.float64).reshape(-1, 3)
        crop_points = coordinates.apply_affine(prediction[:, :2], matrix)
        gt_points = coordinates.apply_affine(np.asarray(person["gt_keypoints"], np.float64).reshape(-1, 2), matrix)
        canvas = draw_skeleton(image, crop_points, prediction[:, 2], schema, gt_points,
                               np.asarray(person["visibility"]))
        path = os.path.join(directory, f"{len(written):02d}_img{key[0]}_ann{key[1]}.png")
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"could not encode overlay {path}")
        with tf.io.gfile.GFile(path, "wb") as handle:
            handle.write(encoded.tobytes())
        written.append(path)
        if len(written) >= count:
            break
    return written


def render_markdown(blessing: Mapping[str, Any], per_keypoint: Mapping[str, Mapping[str, Any]],
                    overlays: Sequence[str], evaluation_dir: str) -> str:
    """The report text."""
    dataset = blessing["dataset"]
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
    title = "COCO keypoint stats (pycocotools)" if dataset == "coco" else "MPII PCKh (%)"
    lines += [f"## {title}", "", markdown_table(["metric", "candidate", "baseline", "change", "TFMA"], rows), ""]
    if blessing.get("checks"):
        lines += ["## Thresholds", "", markdown_table(
            ["metric", "kind", "bound", "value", "passed"],
            [[c["metric"], c["kind"], c["bound"], c["value"], "skipped (no baseline)" if c["skipped"] else c["passed"]]
             for c in blessing["checks"]]), ""]
    slices = {name: table for name, table in (blessing.get("slices") or {}).items() if name != "overall"}
    if slices:
        key = "AP" if dataset == "coco" else "PCKh@0.5"
        lines += ["## Slices (TFMA)", "", markdown_table(
            ["slice", key, "persons"],
            [[name, table.get("candidate", {}).get(key), int(table.get("candidate", {}).get("example_count", 0))]
             for name, table in sorted(slices.items())]), ""]
    if dataset == "coco":
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
    return "\n".join(lines)


def write_report(evaluation_dir: str, blessing: Mapping[str, Any], per_keypoint: Mapping[str, Any],
                 pattern: str, persons: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                 num_overlays: int = 6) -> Dict[str, Any]:
    """Writes ``report.md`` and the overlays; returns ``{"markdown": path, "overlays": [paths]}``."""
    overlays = write_overlays(evaluation_dir, pattern, persons, config["dataset"], num_overlays)
    path = os.path.join(evaluation_dir, "report.md")
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write(render_markdown(blessing, per_keypoint, overlays, evaluation_dir))
    return {"markdown": path, "overlays": overlays}
