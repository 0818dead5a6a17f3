"""MPII PCKh (HRNet protocol) on the real gt_valid.mat dev subset, conventions and errors."""
import json
import os

import numpy as np
import pytest
from scipy.io import savemat

from components import metrics_mpii

GROUPS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")


@pytest.fixture(scope="module")
def dev(shared_data):
    directory = os.path.join(shared_data, "mpii_val_pckh_dev")
    with open(os.path.join(directory, "expected_pckh.json")) as handle:
        expected = json.load(handle)
    return directory, metrics_mpii.load_gt_valid(os.path.join(directory, "gt_valid_dev.mat")), expected


def test_pckh_of_tompson_predictions_matches_expected(dev):
    _, gt, expected = dev
    table = metrics_mpii.pckh_table(gt["pos_pred_src"], gt["keypoints"], gt["visible"], gt["head_sizes"])
    for suffix, key in (("", "tompson_pos_pred_src@0.5"), ("@0.1", "tompson_pos_pred_src@0.1")):
        for group in GROUPS:
            assert table[group + suffix] == pytest.approx(expected[key][group], abs=0.01), group + suffix
        assert table["Mean" + suffix] == pytest.approx(expected[key]["Mean_weighted"], abs=0.01)
        assert table["Mean14" + suffix] == pytest.approx(expected[key]["Mean_unweighted14"], abs=0.01)
    assert table["num_persons"] == expected["tompson_pos_pred_src@0.5"]["n_persons"] == 1476
    assert table["PCKh@0.5"] == table["Mean"] and table["PCKh@0.1"] == table["Mean@0.1"]
    # A true 0.1: HRNet's 0.11 would score higher.
    loose, counts = metrics_mpii.joint_pckh(gt["pos_pred_src"], gt["keypoints"], gt["visible"], gt["head_sizes"], 0.11)
    assert metrics_mpii.pckh_summary(loose, counts)["Mean"] > table["Mean@0.1"]


def test_zero_based_preds_get_one_added(dev, tmp_path):
    """HRNet's pred.mat holds 0-based predictions (N, 16, 2); the loader adds 1 like HRNet's evaluation."""
    directory, gt, _ = dev
    path = str(tmp_path / "pred.mat")
    savemat(path, {"preds": gt["pos_pred_src"] - 1.0})
    np.testing.assert_allclose(metrics_mpii.load_predictions(path), gt["pos_pred_src"], atol=1e-9)
    direct = metrics_mpii.load_predictions(os.path.join(directory, "gt_valid_dev.mat"))
    np.testing.assert_array_equal(direct, gt["pos_pred_src"])


def test_perfect_predictions_and_threshold_edge():
    keypoints = np.random.default_rng(1).integers(0, 100, (5, 16, 2)).astype(np.float64)  # exact sums
    visible = np.ones((5, 16), bool)
    visible[0, :3] = False
    head = np.full(5, 10.0)
    table = metrics_mpii.pckh_table(keypoints, keypoints, visible, head)
    assert table["Mean"] == 100.0 and table["Mean@0.1"] == 100.0
    moved = keypoints.copy()
    moved[..., 0] += 5.0                       # exactly 0.5 head sizes: counted correct (<=)
    pckh, counts = metrics_mpii.joint_pckh(moved, keypoints, visible, head, 0.5)
    assert np.all(pckh == 100.0) and counts[0] == 4 and counts[5] == 5
    moved[..., 0] += 0.01
    pckh, _ = metrics_mpii.joint_pckh(moved, keypoints, visible, head, 0.5)
    assert np.all(pckh == 0.0)


def test_match_rows_finds_records_by_their_joints(dev, shared_data):
    _, gt, _ = dev
    with open(os.path.join(shared_data, "mpii_val_mmpose2", "mpii_val_mmpose2.json")) as handle:
        people = json.load(handle)
    joints = np.asarray([p["joints"] for p in people], np.float64) - 1.0     # our 0-based records
    visible = np.asarray([p["joints_vis"] for p in people]) > 0
    np.testing.assert_array_equal(metrics_mpii.match_rows(joints, visible, gt), [0, 1])
    with pytest.raises(ValueError, match="matches 0 gt_valid rows"):
        metrics_mpii.match_rows(joints + 3.0, visible, gt)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="must both be"):
        metrics_mpii.joint_pckh(np.zeros((2, 16, 2)), np.zeros((3, 16, 2)), np.ones((3, 16)), np.ones(3))
    with pytest.raises(ValueError, match="head_sizes must be > 0"):
        metrics_mpii.joint_pckh(np.zeros((1, 16, 2)), np.zeros((1, 16, 2)), np.ones((1, 16)), np.zeros(1))
    path = str(tmp_path / "bad.mat")
    savemat(path, {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="not a gt_valid.mat layout"):
        metrics_mpii.load_gt_valid(path)
    with pytest.raises(ValueError, match="neither"):
        metrics_mpii.load_predictions(path)
