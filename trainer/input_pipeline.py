"""tf.data input: person-crop TFRecord shards -> (inputs, targets) batches for training and eval.

Reads the ``Split-*/data_tfrecord-*.gz`` shards written by ExampleGen (records
as in :mod:`schemas.features`) and yields

* ``inputs = {"image": float32 (B, H_in, W_in, 3)}``, RGB 0..255 (the model
  normalises internally);
* ``targets = {"heatmaps": float32 (B, H_hm, W_hm, K), "target_weight": float32 (B, K)}``,
  heatmaps channels-last.

Training (``training=True``): files shuffled and read with a parallel,
non-deterministic interleave, records shuffled, parsed/decoded in parallel,
batched (``drop_remainder``, static batch for distribution), augmented per
batch with DARK targets re-encoded in the graph (:mod:`trainer.augment`, when
``config["augmentation"]["enabled"]``), repeated, prefetched.

Eval (``training=False``): files in sorted order, read one after the other,
no shuffle, no augmentation, the stored heatmaps and weights as they are, the
last partial batch kept.

Under a distribution strategy pass the ``tf.distribute.InputContext`` (what
``strategy.distribute_datasets_from_function`` hands over) and the
per-replica batch size: with at least as many files as input pipelines each
pipeline reads its own files, otherwise every pipeline reads all files in a
fixed order and keeps every n-th record.

Example:

    codec = HeatmapCodec.from_config(config)
    dataset = make_dataset("out/Split-train/data_tfrecord-*.gz", config, codec, training=True,
                           batch_size=32)
    inputs, targets = next(iter(dataset))
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.images import decode_image_tf
from schemas import features
from schemas.dataset_meta import schema_for
from trainer import augment
from trainer.records import AUTOTUNE, compression_type, list_files, read_records, shuffle_settings


def _check_record(parsed: Mapping[str, tf.Tensor], config: Mapping[str, Any],
                  codec: HeatmapCodec) -> List[tf.Operation]:
    """Graph checks that the record matches the experiment (a clear error instead of a bad batch)."""
    in_h, in_w = codec.input_size
    hm_h, hm_w = codec.heatmap_size
    message = (f"record does not match the config (dataset {config['dataset']!r}, input_size {[in_h, in_w]}, "
               f"heatmap_size {[hm_h, hm_w]}, schema_version {features.SCHEMA_VERSION}); "
               "rebuild the examples with this config")
    return [
        tf.debugging.assert_equal(parsed["schema/version"], tf.constant([features.SCHEMA_VERSION], tf.int64),
                                  message=message),
        tf.debugging.assert_equal(parsed["dataset"], tf.constant([config["dataset"]]), message=message),
        tf.debugging.assert_equal(parsed["crop/height"], tf.constant([in_h], tf.int64), message=message),
        tf.debugging.assert_equal(parsed["crop/width"], tf.constant([in_w], tf.int64), message=message),
        tf.debugging.assert_equal(parsed["heatmap/height"], tf.constant([hm_h], tf.int64), message=message),
        tf.debugging.assert_equal(parsed["heatmap/width"], tf.constant([hm_w], tf.int64), message=message),
    ]


def make_decode_fn(config: Mapping[str, Any], codec: HeatmapCodec, decode_heatmaps: bool):
    """Returns ``serialized () -> dict`` decoding one record.

    The dict holds ``image`` (H_in, W_in, 3) uint8, ``keypoints`` (K, 2) crop
    pixels, ``visibility`` (K,) int32 and, when ``decode_heatmaps``,
    ``heatmaps`` (H_hm, W_hm, K) float32 and ``target_weight`` (K,) float32.
    """
    num_joints = schema_for(config).num_joints
    in_h, in_w = codec.input_size

    def decode(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
        parsed = features.parse_records(serialized[None], num_joints)
        # Every decode runs after the checks, so a mismatched record fails with their message.
        with tf.control_dependencies(_check_record(parsed, config, codec)):
            image = decode_image_tf(parsed["image/encoded"][0])
            example = {
                "image": tf.ensure_shape(image, [in_h, in_w, 3]),
                "keypoints": tf.identity(parsed["keypoints/crop"][0]),
                "visibility": tf.cast(parsed["keypoints/visibility"][0], tf.int32),
            }
            if decode_heatmaps:
                example["heatmaps"] = features.decode_heatmaps_tf(parsed["heatmaps/encoded"], codec.heatmap_size,
                                                                  num_joints)[0]
                example["target_weight"] = tf.identity(parsed["target_weight"][0])
        return example

    return decode


def make_augment_fn(config: Mapping[str, Any], codec: HeatmapCodec, seed: int):
    """Returns ``(batch_index, batch dict) -> (inputs, targets)`` that augments a decoded batch."""
    schema = schema_for(config)
    augmentation = dict(config["augmentation"])
    if not schema.has_half_body:  # the meta names no upper body: half-body augmentation is off
        augmentation["half_body_prob"] = 0.0
    weights = joint_weights(config)

    def augment_fn(batch_index: tf.Tensor, batch: Mapping[str, tf.Tensor]):
        batch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(batch_index, tf.int64)])
        out = augment.augment_batch(batch["image"], batch["keypoints"], batch["visibility"], codec,
                                    augmentation, schema.flip_index, schema.upper_body_mask, batch_seed)
        target_weight = out["target_weight"] if weights is None else out["target_weight"] * weights
        return {"image": out["image"]}, {"heatmaps": out["heatmaps"], "target_weight": target_weight}

    return augment_fn


def joint_weights(config: Mapping[str, Any]) -> tf.Tensor | None:
    """The meta's ``joint_weights`` (K,) float32 multiplied into ``target_weight``, or None (all 1)."""
    schema = schema_for(config)
    if schema.joint_weights is None or all(weight == 1.0 for weight in schema.joint_weights):
        return None
    return tf.constant(schema.weights(), tf.float32)


