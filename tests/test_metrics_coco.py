"""COCO keypoint evaluation core: exact pycocotools stats on real sample results, OKS, rescoring, NMS."""
import json
import os

import numpy as np
import pytest

from components import metrics_coco
from schemas.keypoints import COCO

EXPECTED_NAMES = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AP_M": "APm", "AP_L": "APl",
                  "AR": "AR", "AR50": "AR50", "AR75": "AR75", "AR_M": "ARm", "AR_L": "ARl"}


@pytest.mark.parametrize("folder,gt_name,results_name", [
    ("coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json", "example_keypoint_results.json"),
    ("coco_train2017_mini28", "person_keypoints_train2017_mini28.json", "synthetic_noisy_keypoint_results.json"),
])
def test_stats_equal_expected_on_real_results(shared_data, folder, gt_name, results_name):
    directory = os.path.join(shared_data, folder)
    with open(os.path.join(directory, "expected_stats.json")) as handle:
        expected = json.load(handle)[results_name]
    results = metrics_coco.load_results(os.path.join(directory, results_name))
    stats, per_keypoint = metrics_coco.evaluate_results(os.path.join(directory, gt_name), results)
    for ours, theirs in EXPECTED_NAMES.items():
        assert round(stats[ours], 6) == pytest.approx(expected[theirs], abs=1e-6), ours
    assert set(per_keypoint) == set(COCO.joint_names)
    assert all(0.0 <= v["similarity"] <= 1.0 and 0.0 <= v["accuracy"] <= 1.0 for v in per_keypoint.values())
    assert stats["num_results"] == len(results)


def test_ground_truth_as_predictions_scores_one(shared_data):
    """Predictions equal to the GT joints, through rescoring + NMS and a GT rebuilt from records, give AP 1."""
    with open(os.path.join(shared_data, "coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json")) as handle:
        gt = json.load(handle)
    images = {image["id"]: image for image in gt["images"]}
    persons = []
    for annotation in gt["annotations"]:
        if annotation["num_keypoints"] == 0:
            continue
        keypoints = np.asarray(annotation["keypoints"], float).reshape(-1, 3)
        x, y, w, h = annotation["bbox"]
        persons.append({
            "image_id": annotation["image_id"], "annotation_id": annotation["id"],
            "image_height": images[annotation["image_id"]]["height"], "image_width": images[annotation["image_id"]]["width"],
            "keypoints": keypoints[:, :2], "keypoint_scores": np.where(keypoints[:, 2] > 0, 0.9, 0.1),
            "box_score": 1.0, "area": w * h * 1.5625, "gt_keypoints": keypoints[:, :2],
            "visibility": keypoints[:, 2], "gt_area": annotation["area"],
            "center": [x + w / 2, y + h / 2], "scale": [w * 1.25, h * 1.25],
        })
    stats, _, results = metrics_coco.evaluate_persons(persons)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert len(results) == len(persons)
    # Against the original file (2 unlabelled persons are ignored by COCOeval): same result.
    stats_file, _, _ = metrics_coco.evaluate_persons(persons, gt=gt)
    assert stats_file["AP"] == pytest.approx(1.0)


