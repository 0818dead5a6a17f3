"""The data gate (components/data_validation.py): domains, drift against the previous run, reasons."""
import os

import numpy as np
import pytest
import tensorflow as tf

from components import data_validation
from toolkit import cli


def _statistics(tmp_path, name, areas, scores, visibility):
    """TFDV statistics (the gate's options) of records holding the gate's features, as ExampleGen writes them."""
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    path = str(tmp_path / f"{name}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for area, score, flags in zip(areas, scores, visibility):
            feature = {
                "person/area": tf.train.Feature(float_list=tf.train.FloatList(value=[area])),
                "bbox/score": tf.train.Feature(float_list=tf.train.FloatList(value=[score])),
                "keypoints/visibility": tf.train.Feature(int64_list=tf.train.Int64List(value=list(flags))),
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"not looked at"])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return tfdv.generate_statistics_from_tfrecord(
        path, stats_options=data_validation.stats_options(), output_path=str(tmp_path / f"{name}.stats"),
        pipeline_options=PipelineOptions(cli.local_beam_flags([])))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("gate")
    n = 200
    data = dict(areas=rng.uniform(500, 20000, n), scores=rng.uniform(0.5, 1.0, n),
                visibility=rng.choice([0, 1, 2], size=(n, 17), p=[0.3, 0.1, 0.6]))
    return tmp, data, _statistics(tmp, "reference", **data)


def test_only_the_gate_features_are_counted(reference):
    _, _, statistics = reference
    names = {feature.path.step[0] for feature in statistics.datasets[0].features}
    assert names == set(data_validation.GATE_FEATURES)


def test_same_distribution_passes_and_first_run_checks_domains_only(reference, tmp_path):
    _, data, statistics = reference
    rng = np.random.default_rng(1)
    n = 200
    resample = _statistics(tmp_path, "resample", areas=rng.uniform(500, 20000, n), scores=rng.uniform(0.5, 1.0, n),
                           visibility=rng.choice([0, 1, 2], size=(n, 17), p=[0.3, 0.1, 0.6]))
    schema = data_validation.load_schema()
    assert data_validation.describe(data_validation.validate(resample, schema, statistics)) == []
    assert data_validation.describe(data_validation.validate(statistics, schema, None)) == []


def test_changed_box_source_is_drift_naming_the_feature(reference, tmp_path):
    _, data, statistics = reference
    gt_boxes = _statistics(tmp_path, "gt", areas=data["areas"], scores=np.ones(len(data["scores"])),
                           visibility=data["visibility"])
    schema = data_validation.load_schema()
    lines = data_validation.describe(data_validation.validate(gt_boxes, schema, statistics))
    assert len(lines) == 1 and lines[0].startswith("bbox/score:")
    assert "jensen-shannon divergence between current and previous" in lines[0].lower()
    # Without the previous run's statistics the same data is fine (in its domain).
    assert data_validation.describe(data_validation.validate(gt_boxes, schema, None)) == []


def test_impossible_values_are_anomalies_in_any_run(reference, tmp_path):
    _, data, _ = reference
    bad = _statistics(tmp_path, "bad", areas=-np.asarray(data["areas"]), scores=np.asarray(data["scores"]) * 2,
                      visibility=np.asarray(data["visibility"]) + 1)
    lines = data_validation.describe(data_validation.validate(bad, data_validation.load_schema(), None))
    assert [line.split(":")[0] for line in lines] == ["bbox/score", "keypoints/visibility", "person/area"]


def test_anomalies_round_trip_to_blessing_reasons(reference, tmp_path):
    from tfx.utils import writer_utils

    _, data, statistics = reference
    gt_boxes = _statistics(tmp_path, "gt2", areas=data["areas"], scores=np.ones(len(data["scores"])),
                           visibility=data["visibility"])
    schema = data_validation.load_schema()
    for split, current in (("train", statistics), ("eval", gt_boxes)):
        os.makedirs(tmp_path / "anomalies" / f"Split-{split}")
        writer_utils.write_anomalies(str(tmp_path / "anomalies" / f"Split-{split}" / data_validation.ANOMALIES_FILE),
                                     data_validation.validate(current, schema, statistics))
    found = data_validation.read_anomalies(str(tmp_path / "anomalies"), ["train", "eval"])
    assert list(found) == ["eval"]
    (reason,) = data_validation.anomaly_reasons(found)
    assert reason.startswith("data gate: split eval: bbox/score:")
    with pytest.raises(FileNotFoundError, match="Split-test"):
        data_validation.read_anomalies(str(tmp_path / "anomalies"), ["test"])
