"""Evaluator: Beam inference over ``Split-eval`` + TFMA metrics/thresholds -> blessing.

Steps of :func:`run_evaluator`:

1. **Inference** (Beam): read ``<examples_dir>/Split-eval`` records, batch them,
   run the candidate's (and the baseline's) ``serving_default`` signature
   (flip test and DARK decoding happen inside the exported graph, keypoints
   come back in original-image pixels), join them with the records' ground
   truth into one tf.Example per person (:func:`components.tfma_metrics.build_joined_example`).
   Records that cannot be evaluated (unparsable, wrong dataset or schema
   version, non-finite predictions, no ``gt_valid`` row) go to a dead-letter
   file with their reason and are counted; any dead letter blocks the blessing.
2. **TFMA**: ``tfma.run_model_analysis`` over the joined examples in
   materialized-predictions mode, with our custom metrics (the dataset meta's
   ``metric``: OKS AP/AR with the meta's sigmas and categories, PCK@0.2 / AUC /
   EPE of the box, or MPII PCKh), slices by person size, and the value/change
   thresholds in the EvalConfig.
3. **Direct check**: the same metrics computed directly (pycocotools / PCK / PCKh)
   must equal TFMA's; also writes the COCO results json and per-keypoint numbers.

The keypoint layout is the config's dataset meta (``dataset_meta``, else the bundled
``dataset``; :func:`evaluation_schema`); a candidate that carries another meta in its
export (``assets.extra/dataset_meta.json``) is refused before any inference.
4. **Blessing**: ``BLESSED`` iff TFMA's validation passed, no record was
   skipped and TFMA agrees with the direct computation.
5. **Report**: ``evaluation/report.md`` + PNG overlays.
6. **Deployment artifacts** (``eval.deploy_artifacts``): each LiteRT / ONNX artifact beside the
   SavedModel is run by its own runtime on the same records, gets the full metric table and a verdict
   relative to the SavedModel's result (:mod:`components.deploy_eval`); ``blessing.json`` lists them
   under ``deploy_artifacts``. They never change the SavedModel's verdict.

Outputs in ``output_dir``: ``BLESSED``/``NOT_BLESSED``, ``blessing.json``,
``evaluation/{keypoint_results.json, metrics.json, report.md, overlays/,
joined/, dead_letters*.jsonl, tfma/}``.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Mapping, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf

from components import blessing as blessing_lib
from components import metrics_coco, metrics_mpii, metrics_pck, pusher, tfma_metrics
from pose.config import require_value_threshold
from schemas import examples as examples_layout
from schemas import jsonio
from schemas import features as record_features
from schemas import dataset_meta, serving
from schemas.dataset_meta import KeypointSchema
from toolkit import cli

logger = logging.getLogger(__name__)

DEFAULT_BEAM_ARGS = ("--direct_num_workers=1",)
EVALUATION_DIR = "evaluation"
_TOLERANCE = 1e-9


def resolve_baseline(push_destination: str) -> str | None:
    """The latest blessed, completely pushed model directory under ``push_destination``, or ``None``.

    Reads our Pusher's layout (``PUSH_COMPLETE`` + ``push_record.json``) and TFX's
    standard Pusher's (``<unix time>/saved_model.pb``): see
    :func:`components.pusher.latest_blessed_version`.
    """
    if not push_destination:
        return None
    return pusher.latest_blessed_version(push_destination)


def eval_file_pattern(examples_dir: str) -> str:
    """``<examples_dir>/Split-eval/*`` if present, else the records directly in ``examples_dir``
    (or ``examples_dir`` itself when it is a glob or a file).

    Raises:
        FileNotFoundError: the pattern matches no file.
    """
    split = examples_layout.split_dir(examples_dir, "eval")
    if tf.io.gfile.isdir(split):
        pattern = os.path.join(split, "*")
    elif tf.io.gfile.isdir(examples_dir):
        pattern = os.path.join(examples_dir, "*")
    else:
        pattern = examples_dir
    files = [f for f in tf.io.gfile.glob(pattern) if not os.path.basename(f).startswith(".")]
    if not files:
        raise FileNotFoundError(f"no eval records found at {pattern}")
    return pattern


# --------------------------------------------------------------------------
# Beam inference
# --------------------------------------------------------------------------

def _person_size(annotation_id: int, gt_area: float, scale: np.ndarray, padding: float) -> str:
    """COCO size slice of a record: its GT area (the :func:`metrics_coco.oks_area` rule for records
    without one, as :func:`metrics_coco.ground_truth_from_persons`), or the box area for detector boxes."""
    box = np.asarray(scale, np.float64) / padding
    if annotation_id >= 0:
        area, _ = metrics_coco.oks_area(float(gt_area), [0.0, 0.0, float(box[0]), float(box[1])])
        return metrics_coco.person_size(area)
    return metrics_coco.person_size(float(box[0] * box[1]))


class InferenceFn(beam.DoFn):
    """Runs the models on a batch of serialized records; emits joined examples.

    Main output: serialized joined tf.Examples. Tagged output :attr:`DEAD_LETTER`:
    JSON lines ``{"reason", "detail", "image_id", "annotation_id"}`` with reasons
    ``unparsable_record``, ``model_error`` (the signature failed on this record),
    ``schema_version``, ``wrong_dataset``, ``non_finite_prediction``, ``no_gt_valid_row``,
    ``no_gt_annotation`` (metric ``pck``: the record's annotation is not in ``box_sizes``).
    A failing batch is retried record by record to isolate the bad ones.

    Args:
        dataset: the records' ``dataset`` (the meta's ``dataset_name``).
        num_joints: K (default: the bundled meta ``dataset``'s).
        box_sizes: ``{annotation id: longer side of its GT box, pixels}`` (metric ``pck``): goes
            into the joined example's ``head_size`` (the PCK normaliser).
    """

    DEAD_LETTER = "dead_letter"

    def __init__(self, model_paths: Mapping[str, str], dataset: str, padding: float = 1.25,
                 gt_valid_path: str | None = None, num_joints: int | None = None,
                 box_sizes: Mapping[int, float] | None = None):
        self._model_paths = dict(model_paths)
        self._dataset = dataset
        self._padding = float(padding)
        self._gt_valid_path = gt_valid_path
        self._num_joints = int(num_joints) if num_joints else dataset_meta.bundled(dataset).num_joints
        self._box_sizes = dict(box_sizes) if box_sizes is not None else None

    def setup(self):
        self._loaded = {name: tf.saved_model.load(path) for name, path in self._model_paths.items()}
        self._signatures = {name: model.signatures[serving.SERVING_DEFAULT] for name, model in self._loaded.items()}
        self._gt_valid = metrics_mpii.load_gt_valid(self._gt_valid_path) if self._gt_valid_path else None
        self._persons = beam.metrics.Metrics.counter("evaluator", "persons")

    def _dead(self, reason: str, detail: str, parsed: Mapping[str, Any] | None = None, index: int = 0):
        beam.metrics.Metrics.counter("evaluator", f"skipped_{reason}").inc()
        letter = {"reason": reason, "detail": detail[:500]}
        if parsed is not None:
            letter["image_id"] = int(parsed["image/id"][index])
            if "annotation/id" in parsed:   # person-crop records (bottom-up records have none)
                letter["annotation_id"] = int(parsed["annotation/id"][index])
        return beam.pvalue.TaggedOutput(self.DEAD_LETTER, jsonio.dumps(letter, nonfinite=jsonio.NONFINITE_STRING))

    def _parse(self, batch: List[bytes]) -> Dict[str, np.ndarray]:
        """The records' features (raises InvalidArgument/ValueError for a record that does not parse)."""
        return {key: value.numpy() for key, value in
                record_features.parse_records(tf.constant(batch), self._num_joints).items()}

    def process(self, batch: List[bytes]) -> Iterator[Any]:
        try:
            yield from self._process_batch(list(batch))
        except (tf.errors.InvalidArgumentError, ValueError) as error:
            if len(batch) == 1:
                try:  # tell a broken record from a record the model cannot process (e.g. a corrupt JPEG)
                    self._parse(list(batch))
                    reason = "model_error"
                except (tf.errors.InvalidArgumentError, ValueError):
                    reason = "unparsable_record"
                yield self._dead(reason, str(error))
                return
            for record in batch:  # isolate the bad record(s)
                yield from self.process([record])

    def _process_batch(self, batch: List[bytes]) -> Iterator[Any]:
        parsed = self._parse(batch)
        good = []
        for index in range(len(batch)):
            dataset = parsed["dataset"][index].decode("utf-8", "replace")
            if int(parsed["schema/version"][index]) != record_features.SCHEMA_VERSION:
                yield self._dead("schema_version", f"record schema {int(parsed['schema/version'][index])}, "
                                 f"expected {record_features.SCHEMA_VERSION}", parsed, index)
            elif dataset != self._dataset:
                yield self._dead("wrong_dataset", f"record dataset {dataset!r}, config {self._dataset!r}", parsed, index)
            else:
                good.append(index)
        if not good:
            return
        examples = tf.constant([batch[index] for index in good])
        predictions = {}
        for name, signature in self._signatures.items():
            outputs = signature(**{serving.INPUT_EXAMPLES: examples})
            keypoints = outputs[serving.OUTPUT_KEYPOINTS_IMAGE].numpy().astype(np.float64)
            scores = outputs[serving.OUTPUT_SCORES].numpy().astype(np.float64)
            if keypoints.shape != (len(good), self._num_joints, 2) or scores.shape != (len(good), self._num_joints):
                raise RuntimeError(f"model {name} returned keypoints {keypoints.shape} / scores {scores.shape}, "
                                   f"expected ({len(good)}, {self._num_joints}, 2) / ({len(good)}, {self._num_joints})")
            predictions[name] = np.concatenate([keypoints, scores[..., None]], axis=-1)
        head_sizes = np.zeros(len(good))
        matched = np.ones(len(good), bool)
        if self._gt_valid is not None:
            for position, index in enumerate(good):
                try:
                    row = metrics_mpii.match_rows(parsed["keypoints/image"][index][None],
                                                  parsed["keypoints/visibility"][index][None] > 0, self._gt_valid)[0]
                    head_sizes[position] = self._gt_valid["head_sizes"][row]
                except ValueError as error:
                    matched[position] = False
                    yield self._dead("no_gt_valid_row", str(error), parsed, index)
        if self._box_sizes is not None:
            for position, index in enumerate(good):
                size = self._box_sizes.get(int(parsed["annotation/id"][index]))
                if size is None:
                    matched[position] = False
                    yield self._dead("no_gt_annotation", f"annotation id {int(parsed['annotation/id'][index])} "
                                     "has no box in gt_annotations (PCK is normalised by it)", parsed, index)
                else:
                    head_sizes[position] = size
        for position, index in enumerate(good):
            if not matched[position]:
                continue
            bad_models = [name for name, values in predictions.items() if not np.all(np.isfinite(values[position]))]
            if bad_models:
                yield self._dead("non_finite_prediction", f"models {bad_models}", parsed, index)
                continue
            scale = parsed["bbox/scale"][index]
            annotation_id = int(parsed["annotation/id"][index])
            gt_area = float(parsed["person/area"][index])
            person = {
                "image_id": int(parsed["image/id"][index]), "annotation_id": annotation_id,
                "image_height": int(parsed["image/height"][index]), "image_width": int(parsed["image/width"][index]),
                "gt_area": gt_area, "box_score": float(parsed["bbox/score"][index]),
                "window_area": float(scale[0] * scale[1]), "center": parsed["bbox/center"][index], "scale": scale,
                "gt_keypoints": parsed["keypoints/image"][index], "visibility": parsed["keypoints/visibility"][index],
                "head_size": float(head_sizes[position]),
                "person_size": _person_size(annotation_id, gt_area, scale, self._padding),
            }
            self._persons.inc()
            yield tfma_metrics.build_joined_example(
                person, {name: values[position] for name, values in predictions.items()}).SerializeToString()


class BottomUpInferenceFn(InferenceFn):
    """:class:`InferenceFn` for bottom-up models on whole-image records (:mod:`schemas.bottom_up`).

    The models' ``serving_default`` gives up to N people per image (keypoints in
    original pixels, ``trainer/export_bottom_up.py``); each predicted person becomes
    one joined example in the same format as the top-down persons, so TFMA, the
    direct COCO computation, thresholds and the report are shared: no ground
    truth per person (``annotation_id`` -1, scored against the ground-truth
    annotation file like detector boxes), ``box_score`` 1 (the pose score is the
    evaluator's rescoring, as for ground-truth boxes: the mean of the joint
    scores above ``eval.rescore_threshold``; the decoder's own person score is the
    mean of all joint scores), ``window_area`` the box of the person's joints
    (OKS-NMS area). With a baseline, row i of an image carries each model's i-th
    person (best first); a model with fewer people gets an absent row
    (``box_score`` 0, zero keypoints and scores) which the metrics drop
    (:func:`components.tfma_metrics.persons_from_joined`).

    Dead letters: ``unparsable_record``, ``model_error``, ``schema_version``,
    ``wrong_dataset``, ``wrong_approach``, ``non_finite_prediction``.
    """

    def __init__(self, model_paths: Mapping[str, str], dataset: str, padding: float = 1.25,
                 gt_valid_path: str | None = None, num_joints: int | None = None,
                 box_sizes: Mapping[int, float] | None = None):
        super().__init__(model_paths, dataset, padding, None, num_joints)

    def _parse(self, batch: List[bytes]) -> Dict[str, np.ndarray]:
        from schemas import bottom_up

        spec = {key: value for key, value in bottom_up.feature_spec().items()
                if key in ("schema/version", "approach", "dataset", "image/id", "image/height", "image/width")}
        parsed = tf.io.parse_example(tf.constant(batch), spec)
        return {key: value.numpy() for key, value in parsed.items()}

    def _process_batch(self, batch: List[bytes]) -> Iterator[Any]:
        from schemas import bottom_up

        parsed = self._parse(batch)
        good = []
        for index in range(len(batch)):
            if int(parsed["schema/version"][index]) != bottom_up.SCHEMA_VERSION:
                yield self._dead("schema_version", f"record schema {int(parsed['schema/version'][index])}, "
                                 f"expected {bottom_up.SCHEMA_VERSION}", parsed, index)
            elif parsed["approach"][index].decode("utf-8", "replace") != bottom_up.APPROACH:
                yield self._dead("wrong_approach", "not a bottom-up record", parsed, index)
            elif parsed["dataset"][index].decode("utf-8", "replace") != self._dataset:
                yield self._dead("wrong_dataset", f"record dataset {parsed['dataset'][index]!r}, "
                                 f"config {self._dataset!r}", parsed, index)
            else:
                good.append(index)
        if not good:
            return
        examples = tf.constant([batch[index] for index in good])
        people = {}
        for name, signature in self._signatures.items():
            outputs = signature(**{serving.INPUT_EXAMPLES: examples})
            keypoints = outputs[serving.OUTPUT_KEYPOINTS].numpy().astype(np.float64)   # (B, N, K, 3)
            counts = outputs[serving.OUTPUT_NUM_PEOPLE].numpy().astype(np.int64)        # (B,)
            if keypoints.ndim != 4 or keypoints.shape[0] != len(good) or keypoints.shape[2:] != (self._num_joints, 3):
                raise RuntimeError(f"model {name} returned keypoints {keypoints.shape}, expected "
                                   f"({len(good)}, N, {self._num_joints}, 3)")
            people[name] = (keypoints, counts)
        for position, index in enumerate(good):
            rows = max(int(counts[position]) for _, counts in people.values())
            predictions = {}
            for name, (keypoints, counts) in people.items():
                values = np.zeros((rows, self._num_joints, 3))
                present = min(int(counts[position]), rows)
                values[:present] = keypoints[position, :present]
                predictions[name] = values
            bad_models = [name for name, values in predictions.items() if not np.all(np.isfinite(values))]
            if bad_models:
                yield self._dead("non_finite_prediction", f"models {bad_models}", parsed, index)
                continue
            candidate = predictions[tfma_metrics.CANDIDATE]
            for row in range(rows):
                joints = candidate[row]
                present = bool(row < int(people[tfma_metrics.CANDIDATE][1][position]))
                seen = joints[joints[:, 2] > 0, :2] if present else np.zeros((0, 2))
                extent = (seen.max(axis=0) - seen.min(axis=0) + 1.0) if len(seen) else np.ones(2)
                person = {
                    "image_id": int(parsed["image/id"][index]), "annotation_id": -1,
                    "image_height": int(parsed["image/height"][index]),
                    "image_width": int(parsed["image/width"][index]),
                    "gt_area": 0.0, "box_score": 1.0 if present else 0.0,
                    "window_area": float(extent[0] * extent[1]),
                    "center": (seen.mean(axis=0) if len(seen) else np.zeros(2)).astype(np.float32),
                    "scale": extent.astype(np.float32),
                    "gt_keypoints": np.zeros(self._num_joints * 2, np.float32),
                    "visibility": np.zeros(self._num_joints, np.int64), "head_size": 0.0,
                    "person_size": metrics_coco.person_size(float(extent[0] * extent[1])),
                }
                self._persons.inc()
                yield tfma_metrics.build_joined_example(
                    person, {name: values[row] for name, values in predictions.items()}).SerializeToString()

def run_inference(pattern: str, model_paths: Mapping[str, str], dataset: str, output_dir: str,
                  batch_size: int, padding: float, gt_valid_path: str | None,
                  beam_args: Sequence[str], approach: str = "top_down", num_joints: int | None = None,
                  box_sizes: Mapping[int, float] | None = None) -> Dict[str, Any]:
    """Beam pipeline: records -> joined examples (``output_dir/joined-*.tfrecord``) + dead letters.

    ``approach``: ``top_down`` (person-crop records, :class:`InferenceFn`) or
    ``bottom_up`` (whole-image records, :class:`BottomUpInferenceFn`);
    ``num_joints`` / ``box_sizes``: see :class:`InferenceFn`.

    Returns:
        ``{"joined_pattern", "num_persons", "skipped": {reason: count}}``.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    joined_prefix = os.path.join(output_dir, "joined", "joined")
    dead_prefix = os.path.join(output_dir, "dead_letters")
    for stale in tf.io.gfile.glob(joined_prefix + "*") + tf.io.gfile.glob(dead_prefix + "*"):
        tf.io.gfile.remove(stale)
    with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
        outputs = (
            pipeline
            | "ReadEvalRecords" >> beam.io.ReadFromTFRecord(pattern)
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=batch_size)
            | "RunModels" >> beam.ParDo(
                (BottomUpInferenceFn if approach == "bottom_up" else InferenceFn)(
                    model_paths, dataset, padding, gt_valid_path, num_joints, box_sizes)).with_outputs(
                InferenceFn.DEAD_LETTER, main="joined")
        )
        _ = outputs.joined | "WriteJoined" >> beam.io.WriteToTFRecord(joined_prefix, file_name_suffix=".tfrecord")
        _ = outputs[InferenceFn.DEAD_LETTER] | "WriteDeadLetters" >> beam.io.WriteToText(
            dead_prefix, file_name_suffix=".jsonl")
    skipped: Dict[str, int] = {}
    for path in tf.io.gfile.glob(dead_prefix + "*"):
        with tf.io.gfile.GFile(path) as handle:
            for line in handle:
                if line.strip():
                    reason = json.loads(line)["reason"]
                    skipped[reason] = skipped.get(reason, 0) + 1
    joined_pattern = joined_prefix + "*"
    count = sum(1 for path in tf.io.gfile.glob(joined_pattern) for _ in tf.data.TFRecordDataset(path))
    return {"joined_pattern": joined_pattern, "num_persons": count, "skipped": skipped}


def read_joined(pattern: str, num_joints: int, model_names: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """Reads joined examples back into ``{model_name: [person dicts as the TFMA combiner sees them]}``."""
    spec = tfma_metrics.joined_feature_spec(num_joints, model_names)
    persons: Dict[str, List[Dict[str, Any]]] = {name: [] for name in model_names}
    files = sorted(tf.io.gfile.glob(pattern))
    for batch in tf.data.TFRecordDataset(files).batch(1024):
        parsed = {key: value.numpy() for key, value in tf.io.parse_example(batch, spec).items()}
        for index in range(len(parsed["image_id"])):
            base = {key: parsed[key][index].tolist() for key in spec
                    if not key.endswith("_predictions") and key != tfma_metrics.SLICE_FEATURE}
            base[tfma_metrics.SLICE_FEATURE] = parsed[tfma_metrics.SLICE_FEATURE][index].decode()
            for name in model_names:
                persons[name].append(dict(base, prediction=parsed[tfma_metrics.prediction_key(name)][index].tolist()))
    return persons


# --------------------------------------------------------------------------
# TFMA
# --------------------------------------------------------------------------

def run_tfma(joined_pattern: str, eval_config, output_path: str, has_baseline: bool,
             beam_args: Sequence[str]) -> Dict[str, Any]:
    """Runs TFMA on the joined examples; returns metrics per slice/model, diffs and the validation."""
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_model_analysis import constants
    from tensorflow_model_analysis.api import types

    shared = [types.EvalSharedModel(model_name=tfma_metrics.CANDIDATE, model_type=constants.MATERIALIZED_PREDICTION)]
    if has_baseline:
        shared.append(types.EvalSharedModel(model_name=tfma_metrics.BASELINE, is_baseline=True,
                                            model_type=constants.MATERIALIZED_PREDICTION))
    tfma.run_model_analysis(eval_shared_model=shared if has_baseline else shared[0], eval_config=eval_config,
                            data_location=joined_pattern, output_path=output_path,
                            pipeline_options=PipelineOptions(list(beam_args)))
    slices: Dict[str, Dict[str, Dict[str, float]]] = {}
    for metrics_for_slice in tfma.load_metrics(output_path):
        keys = metrics_for_slice.slice_key.single_slice_keys
        slice_name = "overall" if not keys else ",".join(
            f"{key.column}={key.bytes_value.decode() if key.HasField('bytes_value') else key.int64_value}" for key in keys)
        table = slices.setdefault(slice_name, {})
        for item in metrics_for_slice.metric_keys_and_values:
            model = item.key.model_name or tfma_metrics.CANDIDATE
            group = f"{model}_diff" if item.key.is_diff else model
            table.setdefault(group, {})[item.key.name] = float(item.value.double_value.value)
    validation = tfma.load_validation_result(output_path)
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            failures.append({"metric": failure.metric_key.name, "is_diff": failure.metric_key.is_diff,
                             "value": failure.metric_value.double_value.value, "message": failure.message,
                             "threshold": str(failure.metric_threshold).replace("\n", " ")})
    return {"slices": slices, "validation_ok": bool(validation.validation_ok), "failures": failures,
            "missing_thresholds": bool(validation.missing_thresholds),
            "missing_slices": [str(spec).replace("\n", " ").strip() or "overall" for spec in validation.missing_slices]}


def tfma_failure_reason(tfma_result: Mapping[str, Any]) -> str:
    """One non-empty line saying why TFMA's validation failed (a :func:`run_tfma` result).

    Lists TFMA's failures when it gave some; otherwise says what TFMA reported
    missing (``missing_thresholds``: no threshold reached TFMA, e.g. a gate of
    ``max_drop`` alone without a baseline; ``missing_slices``), or that it gave no
    reason at all. Never ``TFMA validation failed: []``.
    """
    failures = tfma_result.get("failures") or []
    if failures:
        return "TFMA validation failed: " + "; ".join(
            f"{failure['metric']}{' (change)' if failure.get('is_diff') else ''} = {failure['value']:.4f}: "
            f"{failure['message'] or failure['threshold']}" for failure in failures)
    missing = []
    if tfma_result.get("missing_thresholds"):
        missing.append("no threshold was given to TFMA (missing_thresholds: the gate needs a value threshold; "
                       "max_drop is checked only against a baseline)")
    if tfma_result.get("missing_slices"):
        missing.append(f"slices without metrics: {', '.join(tfma_result['missing_slices'])}")
    if missing:
        return "TFMA validation failed: " + "; ".join(missing)
    return "TFMA validation failed without reporting a failure, a missing threshold or a missing slice"


# --------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------

def _direct_metrics(schema: KeypointSchema, persons: Sequence[Mapping[str, Any]], options: Mapping[str, Any],
                    ) -> Dict[str, Any]:
    if schema.metric == "oks":
        stats, per_keypoint, results = tfma_metrics.coco_evaluate_joined(persons, **options)
        return {"metrics": {name: stats[name] for name in tfma_metrics.COCO_METRIC_NAMES},
                "per_keypoint": per_keypoint, "results": results,
                "extra": {"num_results": stats["num_results"],
                          metrics_coco.AREA_FROM_BOX: int(stats.get(metrics_coco.AREA_FROM_BOX, 0))}}
    if schema.metric == "pck":
        pred, gt, scored, sizes = tfma_metrics.pck_arrays(persons)
        return {"metrics": tfma_metrics.pck_metrics_from_joined(persons),
                "per_keypoint": metrics_pck.per_joint(pred, gt, scored, sizes, schema.joint_names),
                "results": None, "extra": {"joints_scored": int(scored.sum()), "instances": int(len(sizes))}}
    converted = tfma_metrics.persons_from_joined(persons)
    table = metrics_mpii.pckh_table(np.stack([p["keypoints"] for p in converted]),
                                    np.stack([p["gt_keypoints"] for p in converted]),
                                    np.stack([p["visibility"] for p in converted]) > 0,
                                    np.asarray([p["head_size"] for p in converted]))
    return {"metrics": {name: table[name] for name in tfma_metrics.MPII_METRIC_NAMES},
            "per_keypoint": table["per_joint"], "results": None,
            "extra": {key: value for key, value in table.items() if key != "per_joint"}}


def _format_check(row: Mapping[str, Any]) -> str:
    value = "missing" if row["value"] is None else f"{row['value']:.4f}"
    if row["kind"] == "max_drop" and row.get("lower_is_better"):
        return f"{row['metric']} change {value} > +{row['bound']:.4f} (max_drop; lower is better)"
    if row["kind"] == "max_drop":
        return f"{row['metric']} change {value} < -{-row['bound']:.4f} (max_drop)"
    relation = "<" if row["kind"] == "lower_bound" else ">"
    text = f"{row['metric']} = {value} {relation} {row['kind']} {row['bound']:.4f}"
    if row["value"] == -1:
        text += " (pycocotools' -1: no ground-truth person in that size range)"
    return text


def evaluation_schema(config: Mapping[str, Any], candidate_path: str | None = None) -> KeypointSchema:
    """The keypoint layout an evaluation uses: the config's dataset meta, checked against the candidate's.

    The config's ``dataset_meta`` (file or mapping), else its bundled ``dataset``
    (:func:`schemas.dataset_meta.schema_for`). A candidate export that carries a meta
    (``assets.extra/dataset_meta.json``, :func:`schemas.dataset_meta.read_serving_meta`)
    must carry the same one (equal :attr:`KeypointSchema.hash`); exports made before
    dataset metas carry none and are taken as the config says.

    Raises:
        ValueError: a malformed meta, or a candidate trained on another layout (naming both).
    """
    schema = dataset_meta.schema_for(config)
    if candidate_path:
        carried = dataset_meta.read_serving_meta(candidate_path)
        if carried is not None and carried.hash != schema.hash:
            raise ValueError(f"candidate {candidate_path} carries the dataset meta {carried.name!r} "
                             f"({carried.num_joints} joints, hash {carried.hash[:12]}) but the config's is "
                             f"{schema.name!r} ({schema.num_joints} joints, hash {schema.hash[:12]}): give the "
                             "model's meta (--dataset-meta / dataset_meta:)")
    return schema


def gt_box_sizes(api, categories: Sequence[int]) -> Dict[int, float]:
    """``{annotation id: max(box w, box h)}`` of the annotations of ``categories`` with a positive box
    (the PCK normaliser, as :func:`components.metrics_pck.match_results`)."""
    chosen = set(int(c) for c in categories)
    sizes = {}
    for annotation in api.dataset["annotations"]:
        bbox = annotation.get("bbox")
        if int(annotation.get("category_id", 1)) in chosen and isinstance(bbox, (list, tuple)) and len(bbox) == 4:
            size = max(float(bbox[2]), float(bbox[3]))
            if size > 0:
                sizes[int(annotation["id"])] = size
    return sizes


def run_evaluator(model_dir: str, examples_dir: str, config: Mapping[str, Any], output_dir: str,
                  baseline_model_dir: str | None = None, gt_annotations: str | None = None,
                  data_anomalies: Mapping[str, List[str]] | None = None,
                  beam_args: List[str] | None = None) -> Dict[str, Any]:
    """Evaluates a candidate SavedModel (against an optional baseline) and writes the blessing.

    Args:
        model_dir: trainer output holding ``Format-Serving`` (or a SavedModel dir, e.g. a pushed version).
        examples_dir: ExampleGen output (``Split-eval`` is used), or a directory/glob of eval records.
        config: loaded experiment config (:func:`pose.config.load_config`); uses ``dataset``,
            ``data.padding`` and the ``eval`` section.
        output_dir: blessing directory; ``evaluation/`` is written inside.
        baseline_model_dir: model to compare against (change thresholds); ``None`` skips them.
        gt_annotations: COCO keypoint json (needed for detector-box records; gives the exact
            protocol with crowd / unlabelled persons) or, for MPII, a ``gt_valid.mat`` layout
            file (required: head sizes).
        data_anomalies: ``{split: [anomaly lines]}`` from the data gate
            (:func:`components.data_validation.read_anomalies`); any refuses the blessing,
            each split named in the reasons.
        beam_args: Beam pipeline flags; default DirectRunner in-memory.

    Returns:
        The ``blessing.json`` dict (``blessed``, ``metrics``, ``baseline_metrics``,
        ``checks``, ``reasons``, ``skipped``, ``slices``, ...).

    Raises:
        ValueError: bad config/thresholds (also a gate without a value threshold,
            :func:`pose.config.require_value_threshold`), MPII without ``gt_annotations``, a malformed
            ``gt_annotations`` file (checked before inference; the message names the entry),
            no evaluable record.
        FileNotFoundError: missing model or records.
    """
    schema = evaluation_schema(config)
    dataset = schema.name
    metric = schema.metric
    is_coco = schema.hash == dataset_meta.bundled("coco").hash   # COCO's own options stay exactly as they were
    eval_config_section = config["eval"]
    thresholds = tfma_metrics.validate_thresholds(eval_config_section.get("thresholds", {}), schema)
    batch_size = int(eval_config_section["batch_size"])
    if batch_size < 1:
        raise ValueError(f"eval.batch_size must be >= 1, got {batch_size}")
    approach = config.get("approach", "top_down")
    if approach == "bottom_up" and not gt_annotations:
        raise ValueError("gt_annotations (the COCO keypoint annotation file of the eval images) is required for "
                         "approach bottom_up: predictions carry no box and are matched to the file's persons")
    if metric == "pckh" and not gt_annotations:
        raise ValueError("gt_annotations (a gt_valid.mat layout file) is required for MPII PCKh: "
                         "the records carry no head boxes")
    if metric == "pck" and not gt_annotations:
        raise ValueError(f"gt_annotations (the COCO-format annotation file of the eval records) is required for "
                         f"dataset {dataset!r} (metric pck): PCK is normalised by each annotation's box, which "
                         "the records do not carry")
    if gt_annotations and not tf.io.gfile.exists(gt_annotations):
        raise FileNotFoundError(f"gt_annotations {gt_annotations} does not exist")
    categories = None   # a meta's categories in gt_annotations (pycocotools catIds); None for COCO / MPII
    box_sizes = None
    if gt_annotations:  # fail fast, before any inference: the message names the file and the bad entry
        if metric == "pckh":
            metrics_mpii.load_gt_valid(gt_annotations)
        else:
            api = metrics_coco.load_ground_truth(gt_annotations)
            if not is_coco:   # joint count and category names checked against the meta
                categories = dataset_meta.check_annotations(schema, api.dataset, gt_annotations)
            if metric == "pck":
                box_sizes = gt_box_sizes(api, categories)
    candidate_path = pusher.saved_model_path(model_dir)
    evaluation_schema(config, candidate_path)   # a candidate trained on another layout is refused here
    baseline_path = pusher.saved_model_path(baseline_model_dir) if baseline_model_dir else None
    pattern = eval_file_pattern(examples_dir)
    # Before any inference: with max_drop alone (or no threshold) the first model is never blessed.
    require_value_threshold(thresholds, "evaluator config")
    beam_args = cli.local_beam_flags(list(beam_args) if beam_args else list(DEFAULT_BEAM_ARGS))
    evaluation_dir = os.path.join(output_dir, EVALUATION_DIR)
    tf.io.gfile.makedirs(evaluation_dir)
    blessing_lib.clear_blessing(output_dir)  # a failed re-run must not leave the previous verdict behind

    model_paths = {tfma_metrics.CANDIDATE: candidate_path}
    if baseline_path:
        model_paths[tfma_metrics.BASELINE] = baseline_path
    inference = run_inference(pattern, model_paths, dataset, evaluation_dir, batch_size,
                              float(config["data"].get("padding", 1.25)),
                              gt_annotations if metric == "pckh" else None, beam_args, approach=approach,
                              num_joints=schema.num_joints, box_sizes=box_sizes)
    if inference["num_persons"] == 0:
        raise ValueError(f"no evaluable record in {pattern} (skipped: {inference['skipped']})")

    coco_options = {
        "gt_annotations": gt_annotations if metric == "oks" else None,
        "rescore_threshold": float(eval_config_section["rescore_threshold"]),
        "nms_threshold": float(eval_config_section["oks_nms_threshold"]),
        "soft_nms": bool(eval_config_section["soft_nms"]),
        "restrict_to_eval_images": bool(eval_config_section.get("restrict_to_eval_images", False)),
    }
    if metric == "oks" and not is_coco:   # the meta's sigmas, names and categories (never COCO's sigmas)
        coco_options.update(dataset_meta=schema.to_meta(), category_ids=categories)
    slice_by_size = bool(eval_config_section.get("slice_by_person_size", True)) and not coco_options["gt_annotations"]
    eval_config = tfma_metrics.build_eval_config(schema, thresholds, baseline_path is not None, coco_options,
                                                 slice_by_person_size=slice_by_size)
    tfma_result = run_tfma(inference["joined_pattern"], eval_config, os.path.join(evaluation_dir, "tfma"),
                           baseline_path is not None, beam_args)

    persons = read_joined(inference["joined_pattern"], schema.num_joints, list(model_paths))
    direct = _direct_metrics(schema, persons[tfma_metrics.CANDIDATE], coco_options)
    baseline_direct = _direct_metrics(schema, persons[tfma_metrics.BASELINE], coco_options) if baseline_path else None
    overall = tfma_result["slices"].get("overall", {})
    tfma_metrics_candidate = {name: overall.get(tfma_metrics.CANDIDATE, {}).get(name)
                              for name in direct["metrics"]}
    mismatch = {name: (tfma_metrics_candidate[name], value) for name, value in direct["metrics"].items()
                if tfma_metrics_candidate[name] is None or (abs(tfma_metrics_candidate[name] - value) > _TOLERANCE
                                                             and not (np.isnan(value) and np.isnan(tfma_metrics_candidate[name])))}

    baseline_metrics = baseline_direct["metrics"] if baseline_direct else None
    checks = blessing_lib.threshold_checks(direct["metrics"], thresholds, baseline_metrics,
                                           lower_is_better=tfma_metrics.LOWER_IS_BETTER)
    reasons = [_format_check(row) for row in checks if not row["passed"]]
    if inference["skipped"]:
        reasons.append(f"{sum(inference['skipped'].values())} eval records could not be evaluated: {inference['skipped']}")
    if mismatch:
        reasons.append(f"TFMA metrics differ from the direct computation: {mismatch}")
    if not tfma_result["validation_ok"] and not any(not row["passed"] for row in checks):
        reasons.append(tfma_failure_reason(tfma_result))
    if data_anomalies:
        from components import data_validation

        reasons += data_validation.anomaly_reasons(data_anomalies)
    blessed = (bool(tfma_result["validation_ok"]) and not inference["skipped"] and not mismatch
               and not data_anomalies)
    if blessed and reasons:  # TFMA passed but our row-by-row twin disagrees: do not bless on a contradiction
        blessed = False
        reasons.append("TFMA validation passed but the threshold checks did not")
    if not blessed and not reasons:  # a verdict always says why (never an empty reason list)
        reasons.append(tfma_failure_reason(tfma_result) if not tfma_result["validation_ok"]
                       else f"data gate anomalies: {dict(data_anomalies or {})}")

    deploy_rows = None
    deploy_formats = list(eval_config_section.get("deploy_artifacts") or [])
    if deploy_formats and approach == "top_down":
        # Each deployment artifact, run by its own runtime on the same records, gated relative to the
        # SavedModel's result above (components/deploy_eval.py); it never changes the SavedModel's verdict.
        from components import deploy_eval

        deploy_dir = os.path.join(os.path.dirname(candidate_path.rstrip("/")), serving.DEPLOY_DIR)
        deploy_rows = deploy_eval.evaluate_artifacts(
            deploy_dir, deploy_formats, pattern, config, persons[tfma_metrics.CANDIDATE], direct["metrics"],
            lambda replaced: _direct_metrics(schema, replaced, coco_options)["metrics"], log=logger.info)
    if direct["results"] is not None:
        with tf.io.gfile.GFile(os.path.join(evaluation_dir, "keypoint_results.json"), "w") as handle:
            handle.write(jsonio.dumps(direct["results"]))
    record = {
        "blessed": blessed,
        "dataset": dataset,
        "metric": metric,
        "dataset_meta_hash": schema.hash,
        "candidate": candidate_path,
        "baseline": baseline_path,
        "metrics": direct["metrics"],
        "baseline_metrics": baseline_metrics,
        "tfma_metrics": tfma_metrics_candidate,
        "slices": tfma_result["slices"],
        "thresholds": thresholds,
        "change_thresholds_applied": baseline_path is not None,
        "checks": checks,
        "reasons": reasons,
        "tfma_validation_ok": tfma_result["validation_ok"],
        "tfma_failures": tfma_result["failures"],
        "data_anomalies": dict(data_anomalies or {}),
        "num_persons": inference["num_persons"],
        "skipped": inference["skipped"],
        # GT persons whose OKS area came from their box (no annotation area; metrics_coco.oks_area)
        metrics_coco.AREA_FROM_BOX: int(direct["extra"].get(metrics_coco.AREA_FROM_BOX, 0)),
        "gt_annotations": gt_annotations,
        "deploy_artifacts": deploy_rows,
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    with tf.io.gfile.GFile(os.path.join(evaluation_dir, "metrics.json"), "w") as handle:
        handle.write(jsonio.dumps({"metrics": direct["metrics"], "extra": direct["extra"],
                                 "per_keypoint": direct["per_keypoint"], "slices": tfma_result["slices"],
                                 "baseline_metrics": baseline_metrics}, indent=2, default=float))
    try:
        from components import report

        record["report"] = report.write_report(
            evaluation_dir, record, direct["per_keypoint"], pattern, persons[tfma_metrics.CANDIDATE], config,
            num_overlays=0 if approach == "bottom_up" else int(eval_config_section.get("report_overlays", 6)))
    except Exception as error:  # the report is informative only; the blessing must still be written
        logger.exception("report failed")
        record["report_error"] = f"{type(error).__name__}: {error}"
    blessing_lib.write_blessing(output_dir, record)
    return record
