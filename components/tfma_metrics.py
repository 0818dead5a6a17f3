"""TFMA custom metrics (OKS AP/AR, PCK/AUC/EPE, MPII PCKh) and the EvalConfig that gates on them.

TFMA runs in "materialized predictions" mode: the Evaluator's Beam inference
step (:mod:`components.evaluator`) writes one tf.Example per person with the
ground truth *and* every model's predictions, and TFMA reads the predictions
from the features (``ModelSpec.prediction_key``). The metrics below are set
metrics (AP needs every detection of an image for NMS and matching), so their
combiners collect the persons of a slice and call the same pure functions as
the direct computation (:mod:`components.metrics_coco`, :mod:`components.metrics_pck`,
:mod:`components.metrics_mpii`): TFMA numbers equal the direct ones by construction (tested).

The metric family is the dataset meta's ``metric`` (:mod:`schemas.dataset_meta`):
``oks`` -> :class:`CocoKeypointAP` (pycocotools with the meta's ``kpt_oks_sigmas``
and categories; COCO's sigmas for COCO only), ``pck`` -> :class:`PckAucEpe`
(``PCK@0.2`` of the box's longer side, ``AUC`` over alpha 0..0.5, ``EPE`` in pixels;
the box's longer side travels in the joined example's ``head_size`` feature),
``pckh`` -> :class:`MpiiPCKh`. Functions taking ``dataset`` accept a
:class:`~schemas.dataset_meta.KeypointSchema` or a bundled name (``"coco"``, ``"mpii"``).

Joined-example features (see :func:`joined_feature_spec`), all in original-image pixels:

=====================  ======  ========  ==========================================
feature                dtype   shape     meaning
=====================  ======  ========  ==========================================
image_id               int64   ()        source image id
annotation_id          int64   ()        annotation id, -1 for detector boxes
image_height/width     int64   ()        source image size
gt_area                float   ()        GT person area (OKS normaliser)
box_score              float   ()        detector score (1 for GT boxes)
window_area            float   ()        crop window w*h (OKS-NMS area, as HRNet)
center, scale          float   (2,)      crop window
gt_keypoints           float   (K*2,)    GT joints (x, y), 0-based image pixels
visibility             int64   (K,)      0 unlabelled, 1 occluded, 2 visible
head_size              float   ()        PCK normaliser: MPII head size, or the GT box's
                                          longer side (metric ``pck``); 0 when unknown
person_size            bytes   ()        small / medium / large (slicing feature)
<model>_predictions    float   (K*3,)    predicted (x, y, score) per joint
=====================  ======  ========  ==========================================

Thresholds (``config["eval"]["thresholds"]``): ``{metric: {"lower_bound": x,
"upper_bound": y, "max_drop": d}}``; ``lower/upper_bound`` become TFMA value
thresholds, ``max_drop`` an absolute change threshold (candidate - baseline
>= -d, higher is better; for :data:`LOWER_IS_BETTER` metrics such as ``EPE``:
candidate - baseline <= d). All thresholds apply to the overall slice only.
Change thresholds are left out when there is no baseline (TFX semantics).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Sequence

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.proto import config_pb2

from components import metrics_coco, metrics_mpii, metrics_pck
from schemas import dataset_meta, jsonio
from schemas.dataset_meta import KeypointSchema

CANDIDATE = "candidate"
BASELINE = "baseline"
LABEL_KEY = "gt_keypoints"
SLICE_FEATURE = "person_size"
_PERSON_FEATURES = ("image_id", "annotation_id", "image_height", "image_width", "gt_area", "box_score",
                    "window_area", "center", "scale", "visibility", "head_size")

COCO_METRIC_NAMES = metrics_coco.STAT_NAMES
MPII_METRIC_NAMES = ("PCKh@0.5", "PCKh@0.1", "Mean14", "Mean14@0.1") + metrics_mpii.GROUP_NAMES
PCK_METRIC_NAMES = metrics_pck.STAT_NAMES
LOWER_IS_BETTER = frozenset(metrics_pck.LOWER_IS_BETTER)
"""Metrics where smaller is better (``EPE``, pixels): ``max_drop`` on them bounds a rise."""
_THRESHOLD_KEYS = ("lower_bound", "upper_bound", "max_drop")


def prediction_key(model_name: str) -> str:
    """Feature holding ``model_name``'s packed (x, y, score) predictions."""
    return f"{model_name}_predictions"


