"""Evaluator and gate on any keypoint set (issue 23): the dataset meta's metric, sigmas and categories.

Real samples: OneHand10K (21 joints, no sigmas: PCK@0.2 / AUC / EPE) and AP-10K
(17 animal joints, its own sigmas, 54 categories), from ../shared/data.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import blessing, evaluator, metrics_coco, metrics_pck, tfma_metrics
from pose.config import build_config
from schemas import dataset_meta
from tests.evaluator_fixtures import export_fake_model, write_coco_eval_records

BEAM_ARGS = list(evaluator.DEFAULT_BEAM_ARGS)
HAND = "onehand10k_mmpose4"
ANIMAL = "ap10k_mmpose2"


def _load(shared_data, folder, name):
    with open(os.path.join(shared_data, folder, name)) as handle:
        return json.load(handle)


def _joined(gt, results, head_size_from_box=True):
    """Joined persons of the GT annotations (GT boxes), each with its result (matched in file order)."""
    images = {image["id"]: image for image in gt["images"]}
    persons = []
    for annotation, result in zip(gt["annotations"], results):
        assert result["image_id"] == annotation["image_id"]
        keypoints = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        x, y, w, h = annotation["bbox"]
        persons.append({
            "image_id": annotation["image_id"], "annotation_id": annotation["id"],
            "image_height": images[annotation["image_id"]]["height"],
            "image_width": images[annotation["image_id"]]["width"],
            "gt_area": annotation.get("area", 0.0), "box_score": 1.0, "window_area": w * h * 1.5625,
            "center": [x + w / 2, y + h / 2], "scale": [w * 1.25, h * 1.25], "gt_keypoints": keypoints[:, :2],
            "visibility": keypoints[:, 2].astype(int), "head_size": max(w, h) if head_size_from_box else 0.0,
            "person_size": "all", "prediction": np.asarray(result["keypoints"], np.float64).reshape(-1, 3)})
    return persons


def test_pck_metrics_of_joined_persons_reproduce_the_hand_set(shared_data):
    gt = _load(shared_data, HAND, "test_onehand10k.json")
    results = _load(shared_data, HAND, "synthetic_noisy_keypoint_results.json")
    expected = _load(shared_data, HAND, "expected_stats.json")["stats"]
    stats = tfma_metrics.pck_metrics_from_joined(_joined(gt, results))
    assert set(stats) == {"PCK@0.2", "AUC", "EPE"}
    assert stats["PCK@0.2"] == expected["PCK@0.2_bbox"]
    assert round(stats["EPE"], 6) == expected["EPE_px"]
    assert 0 < stats["AUC"] < 1
    with pytest.raises(ValueError, match="gt_annotations"):   # no box: never a silent wrong number
        tfma_metrics.pck_metrics_from_joined(_joined(gt, results, head_size_from_box=False))


def test_metric_names_and_thresholds_follow_the_meta(shared_data):
    hand = dataset_meta.load_meta(os.path.join(shared_data, HAND, "dataset_meta.json"))
    animal = dataset_meta.load_meta(os.path.join(shared_data, ANIMAL, "dataset_meta.json"))
    assert tuple(tfma_metrics.metric_names(hand)) == ("PCK@0.2", "AUC", "EPE")
    assert tuple(tfma_metrics.metric_names(animal)) == metrics_coco.STAT_NAMES
    assert tuple(tfma_metrics.metric_names("coco")) == metrics_coco.STAT_NAMES
    with pytest.raises(ValueError, match="unknown metric 'AP' for onehand10k"):
        tfma_metrics.validate_thresholds({"AP": {"lower_bound": 0.5}}, hand)
    config = tfma_metrics.build_eval_config(hand, {"EPE": {"upper_bound": 20.0, "max_drop": 1.0}}, True)
    assert config.metrics_specs[0].metrics[0].class_name == "PckAucEpe"
    change = config.metrics_specs[0].per_slice_thresholds["EPE"].thresholds[0].threshold.change_threshold
    from tensorflow_model_analysis.proto import config_pb2
    assert change.direction == config_pb2.MetricDirection.LOWER_IS_BETTER and change.absolute.value == 1.0
    # EPE is lower-is-better: a rise above max_drop fails, a fall passes.
    rows = blessing.threshold_checks({"EPE": 12.0}, {"EPE": {"max_drop": 1.0}}, {"EPE": 10.0},
                                     lower_is_better=tfma_metrics.LOWER_IS_BETTER)
    assert rows[0]["passed"] is False and rows[0]["bound"] == 1.0
    rows = blessing.threshold_checks({"EPE": 9.0}, {"EPE": {"max_drop": 1.0}}, {"EPE": 10.0},
                                     lower_is_better=tfma_metrics.LOWER_IS_BETTER)
    assert rows[0]["passed"] is True


def test_oks_of_a_meta_uses_its_sigmas_and_categories_never_cocos(shared_data):
    directory = os.path.join(shared_data, ANIMAL)
    gt_path = os.path.join(directory, "test_ap10k.json")
    gt = _load(shared_data, ANIMAL, "test_ap10k.json")
    results = _load(shared_data, ANIMAL, "synthetic_noisy_keypoint_results.json")
    animal = dataset_meta.load_meta(os.path.join(directory, "dataset_meta.json"))
    categories = dataset_meta.check_annotations(animal, gt, gt_path)
    persons = _joined(gt, results)
    stats, per_keypoint, written = tfma_metrics.coco_evaluate_joined(
        persons, gt_annotations=gt_path, nms_threshold=None, dataset_meta=animal.to_meta(), category_ids=categories)
    # The results carry each annotation's own species; pycocotools with the meta's sigmas and catIds agrees.
    assert sorted(r["category_id"] for r in written) == sorted(a["category_id"] for a in gt["annotations"])
    reference, _ = metrics_coco.evaluate_results(gt_path, written, animal.sigmas(), category_ids=categories)
    assert stats["AP"] == reference["AP"] and stats["AR"] == reference["AR"]
    expected = _load(shared_data, ANIMAL, "expected_stats.json")["stats"]
    assert stats["AP"] == pytest.approx(expected["AP"], abs=1e-12)   # as pipeline.score on the results as given
    _, with_coco_sigmas = metrics_coco.evaluate_results(gt_path, written, category_ids=categories)
    assert with_coco_sigmas["left_eye"]["similarity"] != per_keypoint["L_Eye"]["similarity"]  # the sigmas matter
    assert list(per_keypoint)[:2] == list(animal.joint_names[:2])
    hand = dataset_meta.load_meta(os.path.join(shared_data, HAND, "dataset_meta.json"))
    with pytest.raises(ValueError, match="no OKS sigmas"):  # AP of a set without sigmas is impossible
        tfma_metrics.coco_evaluate_joined(persons, dataset_meta=hand.to_meta())


def _hand_setup(shared_data, root):
    directory = os.path.join(shared_data, HAND)
    gt_path = os.path.join(directory, "test_onehand10k.json")
    write_coco_eval_records(gt_path, os.path.join(directory, "images"), str(root / "examples"), dataset="onehand10k")
    config = build_config({"dataset_meta": os.path.join(directory, "dataset_meta.json"),
                           "data": {"input_size": [64, 48]},
                           "eval": {"batch_size": 4, "report_overlays": 2,
                                    "thresholds": {"PCK@0.2": {"lower_bound": 0.5},
                                                   "EPE": {"upper_bound": 50.0, "max_drop": 0.5}}}})
    return gt_path, config


@pytest.mark.slow
def test_run_evaluator_gates_a_hand_model_on_pck_and_epe(shared_data, tmp_path):
    gt_path, config = _hand_setup(shared_data, tmp_path)
    assert config["dataset"] == "onehand10k"
    candidate = export_fake_model(str(tmp_path / "noisy"), noise_px=6.0, dataset="onehand10k")
    baseline = export_fake_model(str(tmp_path / "good"), noise_px=2.0, dataset="onehand10k")
    result = evaluator.run_evaluator(candidate, str(tmp_path / "examples"), config, str(tmp_path / "blessing"),
                                     baseline_model_dir=baseline, gt_annotations=gt_path, beam_args=BEAM_ARGS)
    assert result["metric"] == "pck" and set(result["metrics"]) == {"PCK@0.2", "AUC", "EPE"}
    assert result["metrics"]["EPE"] == pytest.approx(6.0, abs=1e-3)        # every labelled joint moved 6 px
    assert result["baseline_metrics"]["EPE"] == pytest.approx(2.0, abs=1e-3)
    for name, value in result["metrics"].items():  # TFMA equals the direct computation
        assert result["tfma_metrics"][name] == pytest.approx(value, abs=1e-9)
    # PCK@0.2 / EPE passed; EPE rose by 4 px > max_drop 0.5: not blessed, by TFMA and by the row-by-row twin.
    assert result["blessed"] is False
    failed = [(row["metric"], row["kind"]) for row in result["checks"] if not row["passed"]]
    assert failed == [("EPE", "max_drop")]
    assert any("EPE change" in reason and "lower is better" in reason for reason in result["reasons"])
    report = open(os.path.join(tmp_path, "blessing", "evaluation", "report.md")).read()
    assert "PCK@0.2 of the box" in report and "thumb1" in report
    # The records were normalised by the annotation boxes: same numbers as pipeline.score's matcher.
    gt = metrics_coco.load_ground_truth(gt_path)
    assert len(evaluator.gt_box_sizes(gt, [1])) == 4


@pytest.mark.slow
def test_run_evaluator_refuses_pck_without_gt_and_a_model_of_another_layout(shared_data, tmp_path):
    gt_path, config = _hand_setup(shared_data, tmp_path)
    model = export_fake_model(str(tmp_path / "model"), dataset="onehand10k")
    with pytest.raises(ValueError, match=r"gt_annotations .*\(metric pck\)"):
        evaluator.run_evaluator(model, str(tmp_path / "examples"), config, str(tmp_path / "b1"))
    dataset_meta.write_serving_meta(dataset_meta.bundled("coco"), os.path.join(model, "Format-Serving"))
    with pytest.raises(ValueError, match="carries the dataset meta 'coco'"):
        evaluator.run_evaluator(model, str(tmp_path / "examples"), config, str(tmp_path / "b2"),
                                gt_annotations=gt_path)


def test_gate_flags_set_the_meta_and_its_metric(shared_data, tmp_path, capsys):
    from pipeline import gate

    meta = os.path.join(shared_data, HAND, "dataset_meta.json")
    config = tmp_path / "gate.yaml"
    config.write_text("eval: {thresholds: {AP: {lower_bound: 0.5}}}\n")
    common = ["--candidate", str(tmp_path / "none"), "--eval-data", str(tmp_path / "none"), "--config", str(config)]
    assert gate.main(common + ["--dataset-meta", meta]) == gate.EXIT_ERROR   # AP is not a metric of a PCK set
    assert "unknown metric 'AP' for onehand10k" in capsys.readouterr().err
    assert gate.main(common + ["--dataset-meta", meta, "--dataset", "coco"]) == gate.EXIT_ERROR
    assert "not both" in capsys.readouterr().err
    config.write_text("eval: {thresholds: {EPE: {upper_bound: 5.0}}}\n")
    assert gate.main(common + ["--dataset-meta", meta]) == gate.EXIT_ERROR   # past the metric check
    assert "(metric pck)" in capsys.readouterr().err      # the meta's metric reached the Evaluator
