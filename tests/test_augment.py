"""Augmentation: identity vs stored targets, NumPy/OpenCV reference, flip semantics, ranges, tf.data."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pose import coordinates
from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from schemas import features
from schemas.keypoints import get_schema
from tests import records_util
from trainer import augment

SCHEMA = get_schema("coco")
IDENTITY_AUGMENTATION = {"enabled": True, "flip": False, "scale_factor": 0.0, "rotation_factor": 45.0,
                         "rotation_prob": 0.0, "half_body_prob": 0.0, "half_body_min_joints": 8,
                         "half_body_padding": 1.5}


def stack_records(records, codec):
    """Record dicts -> the arrays the trainer sees (images decoded by TF, heatmaps from storage)."""
    images = np.stack([decode_image_tf(r["image/encoded"]).numpy() for r in records])
    keypoints = np.stack([np.asarray(r["keypoints/crop"], np.float32) for r in records])
    visibility = np.stack([r["keypoints/visibility"] for r in records]).astype(np.int32)
    heatmaps = np.stack([features.decode_heatmaps(features.encode_heatmaps(r["heatmaps/encoded"]),
                                                  codec.heatmap_size, keypoints.shape[1]) for r in records])
    weights = np.stack([r["target_weight"] for r in records])
    return images, keypoints, visibility, heatmaps, weights


@pytest.fixture(scope="module")
def coco(shared_data):
    config = build_config({"data": {"input_size": [128, 96]}})
    codec = HeatmapCodec.from_config(config)
    root = os.path.join(shared_data, "coco_train2017_mini28")
    records = records_util.coco_person_records(os.path.join(root, "person_keypoints_train2017_mini28.json"),
                                               os.path.join(root, "images"), config, codec, limit=32)
    assert len(records) == 32
    return config, codec, stack_records(records, codec)


def test_identity_transform_reproduces_stored_targets(coco):
    config, codec, (images, keypoints, visibility, heatmaps, weights) = coco
    batch = images.shape[0]
    center, scale = augment.identity_window(batch, codec.input_size)
    matrix = augment.transform_matrix(center, scale, tf.zeros([batch]), tf.zeros([batch], tf.bool),
                                      codec.input_size)
    np.testing.assert_allclose(matrix.numpy(), np.tile([[[1, 0, 0], [0, 1, 0]]], [batch, 1, 1]), atol=1e-6)
    # The full random path with every augmentation switched off is the identity too.
    out = augment.augment_batch(images, keypoints, visibility, codec, IDENTITY_AUGMENTATION,
                                SCHEMA.flip_index, SCHEMA.upper_body_mask, seed=[1, 2])
    np.testing.assert_allclose(out["image"].numpy(), images, atol=1e-3)
    np.testing.assert_allclose(out["heatmaps"].numpy(), heatmaps, atol=1e-3)
    np.testing.assert_array_equal(out["target_weight"].numpy(), weights)
    assert weights.sum() > 100  # real people: most labelled joints are in the crop


def numpy_reference(image, keypoints, visibility, center, scale, rotation, flip, codec):
    """Slow reference with the NumPy/OpenCV half: mirror the crop, then crop the window."""
    in_h, in_w = codec.input_size
    if flip:
        image = np.ascontiguousarray(image[:, ::-1])
        keypoints = coordinates.flip_points(keypoints, in_w)
        center = coordinates.flip_points(center, in_w)
    matrix = coordinates.crop_affine(center, scale, (in_h, in_w), rotation)
    crop = coordinates.warp_image(image, matrix, (in_h, in_w))
    moved = coordinates.apply_affine(keypoints, matrix)
    if flip:
        moved, visibility = moved[SCHEMA.flip_index], visibility[SCHEMA.flip_index]
    heatmaps, weights = codec.encode(moved, visibility)
    return crop, moved, heatmaps, weights


def test_random_augmentation_matches_numpy_reference(coco):
    config, codec, (images, keypoints, visibility, _, _) = coco
    augmentation = dict(config["augmentation"], half_body_prob=0.5)
    seed = tf.constant([5, 9], tf.int64)
    params = augment.sample_transform(keypoints, visibility, augmentation, codec.input_size,
                                      SCHEMA.upper_body_mask, seed)
    out = augment.augment_batch(images, keypoints, visibility, codec, augmentation, SCHEMA.flip_index,
                                SCHEMA.upper_body_mask, seed)
    params = {key: value.numpy() for key, value in params.items()}
    assert params["flip"].any() and (~params["flip"]).any() and params["half_body"].any()
    assert (params["rotation"] != 0).any()
    for index in range(images.shape[0]):
        crop, moved, heatmaps, weights = numpy_reference(
            images[index], keypoints[index].astype(np.float64), visibility[index], params["center"][index],
            params["scale"][index], params["rotation"][index], params["flip"][index], codec)
        labelled = visibility[index][SCHEMA.flip_index if params["flip"][index] else slice(None)] > 0
        np.testing.assert_allclose(out["keypoints"].numpy()[index][labelled], moved[labelled], atol=2e-3)
        np.testing.assert_array_equal(out["target_weight"].numpy()[index], weights)
        np.testing.assert_allclose(out["heatmaps"].numpy()[index], heatmaps, atol=1e-3)
        # OpenCV interpolates with 1/32-pixel fixed-point weights, TF in float: small differences.
        difference = np.abs(out["image"].numpy()[index] - crop)
        assert difference.mean() < 0.5 and np.percentile(difference, 99) < 4.0, (index, difference.max())


def test_flip_swaps_left_and_right_at_mirrored_positions(coco):
    config, codec, (images, keypoints, visibility, _, _) = coco
    batch = images.shape[0]
    center, scale = augment.identity_window(batch, codec.input_size)
    flip = tf.ones([batch], tf.bool)
    matrix = augment.transform_matrix(center, scale, tf.zeros([batch]), flip, codec.input_size)
    image, moved, moved_visibility = augment.apply_transform(images, keypoints, visibility, matrix, flip,
                                                             SCHEMA.flip_index, codec.input_size)
    np.testing.assert_allclose(image.numpy(), images[:, :, ::-1].astype(np.float32), atol=1e-3)
    left_wrist, right_wrist = SCHEMA.joint_names.index("left_wrist"), SCHEMA.joint_names.index("right_wrist")
    width = codec.input_size[1]
    np.testing.assert_allclose(moved.numpy()[:, left_wrist, 0], width - 1 - keypoints[:, right_wrist, 0], atol=1e-4)
    np.testing.assert_allclose(moved.numpy()[:, left_wrist, 1], keypoints[:, right_wrist, 1], atol=1e-4)
    np.testing.assert_array_equal(moved_visibility.numpy()[:, left_wrist], visibility[:, right_wrist])


def test_sampled_parameters_follow_the_config():
    batch, in_h, in_w = 4000, 64, 48
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(5, 40, size=(batch, 17, 2)).astype(np.float32)
    visibility = np.full((batch, 17), 2, np.int32)
    visibility[: batch // 2, :10] = 0  # first half: only 7 labelled joints -> no half-body
    augmentation = build_config()["augmentation"]
    params = augment.sample_transform(keypoints, visibility, augmentation, (in_h, in_w),
                                      SCHEMA.upper_body_mask, tf.constant([0, 0], tf.int64))
    params = {key: value.numpy() for key, value in params.items()}
    rotated = params["rotation"] != 0
    assert np.abs(params["rotation"]).max() <= 45.0
    assert abs(rotated.mean() - 0.6) < 0.04
    assert abs(params["flip"].mean() - 0.5) < 0.04
    assert not params["half_body"][: batch // 2].any()
    assert abs(params["half_body"][batch // 2:].mean() - 0.3) < 0.04
    whole = ~params["half_body"]
    ratio = params["scale"][whole] / np.array([in_w - 1.0, in_h - 1.0])
    np.testing.assert_allclose(ratio[:, 0], ratio[:, 1], rtol=1e-5)  # aspect ratio kept
    assert ratio.min() >= 0.65 - 1e-5 and ratio.max() <= 1.35 + 1e-5
    assert ratio.min() < 0.7 and ratio.max() > 1.3  # the whole range is used


def test_half_body_window_frames_the_chosen_joints():
    keypoints = np.zeros((2, 17, 2), np.float32)
    keypoints[:, :11] = [[20.0, 10.0]]  # upper body around (20..30, 10..14)
    keypoints[:, :11, 0] += np.linspace(0, 10, 11)
    keypoints[:, :11, 1] += np.linspace(0, 4, 11)
    keypoints[:, 11:] = [[25.0, 50.0]]  # lower body, 6 joints spread over x 20..30
    keypoints[:, 11:, 0] += np.linspace(-5, 5, 6)
    visibility = np.full((2, 17), 2, np.int32)
    center, scale, usable = augment.half_body_window(keypoints, visibility, SCHEMA.upper_body_mask,
                                                     tf.constant([0.2, 0.9]), (64, 48), padding=1.5)
    np.testing.assert_allclose(center.numpy()[0], keypoints[0, :11].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(center.numpy()[1], keypoints[1, 11:].mean(axis=0), atol=1e-5)
    # upper box 10 x 4 -> aspect (47/63) fixed: w = 10, h = 10 * 63 / 47; times 1.5.
    np.testing.assert_allclose(scale.numpy()[0], [15.0, 15.0 * 63 / 47], rtol=1e-5)
    # lower box 10 x 0 -> 10 wide.
    np.testing.assert_allclose(scale.numpy()[1], [15.0, 15.0 * 63 / 47], rtol=1e-5)
    assert usable.numpy().all()
    visibility[1, 11:] = 0  # lower body unlabelled: the upper body is used instead
    center, _, usable = augment.half_body_window(keypoints, visibility, SCHEMA.upper_body_mask,
                                                 tf.constant([0.2, 0.9]), (64, 48), padding=1.5)
    np.testing.assert_allclose(center.numpy()[1], keypoints[1, :11].mean(axis=0), atol=1e-5)


def test_keypoints_follow_the_image_content():
    """Augmented keypoints land on the discs drawn at the joints in the (augmented) crops."""
    config = build_config({"data": {"input_size": [128, 96]}})
    codec = HeatmapCodec.from_config(config)
    images, keypoints, visibility, _, _ = stack_records(records_util.synthetic_records(config, codec, 64, seed=1),
                                                        codec)
    out = augment.augment_batch(images, keypoints, visibility, codec, config["augmentation"], SCHEMA.flip_index,
                                SCHEMA.upper_body_mask, seed=[3, 4])
    moved = out["keypoints"].numpy()
    labelled = out["visibility"].numpy() > 0
    in_h, in_w = codec.input_size
    inside = labelled & (moved[..., 0] >= 1) & (moved[..., 0] <= in_w - 2) & (moved[..., 1] >= 1) & (
        moved[..., 1] <= in_h - 2)
    batch_index, joint_index = np.nonzero(inside)
    columns = np.round(moved[batch_index, joint_index, 0]).astype(int)
    rows = np.round(moved[batch_index, joint_index, 1]).astype(int)
    brightness = out["image"].numpy()[batch_index, rows, columns].mean(axis=-1)
    assert inside.sum() > 500
    assert np.mean(brightness > 150) > 0.97  # discs are 255 on a < 60 background
    # Joints that leave the crop get weight 0, joints well inside keep weight 1.
    weights = out["target_weight"].numpy()
    assert np.all(weights[inside] == 1) and np.all(weights[~labelled] == 0)


def test_same_results_eagerly_and_inside_tf_data(coco):
    config, codec, (images, keypoints, visibility, _, _) = coco
    augmentation = config["augmentation"]

    def run(batch_images, batch_keypoints, batch_visibility, seed):
        out = augment.augment_batch(batch_images, batch_keypoints, batch_visibility, codec, augmentation,
                                    SCHEMA.flip_index, SCHEMA.upper_body_mask, seed)
        return out["image"], out["heatmaps"], out["target_weight"]

    seed = tf.constant([11, 0], tf.int64)
    eager = run(images[:8], keypoints[:8], visibility[:8], seed)
    dataset = tf.data.Dataset.from_tensors((images[:8], keypoints[:8], visibility[:8], seed)).map(run)
    graph = next(iter(dataset))
    for eager_value, graph_value in zip(eager, graph):
        np.testing.assert_allclose(eager_value.numpy(), graph_value.numpy(), atol=1e-4)
    # Stateless: the same seed repeats, another seed differs.
    np.testing.assert_array_equal(run(images[:8], keypoints[:8], visibility[:8], seed)[1].numpy(), eager[1].numpy())
    other = run(images[:8], keypoints[:8], visibility[:8], tf.constant([12, 0], tf.int64))
    assert not np.allclose(other[0].numpy(), eager[0].numpy())
