"""COCO keypoint evaluation core: exact pycocotools stats on real sample results, OKS, rescoring, NMS."""
import json
import os

import numpy as np
import pytest

from components import metrics_coco
from schemas.keypoints import COCO
from tests.evaluator_fixtures import pycocotools_stats

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
    with pytest.raises(ValueError, match="entry 0: image_id 123 is not in the ground truth"):
        metrics_coco.evaluate_results(gt_path, [{"image_id": 123, "keypoints": [0.0] * 51, "score": 1.0}])
    with pytest.raises(ValueError, match="entry 0: keypoints must be a list of 51 numbers"):
        metrics_coco.evaluate_results(gt_path, [{"image_id": 785, "keypoints": [0.0] * 50, "score": 1.0}])
    with pytest.raises(ValueError, match="detector boxes"):
        metrics_coco.ground_truth_from_persons([{"annotation_id": -1}])
    with pytest.raises(ValueError, match="nms_threshold"):
        metrics_coco.persons_to_results([], nms_threshold=1.5)
    stats, _ = metrics_coco.evaluate_results(gt_path, [])
    assert stats["AP"] == 0.0 and stats["num_results"] == 0


# --------------------------------------------------------------------------
# Interop with files nobody here wrote (issue 12): ids, area, -1, order, bad entries
# --------------------------------------------------------------------------

def _interop(shared_data, name):
    return os.path.join(shared_data, "interop_cases", "coco_scoring", name)


def test_string_image_ids_are_converted_and_score_like_pycocotools(shared_data):
    with open(_interop(shared_data, "res_string_image_id.json")) as handle:
        raw = json.load(handle)
    assert all(isinstance(r["image_id"], str) for r in raw)
    with open(_interop(shared_data, "gt_785.json")) as handle:
        gt = json.load(handle)
    reference = pycocotools_stats(gt, [dict(r, image_id=int(r["image_id"])) for r in raw])
    stats, _ = metrics_coco.evaluate_results(_interop(shared_data, "gt_785.json"), raw)
    assert stats["AP"] == reference[0] == pytest.approx(1.0)
    assert [stats[name] for name in metrics_coco.STAT_NAMES] == pytest.approx(list(reference), abs=1e-12)
    assert stats["ids_converted"] == len(raw)


def test_empty_results_report_pycocotools_minus_one(shared_data):
    stats, per_keypoint = metrics_coco.evaluate_results(_interop(shared_data, "gt_785.json"), [])
    # gt_785 holds one large person: no medium person -> pycocotools' -1, not 0
    assert stats["AP_M"] == stats["AR_M"] == -1.0
    assert stats["AP"] == stats["AP_L"] == stats["AR"] == 0.0
    assert all(v["count"] == 0 for v in per_keypoint.values())
    # and with results, -1 comes through unchanged as pycocotools reports it
    results = metrics_coco.load_results(_interop(shared_data, "res_785.json"))
    stats, _ = metrics_coco.evaluate_results(_interop(shared_data, "gt_785.json"), results)
    assert stats["AP_M"] == -1.0 and stats["AP"] == pytest.approx(1.0)
    json.dumps(stats, allow_nan=False)  # strict JSON


def test_missing_area_is_derived_from_the_box_like_xtcocotools(shared_data):
    with open(_interop(shared_data, "gt_785_no_area.json")) as handle:
        gt = json.load(handle)
    assert all("area" not in a for a in gt["annotations"])
    results = metrics_coco.load_results(_interop(shared_data, "res_785.json"))
    api = metrics_coco.load_ground_truth(_interop(shared_data, "gt_785_no_area.json"))
    assert api.notes[metrics_coco.AREA_FROM_BOX] == len(gt["annotations"])
    stats, _ = metrics_coco.evaluate_results(api, results)
    assert stats["AP"] == pytest.approx(1.0) and stats[metrics_coco.AREA_FROM_BOX] == 1
    # the same numbers as pycocotools on the file with area = 0.53 * w * h written in
    for annotation in gt["annotations"]:
        annotation["area"] = 0.53 * annotation["bbox"][2] * annotation["bbox"][3]
    reference = pycocotools_stats(gt, results)
    assert [stats[name] for name in metrics_coco.STAT_NAMES] == pytest.approx(list(reference), abs=1e-12)
    # the rule itself
    assert metrics_coco.oks_area(None, [0, 0, 10, 20]) == (pytest.approx(106.0), True)
    assert metrics_coco.oks_area(0.0, [0, 0, 10, 20])[1] is True
    assert metrics_coco.oks_area(float("nan"), [0, 0, 10, 20])[1] is True
    assert metrics_coco.oks_area(50.0, None) == (50.0, False)
    with pytest.raises(ValueError, match="not a number"):
        metrics_coco.oks_area("big", [0, 0, 10, 20])
    with pytest.raises(ValueError, match="no positive finite"):
        metrics_coco.oks_area(None, [0, 0, 0, 20])


