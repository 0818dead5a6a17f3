"""pipeline.score --dataset-meta on the real non-COCO sets: their expected_stats.json, PCK/AUC/EPE, refusals."""
import copy
import json
import os

import numpy as np
import pytest

from components import metrics_pck
from pipeline import score

DATA = "/work/shared/data"
SETS = {"ap10k_mmpose2": "test_ap10k.json", "onehand10k_mmpose4": "test_onehand10k.json",
        "crowdpose_mmpose2": "test_crowdpose.json"}


def _paths(folder):
    base = os.path.join(DATA, folder)
    return (os.path.join(base, SETS[folder]), os.path.join(base, "synthetic_noisy_keypoint_results.json"),
            os.path.join(base, "dataset_meta.json"))


def _expected(folder):
    with open(os.path.join(DATA, folder, "expected_stats.json")) as handle:
        return json.load(handle)


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_ap10k_oks_ap_with_the_meta_sigmas_and_all_species(capsys):
    gt, results, meta = _paths("ap10k_mmpose2")
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset-meta", meta]) == 0
    assert _last_json(capsys) == _expected("ap10k_mmpose2")["stats"]
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset", "ap10k"]) == 0  # the bundled meta
    assert _last_json(capsys) == _expected("ap10k_mmpose2")["stats"]


def test_onehand10k_pck_auc_epe(capsys):
    gt, results, meta = _paths("onehand10k_mmpose4")
    expected = _expected("onehand10k_mmpose4")["stats"]
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset-meta", meta]) == 0
    output = capsys.readouterr().out
    stats = json.loads(output.strip().splitlines()[-1])
    assert set(stats) == {"PCK@0.2", "AUC", "EPE"}
    assert stats["PCK@0.2"] == expected["PCK@0.2_bbox"] and stats["EPE"] == expected["EPE_px"]
    assert f"joints scored: {expected['joints_scored']}" in output
    assert 0 < stats["AUC"] < 1


def test_pck_auc_definition_on_synthetic_errors():
    # one instance, box longer side 100 px; joint errors 0, 10, 30 px and one unlabelled joint
    gt = np.zeros((1, 4, 2))
    pred = gt + np.array([[[0, 0], [10, 0], [0, 30], [500, 0]]])
    scored = np.array([[True, True, True, False]])
    stats = metrics_pck.pck_auc_epe(pred, gt, scored, np.array([100.0]))
    assert stats["PCK@0.2"] == pytest.approx(2 / 3) and stats["EPE"] == pytest.approx(40 / 3)
    # alpha_i = 0.025 i: joint 0 hits from i=1, joint 1 (0.1) from i=5, joint 2 (0.3) from i=13 (strict <)
    assert stats["AUC"] == pytest.approx((19 + 15 + 7) / 3 / 20)
    assert stats["joints_scored"] == 3


def test_crowdpose_has_no_area_so_pycocotools_alone_cannot_score_it(capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results, meta = _paths("crowdpose_mmpose2")
    assert _expected("crowdpose_mmpose2")["stats"] is None
    api = COCO(gt)
    evaluator = COCOeval(api, api.loadRes(results), "keypoints")
    evaluator.params.kpt_oks_sigmas = np.asarray(json.load(open(meta))["sigmas"])
    with pytest.raises(KeyError, match="area"):
        evaluator.evaluate()
    capsys.readouterr()
    # ours applies the documented rule (0.53 w h of the box) and says so
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset-meta", meta]) == 0
    output = capsys.readouterr().out
    assert "5 ground-truth annotations" in output and "0.53 * bbox w * h" in output
    assert 0 < json.loads(output.strip().splitlines()[-1])["AP"] <= 1


def test_no_coco_sigmas_on_another_layout(tmp_path, capsys):
    gt, results, _ = _paths("ap10k_mmpose2")
    assert score.main(["--coco-gt", gt, "--results", results]) == 2  # 17 joints, but not COCO's
    assert "not COCO's 17 person keypoints" in capsys.readouterr().err
    hand_gt, hand_results, hand_meta = _paths("onehand10k_mmpose4")
    with_oks = tmp_path / "hand.json"
    meta = json.load(open(hand_meta))
    with_oks.write_text(json.dumps(dict(meta, metric="oks")))
    assert score.main(["--coco-gt", hand_gt, "--results", hand_results, "--dataset-meta", str(with_oks)]) == 2
    assert "'metric': 'oks' needs sigmas" in capsys.readouterr().err


def test_meta_and_annotation_joint_counts_disagree_exit_2(tmp_path, capsys):
    gt, results, _ = _paths("onehand10k_mmpose4")
    _, _, ap10k_meta = _paths("ap10k_mmpose2")
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset-meta", ap10k_meta]) == 2
    err = capsys.readouterr().err
    assert "no category has 17 keypoints" in err and "[21]" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_name: x\njoint_names: [a, b]\nflip_pairs: [[0, 2]]\n")
    assert score.main(["--coco-gt", gt, "--results", results, "--dataset-meta", str(bad)]) == 2
    assert "bad.yaml: dataset meta field 'flip_pairs'" in capsys.readouterr().err


def test_pck_results_must_match_annotations(tmp_path, capsys):
    gt, results, meta = _paths("onehand10k_mmpose4")
    entries = json.load(open(results))
    short = tmp_path / "short.json"
    short.write_text(json.dumps(entries[:-1]))
    assert score.main(["--coco-gt", gt, "--results", str(short), "--dataset-meta", meta]) == 2
    assert "no result for annotation id 1402" in capsys.readouterr().err
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(entries + [copy.deepcopy(entries[0])]))
    assert score.main(["--coco-gt", gt, "--results", str(extra), "--dataset-meta", meta]) == 2
    assert "result 4 (image_id 9, category_id 1) has no annotation left" in capsys.readouterr().err
