"""Bottom-up model, loss, whole-image augmentation, input pipeline and training (issue 16, M16).

Real images: the shared COCO val sample (a person without keypoints gives a masked
region) and the embedded synthetic generator, turned into bottom-up records with
ExampleGen's core (:func:`components.ingest_bottom_up.build_image_record`).
"""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from components import ingest_bottom_up, ingest_core
from pose import bottom_up_codec, bottom_up_codec_tf
from pose.config import build_config, load_config
from schemas import bottom_up as layout
from trainer import augment_bottom_up, input_pipeline, losses, train_loop
from trainer.models import bottom_up as bottom_up_model
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(size=129, stride=4, model=None, **sections):
    overrides = {"approach": "bottom_up", "dataset": "coco",
                 "model": model or {"name": "bottom_up", "depth": 18, "backbone_stages": 3, "output_stride": 16,
                                    "head_filters": 32},
                 "data": {"input_size": [size, size], "heatmap_stride": stride},
                 "bottom_up": {"max_people": 8, "short_radius": 12.0}}
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value}
    return build_config(overrides)


# --------------------------------------------------------------------------
# Records from real and synthetic images (ExampleGen's core, no Beam)
# --------------------------------------------------------------------------

def _records(config, annotations, images_dir, split="eval"):
    loaded = ingest_bottom_up.load_coco(split, annotations, images_dir, config)
    records = []
    for task in loaded["tasks"]:
        if not os.path.exists(task["image_path"]):
            continue
        image, _ = ingest_core.read_image(task["image_path"], 50_000_000)
        record, _, _ = ingest_bottom_up.build_image_record(image, task, config)
        records.append(record)
    return records


@pytest.fixture(scope="module")
def config():
    return make_config()


@pytest.fixture(scope="module")
def coco_records(config, shared_data):
    base = os.path.join(shared_data, "coco_val2017_mmpose4")
    records = _records(config, os.path.join(base, "person_keypoints_val2017_mmpose4.json"),
                       os.path.join(base, "images"))
    assert len(records) == 4
    return records


