"""tf.data input over real COCO person crops written as gzip TFRecord shards."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from schemas import features
from tests import records_util
from trainer.input_pipeline import list_files, make_dataset

NUM_SHARDS = 4
NUM_RECORDS = 48


@pytest.fixture(scope="module")
def examples(shared_data, tmp_path_factory):
    """48 real COCO train people (64x48 crops) in 4 shards, and the same in 1 shard."""
    config = build_config({"data": {"input_size": [64, 48]}, "train": {"shuffle_buffer": 64}})
    codec = HeatmapCodec.from_config(config)
    root = os.path.join(shared_data, "coco_train2017_mini28")
    records = records_util.coco_person_records(os.path.join(root, "person_keypoints_train2017_mini28.json"),
                                               os.path.join(root, "images"), config, codec,
                                               limit=NUM_RECORDS)
    assert len(records) == NUM_RECORDS
    out = tmp_path_factory.mktemp("examples")
    records_util.write_split(records, str(out / "four"), "train", NUM_SHARDS)
    records_util.write_split(records, str(out / "one"), "train", 1)
    images = [decode_image_tf(r["image/encoded"]).numpy() for r in records]
    heatmaps = [features.decode_heatmaps(features.encode_heatmaps(r["heatmaps/encoded"]), codec.heatmap_size, 17)
                for r in records]
    return {"config": config, "codec": codec, "records": records, "images": images, "heatmaps": heatmaps,
            "four": str(out / "four" / "Split-train" / "data_tfrecord-*.gz"),
            "one": str(out / "one" / "Split-train"), "root": out}


def image_key(image) -> bytes:
    return np.round(np.asarray(image)).astype(np.uint8).tobytes()


def collect(dataset):
    images, heatmaps, weights = [], [], []
    for inputs, targets in dataset:
        images.extend(inputs["image"].numpy())
        heatmaps.extend(targets["heatmaps"].numpy())
        weights.extend(targets["target_weight"].numpy())
    return images, heatmaps, weights


def test_training_batches_have_static_shapes_and_valid_targets(examples):
    config, codec = examples["config"], examples["codec"]
    dataset = make_dataset(examples["four"], config, codec, training=True, batch_size=16)
    image_spec, target_spec = dataset.element_spec
    assert image_spec["image"].shape.as_list() == [16, 64, 48, 3]
    assert target_spec["heatmaps"].shape.as_list() == [16, 16, 12, 17]
    assert target_spec["target_weight"].shape.as_list() == [16, 17]
    # 48 records, batches of 16: 6 batches cross the epoch boundary (repeat).
    known = {image_key(image) for image in examples["images"]}
    unchanged = 0
    for inputs, targets in dataset.take(6):
        image, heatmaps = inputs["image"].numpy(), targets["heatmaps"].numpy()
        weights = targets["target_weight"].numpy()
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255 and image.max() > 200
        assert set(np.unique(weights)) <= {0.0, 1.0} and weights.sum() > 0
        peaks = heatmaps.max(axis=(1, 2))
        assert np.all(peaks[weights == 0] == 0) and np.all(peaks <= 1.0 + 1e-6)
        # A weighted joint is at most 3 sigma off the map in x and y: peak >= exp(-9).
        assert np.all(peaks[weights == 1] > 1e-4)
        unchanged += sum(image_key(crop) in known for crop in image)
    assert unchanged < 5  # augmented: almost no crop comes out exactly as stored


def test_eval_keeps_file_order_and_stored_targets(examples):
    config, codec = examples["config"], examples["codec"]
    dataset = make_dataset(examples["four"], config, codec, training=False, batch_size=16)
    images, heatmaps, weights = collect(dataset)
    # write_split deals records round-robin; the files are read one after the other in name order.
    order = [index for shard in range(NUM_SHARDS) for index in range(shard, len(examples["records"]), NUM_SHARDS)]
    assert len(images) == len(order) == NUM_RECORDS
    for position, index in enumerate(order):
        np.testing.assert_array_equal(images[position], examples["images"][index])
        np.testing.assert_array_equal(heatmaps[position], examples["heatmaps"][index])
        np.testing.assert_array_equal(weights[position], examples["records"][index]["target_weight"])
    # A second pass gives the same sequence (deterministic).
    again, _, _ = collect(dataset.take(1))
    np.testing.assert_array_equal(np.stack(again), np.stack(images[:16]))


def test_identity_augmentation_and_stored_targets_agree_through_the_pipeline(examples):
    config, codec = examples["config"], examples["codec"]
    by_key = {image_key(image): index for index, image in enumerate(examples["images"])}
    identity = dict(config, augmentation=dict(config["augmentation"], flip=False, scale_factor=0.0,
                                              rotation_prob=0.0, half_body_prob=0.0))
    stored = dict(config, augmentation=dict(config["augmentation"], enabled=False))
    results = {}
    for name, variant in (("identity", identity), ("stored", stored)):
        dataset = make_dataset(examples["four"], variant, codec, training=True, batch_size=2, repeat=False)
        images, heatmaps, weights = collect(dataset)
        assert len(images) == NUM_RECORDS
        results[name] = {by_key[image_key(image)]: (image, heatmap, weight)
                         for image, heatmap, weight in zip(images, heatmaps, weights)}
    assert sorted(results["identity"]) == sorted(results["stored"]) == list(range(NUM_RECORDS))
    for index in range(NUM_RECORDS):
        image_a, heatmap_a, weight_a = results["identity"][index]
        image_b, heatmap_b, weight_b = results["stored"][index]
        np.testing.assert_allclose(image_a, image_b, atol=1e-3)
        np.testing.assert_allclose(heatmap_a, heatmap_b, atol=1e-3)
        np.testing.assert_array_equal(weight_a, weight_b)


@pytest.mark.parametrize("layout", ["four", "one"])
def test_input_context_shards_without_overlap(examples, layout):
    config, codec = examples["config"], examples["codec"]
    stored = dict(config, augmentation=dict(config["augmentation"], enabled=False))
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        for training in (False, True):
            dataset = make_dataset(examples[layout], stored, codec, training=training, batch_size=1,
                                   input_context=context, repeat=False)
            keys = [image_key(image) for image in collect(dataset)[0]]
            if training:
                assert sorted(keys) == sorted(seen[-1])  # same shard, shuffled
            else:
                seen.append(keys)
    assert len(seen[0]) >= 16 and len(seen[1]) >= 16
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {image_key(image) for image in examples["images"]}


def test_list_files_accepts_patterns_lists_and_directories(examples):
    four = list_files(examples["four"])
    assert len(four) == NUM_SHARDS and four == sorted(four)
    assert list_files([examples["four"], examples["one"]]) == sorted(four + list_files(examples["one"]))
    # A directory means its data_tfrecord-* shards; other files there are ignored.
    split_dir = os.path.dirname(four[0])
    (examples["root"] / "four" / "Split-train" / "notes.txt").write_text("not a record")
    assert list_files(split_dir) == four


def test_bad_arguments_and_mismatched_records_fail_clearly(examples, tmp_path):
    config, codec = examples["config"], examples["codec"]
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(examples["four"], config, codec, training=True, batch_size=0)
    with pytest.raises(ValueError, match="training"):
        make_dataset(examples["four"], config, codec, training="yes", batch_size=2)
    with pytest.raises(ValueError, match="matches no files"):
        make_dataset(str(tmp_path / "missing-*.gz"), config, codec, training=True, batch_size=2)
    with pytest.raises(ValueError, match="augmentation.scale_factor"):
        bad = dict(config, augmentation=dict(config["augmentation"], scale_factor=1.5))
        make_dataset(examples["four"], bad, codec, training=True, batch_size=2)
    with pytest.raises(ValueError, match="train.shuffle_buffer"):
        make_dataset(examples["four"], dict(config, train=dict(config["train"], shuffle_buffer=0)), codec,
                     training=True, batch_size=2)
    (tmp_path / "plain.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="mixes gzip"):
        make_dataset([examples["four"], str(tmp_path / "plain.tfrecord")], config, codec, training=False,
                     batch_size=2)
    # Records cropped at 64x48 read with a 128x96 experiment: a clear error, not a bad batch.
    other = build_config({"data": {"input_size": [128, 96]}})
    dataset = make_dataset(examples["four"], other, HeatmapCodec.from_config(other), training=False, batch_size=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not match the config"):
        next(iter(dataset))


def test_mpii_records_train_with_their_own_schema(tmp_path):
    config = build_config({"dataset": "mpii", "data": {"input_size": [64, 64]}})
    codec = HeatmapCodec.from_config(config)
    records_util.write_split(records_util.synthetic_records(config, codec, 12, seed=2), str(tmp_path), "train", 1)
    dataset = make_dataset(str(tmp_path / "Split-train"), config, codec, training=True, batch_size=4)
    inputs, targets = next(iter(dataset))
    assert inputs["image"].shape == (4, 64, 64, 3)
    assert targets["heatmaps"].shape == (4, 16, 16, 16) and targets["target_weight"].shape == (4, 16)
    assert float(tf.reduce_sum(targets["target_weight"])) > 0
    # The same shards read by a COCO experiment of the same geometry: refused.
    coco = build_config({"dataset": "coco", "data": {"input_size": [64, 64]}})
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        next(iter(make_dataset(str(tmp_path / "Split-train"), coco, HeatmapCodec.from_config(coco),
                               training=False, batch_size=4)))
