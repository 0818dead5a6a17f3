"""Scores deployment artifacts (LiteRT / ONNX, :mod:`trainer.export_deploy`) on the eval split, each by its runtime.

Every listed artifact runs itself (:class:`components.deploy_runtime.DeployRunner`: the LiteRT interpreter or
ONNX Runtime, never TensorFlow or the trainer) on the crops of the eval records the Evaluator scored the
SavedModel on; its keypoints go back to image pixels with the records' ``bbox/center`` / ``bbox/scale``
(:func:`pose.coordinates.crop_to_image`) and through the same metric code as the SavedModel's (the full
COCO AP/AR or PCKh table). The gate is relative to the SavedModel's own result in the same run:
an artifact is blessed iff ``|metric(artifact) - metric(SavedModel)| <= max_delta[format]`` on the primary
metric (:data:`PRIMARY_METRIC`; defaults :data:`DEFAULT_MAX_DELTA`: 0.005 for float32 / float16 / ONNX,
0.01 for int8) and the artifact ran on every person the SavedModel was scored on. A failed artifact does
not change the SavedModel's verdict.

Config: ``eval.deploy_artifacts`` (formats to score, default none) and ``eval.deploy_max_delta``
(``{format: bound}`` overriding the defaults).
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.deploy_runtime import DeployRunner, artifact_path
from pose import coordinates
from pose.images import decode_image_tf
from schemas import features as record_features
from schemas import serving

PRIMARY_METRIC = {"oks": "AP", "pck": "PCK@0.2", "pckh": "PCKh@0.5"}
"""The gated metric of each metric family of a dataset meta (:attr:`schemas.dataset_meta.KeypointSchema.metric`)."""
DEFAULT_MAX_DELTA = {"tflite_fp32": 0.005, "tflite_fp16": 0.005, "onnx": 0.005, "tflite_int8": 0.01}
BLESSED, NOT_BLESSED = "BLESSED", "NOT_BLESSED"


def max_deltas(config: Mapping[str, Any]) -> Dict[str, float]:
    """:data:`DEFAULT_MAX_DELTA` with ``config["eval"]["deploy_max_delta"]`` on top."""
    return {**DEFAULT_MAX_DELTA, **{k: float(v) for k, v in ((config.get("eval") or {}).get("deploy_max_delta")
                                                            or {}).items()}}


PersonKey = Tuple[int, int, Tuple[float, ...]]


def person_key(image_id: Any, annotation_id: Any, center: Any, scale: Any) -> PersonKey:
    """The identity of one eval crop: image id, annotation id and its window (center, scale in pixels).

    Detector-box crops all have annotation id -1, so ``(image_id, annotation_id)`` alone does not tell
    an image's crops apart; the window does. Both sides read the window from the same float32 record
    values, rounded here to 1e-3 px.
    """
    window = np.round(np.concatenate([np.ravel(center), np.ravel(scale)]).astype(np.float32).astype(np.float64), 3)
    return int(image_id), int(annotation_id), tuple(float(v) for v in window)


def artifact_predictions(model_path: str, pattern: str, num_joints: int, input_size: Sequence[int],
                         batch_size: int = 32, threads: int | None = None
                         ) -> Tuple[Dict[PersonKey, np.ndarray], float]:
    """Runs one artifact on every record of ``pattern``.

    Returns:
        ``({person_key: (K, 3) float64 [x, y image pixels, score]}, ms per crop)``
        (:func:`person_key`; the timing covers the runtime's calls only).

    Raises:
        ValueError: two records with the same key (the same crop twice: the artifact's predictions could
            not be told apart).
    """
    runner = DeployRunner(model_path, threads=threads)
    files = sorted(tf.io.gfile.glob(pattern))
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    predictions: Dict[Tuple[int, int], np.ndarray] = {}
    seconds, crops_run = 0.0, 0
    for batch in tf.data.TFRecordDataset(files, compression_type=compression).batch(int(batch_size)):
        parsed = record_features.parse_records(batch, num_joints)
        crops = np.stack([decode_image_tf(encoded).numpy() for encoded in parsed["image/encoded"]]).astype(np.float32)
        start = time.perf_counter()
        outputs = runner.run(crops)
        seconds += time.perf_counter() - start
        crops_run += len(crops)
        keypoints = coordinates.crop_to_image(outputs[serving.OUTPUT_KEYPOINTS_CROP], parsed["bbox/center"].numpy(),
                                              parsed["bbox/scale"].numpy(), input_size)
        rows = np.concatenate([keypoints, outputs[serving.OUTPUT_SCORES][..., None].astype(np.float64)], axis=-1)
        for image_id, annotation_id, center, scale, row in zip(
                parsed["image/id"].numpy(), parsed["annotation/id"].numpy(), parsed["bbox/center"].numpy(),
                parsed["bbox/scale"].numpy(), rows):
            key = person_key(image_id, annotation_id, center, scale)
            if key in predictions:
                raise ValueError(f"{pattern}: two eval records of image {key[0]}, annotation {key[1]} with the same "
                                 f"window {key[2]}: the artifact's predictions cannot be matched to the persons")
            predictions[key] = row
    return predictions, 1000.0 * seconds / max(crops_run, 1)


def persons_with(persons: Sequence[Mapping[str, Any]], predictions: Mapping[PersonKey, np.ndarray]
                 ) -> Tuple[List[Dict[str, Any]], int]:
    """The SavedModel's joined persons with their ``prediction`` replaced by the artifact's (matched by
    :func:`person_key`); and how many lacked one."""
    replaced, missing = [], 0
    for person in persons:
        row = predictions.get(person_key(person["image_id"], person["annotation_id"], person["center"],
                                         person["scale"]))
        if row is None or not np.all(np.isfinite(row)):
            missing += 1
            continue
        replaced.append({**person, "prediction": np.asarray(row, np.float64).reshape(-1).tolist()})
    return replaced, missing


def gate_row(name: str, metrics: Mapping[str, float], reference: Mapping[str, float], primary: str,
             max_delta: float, missing: int) -> Dict[str, Any]:
    """Verdict of one artifact: ``{"format", "metrics", "delta", "max_delta", "verdict", "reasons"}``."""
    value, base = metrics.get(primary), reference.get(primary)
    delta = None if value is None or base is None else float(value) - float(base)
    reasons = []
    if delta is None:
        reasons.append(f"{primary} missing")
    elif abs(delta) > max_delta:
        reasons.append(f"|{primary}(artifact) - {primary}(SavedModel)| = |{value:.4f} - {base:.4f}| = "
                       f"{abs(delta):.4f} > {max_delta:.4f}")
    if missing:
        reasons.append(f"{missing} persons without a finite prediction from the artifact")
    return {"format": name, "metrics": dict(metrics), "primary_metric": primary, "delta": delta,
            "max_delta": float(max_delta), "verdict": NOT_BLESSED if reasons else BLESSED, "reasons": reasons}


def evaluate_artifacts(deploy_dir: str, formats: Sequence[str], pattern: str, config: Mapping[str, Any],
                       persons: Sequence[Mapping[str, Any]], reference_metrics: Mapping[str, float],
                       metrics_fn: Callable[[Sequence[Mapping[str, Any]]], Mapping[str, float]],
                       log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Scores and gates each artifact of ``formats`` under ``deploy_dir``; one row per format.

    Args:
        deploy_dir: ``<model_dir>/Format-Deploy``, local or ``gs://`` (remote artifacts run from a local
            copy, :func:`local_artifact`).
        formats: formats to score (:data:`schemas.serving.DEPLOY_FORMATS`).
        pattern: eval record files (the ones the SavedModel was scored on).
        config: experiment config (``dataset``, ``data.input_size``, ``eval``).
        persons: the SavedModel's joined persons (:func:`components.evaluator.read_joined`).
        reference_metrics: the SavedModel's metrics from ``persons``.
        metrics_fn: joined persons -> metric table (the Evaluator's direct computation).

    Returns:
        rows of :func:`gate_row` plus ``runtime``, ``precision``, ``path``, ``size_bytes``, ``ms_per_crop``;
        an artifact that is absent or fails to run is a ``NOT_BLESSED`` row naming the error.
    """
    from schemas.dataset_meta import schema_for

    schema = schema_for(config)
    primary = PRIMARY_METRIC[schema.metric]
    deltas = max_deltas(config)
    num_joints = schema.num_joints
    rows = []
    for name in formats:
        runtime, precision, _ = serving.DEPLOY_FORMAT_INFO[name]
        path = artifact_path(deploy_dir, name)
        base = {"runtime": runtime, "precision": precision, "path": path}
        try:
            with local_artifact(path) as local:
                predictions, ms = artifact_predictions(local, pattern, num_joints, config["data"]["input_size"],
                                                       int(config["eval"]["batch_size"]), threads=1)
            replaced, missing = persons_with(persons, predictions)
            metrics = dict(metrics_fn(replaced)) if replaced else {}
            row = gate_row(name, metrics, reference_metrics, primary, deltas[name], missing)
            row.update(base, size_bytes=tf.io.gfile.stat(path).length, ms_per_crop=ms)
        except Exception as error:  # a broken artifact is named and refused, never fatal to the SavedModel
            row = {"format": name, **base, "metrics": {}, "primary_metric": primary, "delta": None,
                   "max_delta": deltas[name], "verdict": NOT_BLESSED, "size_bytes": None, "ms_per_crop": None,
                   "reasons": [f"could not run: {type(error).__name__}: {str(error)[:300]}"]}
        log(f"deploy artifact {name}: {primary} {row['metrics'].get(primary)} (delta {row['delta']}), "
            f"{row['verdict']}{'; ' + '; '.join(row['reasons']) if row['reasons'] else ''}")
        rows.append(row)
    return rows


@contextlib.contextmanager
def local_artifact(path: str):
    """``path`` itself when local, else a local copy of the artifact and its ``deploy.json`` (``gs://``, any
    ``tf.io.gfile`` scheme): the LiteRT interpreter and ONNX Runtime read local files only. The copy is removed
    on exit.

    Raises:
        FileNotFoundError: the artifact does not exist.
    """
    if "://" not in path:
        yield path
        return
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"model not found: {path}")
    with tempfile.TemporaryDirectory(prefix="deploy_artifact_") as directory:
        local = os.path.join(directory, posixpath.basename(path))
        tf.io.gfile.copy(path, local)
        spec = posixpath.join(posixpath.dirname(path), serving.DEPLOY_SPEC_FILE)
        if tf.io.gfile.exists(spec):
            tf.io.gfile.copy(spec, os.path.join(directory, serving.DEPLOY_SPEC_FILE))
        yield local


