"""Heatmap loss: against a NumPy reference of the references' JointsMSELoss / OHKM loss."""
import numpy as np
import pytest
import tensorflow as tf

from trainer.losses import joint_losses, keypoint_mse


def reference_loss(true, pred, weight, topk=None):
    """Slow NumPy reference: loop over examples and joints, as JointsMSELoss reads."""
    batch, _, _, joints = true.shape
    out = np.zeros(batch)
    for b in range(batch):
        per_joint = []
        for k in range(joints):
            diff = weight[b, k] * pred[b, :, :, k] - weight[b, k] * true[b, :, :, k]
            per_joint.append(0.5 * np.mean(diff.astype(np.float64) ** 2))
        per_joint = np.array(per_joint)
        out[b] = per_joint.mean() if topk is None else np.sort(per_joint)[::-1][:topk].mean()
    return out


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(3)
    true = rng.random((4, 16, 12, 17)).astype(np.float32)
    pred = rng.random((4, 16, 12, 17)).astype(np.float32)
    weight = (rng.random((4, 17)) > 0.3).astype(np.float32)
    return true, pred, weight


@pytest.mark.parametrize("topk", [None, 1, 8, 17])
def test_matches_numpy_reference(tensors, topk):
    true, pred, weight = tensors
    loss = keypoint_mse(true, pred, weight, ohkm_topk=topk).numpy()
    assert loss.shape == (4,) and loss.dtype == np.float32
    np.testing.assert_allclose(loss, reference_loss(true, pred, weight, topk), rtol=1e-5)


def test_ohkm_keeps_hardest_joints(tensors):
    true, pred, weight = tensors
    plain = keypoint_mse(true, pred, weight).numpy()
    mined = keypoint_mse(true, pred, weight, ohkm_topk=4).numpy()
    assert np.all(mined > plain)  # the top-4 mean exceeds the mean over all joints


def test_weights_mask_joints_and_perfect_prediction_is_zero(tensors):
    true, pred, weight = tensors
    np.testing.assert_array_equal(keypoint_mse(true, true, weight).numpy(), np.zeros(4, np.float32))
    changed = pred.copy()
    changed[..., weight[0] == 0] += 10.0  # the joints that example 0 masks out
    masked = weight[0] == 0
    before = joint_losses(true, pred, weight).numpy()[0, masked]
    after = joint_losses(true, changed, weight).numpy()[0, masked]
    np.testing.assert_array_equal(before, 0.0)
    np.testing.assert_array_equal(after, 0.0)
    assert keypoint_mse(true, changed, weight).numpy()[0] == pytest.approx(keypoint_mse(true, pred, weight).numpy()[0])


def test_list_of_predictions_sums_losses(tensors):
    true, pred, weight = tensors
    single = keypoint_mse(true, pred, weight).numpy()
    zeros = np.zeros_like(pred)
    stacked = keypoint_mse(true, [zeros, pred], weight).numpy()
    np.testing.assert_allclose(stacked, single + keypoint_mse(true, zeros, weight).numpy(), rtol=1e-6)


def test_float16_predictions_and_gradients(tensors):
    true, pred, weight = tensors
    variable = tf.Variable(pred)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keypoint_mse(true, tf.cast(variable, tf.float16), weight))
    gradient = tape.gradient(loss, variable).numpy()
    assert loss.dtype == tf.float32 and np.isfinite(gradient).all()
    # d loss / d pred = w^2 (pred - true) / (B * H * W * K); zero where the weight is 0.
    assert np.all(gradient[..., weight[0] == 0][0] == 0)
    expected = (weight[:, None, None, :] ** 2) * (pred - true) / pred.size
    np.testing.assert_allclose(gradient, expected, atol=2e-7)


def test_rejects_bad_arguments(tensors):
    true, pred, weight = tensors
    with pytest.raises(ValueError, match="ohkm_topk"):
        keypoint_mse(true, pred, weight, ohkm_topk=0)
    with pytest.raises(ValueError, match="ohkm_topk"):
        keypoint_mse(true, pred, weight, ohkm_topk=18)
    with pytest.raises(ValueError, match="heatmaps_pred"):
        keypoint_mse(true, pred[:, :8], weight)
    with pytest.raises(ValueError, match="heatmaps_pred"):
        keypoint_mse(true, [], weight)
    with pytest.raises(ValueError, match="target_weight"):
        keypoint_mse(true, pred, weight[:, :5])
