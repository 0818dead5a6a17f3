"""Reading ExampleGen's TFRecord shards: the part both inputs share (person crops and whole images).

:mod:`trainer.input_pipeline` (top-down person crops) and :mod:`trainer.input_bottom_up` (whole images)
both import this module, so they list, shard, shuffle and repeat records the same way; neither imports
the other except for the one dispatch on ``config["approach"]`` in :func:`trainer.input_pipeline.make_dataset`.

Training: files shuffled and read with a parallel, non-deterministic interleave, records shuffled,
repeated. Eval: files in sorted order, read one after the other. Under a distribution strategy
(``tf.distribute.InputContext``): with at least as many files as input pipelines each pipeline reads its
own files, otherwise every pipeline reads all files in a fixed order and keeps every n-th record.
"""
from __future__ import annotations

import os
from typing import Any, List, Mapping, Sequence, Tuple

import tensorflow as tf

from schemas import examples as examples_layout

AUTOTUNE = tf.data.AUTOTUNE


def list_files(file_pattern: str | Sequence[str]) -> List[str]:
    """Expands glob patterns and directories into a sorted, de-duplicated file list.

    A directory stands for its ``data_tfrecord-*`` shards (the TFX/ExampleGen
    naming), or for all its files when it has none of those.

    Raises:
        ValueError: no pattern given, or nothing matches (the patterns are named).
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern or [])
    if not patterns:
        raise ValueError(f"file_pattern must name at least one file pattern, got {file_pattern!r}")
    files = set()
    for pattern in patterns:
        pattern = os.fspath(pattern)
        if tf.io.gfile.isdir(pattern):
            shards = os.path.join(pattern, examples_layout.SHARD_GLOB)
            pattern = shards if tf.io.gfile.glob(shards) else os.path.join(pattern, "*")
        files.update(path for path in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(path))
    if not files:
        raise ValueError(f"file_pattern {file_pattern!r} matches no files")
    return sorted(files)


def compression_type(files: Sequence[str]) -> str:
    """``"GZIP"`` when every file ends in ``.gz``, ``""`` when none does.

    Raises:
        ValueError: the files mix both kinds.
    """
    gzipped = {path.endswith(".gz") for path in files}
    if len(gzipped) > 1:
        raise ValueError("file_pattern mixes gzip (.gz) and uncompressed TFRecord files; use one kind")
    return "GZIP" if gzipped.pop() else ""


def read_records(files: Sequence[str], compression: str, training: bool, repeat: bool, seed: int, buffer: int,
                 input_context: tf.distribute.InputContext | None = None) -> Tuple[tf.data.Dataset, int]:
    """Serialized records of ``files``, sharded per input pipeline, shuffled and repeated for training.

    Shared by the person-crop (:mod:`trainer.input_pipeline`) and the bottom-up
    (:mod:`trainer.input_bottom_up`) inputs, so both read, shard and shuffle the
    same way (module docstring).

    Returns:
        ``(dataset of scalar string tensors, input pipeline id)``.
    """
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    shard_by_files = num_pipelines > 1 and len(files) >= num_pipelines
    shard_by_records = num_pipelines > 1 and not shard_by_files
    if shard_by_files:
        files = files[pipeline_id::num_pipelines]

    def read(path: tf.Tensor) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, compression_type=compression)

    file_dataset = tf.data.Dataset.from_tensor_slices(files)
    if not training:
        # Eval: the records in file order, one file after the other.
        dataset = file_dataset.flat_map(read)
    elif shard_by_records:
        # Every pipeline must see the same record sequence before Dataset.shard:
        # parallel reads, but a deterministic interleave of unshuffled files.
        dataset = file_dataset.interleave(read, cycle_length=min(len(files), 8), block_length=1,
                                          num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        file_dataset = file_dataset.shuffle(len(files), seed=seed + pipeline_id, reshuffle_each_iteration=True)
        dataset = file_dataset.interleave(read, cycle_length=min(len(files), 8), block_length=1,
                                          num_parallel_calls=AUTOTUNE, deterministic=False)
    if shard_by_records:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if training:
        dataset = dataset.shuffle(buffer, seed=seed + 7919 * pipeline_id, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    return dataset, pipeline_id


def shuffle_settings(config: Mapping[str, Any]) -> Tuple[int, int]:
    """``(train.seed, train.shuffle_buffer)`` of ``config``, validated (ValueError naming the key)."""
    train_config = config["train"]
    seed, buffer = train_config.get("seed", 0), train_config.get("shuffle_buffer", 1024)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"train.seed must be a non-negative integer, got {seed!r}")
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"train.shuffle_buffer must be a positive integer, got {buffer!r}")
    return seed, buffer