SUMMARY_KEY = "deploy_artifacts"
"""Name of the ModelBlessing custom property (a JSON value ``{"artifacts": [...]}``) holding :func:`summary_rows`."""


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def summary_rows(rows: Sequence[Mapping[str, Any]] | None) -> List[Dict[str, Any]]:
    """The per-artifact lines of the run summary and of ML Metadata, from :func:`evaluate_artifacts` rows.

    Each: ``format``, ``runtime``, ``precision``, ``metric`` (the gated metric's name), ``value`` (the
    artifact's), ``delta`` (artifact - SavedModel), ``max_delta``, ``verdict``, ``reasons``, ``size_bytes``,
    ``ms_per_crop``. Non-finite numbers become ``None`` (strict JSON, ML Metadata's JSON properties).
    """
    compact = []
    for row in rows or []:
        metric = row.get("primary_metric")
        compact.append({
            "format": row.get("format"), "runtime": row.get("runtime"), "precision": row.get("precision"),
            "metric": metric, "value": _finite((row.get("metrics") or {}).get(metric)),
            "delta": _finite(row.get("delta")), "max_delta": _finite(row.get("max_delta")),
            "verdict": row.get("verdict"), "reasons": [str(reason) for reason in row.get("reasons") or []],
            "size_bytes": _finite(row.get("size_bytes")), "ms_per_crop": _finite(row.get("ms_per_crop"))})
    return compact


