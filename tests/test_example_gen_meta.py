"""ExampleGen with a dataset meta on the real CrowdPose, AP-10K and OneHand10K samples; flips under the meta."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import example_gen
from pose.codec import HeatmapCodec
from pose.config import build_config
from schemas import dataset_meta
from tests.test_example_gen import IN_MEMORY, read_split
from trainer import augment

DATA = "/work/shared/data"
SETS = {"crowdpose_mmpose2": "test_crowdpose.json", "ap10k_mmpose2": "test_ap10k.json",
        "onehand10k_mmpose4": "test_onehand10k.json"}


def _labelled(folder):
    with open(os.path.join(DATA, folder, SETS[folder])) as handle:
        data = json.load(handle)
    return sorted(a["id"] for a in data["annotations"]
                  if not a.get("iscrowd") and any(v > 0 for v in a["keypoints"][2::3]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for folder in SETS:
        meta = os.path.join(DATA, folder, "dataset_meta.json")
        config = build_config({"dataset_meta": meta, "data": {"input_size": [64, 48]}})
        out_dir = str(tmp_path_factory.mktemp(folder) / "examples")
        manifest = example_gen.run_example_gen(
            config["dataset"], out_dir, config, eval_annotations=os.path.join(DATA, folder, SETS[folder]),
            eval_images=os.path.join(DATA, folder, "images"), beam_args=IN_MEMORY)
        out[folder] = (config, out_dir, manifest)
    return out


@pytest.mark.parametrize("folder", sorted(SETS))
def test_one_record_per_labelled_annotation_and_the_meta_in_the_manifest(runs, folder):
    config, out_dir, manifest = runs[folder]
    schema = dataset_meta.schema_for(config)
    records, _ = read_split(out_dir, "eval", schema.num_joints)
    assert sorted(records["annotation/id"].tolist()) == _labelled(folder)
    assert manifest["splits"]["eval"] == len(_labelled(folder))
    assert manifest["dataset"] == schema.name and manifest["num_joints"] == schema.num_joints
    assert manifest["dataset_meta_hash"] == schema.hash and manifest["dataset_meta"] == schema.to_meta()
    assert set(records["dataset"].tolist()) == {schema.name.encode()}
    if folder == "crowdpose_mmpose2":  # no area in the file: the documented rule, counted
        assert manifest["area_from_box"]["eval"] == 4 and "0.53" in manifest["area_rule"]
    if folder == "ap10k_mmpose2":  # neither annotation is category 1 only: species 1 and 26 both read
        assert manifest["skipped"].get("not_person", 0) == 0


@pytest.mark.parametrize("folder", ["ap10k_mmpose2", "onehand10k_mmpose4"])
def test_flipped_crop_targets_are_the_targets_of_the_flipped_keypoints(runs, folder):
    config, out_dir, _ = runs[folder]
    schema = dataset_meta.schema_for(config)
    codec = HeatmapCodec.from_config(config)
    records, _ = read_split(out_dir, "eval", schema.num_joints)
    keypoints = tf.constant(records["keypoints/crop"], tf.float32)
    visibility = tf.constant(records["keypoints/visibility"], tf.int32)
    images = tf.zeros([keypoints.shape[0], *codec.input_size, 3], tf.uint8)
    batch = keypoints.shape[0]
    center, scale = augment.identity_window(batch, codec.input_size)
    flip = tf.ones([batch], tf.bool)
    matrix = augment.transform_matrix(center, scale, tf.zeros([batch]), flip, codec.input_size)
    _, moved, moved_visibility = augment.apply_transform(images, keypoints, visibility, matrix, flip,
                                                         schema.flip_index, codec.input_size)
    flipped_targets, flipped_weights = codec.encode_tf(moved, moved_visibility)
    # the flipped keypoints by hand: mirror x, then joint j takes joint flip_index[j]
    index = schema.flip_index
    if folder == "onehand10k_mmpose4":
        np.testing.assert_array_equal(index, np.arange(21))
    else:
        assert index[0] == 1 and index[5] == 8
    width = codec.input_size[1]
    by_hand = records["keypoints/crop"][:, index].copy()
    by_hand[..., 0] = width - 1 - by_hand[..., 0]
    expected_targets, expected_weights = codec.encode_tf(tf.constant(by_hand, tf.float32),
                                                         tf.constant(records["keypoints/visibility"][:, index],
                                                                     tf.int32))
    np.testing.assert_allclose(flipped_targets.numpy(), expected_targets.numpy(), atol=1e-5)
    np.testing.assert_array_equal(flipped_weights.numpy(), expected_weights.numpy())
    assert expected_weights.numpy().sum() > 0


def test_meta_joint_count_other_than_the_file_fails_before_any_work(tmp_path):
    meta = os.path.join(DATA, "ap10k_mmpose2", "dataset_meta.json")
    config = build_config({"dataset_meta": meta, "data": {"input_size": [64, 48]}})
    with pytest.raises(ValueError, match=r"no category has 17 keypoints .* \[21\]"):
        example_gen.run_example_gen(config["dataset"], str(tmp_path / "out"), config,
                                    eval_annotations=os.path.join(DATA, "onehand10k_mmpose4", "test_onehand10k.json"),
                                    eval_images=os.path.join(DATA, "onehand10k_mmpose4", "images"),
                                    beam_args=IN_MEMORY)
    assert not os.path.exists(tmp_path / "out")


def test_annotation_with_another_keypoint_count_is_a_counted_dead_letter(tmp_path):
    with open(os.path.join(DATA, "onehand10k_mmpose4", "test_onehand10k.json")) as handle:
        data = json.load(handle)
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:60]
    path = tmp_path / "hands.json"
    path.write_text(json.dumps(data))
    config = build_config({"dataset_meta": os.path.join(DATA, "onehand10k_mmpose4", "dataset_meta.json"),
                           "data": {"input_size": [64, 48]}})
    manifest = example_gen.run_example_gen(config["dataset"], str(tmp_path / "out"), config,
                                           eval_annotations=str(path),
                                           eval_images=os.path.join(DATA, "onehand10k_mmpose4", "images"),
                                           beam_args=IN_MEMORY)
    assert manifest["skipped"]["keypoint_count_mismatch"] == 1 and manifest["splits"]["eval"] == 3
    with open(tmp_path / "out" / "dead_letter.jsonl") as handle:
        letters = [json.loads(line) for line in handle]
    assert {"reason": "keypoint_count_mismatch", "annotation_id": 9, "values": 60, "expected": 63}.items() \
        <= [entry for entry in letters if entry["reason"] == "keypoint_count_mismatch"][0].items()
