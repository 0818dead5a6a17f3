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


def test_preds_are_one_based_by_default_and_zero_based_on_request(dev, tmp_path):
    """HRNet/DarkPose add 1 *before* saving pred.mat (lib/dataset/mpii.py), bearpaw's preds are
    1-based too: ``preds`` is read as is by default; ``index_base=0`` adds 1 for 0-based files."""
    directory, gt, _ = dev
    one_based, zero_based = str(tmp_path / "pred.mat"), str(tmp_path / "pred0.mat")
    savemat(one_based, {"preds": gt["pos_pred_src"]})
    savemat(zero_based, {"preds": gt["pos_pred_src"] - 1.0})
    np.testing.assert_array_equal(metrics_mpii.load_predictions(one_based), gt["pos_pred_src"])
    np.testing.assert_allclose(metrics_mpii.load_predictions(zero_based, index_base=0), gt["pos_pred_src"], atol=1e-9)
    with_scores = str(tmp_path / "pred3.mat")  # (N, 16, 3): scores dropped
    savemat(with_scores, {"preds": np.concatenate([gt["pos_pred_src"], np.ones_like(gt["pos_pred_src"][..., :1])], -1)})
    np.testing.assert_array_equal(metrics_mpii.load_predictions(with_scores), gt["pos_pred_src"])
    direct = metrics_mpii.load_predictions(os.path.join(directory, "gt_valid_dev.mat"))
    np.testing.assert_array_equal(direct, gt["pos_pred_src"])
    with pytest.raises(ValueError, match="index_base"):
        metrics_mpii.load_predictions(one_based, index_base=2)


def test_hrnet_pred_mat_gives_the_right_values(shared_data):
    """interop_cases/mpii_hrnet_pred_mat: Tompson's predictions saved the HRNet way (1-based)."""
    directory = os.path.join(shared_data, "interop_cases", "mpii_hrnet_pred_mat")
    gt = metrics_mpii.load_gt_valid(os.path.join(directory, "gt_valid_300rows.mat"))
    predictions = metrics_mpii.load_predictions(os.path.join(directory, "hrnet_pred.mat"))
    table = metrics_mpii.pckh_table(predictions, gt["keypoints"], gt["visible"], gt["head_sizes"])
    assert table["Mean"] == pytest.approx(81.4728, abs=1e-4)
    assert table["Mean@0.1"] == pytest.approx(25.3968, abs=1e-4)
    assert table["Hip@0.1"] == pytest.approx(9.0451, abs=1e-4)
    assert table["Ankle@0.1"] == pytest.approx(15.3462, abs=1e-4)
    np.testing.assert_allclose(predictions, gt["pos_pred_src"], atol=1e-6)  # the same as pos_pred_src


def test_hrnet_formula_on_raw_mat_files_agrees(shared_data):
    """HRNet's evaluate() formula, written out on the raw .mat arrays (16 x 2 x N layout), as the reference."""
    from scipy.io import loadmat

    directory = os.path.join(shared_data, "interop_cases", "mpii_hrnet_pred_mat")
    raw = loadmat(os.path.join(directory, "gt_valid_300rows.mat"))
    preds = loadmat(os.path.join(directory, "hrnet_pred.mat"))["preds"]
    pos_pred_src = np.transpose(preds, [1, 2, 0])
    visible = 1 - raw["jnt_missing"]
    error = np.linalg.norm(pos_pred_src - raw["pos_gt_src"], axis=1)
    head = 0.6 * np.linalg.norm(raw["headboxes_src"][1] - raw["headboxes_src"][0], axis=0)
    scaled = error / (head * np.ones((len(error), 1))) * visible
    count = visible.sum(1)
    pckh = 100.0 * ((scaled <= 0.5) * visible).sum(1) / count
    ratio = np.ma.array(count, mask=False)
    ratio.mask[6:8] = True
    ratio = ratio / np.sum(ratio).astype(np.float64)
    reference_mean = float(np.sum(np.ma.array(pckh, mask=ratio.mask) * ratio))
    gt = metrics_mpii.load_gt_valid(os.path.join(directory, "gt_valid_300rows.mat"))
    ours = metrics_mpii.pckh_table(metrics_mpii.load_predictions(os.path.join(directory, "hrnet_pred.mat")),
                                   gt["keypoints"], gt["visible"], gt["head_sizes"])
    assert ours["Mean"] == pytest.approx(reference_mean, abs=1e-9)


def test_unreadable_mat_files_name_the_file(tmp_path):
    text = tmp_path / "notmat.mat"
    text.write_text("hello, not a mat file")
    with pytest.raises(ValueError, match="notmat.mat: not a readable .mat file"):
        metrics_mpii.load_predictions(str(text))
    with pytest.raises(ValueError, match="notmat.mat: not a readable .mat file"):
        metrics_mpii.load_gt_valid(str(text))
    truncated = tmp_path / "truncated.mat"
    savemat(str(truncated), {"preds": np.zeros((5, 16, 2))})
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.mat"):
        metrics_mpii.load_predictions(str(truncated))
    wrong = tmp_path / "wrong.mat"
    savemat(str(wrong), {"preds": np.zeros((5, 14, 2))})
    with pytest.raises(ValueError, match=r"wrong.mat: preds must be \(N, 16, 2\)"):
        metrics_mpii.load_predictions(str(wrong))
    savemat(str(wrong), {"preds": np.array(["a", "b"])})
    with pytest.raises(ValueError, match="wrong.mat"):
        metrics_mpii.load_predictions(str(wrong))


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