def format_rows(rows: Sequence[Mapping[str, Any]], indent: str = "  ") -> List[str]:
    """Printable table of :func:`summary_rows`: format, precision, metric, delta, verdict, size (MB), ms/crop."""
    if not rows:
        return []
    metric = next((row.get("metric") for row in rows if row.get("metric")), "metric")

    def number(value, spec, missing="-"):
        return missing if value is None else format(value, spec)

    lines = [f"{indent}{'artifact':<12} {'precision':<9} {metric:>8} {'d' + metric:>8} {'verdict':<11} "
             f"{'size MB':>8} {'ms/crop':>8}"]
    for row in rows:
        size = None if row.get("size_bytes") is None else row["size_bytes"] / 1e6
        lines.append(f"{indent}{row.get('format') or '?':<12} {row.get('precision') or '?':<9} "
                     f"{number(row.get('value'), '8.4f'):>8} {number(row.get('delta'), '+8.4f'):>8} "
                     f"{row.get('verdict') or '?':<11} {number(size, '8.2f'):>8} "
                     f"{number(row.get('ms_per_crop'), '8.2f'):>8}")
        if row.get("verdict") != BLESSED and row.get("reasons"):
            lines.append(f"{indent}  {row.get('format')} not pushed: {'; '.join(row['reasons'])}")
    return lines
