"""Bottom-up targets: config section, letterbox geometry, channel layout, NumPy encoder and its TF twin, storage."""
import numpy as np
import pytest
import tensorflow as tf

from pose import bottom_up_codec as codec
from pose import bottom_up_codec_tf as codec_tf
from pose import codec_np, coordinates
from pose.config import build_config, output_size
from schemas import bottom_up as layout
from schemas.keypoints import get_schema


def _config(size=129, stride=4, dataset="coco", **section):
    overrides = {"approach": "bottom_up", "dataset": dataset,
                 "data": {"input_size": [size, size], "heatmap_stride": stride}}
    if section:
        overrides["bottom_up"] = section
    return build_config(overrides)


def _people(rng, count, size, joints=17, labelled=0.8):
    points = rng.uniform(0, size - 1, (count, joints, 2))
    flags = np.where(rng.uniform(size=(count, joints, 1)) < labelled, 2.0, 0.0)
    return np.concatenate([points * (flags > 0), flags], axis=-1)


# --------------------------------------------------------------------------
# Config and geometry
# --------------------------------------------------------------------------

def test_output_size_rule_and_derived_section():
    assert output_size(401, 8) == 51 and output_size(512, 8) == 64 and output_size(256, 4) == 64
    config = _config(401, 8)
    assert config["data"]["heatmap_size"] == [51, 51]
    section = config["bottom_up"]
    assert section["sigma"] == config["data"]["sigma"] == 2.0
    assert section["body_sigma"] == 4.0 and section["mid_radius"] == section["short_radius"] == 32.0
    assert build_config({})["approach"] == "top_down"
    assert build_config({})["data"]["heatmap_size"] == [64, 48]  # top-down unchanged
    assert _config(129, 4, sigma=1.5)["data"]["sigma"] == 1.5


@pytest.mark.parametrize("overrides, message", [
    ({"approach": "sideways"}, "approach must be one of"),
    ({"approach": "bottom_up", "data": {"input_size": [256, 192]}}, "square"),
    ({"approach": "bottom_up", "bottom_up": {"max_people": 0}}, "bottom_up.max_people"),
    ({"approach": "bottom_up", "bottom_up": {"short_radius": -1}}, "bottom_up.short_radius"),
    ({"approach": "bottom_up", "bottom_up": {"nms_kernel": 4}}, "bottom_up.nms_kernel"),
    ({"approach": "bottom_up", "bottom_up": {"peak_threshold": 2}}, "bottom_up.peak_threshold"),
    ({"approach": "bottom_up", "bottom_up": {"hough_refine": "yes"}}, "bottom_up.hough_refine"),
    ({"approach": "bottom_up", "bottom_up": {"sigma": 2.0}, "data": {"sigma": 3.0, "input_size": [129, 129]}},
     "differ"),
    ({"approach": "bottom_up", "bottom_up": {"loss_weights": {"heatmap": -1}}}, "loss_weights"),
    ({"approach": "bottom_up", "bottom_up": {"radius": 3}}, "unknown config key 'bottom_up.radius'"),
])
def test_config_errors_name_the_key(overrides, message):
    overrides = dict(overrides)
    overrides.setdefault("data", {"input_size": [129, 129]})
    with pytest.raises(ValueError, match=message):
        build_config(overrides)


def test_letterbox_affine_keeps_aspect_and_corners_and_has_a_tf_twin():
    for height, width in ((480, 640), (640, 427), (300, 300)):
        matrix = coordinates.letterbox_affine(height, width, 257)
        longest = max(height, width)
        corners = np.array([[[0.0, 0.0], [width - 1.0, height - 1.0]]])
        mapped = coordinates.apply_affine(corners, matrix)[0]
        scale = 256.0 / (longest - 1.0)
        np.testing.assert_allclose(mapped, [[0, 0], [(width - 1) * scale, (height - 1) * scale]], atol=1e-9)
        assert np.isclose(mapped[1].max(), 256.0)
        np.testing.assert_allclose(coordinates.letterbox_affine_tf(height, width, 257).numpy(), matrix, atol=1e-5)
    batch = coordinates.letterbox_affine([480, 640], [640, 427], 257)
    assert batch.shape == (2, 2, 3)
    with pytest.raises(ValueError, match="image size"):
        coordinates.letterbox_affine(1, 1, 257)


