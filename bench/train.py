"""Benchmark: is the tf.data input pipeline the training bottleneck?

Run:  .venv/bin/python bench/train.py [--config configs/demo.yaml] [--steps 30] [--rounds 3]
           [--examples <ExampleGen output dir with Split-train/>]

Builds the config's model (the small SimpleBaseline of ``configs/demo.yaml``
by default) and one Adam train step on :func:`trainer.losses.keypoint_mse`,
then times the same step fed two ways, in alternating rounds of ``--steps``
steps (best round of each, after warm-up):

* ``pipeline``: :func:`trainer.input_pipeline.make_dataset` over real
  TFRecord shards (gzip) of real COCO people: ``--examples`` (ExampleGen
  output made with the same config) or, by default, the 86 people of
  ``../shared/data/coco_train2017_mini28`` cropped with ``tests/records_util.py``;
  shuffling, decoding, augmenting and re-encoding the DARK targets on the fly;
* ``in-memory``: a few batches of the same shapes held as tensors (the
  baseline: no input work at all).

Prints one table (examples/s, ratio pipeline / in-memory, target >= 0.9),
the input pipeline alone (no training), and the peak RSS. The last line is
JSON: ``{"pipeline_examples_per_s", "memory_examples_per_s", "ratio", "peak_rss_mb", ...}``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pose.codec import HeatmapCodec  # noqa: E402
from pose.config import load_config  # noqa: E402
from tests import records_util  # noqa: E402
from trainer.input_pipeline import make_dataset  # noqa: E402
from trainer.losses import keypoint_mse  # noqa: E402
from trainer.models import build_model  # noqa: E402

COCO_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "coco_train2017_mini28")
TARGET_RATIO = 0.9


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_records(config, codec, out_dir: str, num_shards: int) -> str:
    records = records_util.coco_person_records(os.path.join(COCO_DIR, "person_keypoints_train2017_mini28.json"),
                                               os.path.join(COCO_DIR, "images"), config, codec)
    records_util.write_split(records, out_dir, "train", num_shards)
    return os.path.join(out_dir, "Split-train", "data_tfrecord-*.gz"), len(records)


def make_train_step(model, optimizer, ohkm_topk):
    @tf.function
    def train_step(inputs, targets):
        with tf.GradientTape() as tape:
            outputs = model(inputs["image"], training=True)
            loss = tf.reduce_mean(keypoint_mse(targets["heatmaps"], outputs, targets["target_weight"], ohkm_topk))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    return train_step


def time_steps(train_step, next_batch, steps: int) -> float:
    """Seconds for ``steps`` train steps (the loss is fetched at the end, as a loop logging would)."""
    start = time.perf_counter()
    loss = None
    for _ in range(steps):
        loss = train_step(*next_batch())
    float(loss)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "demo.yaml"))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    parser.add_argument("--steps", type=int, default=30, help="train steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per feed")
    parser.add_argument("--shards", type=int, default=4, help="shards written when --examples is not given")
    parser.add_argument("--examples", default=None, help="ExampleGen output dir (uses its Split-train/)")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "shards"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")

    config = load_config(args.config)
    codec = HeatmapCodec.from_config(config)
    batch_size = args.batch_size or int(config["train"]["batch_size"])
    keras.utils.set_random_seed(0)
    model = build_model(config)
    optimizer = keras.optimizers.Adam(1e-3)
    ohkm_topk = int(config["train"]["ohkm_topk"]) if config["train"]["ohkm"] else None
    train_step = make_train_step(model, optimizer, ohkm_topk)

    with tempfile.TemporaryDirectory() as out_dir:
        if args.examples:
            pattern = os.path.join(args.examples, "Split-train", "data_tfrecord-*")
            num_records = sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern), compression_type="GZIP"))
            source = f"{num_records} records of {args.examples}"
        else:
            pattern, num_records = write_records(config, codec, out_dir, args.shards)
            source = f"{num_records} real COCO people, {args.shards} gzip shards"
        dataset = make_dataset(pattern, config, codec, training=True, batch_size=batch_size)
        iterator = iter(dataset)
        memory_batches = [next(iterator) for _ in range(4)]  # same shapes and value ranges, held in memory
        memory_index = [0]

        def next_memory():
            memory_index[0] += 1
            return memory_batches[memory_index[0] % len(memory_batches)]

        def next_pipeline():
            return next(iterator)

        # Warm-up: tracing, the shuffle buffer, tf.data autotuning.
        time_steps(train_step, next_memory, 5)
        time_steps(train_step, next_pipeline, 10)

        pipeline_rounds, memory_rounds = [], []
        for _ in range(args.rounds):
            pipeline_rounds.append(time_steps(train_step, next_pipeline, args.steps))
            memory_rounds.append(time_steps(train_step, next_memory, args.steps))

        # The input pipeline alone, for scale.
        start = time.perf_counter()
        for _ in range(args.steps * 2):
            next(iterator)[0]["image"].numpy()
        input_only = args.steps * 2 * batch_size / (time.perf_counter() - start)

    examples = args.steps * batch_size
    pipeline_rate = examples / min(pipeline_rounds)
    memory_rate = examples / min(memory_rounds)
    ratio = pipeline_rate / memory_rate
    in_h, in_w = codec.input_size
    print(f"training throughput, model {config['model']}, input {in_h}x{in_w}, batch {batch_size}, "
          f"{args.rounds} x {args.steps} steps per feed (best round), {os.cpu_count()} CPU(s):")
    print(f"{'feed':<44}{'examples/s':>12}{'ratio':>8}")
    print(f"{'in-memory tensors (baseline)':<44}{memory_rate:>12.1f}{1.0:>8.2f}")
    print(f"{'TFRecord pipeline + augmentation + DARK':<44}{pipeline_rate:>12.1f}{ratio:>8.2f}")
    print(f"input pipeline alone (no training): {input_only:.1f} examples/s "
          f"({source})")
    print(f"rounds, s: pipeline {[round(value, 2) for value in pipeline_rounds]}, "
          f"in-memory {[round(value, 2) for value in memory_rounds]}")
    print(f"peak RSS {peak_rss_mb():.0f} MB   target: ratio >= {TARGET_RATIO}  ->  "
          f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'}")
    summary = {
        "pipeline_examples_per_s": round(pipeline_rate, 1),
        "memory_examples_per_s": round(memory_rate, 1),
        "ratio": round(ratio, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "input_only_examples_per_s": round(input_only, 1),
        "batch_size": batch_size,
        "input_size": [in_h, in_w],
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