def joined_feature_spec(num_joints: int, model_names: Sequence[str]) -> Dict[str, tf.io.FixedLenFeature]:
    """Parsing spec of the joined ground-truth + predictions examples."""
    spec = {key: tf.io.FixedLenFeature([], tf.int64)
            for key in ("image_id", "annotation_id", "image_height", "image_width")}
    spec.update({key: tf.io.FixedLenFeature([], tf.float32)
                 for key in ("gt_area", "box_score", "window_area", "head_size")})
    spec.update({
        "center": tf.io.FixedLenFeature([2], tf.float32),
        "scale": tf.io.FixedLenFeature([2], tf.float32),
        LABEL_KEY: tf.io.FixedLenFeature([num_joints * 2], tf.float32),
        "visibility": tf.io.FixedLenFeature([num_joints], tf.int64),
        SLICE_FEATURE: tf.io.FixedLenFeature([], tf.string),
    })
    for name in model_names:
        spec[prediction_key(name)] = tf.io.FixedLenFeature([num_joints * 3], tf.float32)
    return spec


def build_joined_example(person: Mapping[str, Any], predictions: Mapping[str, np.ndarray]) -> tf.train.Example:
    """One person's ground truth + ``{model_name: (K, 3) predictions}`` -> tf.Example."""
    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).ravel().tolist()))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).ravel().tolist()))

    feature = {
        "image_id": ints(person["image_id"]), "annotation_id": ints(person["annotation_id"]),
        "image_height": ints(person["image_height"]), "image_width": ints(person["image_width"]),
        "gt_area": floats(person["gt_area"]), "box_score": floats(person["box_score"]),
        "window_area": floats(person["window_area"]), "head_size": floats(person.get("head_size", 0.0)),
        "center": floats(person["center"]), "scale": floats(person["scale"]),
        LABEL_KEY: floats(person["gt_keypoints"]), "visibility": ints(person["visibility"]),
        SLICE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[person["person_size"].encode()])),
    }
    for name, values in predictions.items():
        feature[prediction_key(name)] = floats(values)
    return tf.train.Example(features=tf.train.Features(feature=feature))


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------

def _scalar(value) -> Any:
    array = np.asarray(value)
    return array.reshape(-1)[0] if array.size else None


class _PersonsCombiner(beam.CombineFn):
    """Collects the persons of one slice for one model; subclasses compute the set metric."""

    def __init__(self, keys: Dict[str, metric_types.MetricKey], model_name: str):
        self._keys = keys
        self._model_name = model_name

    def create_accumulator(self) -> List[Dict[str, Any]]:
        return []

    def add_input(self, accumulator: List[Dict[str, Any]], element: metric_types.StandardMetricInputs):
        predictions = element.get_predictions(self._model_name or None)
        if isinstance(predictions, Mapping):  # multi-model extracts keyed by model name
            predictions = predictions[self._model_name]
        features = element.features
        person = {key: np.asarray(features[key]).reshape(-1).tolist() for key in _PERSON_FEATURES}
        person = {key: (value if key in ("center", "scale", "visibility") else value[0]) for key, value in person.items()}
        person["gt_keypoints"] = np.asarray(element.get_labels(self._model_name or None)).reshape(-1).tolist()
        person["prediction"] = np.asarray(predictions, np.float64).reshape(-1).tolist()
        accumulator.append(person)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        merged: List[Dict[str, Any]] = []
        for accumulator in accumulators:
            merged.extend(accumulator)
        return merged

    def extract_output(self, accumulator: List[Dict[str, Any]]) -> Dict[metric_types.MetricKey, float]:
        values = self.compute(accumulator)
        return {key: float(values[name]) for name, key in self._keys.items()}

    def compute(self, persons: List[Dict[str, Any]]) -> Dict[str, float]:
        raise NotImplementedError