# --------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, channels", [("coco", 17 + 34 + 84 + 1), ("mpii", 16 + 32 + 60 + 1)])
def test_layout_sizes_graph_and_flip(dataset, channels):
    assert layout.num_channels(dataset) == channels
    joints = get_schema(dataset).num_joints
    graph = layout.BOTTOM_UP_GRAPHS[dataset]
    # the graph spans every joint (union-find), and the directed list is forward then reversed
    parent = list(range(joints))

    def find(a):
        while parent[a] != a:
            a = parent[a]
        return a
    for a, b in graph:
        parent[find(a)] = find(b)
    assert len({find(j) for j in range(joints)}) == 1
    edges = layout.BOTTOM_UP_EDGES[dataset]
    assert len(edges) == 2 * len(graph) == layout.num_edges(dataset)
    assert edges[len(graph):] == tuple((b, a) for a, b in graph)
    if dataset == "coco":
        assert graph[:16] == layout.PERSONLAB_COCO_TREE
    source, sign = layout.flip_permutation(dataset)
    assert sorted(source) == list(range(channels))
    x = np.random.default_rng(0).normal(size=(3, 4, channels)).astype(np.float32)
    np.testing.assert_array_equal(layout.flip_channels(layout.flip_channels(x, dataset), dataset), x)
    np.testing.assert_array_equal(layout.flip_channels(tf.constant(x), dataset).numpy(),
                                  layout.flip_channels(x, dataset))
    parts = layout.split_channels(x, dataset)
    assert parts["short"].shape == (3, 4, joints, 2) and parts["mid"].shape == (3, 4, len(edges), 2)
    assert parts["body"].shape == (3, 4, 1)
    np.testing.assert_array_equal(parts["short"][..., 1, 0], x[..., joints + 2])  # dx of joint 1
    tensor_parts = layout.split_channels(tf.constant(x), dataset)
    for key in parts:
        np.testing.assert_array_equal(tensor_parts[key].numpy(), parts[key])
    with pytest.raises(ValueError, match="channels"):
        layout.split_channels(x[..., :-1], dataset)


# --------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------

def test_encoder_targets_point_at_the_keypoints():
    config = _config(129, 4)  # output 33 x 33, factor 1/4
    keypoints = np.zeros((2, 17, 3))
    keypoints[0, 5] = [40.3, 50.6, 2]    # left shoulder of person 0
    keypoints[0, 7] = [44.9, 70.2, 1]    # left elbow of person 0 (occluded, still labelled)
    keypoints[1, 5] = [100.1, 30.7, 2]   # left shoulder of person 1, elbow unlabelled
    targets, weights = codec.encode_with_weights(keypoints, config)
    assert targets.shape == (33, 33, 136) and weights.shape == (33, 33, 17 + 42)
    parts = layout.split_channels(targets, "coco")
    decoded, _ = codec_np.decode(parts["heatmaps"][..., 5:6], "dark", 3)
    assert np.linalg.norm(decoded[0] - keypoints[0, 5, :2] / 4) < 0.05 or \
        np.linalg.norm(decoded[0] - keypoints[1, 5, :2] / 4) < 0.05
    shoulder = keypoints[0, 5, :2] / 4
    for col, row in ((10, 12), (9, 13), (12, 14)):  # near person 0's shoulder: short offset points to it
        np.testing.assert_allclose(parts["short"][row, col, 5], shoulder - [col, row], atol=1e-5)
        assert weights[row, col, 5] == 1
    assert np.all(parts["short"][0, 32, 5] == 0) and weights[0, 32, 5] == 0  # outside every disk (R = 8 px)
    edge = layout.BOTTOM_UP_EDGES["coco"].index((5, 7))
    np.testing.assert_allclose(parts["mid"][12, 10, edge], keypoints[0, 7, :2] / 4 - [10, 12], atol=1e-5)
    assert weights[12, 10, 17 + edge] == 1
    assert np.all(parts["mid"][8, 25, edge] == 0)  # person 1's shoulder: no elbow, no mid offset
    reverse = layout.BOTTOM_UP_EDGES["coco"].index((7, 5))
    np.testing.assert_allclose(parts["mid"][17, 11, reverse], shoulder - [11, 17], atol=1e-5)
    centre = keypoints[0, [5, 7], :2].mean(axis=0) / 4
    body, _ = codec_np.decode(layout.split_channels(codec.encode(keypoints[:1], config), "coco")["body"], "dark", 3)
    assert np.linalg.norm(body[0] - centre) < 0.05
    assert np.isclose(parts["body"][round(7.675), round(25.025), 0], 1.0, atol=0.1)  # person 1: its one joint
    assert targets[..., :17].max() <= 1.0 and targets[..., -1].max() <= 1.0


