"""The missing-``area`` rule (issue 12), end to end: ExampleGen -> records -> the Evaluator's ground
truth rebuilt from the records, against pycocotools on the raw annotation file.

Rule (one owner, :func:`components.metrics_coco.oks_area`): an annotation without a usable
``area`` gets the OKS area ``0.53 * w * h`` of its box, as xtcocotools / mmpose do; it is
counted (``area_from_box`` in the ExampleGen manifest, the evaluator's blessing and
``pipeline.score``'s note line), never written as 0.
"""
import json
import os

import numpy as np
import pytest

from components import example_gen, metrics_coco
from tests.evaluator_fixtures import pycocotools_stats
from tests.test_example_gen import read_split

IN_MEMORY = ["--direct_running_mode=in_memory"]
WITH_AREA_AP = 0.9532  # interop_cases/README.md: the same predictions with the annotations' own area


def _offsets(annotation_id, num_joints=17, pixels=2.0):
    """A deterministic 2 px offset per joint (the direction of tests/evaluator_fixtures.FakePoseModel)."""
    phase = np.float32(annotation_id) * np.float32(0.7071) + np.arange(num_joints, dtype=np.float32) * np.float32(1.618)
    angle = phase * np.float32(12.9898)
    return pixels * np.stack([np.cos(angle), np.sin(angle)], -1).astype(np.float64)


def _persons_from_records(records):
    """What the Evaluator joins per record (components.evaluator.InferenceFn), predictions 2 px off the GT."""
    persons = []
    for i in range(len(records["image/id"])):
        visibility = records["keypoints/visibility"][i]
        persons.append({
            "image_id": int(records["image/id"][i]), "annotation_id": int(records["annotation/id"][i]),
            "image_height": int(records["image/height"][i]), "image_width": int(records["image/width"][i]),
            "keypoints": records["keypoints/image"][i] + _offsets(records["annotation/id"][i]),
            "keypoint_scores": 0.1 + 0.8 * (visibility > 0), "box_score": 1.0,
            "area": float(np.prod(records["bbox/scale"][i])), "gt_keypoints": records["keypoints/image"][i],
            "visibility": visibility, "gt_area": float(records["person/area"][i]),
            "center": records["bbox/center"][i], "scale": records["bbox/scale"][i]})
    return persons


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    images = os.path.join(shared_data, "coco_val2017_mmpose4", "images")
    annotations = {
        "no_area": os.path.join(shared_data, "interop_cases", "missing_area", "annotations_no_area.json"),
        "area": os.path.join(shared_data, "coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json"),
    }
    config = example_gen.default_config("coco")
    out = {}
    for name, path in annotations.items():
        out_dir = str(tmp_path_factory.mktemp(name) / "examples")
        manifest = example_gen.run_example_gen("coco", out_dir, config, eval_annotations=path,
                                               eval_images=images, beam_args=IN_MEMORY)
        records, _ = read_split(out_dir, "eval", 17)
        out[name] = {"manifest": manifest, "records": records, "annotations": path, "out_dir": out_dir}
    return out


def test_example_gen_derives_and_counts_missing_areas(runs):
    no_area, area = runs["no_area"], runs["area"]
    assert no_area["manifest"]["splits"] == area["manifest"]["splits"] == {"eval": 12}
    assert no_area["manifest"]["area_from_box"] == {"eval": 12}
    assert area["manifest"]["area_from_box"] == {"eval": 0}
    with open(os.path.join(no_area["out_dir"], "manifest.json")) as handle:
        assert json.load(handle)["area_from_box"] == {"eval": 12}
    with open(no_area["annotations"]) as handle:
        boxes = {a["id"]: a["bbox"] for a in json.load(handle)["annotations"]}
    records = no_area["records"]
    expected = [0.53 * boxes[i][2] * boxes[i][3] for i in records["annotation/id"].tolist()]
    np.testing.assert_allclose(records["person/area"], expected, rtol=1e-6)  # never 0
    np.testing.assert_array_equal(area["records"]["annotation/id"], records["annotation/id"])


