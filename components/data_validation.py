"""The data gate: the records' scalar features checked against a schema and against the previous run.

With ``python pipeline.py --data-validation`` the pipeline adds TFX's
``StatisticsGen`` (TFDV statistics of :data:`GATE_FEATURES` only, per split)
and :class:`components.tfx_components.PoseDataValidator`, which validates them
with TFDV's ``validate_statistics`` against the schema
``schemas/data_gate.pbtxt`` (or a ``Schema`` artifact a user passes, e.g. from
``SchemaGen`` / ``ImportSchemaGen``) **and** against the statistics of the
previous run (found in ML Metadata), so a dataset whose boxes, box scores or
labelled joints look different from the last run's is caught:

* domains: ``person/area >= 0``, ``bbox/score`` in [0, 1], ``keypoints/visibility``
  in {0, 1, 2} (COCO's v flag; MPII's visibility is mapped to the same values by
  ExampleGen), each present in every record;
* drift against the previous run, per split: Jensen-Shannon divergence of the
  ``person/area`` and ``bbox/score`` histograms > 0.3, L-infinity distance of the
  ``keypoints/visibility`` value frequencies > 0.2 (TFDV's drift comparators;
  thresholds chosen so that a re-run on the same data, or a re-sample of it,
  passes and a change of box source, e.g. ground-truth vs detector boxes,
  fails).

Anomalies do not stop the run: like TFX's ``ExampleValidator``, the validator
writes an ``ExampleAnomalies`` artifact (``SchemaDiff.pb`` per split, the
``blessed`` custom property per split); the Evaluator takes it and refuses
to bless a model trained or evaluated on anomalous data, naming the feature
(:func:`anomaly_reasons`), so the Pusher pushes nothing.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping

GATE_FEATURES = ("person/area", "bbox/score", "keypoints/visibility")
"""The records' features the gate looks at (schemas/features.py): box area, box score, labelled joints."""

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas",
                           "data_gate.pbtxt")
ANOMALIES_FILE = "SchemaDiff.pb"   # TFX's ExampleValidator's file name
BLESSED_KEY = "blessed"            # TFX's ExampleValidator's custom property: {split: 1 | 0}


def stats_options():
    """TFDV ``StatsOptions`` of the gate: statistics of :data:`GATE_FEATURES` only (not the image bytes)."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(feature_allowlist=list(GATE_FEATURES))


def load_schema(path: str | None = None):
    """The gate's TFDV schema (``schemas/data_gate.pbtxt`` unless ``path`` names another text proto)."""
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(path or SCHEMA_FILE)


def validate(statistics, schema, previous_statistics=None):
    """TFDV anomalies of one split's statistics.

    Args:
        statistics: ``DatasetFeatureStatisticsList`` of the split.
        schema: TFDV ``Schema`` (:func:`load_schema`).
        previous_statistics: the same split's statistics of the previous run, or
            ``None`` (first run: domain and presence checks only).

    Returns:
        ``anomalies_pb2.Anomalies`` (``anomaly_info`` empty when the split passes).
    """
    import tensorflow_data_validation as tfdv

    return tfdv.validate_statistics(statistics=statistics, schema=schema, previous_statistics=previous_statistics)


def describe(anomalies) -> List[str]:
    """One line per anomalous feature: ``"<feature>: <short description> (<description>)"``."""
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        lines.append(f"{feature}: {info.short_description} ({info.description})")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"dataset: {info.short_description} ({info.description})")
    return lines


def read_anomalies(anomalies_uri: str, splits: List[str]) -> Dict[str, List[str]]:
    """``{split: [lines]}`` of an ``ExampleAnomalies`` artifact's splits that have anomalies.

    Raises:
        FileNotFoundError: a split's ``SchemaDiff.pb`` is missing.
    """
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    found = {}
    for split in splits:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"data gate: {path} is missing")
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as handle:
            anomalies.ParseFromString(handle.read())
        lines = describe(anomalies)
        if lines:
            found[split] = lines
    return found


def anomaly_reasons(anomalies: Mapping[str, List[str]]) -> List[str]:
    """Blessing reasons for the splits with anomalies (empty when the data passed the gate)."""
    return [f"data gate: split {split}: {'; '.join(lines)}" for split, lines in sorted(anomalies.items())]
