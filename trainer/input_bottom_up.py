"""tf.data input for the bottom-up approach: image TFRecord shards -> (inputs, targets) batches.

Reads the ``Split-*/data_tfrecord-*.gz`` shards that ExampleGen
``--approach bottom_up`` writes (one record per image,
:func:`pose.bottom_up_codec_tf.decode_record_tf`) and yields

* ``inputs = {"image": float32 (B, S, S, 3)}``, RGB 0..255 (the model normalises);
* ``targets = {"targets": float32 (B, H_out, W_out, C), "mask": float32 (B, H_out, W_out, 1)}``
  in the channel layout of :mod:`schemas.bottom_up`, and
  ``"offset_weights": float32 (B, H_out, W_out, K + 2E)``, the offset disks of
  :func:`trainer.losses.bottom_up_loss` (re-encoded with the augmented
  targets, or recomputed from the stored keypoints: records do not store them).

Reading, per-worker sharding and shuffling are the person-crop pipeline's
(:func:`trainer.records.read_records`); training batches are
augmented per batch with the targets re-encoded in the graph
(:mod:`trainer.augment_bottom_up`, when ``config["augmentation"]["enabled"]``).
:func:`trainer.input_pipeline.make_dataset` dispatches here for
``approach: bottom_up``, so the trainer has one input entry point.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import tensorflow as tf

from pose import bottom_up_codec_tf
from pose.bottom_up_codec import target_geometry
from schemas import bottom_up as bottom_up_schema
from trainer import augment_bottom_up, records

AUTOTUNE = tf.data.AUTOTUNE


def _check_record(serialized: tf.Tensor, config: Mapping[str, Any]) -> List[tf.Operation]:
    """Graph checks that a record matches the experiment (a clear error instead of a bad batch)."""
    parsed = tf.io.parse_single_example(serialized, {
        "schema/version": tf.io.FixedLenFeature([], tf.int64),
        "approach": tf.io.FixedLenFeature([], tf.string),
        "dataset": tf.io.FixedLenFeature([], tf.string),
        "input/size": tf.io.FixedLenFeature([], tf.int64),
        "targets/height": tf.io.FixedLenFeature([], tf.int64),
        "targets/width": tf.io.FixedLenFeature([], tf.int64)})
    size = int(config["data"]["input_size"][0])
    height, width = (int(v) for v in config["data"]["heatmap_size"])
    message = (f"record does not match the bottom-up config (approach bottom_up, dataset {config['dataset']!r}, "
               f"input size {size}, output size {[height, width]}, schema_version "
               f"{bottom_up_schema.SCHEMA_VERSION}); rebuild the examples with this config")
    return [tf.debugging.assert_equal(parsed[key], tf.constant(value, parsed[key].dtype), message=message)
            for key, value in (("schema/version", bottom_up_schema.SCHEMA_VERSION),
                               ("approach", bottom_up_schema.APPROACH), ("dataset", config["dataset"]),
                               ("input/size", size), ("targets/height", height), ("targets/width", width))]


def make_decode_fn(config: Mapping[str, Any]):
    """Returns ``serialized () -> dict`` decoding one record after the config checks
    (the keys of :func:`pose.bottom_up_codec_tf.decode_record_tf`)."""
    def decode(serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
        with tf.control_dependencies(_check_record(serialized, config)):
            return bottom_up_codec_tf.decode_record_tf(tf.identity(serialized), config)
    return decode


def make_stored_fn(config: Mapping[str, Any]):
    """Returns ``batch dict -> (inputs, targets)`` with the stored targets, and the offset disks recomputed
    from the stored keypoints (:func:`pose.bottom_up_codec_tf.offset_weights`; they are not stored)."""
    geometry = target_geometry(config)

    def stored(batch: Mapping[str, tf.Tensor]) -> Tuple[Dict[str, tf.Tensor], Dict[str, tf.Tensor]]:
        return ({"image": tf.cast(batch["image"], tf.float32)},
                {"targets": batch["targets"], "mask": batch["mask"],
                 "offset_weights": bottom_up_codec_tf.offset_weights(batch["keypoints"], geometry)})
    return stored


def make_augment_fn(config: Mapping[str, Any], seed: int):
    """Returns ``(batch_index, batch dict) -> (inputs, targets)`` that augments a decoded batch."""
    def augment_fn(batch_index: tf.Tensor, batch: Mapping[str, tf.Tensor]):
        batch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(batch_index, tf.int64)])
        out = augment_bottom_up.augment_batch(batch["image"], batch["keypoints"], batch["mask"], config, batch_seed)
        return ({"image": out["image"]},
                {"targets": out["targets"], "mask": out["mask"], "offset_weights": out["offset_weights"]})
    return augment_fn


def make_dataset(file_pattern, config: Mapping[str, Any], training: bool, batch_size: int,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None) -> tf.data.Dataset:
    """Builds the training or evaluation dataset of whole images (module docstring).

    Args:
        file_pattern: glob pattern(s) or directories of bottom-up TFRecord shards.
        config: loaded ``approach: bottom_up`` config (``dataset``, ``data``, ``bottom_up``,
            ``augmentation``, ``train.seed``/``train.shuffle_buffer``).
        training: shuffle + augment (if enabled) + repeat, or file order and the stored targets.
        batch_size: per-replica batch size.
        input_context: strategy input context for per-worker sharding, or None.
        repeat: repeat forever; defaults to ``training``.

    Returns:
        A dataset of ``(inputs, targets)`` as the module docstring; training
        batches have a static B = ``batch_size``.

    Raises:
        ValueError: bad ``batch_size``/``training``/``file_pattern``/``train.seed``/
            ``train.shuffle_buffer``/``augmentation`` values, no files, or mixed compression.
        tf.errors.InvalidArgumentError (when iterated): a record that does not match
            ``config`` (approach, dataset, input/output size, schema version).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(training, bool):
        raise ValueError(f"training must be a bool, got {training!r}")
    if config.get("approach") != "bottom_up":
        raise ValueError(f"config approach must be 'bottom_up', got {config.get('approach')!r}")
    repeat = training if repeat is None else repeat
    files = records.list_files(file_pattern)
    seed, buffer = records.shuffle_settings(config)
    augmentation_on = training and bool(config["augmentation"]["enabled"])
    if augmentation_on:
        augment_bottom_up.validate_augmentation(config["augmentation"])

    dataset, pipeline_id = records.read_records(
        files, records.compression_type(files), training, repeat, seed, buffer, input_context)
    dataset = dataset.map(make_decode_fn(config), num_parallel_calls=AUTOTUNE, deterministic=not training)
    dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE,
                            deterministic=not training)
    if augmentation_on:
        # Batch i gets the stateless seed (seed + 1000003 * pipeline_id, i), as the person-crop pipeline.
        augment_fn = make_augment_fn(config, seed + 1_000_003 * pipeline_id)
        dataset = dataset.enumerate().map(augment_fn, num_parallel_calls=AUTOTUNE, deterministic=False)
    else:
        dataset = dataset.map(make_stored_fn(config), num_parallel_calls=AUTOTUNE, deterministic=not training)
    options = tf.data.Options()
    options.deterministic = not training
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(AUTOTUNE)