@pytest.fixture(scope="module")
def synthetic_examples(tmp_path_factory):
    """A small embedded-dataset ExampleGen output for the 65 x 65 training test: Split-train/ + the config."""
    from pipeline import synthetic

    out = tmp_path_factory.mktemp("bottom_up_synthetic")
    synthetic.generate_dataset(str(out / "data"), synthetic.SyntheticSpec(num_train_images=24, num_val_images=1))
    config = make_config(size=65)
    records = _records(config, str(out / "data" / "annotations" / "person_keypoints_train.json"),
                       str(out / "data" / "images" / "train"), split="train")
    os.makedirs(out / "Split-train")
    with tf.io.TFRecordWriter(str(out / "Split-train" / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
        for record in records:
            writer.write(record)
    return str(out), config


def _decoded_batch(records, config):
    decoded = [bottom_up_codec_tf.decode_record_tf(tf.constant(record), config) for record in records]
    return {key: tf.stack([example[key] for example in decoded]) for key in decoded[0]}


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------

def test_demo_model_output_layout(config):
    model = build_model(config)
    channels = layout.num_channels("coco")
    assert model.output_shape == (None, 33, 33, channels)
    outputs = model(tf.zeros([2, 129, 129, 3]), training=False)
    assert outputs.dtype == tf.float32 and outputs.shape == (2, 33, 33, channels)
    names = {layer.name for layer in model.layers}
    assert {"head_heatmaps", "head_short_offsets", "head_mid_offsets", "head_body", "conv1_conv", "head_reduce_conv",
            "conv4_block2_2_conv", "upsample1_deconv", "upsample2_deconv", "head_conv"} <= names
    # upsample: features -> the 3x3 head conv runs at the output stride (33 x 33).
    assert model.get_layer("head_conv").output.shape[1:3] == (33, 33)
    assert "conv5_block1_1_conv" not in names          # 3 stages


@pytest.mark.parametrize("output_stride, stride, size, expected", [
    (8, 8, 65, 9), (16, 8, 65, 9), (16, 16, 65, 5), (8, 4, 65, 17)])
def test_dense_resnet_strides_and_dilation(output_stride, stride, size, expected):
    config = make_config(size=size, stride=stride, model={"name": "bottom_up", "depth": 18,
                                                          "output_stride": output_stride, "head_filters": 8})
    model = build_model(config)
    assert model.output_shape[1:3] == (expected, expected)
    dilations = {layer.name: layer.dilation_rate[0] for layer in model.layers
                 if isinstance(layer, tf.keras.layers.Conv2D) and layer.name.startswith("conv5_block2")}
    # After the output stride is reached every later stage dilates instead of striding.
    assert max(dilations.values()) == (32 // output_stride)


def test_aligned_upsampling_is_corner_aligned_bilinear():
    values = np.random.default_rng(0).normal(size=(1, 5, 4, 3)).astype(np.float32)
    inputs = tf.keras.Input((5, 4, 3))
    model = tf.keras.Model(inputs, bottom_up_model.aligned_upsample(inputs, "up"))
    got = model(values).numpy()
    assert got.shape == (1, 9, 7, 3)

    def interpolate(axis_values, positions):  # NumPy reference, align-corners
        low = np.floor(positions).astype(int)
        high = np.minimum(low + 1, axis_values.shape[0] - 1)
        weight = (positions - low).reshape(-1, *([1] * (axis_values.ndim - 1)))
        return axis_values[low] * (1 - weight) + axis_values[high] * weight

    rows = interpolate(values[0], np.arange(9) / 2.0)
    expected = np.swapaxes(interpolate(np.swapaxes(rows, 0, 1), np.arange(7) / 2.0), 0, 1)
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    assert not model.trainable_weights


def test_upsampling_the_outputs_keeps_the_coarse_samples():
    """``upsample: outputs``: the coarse outputs, upsampled corner-aligned (output pixel 4i = coarse pixel i)."""
    config = make_config(model={"name": "bottom_up", "depth": 18, "backbone_stages": 3, "output_stride": 16,
                                "head_filters": 16, "upsample": "outputs"})
    model = build_model(config)
    assert model.output_shape[1:3] == (33, 33)
    assert model.get_layer("head_conv").output.shape[1:3] == (9, 9)
    images = tf.random.uniform([1, 129, 129, 3], 0, 255, seed=1)
    features = tf.keras.Model(model.inputs, model.get_layer("head_relu").output)(images)
    outputs = model(images)
    heads = [model.get_layer(f"head_{name}") for name in bottom_up_model.HEAD_NAMES]
    direct = tf.concat([head(features) for head in heads], axis=-1)
    np.testing.assert_allclose(outputs.numpy()[:, ::4, ::4], direct.numpy(), atol=1e-5)


def test_model_errors():
    with pytest.raises(ValueError, match="heatmap_size"):
        config = make_config(size=128, stride=4)              # 128 -> ceil 32 -> 31 after x4 upsampling
        build_model(config)
    with pytest.raises(ValueError, match="output_stride"):
        build_model(make_config(model={"name": "bottom_up", "output_stride": 32}))
    with pytest.raises(ValueError, match="head_filters"):
        build_model(make_config(model={"name": "bottom_up", "head_filters": -1}))
    with pytest.raises(ValueError, match="upsample"):
        build_model(make_config(model={"name": "bottom_up", "upsample": "nearest"}))
    with pytest.raises(ValueError, match="head_filters > 0"):
        build_model(make_config(model={"name": "bottom_up", "head_filters": 0}))
    with pytest.raises(ValueError, match="unknown model keys"):
        build_model(make_config(model={"name": "bottom_up", "deconv_filters": [64]}))
    with pytest.raises(ValueError, match="heatmap_stride"):
        build_model(make_config(stride=2, size=65, model={"name": "bottom_up", "depth": 18, "output_stride": 16}))


def test_resnet101_dense_parameters():
    """Dilation adds no weights: the ResNet-101 trunk has torchvision's 42,500,160 trainable parameters
    (44,549,160 with its 1000-way classifier), plus the 256-filter 3x3 head and the 1x1 output convs."""
    config = make_config(size=65, stride=8, model={"name": "bottom_up", "depth": 101})
    model = build_model(config)
    channels = layout.num_channels("coco")
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    assert trainable == 42_500_160 + (2048 * 256 * 9 + 2 * 256) + (256 * channels + channels)
    assert model.output_shape == (None, 9, 9, channels)


def test_shipped_bottom_up_configs_build():
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "bottom_up", "*.yaml"))):
        config = load_config(path, small_run=True)
        model = build_model(config)
        size = int(config["data"]["heatmap_size"][0])
        assert model.output_shape == (None, size, size, layout.num_channels(config["dataset"])), path