def make_stored_targets_fn(config: Mapping[str, Any]):
    """Returns ``batch -> (inputs, targets)`` on the stored heatmaps (augmentation off), joint weights applied."""
    weights = joint_weights(config)

    def stored_targets(batch: Mapping[str, tf.Tensor]) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
        inputs, targets = _stored_targets(batch)
        if weights is not None:
            targets = dict(targets, target_weight=targets["target_weight"] * weights)
        return inputs, targets

    return stored_targets


def _stored_targets(batch: Mapping[str, tf.Tensor]) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
    return ({"image": tf.cast(batch["image"], tf.float32)},
            {"heatmaps": batch["heatmaps"], "target_weight": batch["target_weight"]})


def make_dataset(file_pattern: str | List[str], config: Dict[str, Any], codec: HeatmapCodec, training: bool,
                 batch_size: int, input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None) -> tf.data.Dataset:
    """Builds the training or evaluation ``tf.data.Dataset`` of person crops.

    Args:
        file_pattern: glob pattern(s) or directories of TFRecord shards
            (``.gz`` files are read as GZIP).
        config: loaded experiment config (:func:`pose.config.load_config`);
            uses ``dataset``, ``augmentation`` and ``train.shuffle_buffer``/``train.seed``.
        codec: the experiment's codec (input/heatmap sizes, sigma).
        training: shuffle + augment (if enabled) + repeat, or eval order and stored targets.
        batch_size: per-replica batch size.
        input_context: strategy input context for per-worker sharding, or None.
        repeat: repeat forever; defaults to ``training``.

    Returns:
        A dataset of ``(inputs, targets)``: ``inputs["image"]`` float32
        (B, H_in, W_in, 3) RGB 0..255, ``targets["heatmaps"]`` float32
        (B, H_hm, W_hm, K) channels-last, ``targets["target_weight"]`` float32 (B, K).
        Training batches have a static B = ``batch_size``.

    Raises:
        ValueError: bad ``batch_size``/``training``/``file_pattern``/``train.seed``/
            ``train.shuffle_buffer``/``augmentation`` values, no files, or mixed compression.
        tf.errors.InvalidArgumentError (when iterated): a record that does not
            match ``config`` (dataset, crop size, heatmap size, schema version).
    """
    if config.get("approach") == "bottom_up":  # one record per image (issue 16)
        from trainer import input_bottom_up

        return input_bottom_up.make_dataset(file_pattern, config, training, batch_size, input_context, repeat)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(training, bool):
        raise ValueError(f"training must be a bool, got {training!r}")
    if repeat is None:
        repeat = training
    files = list_files(file_pattern)
    compression = compression_type(files)
    seed, buffer = shuffle_settings(config)
    augmentation_on = training and bool(config["augmentation"]["enabled"])
    if augmentation_on:
        augment.validate_augmentation(config["augmentation"])

    dataset, pipeline_id = read_records(files, compression, training, repeat, seed, buffer, input_context)

    dataset = dataset.map(make_decode_fn(config, codec, decode_heatmaps=not augmentation_on),
                          num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE,
                            deterministic=not training)
    if augmentation_on:
        # Batch i gets the stateless seed (seed + 1000003 * pipeline_id, i): reproducible
        # for one pipeline and different between workers.
        augment_fn = make_augment_fn(config, codec, seed + 1_000_003 * pipeline_id)
        dataset = dataset.enumerate().map(augment_fn, num_parallel_calls=AUTOTUNE, deterministic=False)
    else:
        dataset = dataset.map(make_stored_targets_fn(config), num_parallel_calls=AUTOTUNE,
                              deterministic=not training)
    options = tf.data.Options()
    options.deterministic = not training
    # The strategy shards through input_context here; stop tf.distribute from sharding again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = dataset.with_options(options)
    return dataset.prefetch(AUTOTUNE)