def test_nearest_person_wins_inside_overlapping_disks():
    config = _config(129, 4)
    keypoints = np.zeros((2, 17, 3))
    keypoints[0, 0] = [40.0, 40.0, 2]
    keypoints[1, 0] = [56.0, 40.0, 2]
    parts = layout.split_channels(codec.encode(keypoints, config), "coco")
    np.testing.assert_allclose(parts["short"][10, 11, 0], [-1.0, 0.0], atol=1e-6)  # (44, 40) input: person 0
    np.testing.assert_allclose(parts["short"][10, 13, 0], [1.0, 0.0], atol=1e-6)   # (52, 40) input: person 1


def test_empty_and_unlabelled_people_encode_to_zero():
    config = _config(129, 4)
    assert not codec.encode(np.zeros((0, 17, 3)), config).any()
    assert not codec.encode(np.zeros((3, 17, 3)), config).any()
    assert not codec_tf.encode(np.zeros((0, 17, 3), np.float32), config).numpy().any()
    with pytest.raises(ValueError, match="keypoints must be"):
        codec.encode(np.zeros((2, 17, 2)), config)
    with pytest.raises(ValueError, match="approach must be 'bottom_up'"):
        codec.encode(np.zeros((1, 17, 3)), build_config({}))


@pytest.mark.parametrize("dataset, size, stride", [("coco", 129, 4), ("coco", 401, 8), ("mpii", 97, 4)])
def test_tf_twin_equals_numpy_encoder(dataset, size, stride):
    config = _config(size, stride, dataset)
    joints = get_schema(dataset).num_joints
    rng = np.random.default_rng(size)
    people = _people(rng, 6, size, joints)
    people[2, :, :2] += rng.uniform(-40, 40, (joints, 2))  # some outside the frame
    expected, expected_weights = codec.encode_with_weights(people, config)
    targets, weights = codec_tf.encode_with_weights(people.astype(np.float32), config)
    np.testing.assert_allclose(targets.numpy(), expected, atol=2e-4)
    np.testing.assert_array_equal(weights.numpy(), expected_weights)
    # batched, zero-padded to N = 8, inside a tf.function with unknown sizes
    batch = np.zeros((2, 8, joints, 3), np.float32)
    batch[0, :6], batch[1, :2] = people, people[:2]
    encode = tf.function(lambda k: codec_tf.encode(k, config),
                         input_signature=[tf.TensorSpec([None, None, joints, 3], tf.float32)])
    out = encode(batch).numpy()
    np.testing.assert_allclose(out[0], expected, atol=2e-4)
    np.testing.assert_allclose(out[1], codec.encode(people[:2], config), atol=2e-4)


def test_flip_consistency_of_targets():
    """Encoding mirrored people = mirroring the pixels of the targets and remapping their channels."""
    config = _config(129, 4)
    people = _people(np.random.default_rng(3), 4, 129)
    flipped = people.copy()
    flipped[..., 0] = np.where(people[..., 2] > 0, 128.0 - people[..., 0], 0.0)
    flipped = flipped[:, get_schema("coco").flip_index]
    direct = codec.encode(flipped, config)
    mirrored = layout.flip_channels(codec.encode(people, config)[:, ::-1], "coco")
    np.testing.assert_allclose(mirrored, direct, atol=1e-5)