def persons_from_joined(persons: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Joined-example persons (flat lists) -> :mod:`metrics_coco` persons (arrays, image pixels).

    Rows whose ``box_score`` is 0 and whose prediction is all zeros are absent
    people (:class:`components.evaluator.BottomUpInferenceFn` pads a model's people
    to the other model's count) and are left out.
    """
    converted = []
    for person in persons:
        prediction = np.asarray(person["prediction"], np.float64).reshape(-1, 3)
        if float(person["box_score"]) == 0.0 and not np.any(prediction):
            continue   # an absent row: a bottom-up model with fewer people than another on this image
        converted.append({
            "image_id": int(person["image_id"]), "annotation_id": int(person["annotation_id"]),
            "image_height": int(person["image_height"]), "image_width": int(person["image_width"]),
            "keypoints": prediction[:, :2], "keypoint_scores": prediction[:, 2],
            "box_score": float(person["box_score"]), "area": float(person["window_area"]),
            "gt_keypoints": np.asarray(person["gt_keypoints"], np.float64).reshape(-1, 2),
            "visibility": np.asarray(person["visibility"], np.int64), "gt_area": float(person["gt_area"]),
            "center": np.asarray(person["center"], np.float64), "scale": np.asarray(person["scale"], np.float64),
            "head_size": float(person.get("head_size", 0.0)),
        })
    return converted


def _meta_schema(meta: Mapping[str, Any] | None) -> KeypointSchema | None:
    return dataset_meta.from_mapping(dict(meta), source="metric config dataset_meta") if meta else None


def coco_evaluate_joined(persons: Sequence[Mapping[str, Any]], gt_annotations: str | None = None,
                         rescore_threshold: float = 0.2, nms_threshold: float | None = 0.9,
                         soft_nms: bool = False, restrict_to_eval_images: bool = False,
                         dataset_meta: Mapping[str, Any] | None = None, category_ids: Sequence[int] | None = None,
                         ) -> tuple:
    """OKS AP/AR of joined persons: ``(stats, per_keypoint, results)`` of :func:`metrics_coco.evaluate_persons`.

    Args:
        dataset_meta: a meta mapping (:meth:`KeypointSchema.to_meta`) for a layout other than
            COCO's: its sigmas, joint names and skeleton are used; ``None``: COCO.
        category_ids: the meta's categories in ``gt_annotations`` (pycocotools ``catIds``); each
            person's category is then its annotation's (looked up by ``annotation_id``;
            detector boxes get the first category).

    Raises:
        ValueError: a meta without sigmas (OKS AP is impossible for it), malformed ground truth.
    """
    schema = _meta_schema(dataset_meta)
    converted = persons_from_joined(persons)
    gt: Any = gt_annotations or None
    if gt is not None and category_ids is not None:
        gt = metrics_coco.load_ground_truth(gt)
        category_of = {int(a["id"]): int(a.get("category_id", 1)) for a in gt.dataset["annotations"] if "id" in a}
        first = int(sorted(category_ids)[0])
        for person in converted:
            person["category_id"] = category_of.get(person["annotation_id"], first)
    return metrics_coco.evaluate_persons(
        converted, gt=gt, rescore_threshold=rescore_threshold, nms_threshold=nms_threshold, soft_nms=soft_nms,
        restrict_to_result_images=restrict_to_eval_images, schema=schema,
        category_ids=list(category_ids) if category_ids is not None and gt is not None else None)


def coco_metrics_from_joined(persons: Sequence[Mapping[str, Any]], **options: Any) -> Dict[str, float]:
    """The direct computation behind :class:`CocoKeypointAP` (options: :func:`coco_evaluate_joined`)."""
    stats, _, _ = coco_evaluate_joined(persons, **options)
    return stats


def pck_arrays(persons: Sequence[Mapping[str, Any]]) -> tuple:
    """``(pred (N, K, 2), gt (N, K, 2), scored (N, K), box_sizes (N,))`` of joined persons (metric ``pck``).

    Raises:
        ValueError: a person with labelled joints has no box size (``head_size`` <= 0): the
            Evaluator fills it from ``gt_annotations``.
    """
    converted = persons_from_joined(persons)
    if not converted:
        return np.zeros((0, 0, 2)), np.zeros((0, 0, 2)), np.zeros((0, 0), bool), np.zeros(0)
    pred = np.stack([p["keypoints"] for p in converted])
    gt = np.stack([p["gt_keypoints"] for p in converted])
    scored = np.stack([p["visibility"] for p in converted]) > 0
    sizes = np.asarray([p["head_size"] for p in converted], np.float64)
    if np.any(sizes[scored.any(-1)] <= 0):
        raise ValueError("PCK needs each person's ground-truth box: evaluate with gt_annotations "
                         "(the COCO-format annotation file of the eval records)")
    return pred, gt, scored, sizes


def pck_metrics_from_joined(persons: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """The direct computation behind :class:`PckAucEpe` (:func:`components.metrics_pck.pck_auc_epe`)."""
    pred, gt, scored, sizes = pck_arrays(persons)
    if not len(sizes):
        return {name: float("nan") for name in PCK_METRIC_NAMES}
    stats = metrics_pck.pck_auc_epe(pred, gt, scored, sizes)
    return {name: float(stats[name]) for name in PCK_METRIC_NAMES}


def mpii_metrics_from_joined(persons: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """The direct computation behind :class:`MpiiPCKh`: PCKh on the joined persons' head sizes."""
    converted = persons_from_joined(persons)
    if not converted:
        return {name: 0.0 for name in MPII_METRIC_NAMES}
    predictions = np.stack([p["keypoints"] for p in converted])
    keypoints = np.stack([p["gt_keypoints"] for p in converted])
    visible = np.stack([p["visibility"] for p in converted]) > 0
    head_sizes = np.asarray([p["head_size"] for p in converted])
    if np.any(head_sizes[visible.any(-1)] <= 0):
        raise ValueError("MPII PCKh needs head sizes: evaluate with gt_annotations (a gt_valid.mat layout file)")
    table = metrics_mpii.pckh_table(predictions, keypoints, visible, head_sizes)
    return {name: float(table[name]) for name in MPII_METRIC_NAMES}


class _CocoCombiner(_PersonsCombiner):
    def __init__(self, keys, model_name, options: Dict[str, Any]):
        super().__init__(keys, model_name)
        self._options = options

    def compute(self, persons):
        return coco_metrics_from_joined(persons, **self._options)


class _MpiiCombiner(_PersonsCombiner):
    def compute(self, persons):
        return mpii_metrics_from_joined(persons)


class _PckCombiner(_PersonsCombiner):
    def compute(self, persons):
        return pck_metrics_from_joined(persons)


def _computations(combiner_factory, metric_names: Sequence[str], model_names: List[str] | None,
                  eval_config: config_pb2.EvalConfig | None) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        # example_weighted=None: the key form TFMA uses for MetricsSpec.per_slice_thresholds.
        keys = {name: metric_types.MetricKey(name=name, model_name=model_name, example_weighted=None)
                for name in metric_names}
        computations.append(metric_types.MetricComputation(
            keys=list(keys.values()),
            preprocessors=[metric_types.FeaturePreprocessor(feature_keys=list(_PERSON_FEATURES))],
            combiner=combiner_factory(keys, model_name),
        ))
    return computations


class CocoKeypointAP(metric_types.Metric):
    """COCO OKS AP/AR (the ten ``COCOeval`` stats) as a TFMA metric.

    Emits ``AP, AP50, AP75, AP_M, AP_L, AR, AR50, AR75, AR_M, AR_L`` per model and slice.

    Args:
        gt_annotations: COCO keypoint json; ``None`` rebuilds the GT from the records (GT boxes only).
        rescore_threshold, nms_threshold, soft_nms: the reference post-processing.
        restrict_to_eval_images: score only images present in the slice.
    """

    def __init__(self, gt_annotations: str | None = None, rescore_threshold: float = 0.2,
                 nms_threshold: float | None = 0.9, soft_nms: bool = False, restrict_to_eval_images: bool = False,
                 dataset_meta: Mapping[str, Any] | None = None, category_ids: Sequence[int] | None = None,
                 name: str = "coco_keypoint_ap"):
        super().__init__(_coco_computations, gt_annotations=gt_annotations, rescore_threshold=rescore_threshold,
                         nms_threshold=nms_threshold, soft_nms=soft_nms,
                         restrict_to_eval_images=restrict_to_eval_images, dataset_meta=dataset_meta,
                         category_ids=category_ids, name=name)


def _coco_computations(gt_annotations=None, rescore_threshold=0.2, nms_threshold=0.9, soft_nms=False,
                       restrict_to_eval_images=False, dataset_meta=None, category_ids=None,
                       name="coco_keypoint_ap", model_names=None, eval_config=None):
    options = dict(gt_annotations=gt_annotations, rescore_threshold=rescore_threshold, nms_threshold=nms_threshold,
                   soft_nms=soft_nms, restrict_to_eval_images=restrict_to_eval_images)
    if dataset_meta:   # keys absent for COCO: its metric config stays as it was
        options.update(dataset_meta=dataset_meta, category_ids=category_ids)
    return _computations(lambda keys, model: _CocoCombiner(keys, model, options), COCO_METRIC_NAMES,
                         model_names, eval_config)


class MpiiPCKh(metric_types.Metric):
    """MPII PCKh as a TFMA metric: ``PCKh@0.5`` (HRNet Mean), ``PCKh@0.1``, ``Mean14``, groups."""

    def __init__(self, name: str = "mpii_pckh"):
        super().__init__(_mpii_computations, name=name)


def _mpii_computations(name="mpii_pckh", model_names=None, eval_config=None):
    return _computations(lambda keys, model: _MpiiCombiner(keys, model), MPII_METRIC_NAMES, model_names, eval_config)


class PckAucEpe(metric_types.Metric):
    """PCK@0.2 of the box's longer side, AUC (alpha 0..0.5) and EPE (pixels) as a TFMA metric (metric ``pck``)."""

    def __init__(self, name: str = "pck_auc_epe"):
        super().__init__(_pck_computations, name=name)


def _pck_computations(name="pck_auc_epe", model_names=None, eval_config=None):
    return _computations(lambda keys, model: _PckCombiner(keys, model), PCK_METRIC_NAMES, model_names, eval_config)


metric_types.register_metric(CocoKeypointAP)
metric_types.register_metric(MpiiPCKh)
metric_types.register_metric(PckAucEpe)


# --------------------------------------------------------------------------
# EvalConfig
# --------------------------------------------------------------------------

def metric_names(dataset: KeypointSchema | str) -> Sequence[str]:
    """Metric names the evaluator reports for a dataset meta (or bundled name), by its ``metric``:
    ``oks`` the ten COCOeval stats, ``pck`` ``PCK@0.2, AUC, EPE``, ``pckh`` MPII's PCKh table."""
    metric = dataset_meta.as_schema(dataset).metric
    return {"oks": COCO_METRIC_NAMES, "pck": PCK_METRIC_NAMES, "pckh": MPII_METRIC_NAMES}[metric]


def validate_thresholds(thresholds: Mapping[str, Any], dataset: KeypointSchema | str) -> Dict[str, Dict[str, float]]:
    """Checks ``eval.thresholds``; returns them with float values.

    Raises:
        ValueError: unknown metric names or threshold keys, non-numeric values.
    """
    if not isinstance(thresholds, Mapping):
        raise ValueError(f"eval.thresholds must be a mapping, got {type(thresholds).__name__}")
    schema = dataset_meta.as_schema(dataset)
    names = metric_names(schema)
    checked: Dict[str, Dict[str, float]] = {}
    for metric, spec in thresholds.items():
        if metric not in names:
            raise ValueError(f"eval.thresholds: unknown metric {metric!r} for {schema.name} (metric "
                             f"{schema.metric}); expected one of {list(names)}")
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(f"eval.thresholds.{metric} must map some of {_THRESHOLD_KEYS} to numbers, got {spec!r}")
        checked[metric] = {}
        for key, value in spec.items():
            if key not in _THRESHOLD_KEYS:
                raise ValueError(f"eval.thresholds.{metric}: unknown key {key!r}; expected {_THRESHOLD_KEYS}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"eval.thresholds.{metric}.{key} must be a finite number, got {value!r}")
            if key == "max_drop" and value < 0:
                raise ValueError(f"eval.thresholds.{metric}.max_drop must be >= 0, got {value!r}")
            checked[metric][key] = float(value)
    return checked


def build_eval_config(dataset: KeypointSchema | str, thresholds: Mapping[str, Any], has_baseline: bool,
                      metric_options: Mapping[str, Any] | None = None,
                      slice_by_person_size: bool = True) -> config_pb2.EvalConfig:
    """EvalConfig for the joined examples: candidate (+ baseline) model specs, our metric, thresholds.

    Args:
        dataset: a dataset meta or bundled name; its ``metric`` picks the TFMA metric.
        thresholds: ``eval.thresholds`` (see the module docstring).
        has_baseline: add the baseline model spec and the change thresholds.
        metric_options: kwargs of :class:`CocoKeypointAP` (metric ``oks`` only).
        slice_by_person_size: add the ``person_size`` slice (metric ``oks``, GT rebuilt from records).
    """
    schema = dataset_meta.as_schema(dataset)
    thresholds = validate_thresholds(thresholds, schema)
    model_specs = [config_pb2.ModelSpec(name=CANDIDATE, prediction_key=prediction_key(CANDIDATE), label_key=LABEL_KEY)]
    if has_baseline:
        model_specs.append(config_pb2.ModelSpec(name=BASELINE, prediction_key=prediction_key(BASELINE),
                                                label_key=LABEL_KEY, is_baseline=True))
    if schema.metric == "oks":
        metric = config_pb2.MetricConfig(class_name="CocoKeypointAP", module=__name__,
                                         config=jsonio.dumps(dict(metric_options or {})))
    elif schema.metric == "pck":
        metric = config_pb2.MetricConfig(class_name="PckAucEpe", module=__name__, config="{}")
    else:
        metric = config_pb2.MetricConfig(class_name="MpiiPCKh", module=__name__, config="{}")
    spec = config_pb2.MetricsSpec(metrics=[metric, config_pb2.MetricConfig(class_name="ExampleCount")],
                                  model_names=[spec.name for spec in model_specs])
    overall = config_pb2.SlicingSpec()
    for name, bounds in thresholds.items():
        threshold = config_pb2.MetricThreshold()
        if "lower_bound" in bounds or "upper_bound" in bounds:
            value = config_pb2.GenericValueThreshold()
            if "lower_bound" in bounds:
                value.lower_bound.value = bounds["lower_bound"]
            if "upper_bound" in bounds:
                value.upper_bound.value = bounds["upper_bound"]
            threshold.value_threshold.CopyFrom(value)
        if "max_drop" in bounds and has_baseline:
            if name in LOWER_IS_BETTER:   # EPE: a rise of more than max_drop pixels fails
                change = config_pb2.GenericChangeThreshold(direction=config_pb2.MetricDirection.LOWER_IS_BETTER)
                change.absolute.value = bounds["max_drop"]
            else:
                change = config_pb2.GenericChangeThreshold(direction=config_pb2.MetricDirection.HIGHER_IS_BETTER)
                change.absolute.value = -bounds["max_drop"]
            threshold.change_threshold.CopyFrom(change)
        if threshold.HasField("value_threshold") or threshold.HasField("change_threshold"):
            spec.per_slice_thresholds[name].thresholds.add(slicing_specs=[overall], threshold=threshold)
    slicing_specs = [overall]
    if slice_by_person_size and schema.metric == "oks":
        slicing_specs.append(config_pb2.SlicingSpec(feature_keys=[SLICE_FEATURE]))
    return config_pb2.EvalConfig(model_specs=model_specs, metrics_specs=[spec], slicing_specs=slicing_specs)