def test_oks_matches_pycocotools_compute_oks(shared_data):
    from pycocotools.cocoeval import COCOeval

    directory = os.path.join(shared_data, "coco_val2017_mmpose4")
    api = metrics_coco.load_ground_truth(os.path.join(directory, "person_keypoints_val2017_mmpose4.json"))
    results = metrics_coco.load_results(os.path.join(directory, "example_keypoint_results.json"))
    image_id = 196141
    detections = api.loadRes([r for r in results if r["image_id"] == image_id])
    evaluator = COCOeval(api, detections, "keypoints")
    evaluator.params.imgIds = [image_id]
    evaluator._prepare()
    reference = evaluator.computeOks(image_id, 1)                      # (D sorted by score, G)
    dts = sorted(detections.loadAnns(detections.getAnnIds(imgIds=[image_id])), key=lambda d: -d["score"])
    gts = api.loadAnns(api.getAnnIds(imgIds=[image_id]))
    gts = [g for g in gts if g["num_keypoints"] > 0]
    columns = [i for i, g in enumerate(api.loadAnns(api.getAnnIds(imgIds=[image_id]))) if g["num_keypoints"] > 0]
    pred = np.asarray([d["keypoints"] for d in dts]).reshape(len(dts), 1, -1, 3)[..., :2]
    gt = np.asarray([g["keypoints"] for g in gts]).reshape(1, len(gts), -1, 3)
    similarity = metrics_coco.keypoint_similarity(pred, gt[..., :2], np.asarray([g["area"] for g in gts])[None],
                                                  COCO.sigmas())
    labelled = gt[..., 2] > 0
    ours = (similarity * labelled).sum(-1) / labelled.sum(-1)
    # COCOeval keeps the 20 best-scored detections (maxDets).
    np.testing.assert_allclose(ours[:reference.shape[0]], reference[:, columns], atol=1e-12)


def test_rescore_and_oks_nms():
    scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.15, 0.05]])
    np.testing.assert_allclose(metrics_coco.rescore(scores, np.array([0.8, 1.0])), [0.8 * 0.7, 0.0])
    sigmas = np.full(3, 0.1)
    base = np.array([[10.0, 10.0], [20.0, 30.0], [40.0, 5.0]])
    keypoints = np.stack([base, base + 0.5, base + 30.0])
    kept = metrics_coco.oks_nms(keypoints, np.array([0.5, 0.9, 0.7]), np.full(3, 400.0), 0.9, sigmas)
    assert kept.tolist() == [1, 2]  # the near-duplicate with the lower score goes
    kept, decayed = metrics_coco.soft_oks_nms(keypoints, np.array([0.5, 0.9, 0.7]), np.full(3, 400.0), 0.9, sigmas)
    assert kept.tolist() == [1, 2, 0]
    overlap = metrics_coco.oks_matrix(keypoints, np.full(3, 400.0), sigmas)[1, 0]
    assert decayed[2] == pytest.approx(0.5 * (1 - overlap))


def test_results_grouped_per_image_and_nms_toggle():
    sigmas = COCO.sigmas()
    base = np.random.default_rng(0).uniform(0, 100, (17, 2))
    persons = [{"image_id": 1, "keypoints": base, "keypoint_scores": np.full(17, 0.9), "box_score": 1.0, "area": 1e4},
               {"image_id": 1, "keypoints": base + 0.1, "keypoint_scores": np.full(17, 0.8), "box_score": 1.0, "area": 1e4},
               {"image_id": 2, "keypoints": base, "keypoint_scores": np.full(17, 0.5), "box_score": 0.5, "area": 1e4}]
    results = metrics_coco.persons_to_results(persons, sigmas=sigmas)
    assert [(r["image_id"], round(r["score"], 6)) for r in results] == [(1, 0.9), (2, 0.25)]
    assert len(metrics_coco.persons_to_results(persons, nms_threshold=None)) == 3
    assert len(results[0]["keypoints"]) == 51


def test_errors_are_clear(shared_data):
    gt_path = os.path.join(shared_data, "coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json")
    with pytest.raises(ValueError, match="image ids missing"):
        metrics_coco.evaluate_results(gt_path, [{"image_id": 123, "keypoints": [0.0] * 51, "score": 1.0}])
    with pytest.raises(ValueError, match="keypoint values"):
        metrics_coco.evaluate_results(gt_path, [{"image_id": 785, "keypoints": [0.0] * 50, "score": 1.0}])
    with pytest.raises(ValueError, match="detector boxes"):
        metrics_coco.ground_truth_from_persons([{"annotation_id": -1}])
    with pytest.raises(ValueError, match="nms_threshold"):
        metrics_coco.persons_to_results([], nms_threshold=1.5)
    stats, _ = metrics_coco.evaluate_results(gt_path, [])
    assert stats["AP"] == 0.0 and stats["num_results"] == 0