# --------------------------------------------------------------------------
# Storage and records
# --------------------------------------------------------------------------

def test_storage_round_trip_and_record_parsing():
    config = _config(129, 4, max_people=5)
    people = _people(np.random.default_rng(1), 3, 129)
    targets = codec.encode(people, config)
    heatmap_bytes, offset_bytes = layout.encode_targets(targets, "coco")
    decoded = layout.decode_targets(heatmap_bytes, offset_bytes, (33, 33), "coco")
    maps = np.r_[np.arange(17), [135]]
    assert np.abs(decoded[..., maps] - targets[..., maps]).max() <= 0.5 / 65535 + 1e-7
    assert np.abs(decoded - targets).max() <= 0.5 / layout.OFFSET_SCALE + 1e-6
    with pytest.raises(ValueError, match="offset targets"):
        too_far = np.zeros((2, 2, 136), np.float32)
        too_far[..., 20] = 600.0
        layout.encode_targets(too_far, "coco")

    image = np.zeros((129, 129, 3), np.uint8)
    mask = np.ones((33, 33), np.uint8)
    mask[:5, :7] = 0
    example = layout.build_example({
        "dataset": "coco", "image/encoded": tf.io.encode_png(image).numpy(), "image/format": "png",
        "image/id": 7, "image/height": 480, "image/width": 640, "input/size": 129,
        "affine": coordinates.letterbox_affine(480, 640, 129), "targets": targets, "mask": mask,
        "person/annotation_id": [11, 12, 13], "person/area": [100.0, 200.0, 300.0], "person/keypoints": people})
    record = codec_tf.decode_record_tf(tf.constant(example.SerializeToString()), config)
    assert record["image"].shape == (129, 129, 3) and record["image"].dtype == tf.uint8
    np.testing.assert_allclose(record["targets"].numpy(), decoded, atol=1e-6)
    np.testing.assert_array_equal(record["mask"].numpy()[..., 0], mask)
    assert int(record["num_people"]) == 3 and record["keypoints"].shape == (5, 17, 3)
    np.testing.assert_allclose(record["keypoints"].numpy()[:3], people, atol=1e-4)
    assert not record["keypoints"].numpy()[3:].any()
    np.testing.assert_array_equal(record["annotation_ids"].numpy(), [11, 12, 13, -1, -1])
    np.testing.assert_array_equal(record["image_size"].numpy(), [480, 640])
    np.testing.assert_allclose(record["affine"].numpy(), coordinates.letterbox_affine(480, 640, 129), atol=1e-6)
    # re-encoding the stored keypoints gives the stored targets (what augmentation-off training relies on)
    re_encoded = codec_tf.encode(record["keypoints"], config).numpy()
    assert np.abs(re_encoded - record["targets"].numpy()).max() <= 0.5 / layout.OFFSET_SCALE + 2e-4
    # an image with nobody in it: zero targets, all-padding keypoints
    empty = layout.build_example({
        "dataset": "coco", "image/encoded": tf.io.encode_png(image).numpy(), "image/format": "png",
        "image/id": 8, "image/height": 129, "image/width": 129, "input/size": 129,
        "affine": coordinates.letterbox_affine(129, 129, 129), "targets": codec.encode(np.zeros((0, 17, 3)), config),
        "mask": np.ones((33, 33)), "person/annotation_id": [], "person/area": [],
        "person/keypoints": np.zeros((0, 17, 3))})
    record = codec_tf.decode_record_tf(tf.constant(empty.SerializeToString()), config)
    assert int(record["num_people"]) == 0 and not record["keypoints"].numpy().any()
    assert not record["targets"].numpy().any() and record["keypoints"].shape == (5, 17, 3)
    with pytest.raises(ValueError, match="missing keys"):
        layout.build_example({"dataset": "coco"})
