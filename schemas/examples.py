"""The Examples artifact layout (TFX convention), shared by every stage.

ExampleGen writes, the trainer, evaluator, preview and pipeline read::

    <examples_dir>/Split-train/data_tfrecord-SSSSS-of-NNNNN.gz
    <examples_dir>/Split-eval/data_tfrecord-SSSSS-of-NNNNN.gz
    <examples_dir>/manifest.json

Paths are plain strings so ``gs://`` URIs work unchanged.
"""
from __future__ import annotations

SPLITS = ("train", "eval")
SPLIT_DIR = "Split-{split}"
MANIFEST_FILE = "manifest.json"
SHARD_FILE = "data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz"
SHARD_GLOB = "data_tfrecord-*"


def split_dir(examples_dir: str, split: str) -> str:
    """``<examples_dir>/Split-<split>``."""
    return f"{examples_dir.rstrip('/')}/{SPLIT_DIR.format(split=split)}"


def shard_path(examples_dir: str, split: str, shard: int, num_shards: int) -> str:
    """Path of one shard file of ``split``."""
    return f"{split_dir(examples_dir, split)}/{SHARD_FILE.format(shard=shard, num_shards=num_shards)}"


def shard_pattern(examples_dir: str, split: str) -> str:
    """Glob of every shard file of ``split``."""
    return f"{split_dir(examples_dir, split)}/{SHARD_GLOB}"
