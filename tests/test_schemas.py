"""Keypoint schemas and the person-crop record spec."""
import numpy as np
import pytest
import tensorflow as tf

from schemas import features
from schemas.keypoints import COCO, MPII, get_schema


@pytest.mark.parametrize("schema", [COCO, MPII])
def test_flip_index_is_an_involution_that_swaps_sides(schema):
    index = schema.flip_index
    np.testing.assert_array_equal(index[index], np.arange(schema.num_joints))
    for left, right in schema.flip_pairs:
        assert index[left] == right and index[right] == left
    for a, b in schema.skeleton:
        assert 0 <= a < schema.num_joints and 0 <= b < schema.num_joints
    assert set(schema.upper_body) | set(schema.lower_body) == set(range(schema.num_joints))


def test_coco_and_mpii_definitions():
    assert COCO.num_joints == 17 and MPII.num_joints == 16
    assert COCO.joint_names[5] == "left_shoulder" and COCO.flip_index[5] == 6
    np.testing.assert_allclose(COCO.sigmas()[[0, 11, 16]], [0.026, 0.107, 0.089])
    assert MPII.joint_names[9] == "head_top" and MPII.head_size_factor == 0.6
    assert dict(MPII.pckh_groups)["Wrist"] == (10, 15)
    with pytest.raises(ValueError, match="OKS"):
        MPII.sigmas()
    with pytest.raises(ValueError, match="unknown keypoint schema"):
        get_schema("h36m")
    assert get_schema("coco") is COCO


def _record(num_joints=17, heatmap_size=(16, 12)):
    rng = np.random.default_rng(0)
    heatmaps = rng.uniform(0, 1, (*heatmap_size, num_joints)).astype(np.float32)
    return {
        "dataset": "coco", "image/encoded": b"\xff\xd8fake", "image/format": "jpeg",
        "image/id": 785, "image/height": 425, "image/width": 640, "annotation/id": 442619,
        "crop/height": 64, "crop/width": 48, "heatmap/height": heatmap_size[0], "heatmap/width": heatmap_size[1],
        "bbox/center": [320.5, 200.25], "bbox/scale": [150.0, 200.0], "bbox/score": 1.0, "person/area": 17376.9,
        "keypoints/crop": rng.uniform(0, 48, (num_joints, 2)), "keypoints/image": rng.uniform(0, 600, (num_joints, 2)),
        "keypoints/visibility": rng.integers(0, 3, num_joints), "heatmaps/encoded": heatmaps,
        "target_weight": np.ones(num_joints),
    }, heatmaps


def test_record_round_trip_through_tf_parsing():
    record, heatmaps = _record()
    serialized = features.build_example(record).SerializeToString()
    parsed = features.parse_records(tf.constant([serialized, serialized]), 17)
    assert parsed["schema/version"].numpy().tolist() == [features.SCHEMA_VERSION] * 2
    assert parsed["keypoints/crop"].shape == (2, 17, 2)
    np.testing.assert_allclose(parsed["keypoints/image"][0].numpy(), record["keypoints/image"], rtol=1e-6)
    np.testing.assert_allclose(parsed["bbox/center"][1].numpy(), record["bbox/center"])
    assert parsed["image/encoded"][0].numpy() == record["image/encoded"]
    decoded = features.decode_heatmaps_tf(parsed["heatmaps/encoded"], (16, 12), 17).numpy()
    assert decoded.shape == (2, 16, 12, 17)
    np.testing.assert_allclose(decoded[0], heatmaps, atol=1e-3)  # 16-bit fixed-point storage
    np.testing.assert_array_equal(decoded[0], features.decode_heatmaps(
        features.encode_heatmaps(heatmaps), (16, 12), 17))


def test_build_example_reports_missing_and_wrong_sized_keys():
    record, _ = _record()
    del record["bbox/score"]
    with pytest.raises(ValueError, match="missing keys"):
        features.build_example(record)
    record, _ = _record()
    record["bbox/center"] = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="bbox/center"):
        features.build_example(record)
    with pytest.raises(ValueError, match="heatmap bytes"):
        features.decode_heatmaps(b"\x00" * 10, (16, 12), 17)
