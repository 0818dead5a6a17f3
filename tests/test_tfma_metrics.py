"""TFMA custom metrics: TFMA's numbers equal the direct pycocotools / PCKh computation; thresholds."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import blessing, evaluator, metrics_coco, metrics_mpii, tfma_metrics

BEAM_ARGS = list(evaluator.DEFAULT_BEAM_ARGS)


def _coco_persons(shared_data):
    """Real COCO GT persons (GT boxes) with two deterministic noisy 'models'."""
    with open(os.path.join(shared_data, "coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json")) as handle:
        gt = json.load(handle)
    images = {image["id"]: image for image in gt["images"]}
    rng = np.random.default_rng(7)
    persons, predictions = [], []
    for annotation in gt["annotations"]:
        if annotation["num_keypoints"] == 0:
            continue
        keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        x, y, w, h = annotation["bbox"]
        scale = [w * 1.25, h * 1.25]
        persons.append({
            "image_id": annotation["image_id"], "annotation_id": annotation["id"],
            "image_height": images[annotation["image_id"]]["height"],
            "image_width": images[annotation["image_id"]]["width"],
            "gt_area": annotation["area"], "box_score": 1.0, "window_area": scale[0] * scale[1],
            "center": [x + w / 2, y + h / 2], "scale": scale, "gt_keypoints": keypoints[:, :2],
            "visibility": keypoints[:, 2].astype(int), "person_size": metrics_coco.person_size(annotation["area"]),
        })
        predictions.append({
            name: np.concatenate([keypoints[:, :2] + rng.normal(0, sd, (17, 2)), rng.uniform(0.3, 1, (17, 1))], -1)
            for name, sd in ((tfma_metrics.CANDIDATE, 4.0), (tfma_metrics.BASELINE, 1.0))})
    return persons, predictions


def _write(path, examples):
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def test_tfma_coco_ap_equals_direct_with_slices_and_thresholds(shared_data, tmp_path):
    persons, predictions = _coco_persons(shared_data)
    _write(str(tmp_path / "joined.tfrecord"),
           [tfma_metrics.build_joined_example(p, q) for p, q in zip(persons, predictions)])
    thresholds = {"AP": {"lower_bound": 0.5, "max_drop": 0.01}, "AR": {"upper_bound": 0.5}}
    config = tfma_metrics.build_eval_config("coco", thresholds, has_baseline=True)
    result = evaluator.run_tfma(str(tmp_path / "joined.tfrecord"), config, str(tmp_path / "tfma"), True, BEAM_ARGS)

    joined = {name: [dict(p, prediction=q[name]) for p, q in zip(persons, predictions)]
              for name in (tfma_metrics.CANDIDATE, tfma_metrics.BASELINE)}
    direct = {name: tfma_metrics.coco_metrics_from_joined(values) for name, values in joined.items()}
    overall = result["slices"]["overall"]
    for name in metrics_coco.STAT_NAMES:
        assert overall["candidate"][name] == pytest.approx(direct["candidate"][name], abs=1e-12), name
        assert overall["baseline"][name] == pytest.approx(direct["baseline"][name], abs=1e-12), name
        assert overall["candidate_diff"][name] == pytest.approx(
            direct["candidate"][name] - direct["baseline"][name], abs=1e-12)
    # The direct path is pycocotools itself: same as scoring the written results list.
    stats, _, _ = metrics_coco.evaluate_persons(tfma_metrics.persons_from_joined(joined["candidate"]))
    assert stats["AP"] == overall["candidate"]["AP"]
    # Person-size slices: the metric over the slice's persons only.
    sizes = {p["person_size"] for p in persons}
    assert sizes == {"medium", "large"}
    for size in sizes:
        subset = [p for p in joined["candidate"] if p["person_size"] == size]
        expected = tfma_metrics.coco_metrics_from_joined(subset)
        assert result["slices"][f"person_size={size}"]["candidate"]["AP"] == pytest.approx(expected["AP"], abs=1e-12)
        assert result["slices"][f"person_size={size}"]["candidate"]["example_count"] == len(subset)
    # Validation: TFMA's verdict agrees with the row-by-row twin.
    checks = blessing.threshold_checks(direct["candidate"], tfma_metrics.validate_thresholds(thresholds, "coco"),
                                       direct["baseline"])
    failed = {(row["metric"], row["kind"]) for row in checks if not row["passed"]}
    assert direct["candidate"]["AP"] < direct["baseline"]["AP"] - 0.01 and direct["candidate"]["AR"] > 0.5
    assert direct["candidate"]["AP"] > 0.5
    assert failed == {("AP", "max_drop"), ("AR", "upper_bound")}
    assert result["validation_ok"] is False
    assert {(f["metric"], f["is_diff"]) for f in result["failures"]} == {("AP", True), ("AR", False)}


def test_tfma_pckh_equals_expected_on_real_gt_valid(shared_data, tmp_path):
    directory = os.path.join(shared_data, "mpii_val_pckh_dev")
    gt = metrics_mpii.load_gt_valid(os.path.join(directory, "gt_valid_dev.mat"))
    with open(os.path.join(directory, "expected_pckh.json")) as handle:
        expected = json.load(handle)
    examples = []
    for row in range(gt["keypoints"].shape[0]):
        person = {"image_id": row, "annotation_id": row, "image_height": 720, "image_width": 1280, "gt_area": 0.0,
                  "box_score": 1.0, "window_area": 1.0, "center": [0, 0], "scale": [1, 1],
                  "gt_keypoints": gt["keypoints"][row] - 1.0, "visibility": gt["visible"][row].astype(int),
                  "head_size": gt["head_sizes"][row], "person_size": "all"}
        prediction = np.concatenate([gt["pos_pred_src"][row] - 1.0, np.ones((16, 1))], -1)  # our 0-based frame
        examples.append(tfma_metrics.build_joined_example(person, {tfma_metrics.CANDIDATE: prediction}))
    _write(str(tmp_path / "joined.tfrecord"), examples)
    config = tfma_metrics.build_eval_config("mpii", {"PCKh@0.5": {"lower_bound": 80.0}}, has_baseline=False)
    result = evaluator.run_tfma(str(tmp_path / "joined.tfrecord"), config, str(tmp_path / "tfma"), False, BEAM_ARGS)
    overall = result["slices"]["overall"]["candidate"]
    direct = metrics_mpii.pckh_table(gt["pos_pred_src"], gt["keypoints"], gt["visible"], gt["head_sizes"])
    # float32 storage of the joints in tf.Example moves errors by ~1e-5 px: compare at a 1e-9 share of joints.
    for group in metrics_mpii.GROUP_NAMES:
        assert overall[group] == pytest.approx(expected["tompson_pos_pred_src@0.5"][group], abs=0.01)
        assert overall[group] == pytest.approx(direct[group], abs=1e-6)
    assert overall["PCKh@0.5"] == pytest.approx(expected["tompson_pos_pred_src@0.5"]["Mean_weighted"], abs=0.01)
    assert overall["PCKh@0.1"] == pytest.approx(expected["tompson_pos_pred_src@0.1"]["Mean_weighted"], abs=0.01)
    assert result["validation_ok"] is True


def test_eval_config_thresholds():
    thresholds = {"AP": {"lower_bound": 0.7, "max_drop": 0.02}}
    without = tfma_metrics.build_eval_config("coco", thresholds, has_baseline=False)
    threshold = without.metrics_specs[0].per_slice_thresholds["AP"].thresholds[0].threshold
    assert threshold.HasField("value_threshold") and not threshold.HasField("change_threshold")
    assert [spec.name for spec in without.model_specs] == ["candidate"]
    with_baseline = tfma_metrics.build_eval_config("coco", thresholds, has_baseline=True)
    threshold = with_baseline.metrics_specs[0].per_slice_thresholds["AP"].thresholds[0].threshold
    assert threshold.change_threshold.absolute.value == pytest.approx(-0.02)
    assert [spec.is_baseline for spec in with_baseline.model_specs] == [False, True]
    assert [list(s.feature_keys) for s in with_baseline.slicing_specs] == [[], ["person_size"]]
    with pytest.raises(ValueError, match="unknown metric 'APx'"):
        tfma_metrics.validate_thresholds({"APx": {"lower_bound": 0.1}}, "coco")
    with pytest.raises(ValueError, match="unknown key 'min'"):
        tfma_metrics.validate_thresholds({"AP": {"min": 0.1}}, "coco")
    with pytest.raises(ValueError, match="max_drop must be >= 0"):
        tfma_metrics.validate_thresholds({"AP": {"max_drop": -1}}, "coco")
    with pytest.raises(ValueError, match="unknown metric 'AP'"):
        tfma_metrics.validate_thresholds({"AP": {"lower_bound": 0.1}}, "mpii")


def test_threshold_checks_skip_change_without_baseline():
    rows = blessing.threshold_checks({"AP": 0.6}, {"AP": {"lower_bound": 0.5, "max_drop": 0.01}}, None)
    assert [(r["kind"], r["passed"], r["skipped"]) for r in rows] == [("lower_bound", True, False),
                                                                       ("max_drop", True, True)]
    rows = blessing.threshold_checks({"AP": float("nan")}, {"AP": {"lower_bound": 0.5}}, None)
    assert rows[0]["passed"] is False