def test_evaluator_ground_truth_from_records_scores_like_pycocotools(runs):
    """2 px predictions: AP 0.0 before the rule; now close to the with-area AP, and as pycocotools
    scores the raw file with the derived areas written in."""
    with_area, _, _ = metrics_coco.evaluate_persons(_persons_from_records(runs["area"]["records"]))
    assert with_area["AP"] == pytest.approx(WITH_AREA_AP, abs=0.002)
    stats, _, results = metrics_coco.evaluate_persons(_persons_from_records(runs["no_area"]["records"]))
    assert stats["AP"] > 0.9 and abs(stats["AP"] - with_area["AP"]) < 0.03

    with open(runs["no_area"]["annotations"]) as handle:
        raw = json.load(handle)
    for annotation in raw["annotations"]:
        annotation["area"] = 0.53 * annotation["bbox"][2] * annotation["bbox"][3]
    reference = pycocotools_stats(raw, results)
    # the Evaluator's json path (gt_annotations = the file without area) equals pycocotools exactly;
    # the records path differs only by what records do not hold (the 2 annotations without keypoints)
    from_file, _, _ = metrics_coco.evaluate_persons(_persons_from_records(runs["no_area"]["records"]),
                                                    gt=runs["no_area"]["annotations"])
    assert [from_file[name] for name in metrics_coco.STAT_NAMES] == pytest.approx(list(reference), abs=1e-12)
    assert from_file["area_from_box"] == len(raw["annotations"]) == 14
    assert stats["AP"] == pytest.approx(reference[0], abs=0.005)


def test_records_written_with_area_zero_are_not_scored_zero(runs):
    """Records from before the rule (person/area = 0): the rebuilt GT derives the area too, and counts it."""
    persons = [dict(person, gt_area=0.0) for person in _persons_from_records(runs["no_area"]["records"])]
    stats, _, _ = metrics_coco.evaluate_persons(persons)
    assert stats["AP"] > 0.8 and stats[metrics_coco.AREA_FROM_BOX] == len(persons)


def test_evaluator_size_slice_uses_the_rule():
    from components import evaluator

    scale = np.array([250.0, 312.5])  # box 200 x 250 with padding 1.25: 0.53 * 50000 = 26500 -> large
    assert evaluator._person_size(5, 0.0, scale, 1.25) == "large"
    assert evaluator._person_size(5, 2000.0, scale, 1.25) == "medium"


def test_run_evaluator_on_example_gen_records_without_area(runs, tmp_path):
    """The real Evaluator (Beam inference, TFMA, blessing) on ExampleGen's records of the file without
    ``area``, with a serving-contract model 2 px off the GT: blessed at AP >= 0.9 (was AP 0.0)."""
    from components import evaluator
    from pose.config import build_config
    from tests.evaluator_fixtures import export_fake_model

    model = export_fake_model(str(tmp_path / "model"), noise_px=2.0)
    config = build_config({"eval": {"batch_size": 8, "thresholds": {"AP": {"lower_bound": 0.9}}}})
    result = evaluator.run_evaluator(model, runs["no_area"]["out_dir"], config, str(tmp_path / "blessing"))
    assert result["blessed"] is True, result["reasons"]
    assert result["metrics"]["AP"] == pytest.approx(result["tfma_metrics"]["AP"], abs=1e-12)
    assert abs(result["metrics"]["AP"] - WITH_AREA_AP) < 0.03
    assert result[metrics_coco.AREA_FROM_BOX] == 0  # ExampleGen already derived (and counted) them
    with open(os.path.join(str(tmp_path / "blessing"), "blessing.json")) as handle:
        assert json.load(handle)["metrics"]["AP"] == result["metrics"]["AP"]


def test_load_coco_area_cases(shared_data, tmp_path):
    """Annotation parsing only: derived (missing, 0, null), kept, and malformed (a string) areas."""
    from components import ingest_core

    with open(os.path.join(shared_data, "interop_cases", "coco_scoring", "gt_785.json")) as handle:
        data = json.load(handle)
    base = data["annotations"][0]
    w, h = base["bbox"][2], base["bbox"][3]
    cases = {1: {"area": None}, 2: {"area": 0}, 3: {"area": 1234.5}, 4: {"area": "big"}, 5: {}}
    annotations = []
    for ann_id, change in cases.items():
        annotation = {k: v for k, v in base.items() if k != "area"}
        annotation.update(change, id=ann_id)
        annotations.append(annotation)
    data["annotations"] = annotations
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    loaded = ingest_core.load_coco("eval", str(path), str(tmp_path), example_gen.default_config("coco"))
    persons = {p["annotation_id"]: p for task in loaded["tasks"] for p in task["persons"]}
    assert persons[3]["area"] == 1234.5
    for ann_id in (1, 2, 5):
        assert persons[ann_id]["area"] == pytest.approx(0.53 * w * h)
    assert 4 not in persons and loaded[metrics_coco.AREA_FROM_BOX] == 3
    skips = [skip for task in loaded["tasks"] for skip in task["skips"]]
    assert {"reason": "malformed_annotation", "split": "eval", "annotation_id": 4} in skips