# --------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------

def _numpy_loss(targets, outputs, mask, weights, short_radius, mid_radius, loss_weights):
    joints = 17
    true, pred = layout.split_channels(targets, "coco"), layout.split_channels(outputs, "coco")
    heat = 0.5 * np.mean(mask * (pred["heatmaps"] - true["heatmaps"]) ** 2, axis=(1, 2, 3))
    body = 0.5 * np.mean(mask * (pred["body"] - true["body"]) ** 2, axis=(1, 2, 3))

    def offsets(t, p, w, radius):
        w = w * mask
        return (np.sum(w * np.abs(p - t).sum(-1), axis=(1, 2, 3)) / radius / np.maximum(w.sum(axis=(1, 2, 3)), 1))

    short = offsets(true["short"], pred["short"], weights[..., :joints], short_radius)
    mid = offsets(true["mid"], pred["mid"], weights[..., joints:], mid_radius)
    return (loss_weights["heatmap"] * heat + loss_weights["short"] * short + loss_weights["mid"] * mid
            + loss_weights["body"] * body)


def test_loss_matches_numpy_and_masks(config, coco_records):
    batch = _decoded_batch(coco_records, config)
    geometry = bottom_up_codec.target_geometry(config)
    weights = bottom_up_codec_tf.offset_weights(batch["keypoints"], geometry).numpy()
    targets, mask = batch["targets"].numpy(), batch["mask"].numpy()
    assert 0 < mask.mean() < 1   # the person without keypoints of image 40083 is masked
    outputs = targets + np.random.default_rng(1).normal(scale=0.3, size=targets.shape).astype(np.float32)
    loss_fn = losses.make_loss_fn(config)
    got = loss_fn({"targets": targets, "mask": mask, "offset_weights": weights}, outputs).numpy()
    expected = _numpy_loss(targets, outputs, mask, weights, geometry.short_radius, geometry.mid_radius,
                           config["bottom_up"]["loss_weights"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Perfect outputs: zero loss.
    perfect = loss_fn({"targets": targets, "mask": mask, "offset_weights": weights}, targets).numpy()
    np.testing.assert_allclose(perfect, 0.0, atol=1e-7)

    # Crowd / unlabelled regions contribute nothing: anything predicted there leaves the loss unchanged.
    noisy = np.where(mask == 0, outputs + 100.0, outputs)
    np.testing.assert_allclose(loss_fn({"targets": targets, "mask": mask, "offset_weights": weights}, noisy),
                               got, rtol=1e-6)
    # Offsets outside their disks contribute nothing.
    slices = layout.channel_slices("coco")
    disks = np.concatenate([np.repeat(weights[..., :17], 2, axis=-1), np.repeat(weights[..., 17:], 2, axis=-1)], -1)
    changed = outputs.copy()
    changed[..., slices["short"].start:slices["mid"].stop] += np.where(disks > 0, 0.0, 50.0)
    np.testing.assert_allclose(loss_fn({"targets": targets, "mask": mask, "offset_weights": weights}, changed),
                               got, rtol=1e-5)


def test_loss_nonzero_rule_and_errors(config, coco_records):
    batch = _decoded_batch(coco_records, config)
    geometry = bottom_up_codec.target_geometry(config)
    targets = batch["targets"]
    outputs = targets + 0.1
    with_weights = losses.bottom_up_terms(targets, outputs, batch["mask"], "coco", geometry.short_radius,
                                          geometry.mid_radius,
                                          bottom_up_codec_tf.offset_weights(batch["keypoints"], geometry))
    without = losses.bottom_up_terms(targets, outputs, batch["mask"], "coco", geometry.short_radius,
                                     geometry.mid_radius)
    for name in ("heatmap", "short", "mid", "body"):   # the non-zero rule finds the same disks (bar exact hits)
        np.testing.assert_allclose(without[name], with_weights[name], rtol=0.02)
    with pytest.raises(ValueError, match="loss weights"):
        losses.bottom_up_loss(targets, outputs, batch["mask"], "coco", 1.0, 1.0, weights={"heatmap": 1.0})
    with pytest.raises(ValueError, match="radius"):
        losses.bottom_up_terms(targets, outputs, batch["mask"], "coco", 0.0, 1.0)
    with pytest.raises(ValueError, match="mask"):
        losses.bottom_up_terms(targets, outputs, batch["mask"][..., 0], "coco", 1.0, 1.0)
    assert losses.make_loss_fn(build_config({})) is None      # top-down keeps keypoint_mse


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------

# Storage rounding of the records (schemas.bottom_up): heatmaps 1/65535, offsets 1/128 output px.
_HEATMAP_TOLERANCE = 1e-4
_OFFSET_TOLERANCE = 1.0 / 128 + 1e-4


def _assert_targets_close(got, expected):
    slices = layout.channel_slices("coco")
    maps = np.r_[slices["heatmaps"], slices["body"]]
    offsets = np.r_[slices["short"].start:slices["mid"].stop]
    np.testing.assert_allclose(got[..., maps], expected[..., maps], atol=_HEATMAP_TOLERANCE)
    np.testing.assert_allclose(got[..., offsets], expected[..., offsets], atol=_OFFSET_TOLERANCE)


def test_identity_augmentation_gives_the_stored_targets(config, coco_records):
    batch = _decoded_batch(coco_records, config)
    params = augment_bottom_up.identity_transform(len(coco_records), 129)
    out = augment_bottom_up.apply_transform(batch["image"], batch["keypoints"], batch["mask"], params, config)
    _assert_targets_close(out["targets"].numpy(), batch["targets"].numpy())
    np.testing.assert_allclose(out["image"].numpy(), batch["image"].numpy().astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(out["mask"].numpy(), batch["mask"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["keypoints"].numpy(), batch["keypoints"].numpy(), atol=1e-4)


def test_flip_is_the_mirrored_stored_targets_with_channel_and_edge_swap(config, coco_records):
    batch = _decoded_batch(coco_records, config)
    params = augment_bottom_up.identity_transform(len(coco_records), 129)
    params["flip"] = tf.ones([len(coco_records)], tf.bool)
    out = augment_bottom_up.apply_transform(batch["image"], batch["keypoints"], batch["mask"], params, config)
    mirrored = layout.flip_channels(batch["targets"].numpy()[:, :, ::-1, :], "coco")
    _assert_targets_close(out["targets"].numpy(), mirrored)
    np.testing.assert_allclose(out["image"].numpy(), batch["image"].numpy()[:, :, ::-1, :].astype(np.float32),
                               atol=1e-3)
    np.testing.assert_allclose(out["mask"].numpy(), batch["mask"].numpy()[:, :, ::-1, :], atol=1e-6)


def test_random_augmentation_moves_people_consistently(config, coco_records):
    batch = _decoded_batch(coco_records, config)
    augmentation = dict(config["augmentation"], scale_factor=0.3, rotation_prob=1.0, rotation_factor=30.0)
    run_config = dict(config, augmentation=augmentation)
    seed = tf.constant([3, 4], tf.int64)
    eager = augment_bottom_up.augment_batch(batch["image"], batch["keypoints"], batch["mask"], run_config, seed)
    # Same seed inside tf.data: the same augmentation.
    dataset = tf.data.Dataset.from_tensors((batch["image"], batch["keypoints"], batch["mask"])).map(
        lambda image, keypoints, mask: augment_bottom_up.augment_batch(image, keypoints, mask, run_config, seed))
    graph = next(iter(dataset))
    np.testing.assert_allclose(graph["targets"].numpy(), eager["targets"].numpy(), atol=1e-5)
    # The targets are the encoder's own encoding of the moved people (re-encoded in the graph).
    moved = eager["keypoints"].numpy()
    for index in range(len(coco_records)):
        np.testing.assert_allclose(eager["targets"].numpy()[index], bottom_up_codec.encode(moved[index], config),
                                   atol=1e-4)
    labelled = moved[..., 2] > 0
    assert labelled.any()
    assert np.all((moved[..., :2][labelled] >= -0.5) & (moved[..., :2][labelled] <= 128.5))
    # Keypoints follow the image affine (no flip here would keep joint order; check x, y of unflipped ones).
    matrix = eager["matrix"].numpy()
    original = batch["keypoints"].numpy()
    for index in range(len(coco_records)):
        if matrix[index, 0, 0] * matrix[index, 1, 1] - matrix[index, 0, 1] * matrix[index, 1, 0] > 0:
            keep = labelled[index] & (original[index, ..., 2] > 0)
            expected = original[index, ..., :2] @ matrix[index, :, :2].T + matrix[index, :, 2]
            np.testing.assert_allclose(moved[index, ..., :2][keep], expected[keep], atol=1e-3)


# --------------------------------------------------------------------------
# Input pipeline and training through the shared loop
# --------------------------------------------------------------------------

def test_input_pipeline_batches_and_record_check(synthetic_examples):
    examples, config = synthetic_examples
    files = os.path.join(examples, "Split-train", "*.gz")
    inputs, targets = next(iter(input_pipeline.make_dataset(files, config, None, training=True, batch_size=4)))
    channels = layout.num_channels("coco")
    assert inputs["image"].shape == (4, 65, 65, 3) and inputs["image"].dtype == tf.float32
    assert targets["targets"].shape == (4, 17, 17, channels)
    assert targets["mask"].shape == (4, 17, 17, 1)
    assert targets["offset_weights"].shape == (4, 17, 17, 17 + layout.num_edges("coco"))
    eval_inputs, eval_targets = next(iter(input_pipeline.make_dataset(files, config, None, training=False,
                                                                      batch_size=3)))
    assert eval_inputs["image"].shape[0] == 3 and set(eval_targets) == {"targets", "mask", "offset_weights"}
    other = make_config(size=129)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match the bottom-up config"):
        next(iter(input_pipeline.make_dataset(files, other, None, training=False, batch_size=1)))


def test_training_loss_goes_down_on_synthetic_records(synthetic_examples, tmp_path):
    examples, config = synthetic_examples
    config = dict(config, train=dict(config["train"], batch_size=4, learning_rate=0.003, log_every_steps=6,
                                     checkpoint_every_steps=1000, lr_schedule="cosine"),
                  augmentation=dict(config["augmentation"], enabled=False))
    files = os.path.join(examples, "Split-train", "*.gz")

    def dataset_fn(context):
        return input_pipeline.make_dataset(files, config, None, training=True, batch_size=4, input_context=context)

    model, result = train_loop.train(config, lambda: build_model(config), dataset_fn, str(tmp_path), 24, 6,
                                     strategy=tf.distribute.get_strategy(), log=lambda message: None)
    history = [loss for _, loss in result.history]
    assert len(history) == 4 and all(np.isfinite(history))
    assert history[-1] < 0.9 * history[0], history   # measured: 1.17 -> 0.99 in 24 steps
