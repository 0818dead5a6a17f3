"""Evaluator end to end: Beam inference with a serving-contract SavedModel on real COCO records, TFMA, blessing."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import blessing, evaluator, metrics_coco, metrics_mpii, pusher
from pose.config import build_config
from tests.evaluator_fixtures import export_fake_model, mpii_records, write_coco_eval_records

COCO_DIR = "coco_val2017_mmpose4"
COCO_GT = "person_keypoints_val2017_mmpose4.json"


def _config(**eval_overrides):
    return build_config({"data": {"input_size": [64, 48]}, "eval": dict({"batch_size": 4}, **eval_overrides)})


@pytest.fixture(scope="module")
def coco_setup(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluator")
    directory = os.path.join(shared_data, COCO_DIR)
    garbage = b"this is not a tf.Example"
    info = write_coco_eval_records(os.path.join(directory, COCO_GT), os.path.join(directory, "images"),
                                   str(root / "examples"), extra_records=[garbage])
    return {"root": root, "examples": str(root / "examples"), "info": info, "gt": os.path.join(directory, COCO_GT)}


@pytest.mark.slow
def test_not_blessed_on_drop_and_skipped_records(coco_setup):
    root, info = coco_setup["root"], coco_setup["info"]
    nan_id = info["annotation_ids"][3]
    candidate = export_fake_model(str(root / "noisy"), noise_px=3.0, nan_annotation_id=nan_id)
    baseline = export_fake_model(str(root / "good"), noise_px=1.0)
    config = _config(thresholds={"AP": {"lower_bound": 0.5, "max_drop": 0.01}})
    output = str(root / "blessing_drop")
    result = evaluator.run_evaluator(candidate, coco_setup["examples"], config, output, baseline_model_dir=baseline)

    assert result["blessed"] is False
    assert os.path.exists(os.path.join(output, blessing.NOT_BLESSED))
    assert not os.path.exists(os.path.join(output, blessing.BLESSED))
    assert blessing.read_blessing(output) == json.load(open(os.path.join(output, "blessing.json")))
    assert result["skipped"] == {"unparsable_record": 1, "non_finite_prediction": 1}
    assert result["num_persons"] == info["count"] - 1
    assert any("max_drop" in reason for reason in result["reasons"])
    assert any("could not be evaluated" in reason for reason in result["reasons"])
    # TFMA numbers equal the direct pycocotools computation, for both models.
    for name, value in result["metrics"].items():
        assert result["tfma_metrics"][name] == pytest.approx(value, abs=1e-12)
        assert result["slices"]["overall"]["baseline"][name] == pytest.approx(result["baseline_metrics"][name], abs=1e-12)
    assert result["metrics"]["AP"] < result["baseline_metrics"]["AP"] - 0.01
    assert {"person_size=medium", "person_size=large"} <= set(result["slices"])
    # The written COCO results json scores to the reported stats.
    evaluation = os.path.join(output, "evaluation")
    results = metrics_coco.load_results(os.path.join(evaluation, "keypoint_results.json"))
    assert len(results) == info["count"] - 1
    assert all(r["image_id"] in {785, 40083, 196141, 197388} for r in results)
    # Report and overlays.
    report = open(os.path.join(evaluation, "report.md")).read()
    assert "NOT_BLESSED" in report and "| AP |" in report and "left_ankle" in report
    overlays = result["report"]["overlays"]
    assert len(overlays) == 6
    image = tf.io.decode_png(open(overlays[0], "rb").read()).numpy()
    assert image.shape[0] >= 256 and image.std() > 10


@pytest.mark.slow
def test_first_run_blessed_with_gt_file_then_pushed(coco_setup, tmp_path):
    root = coco_setup["root"]
    candidate = export_fake_model(str(root / "exact"), noise_px=0.0)
    records_only = os.path.join(str(tmp_path), "records")
    os.makedirs(records_only)
    # Only the real records (no garbage) for a clean first run.
    write_coco_eval_records(coco_setup["gt"], os.path.join(os.path.dirname(coco_setup["gt"]), "images"),
                            records_only)
    config = _config(thresholds={"AP": {"lower_bound": 0.9, "max_drop": 0.01}, "AR": {"lower_bound": 0.9}})
    output = str(tmp_path / "blessing")
    result = evaluator.run_evaluator(candidate, records_only, config, output, gt_annotations=coco_setup["gt"])
    assert result["blessed"] is True, result["reasons"]
    assert result["metrics"]["AP"] == pytest.approx(1.0)
    assert result["baseline"] is None and result["change_thresholds_applied"] is False
    assert [(c["kind"], c["skipped"]) for c in result["checks"] if c["metric"] == "AP"] == [
        ("lower_bound", False), ("max_drop", True)]
    assert set(result["slices"]) == {"overall"}  # no person-size slices against an annotation file
    assert os.path.exists(os.path.join(output, blessing.BLESSED))
    destination = str(tmp_path / "serving")
    assert evaluator.resolve_baseline(destination) is None
    record = pusher.run_pusher(candidate, output, destination, run_id="run-1")
    assert record["version"] == 1 and record["metrics"]["AP"] == pytest.approx(1.0)
    assert evaluator.resolve_baseline(destination) == os.path.join(destination, "1")
    assert pusher.saved_model_path(evaluator.resolve_baseline(destination)) == os.path.join(destination, "1")


def test_inference_fn_mpii_matches_head_sizes(shared_data, tmp_path):
    records = mpii_records(os.path.join(shared_data, "mpii_val_mmpose2", "mpii_val_mmpose2.json"),
                           os.path.join(shared_data, "mpii_val_mmpose2", "images"))
    model = export_fake_model(str(tmp_path / "mpii_model"), noise_px=2.0, dataset="mpii")
    gt_path = os.path.join(shared_data, "mpii_val_pckh_dev", "gt_valid_dev.mat")
    function = evaluator.InferenceFn({"candidate": pusher.saved_model_path(model)}, "mpii", gt_valid_path=gt_path)
    function.setup()
    outputs = list(function.process(records + [b"garbage"]))
    joined = [tf.train.Example.FromString(o) for o in outputs if isinstance(o, bytes)]
    dead = [json.loads(o.value) for o in outputs if not isinstance(o, bytes)]
    assert [d["reason"] for d in dead] == ["unparsable_record"]
    gt = metrics_mpii.load_gt_valid(gt_path)
    head_sizes = [e.features.feature["head_size"].float_list.value[0] for e in joined]
    np.testing.assert_allclose(head_sizes, gt["head_sizes"][:2], rtol=1e-6)
    prediction = np.asarray(joined[1].features.feature["candidate_predictions"].float_list.value).reshape(16, 3)
    truth = np.asarray(joined[1].features.feature["gt_keypoints"].float_list.value).reshape(16, 2)
    assert np.allclose(np.linalg.norm(prediction[:, :2] - truth, axis=-1), 2.0, atol=1e-3)
    # PCKh of a 2-pixel error is 100 at 0.5 head sizes.
    table = metrics_mpii.pckh_table(prediction[None, :, :2], truth[None], gt["visible"][1:2], gt["head_sizes"][1:2])
    assert table["Mean"] == 100.0


def test_bad_inputs_fail_early(coco_setup, tmp_path):
    model = export_fake_model(str(tmp_path / "m"), noise_px=0.0)
    with pytest.raises(ValueError, match="gt_annotations"):
        evaluator.run_evaluator(model, coco_setup["examples"], build_config({"dataset": "mpii"}), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluator.run_evaluator(model, coco_setup["examples"], _config(thresholds={"mAP": {"lower_bound": 1}}),
                                str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        evaluator.run_evaluator(str(tmp_path), coco_setup["examples"], _config(), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="no eval records"):
        evaluator.run_evaluator(model, str(tmp_path / "empty"), _config(), str(tmp_path / "o"))


def test_evaluator_refuses_a_gate_without_a_value_threshold(tmp_path):
    """Issue 22: refused when the pipeline is defined and before inference, never a blessing without a reason."""
    from tfx.types import Channel, standard_artifacts

    from components.tfx_components import PoseEvaluator

    with pytest.raises(ValueError, match="PoseEvaluator config: eval.thresholds holds no value threshold"):
        PoseEvaluator(examples=Channel(type=standard_artifacts.Examples), model=Channel(type=standard_artifacts.Model),
                      config=_config(thresholds={"AP": {"max_drop": 0.01}}))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "data.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="evaluator config: eval.thresholds is empty"):
        evaluator.run_evaluator(str(tmp_path / "model"), str(tmp_path / "examples"), _config(), str(tmp_path / "o"))


def test_a_failed_tfma_validation_always_says_why():
    assert "TFMA validation failed: []" not in evaluator.tfma_failure_reason({"validation_ok": False, "failures": []})
    reason = evaluator.tfma_failure_reason({"validation_ok": False, "failures": [], "missing_thresholds": True})
    assert "missing_thresholds" in reason and "value threshold" in reason


@pytest.mark.slow
def test_mpii_run_evaluator_pckh_blessed(shared_data, tmp_path):
    records = mpii_records(os.path.join(shared_data, "mpii_val_mmpose2", "mpii_val_mmpose2.json"),
                           os.path.join(shared_data, "mpii_val_mmpose2", "images"))
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
        for record in records:
            writer.write(record)
    model = export_fake_model(str(tmp_path / "model"), noise_px=2.0, dataset="mpii")
    config = build_config({"dataset": "mpii", "data": {"input_size": [64, 48]},
                           "eval": {"batch_size": 2, "thresholds": {"PCKh@0.5": {"lower_bound": 99.0}}}})
    gt_path = os.path.join(shared_data, "mpii_val_pckh_dev", "gt_valid_dev.mat")
    result = evaluator.run_evaluator(model, str(tmp_path / "examples"), config, str(tmp_path / "blessing"),
                                     gt_annotations=gt_path)
    assert result["blessed"] is True, result["reasons"]
    assert result["num_persons"] == 2 and result["skipped"] == {}
    # 2-pixel errors are inside 0.1 head sizes (head sizes here are 44 and 81 px).
    assert result["metrics"]["PCKh@0.5"] == 100.0 and result["metrics"]["PCKh@0.1"] == 100.0
    for name, value in result["metrics"].items():
        assert result["tfma_metrics"][name] == pytest.approx(value, abs=1e-12)
    report = open(os.path.join(str(tmp_path / "blessing"), "evaluation", "report.md")).read()
    assert "MPII PCKh" in report and "head_top" in report


def test_inference_fn_in_a_test_pipeline(coco_setup):
    """The DoFn under Beam (TestPipeline, Create, assert_that): joined outputs and tagged dead letters."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    records = [record.numpy() for record in tf.data.TFRecordDataset(coco_setup["info"]["path"], "GZIP").take(3)]
    good_records = [r for r in records if r != b"this is not a tf.Example"][:2]
    model = pusher.saved_model_path(export_fake_model(str(coco_setup["root"] / "beam_model"), noise_px=0.0))
    wrong = tf.train.Example.FromString(good_records[0])
    wrong.features.feature["dataset"].bytes_list.value[:] = [b"mpii"]
    batches = [good_records, [wrong.SerializeToString(), b"junk"]]
    with TestPipeline(options=PipelineOptions(list(evaluator.DEFAULT_BEAM_ARGS))) as pipeline:
        outputs = (pipeline | beam.Create(batches, reshuffle=False)
                   | beam.ParDo(evaluator.InferenceFn({"candidate": model}, "coco")).with_outputs(
                       evaluator.InferenceFn.DEAD_LETTER, main="joined"))
        annotation_ids = outputs.joined | "Ids" >> beam.Map(
            lambda data: tf.train.Example.FromString(data).features.feature["annotation_id"].int64_list.value[0])
        reasons = outputs[evaluator.InferenceFn.DEAD_LETTER] | "Reasons" >> beam.Map(lambda line: json.loads(line)["reason"])
        assert_that(annotation_ids, equal_to(coco_setup["info"]["annotation_ids"][:2]), label="joined")
        assert_that(reasons, equal_to(["wrong_dataset", "unparsable_record"]), label="dead")