def test_ground_truth_from_records_without_area_uses_the_rule():
    base = np.random.default_rng(3).uniform(60, 240, (17, 2))
    person = {"image_id": 1, "annotation_id": 7, "image_height": 300, "image_width": 300, "gt_keypoints": base,
              "visibility": np.full(17, 2), "gt_area": 0.0, "center": np.array([150.0, 150.0]),
              "scale": np.array([250.0, 312.5])}
    gt = metrics_coco.ground_truth_from_persons([person], padding=1.25)
    assert gt["annotations"][0]["area"] == pytest.approx(0.53 * 200.0 * 250.0)
    assert gt["info"][metrics_coco.AREA_FROM_BOX] == 1
    prediction = dict(person, keypoints=base + 2.0, keypoint_scores=np.full(17, 0.9), box_score=1.0, area=5000.0)
    stats, _, _ = metrics_coco.evaluate_persons([prediction])
    assert stats["AP"] > 0.9 and stats[metrics_coco.AREA_FROM_BOX] == 1  # area 0 gave AP 0.0
    gt = metrics_coco.ground_truth_from_persons([dict(person, gt_area=1234.0)])
    assert gt["annotations"][0]["area"] == 1234.0 and gt["info"][metrics_coco.AREA_FROM_BOX] == 0


def test_results_order_does_not_change_ap(shared_data):
    """Equal scores: COCOeval's stable sort keeps input order, so we fix the order first."""
    gt_path = _interop(shared_data, "gt_785.json")
    good = metrics_coco.load_results(_interop(shared_data, "res_785.json"))[0]
    bad = dict(good, keypoints=[v + 40.0 if i % 3 != 2 else v for i, v in enumerate(good["keypoints"])])
    first = [dict(good, score=0.5), dict(bad, score=0.5)]
    aps = {metrics_coco.evaluate_results(gt_path, order)[0]["AP"] for order in (first, first[::-1])}
    assert len(aps) == 1
    # raw pycocotools does depend on the order here (the reason for the fix)
    with open(gt_path) as handle:
        gt = json.load(handle)
    raw = {round(pycocotools_stats(json.loads(json.dumps(gt)), [dict(r) for r in order])[0], 6)
           for order in (first, first[::-1])}
    assert len(raw) == 2


def test_persons_order_does_not_change_nms_or_ap():
    base = np.random.default_rng(5).uniform(20, 200, (17, 2))
    persons = []
    for image_id in (1, 2):
        for shift in (0.0, 0.3, 25.0):  # two near-duplicates (NMS) and a distinct pose, equal scores
            persons.append({"image_id": image_id, "annotation_id": len(persons), "keypoints": base + shift,
                            "keypoint_scores": np.full(17, 0.8), "box_score": 1.0, "area": 4e4,
                            "image_height": 300, "image_width": 300, "gt_keypoints": base + shift,
                            "visibility": np.full(17, 2), "gt_area": 4e4,
                            "center": np.array([100.0, 100.0]), "scale": np.array([200.0, 250.0])})
    outputs = set()
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(persons))
        shuffled = [persons[i] for i in order]
        stats, _, results = metrics_coco.evaluate_persons(shuffled)
        outputs.add((json.dumps(results), round(stats["AP"], 12)))
    assert len(outputs) == 1


@pytest.mark.parametrize("entry,message", [
    ({"image_id": "abc"}, "entry 0: image_id 'abc' is not an integer id"),
    ({"image_id": 785.5}, "is not an integer id"),
    ({"category_id": "1"}, None),                              # integer string: converted
    ({"category_id": 2}, "entry 0: category_id 2 is not a ground-truth category"),
    ({"category_id": "person"}, "category_id 'person' is not an integer id"),
    ({"score": float("nan")}, "entry 0: score nan is not a finite number"),
    ({"score": "0.9"}, "score '0.9' is not a finite number"),
    ({"keypoints": [1.0] * 50}, "keypoints must be a list of 51 numbers"),
    ({"keypoints": [float("nan")] * 51}, "non-finite"),
    ({"image_id": 999}, "image_id 999 is not in the ground truth"),
])
def test_bad_results_entries_name_the_file_and_entry(shared_data, entry, message):
    gt_path = _interop(shared_data, "gt_785.json")
    good = metrics_coco.load_results(_interop(shared_data, "res_785.json"))[0]
    results = [dict(good, **entry)]
    if message is None:
        assert metrics_coco.evaluate_results(gt_path, results, source="res.json")[0]["AP"] == pytest.approx(1.0)
        return
    with pytest.raises(ValueError, match=f"res.json: {message}" if message.startswith("entry") else message):
        metrics_coco.evaluate_results(gt_path, results, source="res.json")


def test_missing_fields_and_bad_ground_truth_name_the_entry(shared_data):
    gt_path = _interop(shared_data, "gt_785.json")
    good = metrics_coco.load_results(_interop(shared_data, "res_785.json"))[0]
    for key in ("image_id", "keypoints", "score"):
        entry = {k: v for k, v in good.items() if k != key}
        with pytest.raises(ValueError, match=f"res.json: entry 1: missing '{key}'"):
            metrics_coco.evaluate_results(gt_path, [good, entry], source="res.json")
    with pytest.raises(ValueError, match="entry 0: not an object"):
        metrics_coco.evaluate_results(gt_path, [[1, 2]], source="res.json")
    with open(gt_path) as handle:
        gt = json.load(handle)
    no_box = json.loads(json.dumps(gt))
    del no_box["annotations"][0]["bbox"]
    with pytest.raises(ValueError, match=r"annotations\[0\] \(id \d+\): .*bbox"):
        metrics_coco.load_ground_truth(no_box)
    no_num = json.loads(json.dumps(gt))
    del no_num["annotations"][0]["num_keypoints"], no_num["annotations"][0]["iscrowd"]
    api = metrics_coco.load_ground_truth(no_num)
    assert api.notes["num_keypoints_filled"] == 1
    assert metrics_coco.evaluate_results(api, [good])[0]["AP"] == pytest.approx(1.0)
