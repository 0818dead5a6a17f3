"""Benchmark of the pose models: size, multiply-adds and CPU forward time per config.

Run:  .venv/bin/python bench/models.py                       (every config in configs/coco and configs/mpii)
      .venv/bin/python bench/models.py --configs configs/coco/w32_128x96.yaml --runs 5

For every experiment config whose ``model.name`` is hrnet, hourglass,
simplebaseline or bottom_up it builds the model and prints, in one table from one run:

  * trainable parameters (M) next to the published figure and their ratio;
  * multiply-adds of conv/dense layers (:mod:`trainer.flops`) in units of
    1e9 ("GMACs") and of 1024**3 (the unit of the published "GFLOPs", from
    HRNet's ``get_model_summary``), next to the published figure and the ratio
    of the latter to it;
  * forward time per image on this machine's CPU at batch 8 (inference mode,
    inside a ``tf.function``, after one warm-up call; median of ``--runs``).

Published figures: the DarkPose README (COCO 128x96 rows, HRNet 256x192 and
384x288 rows, Hourglass rows), the HRNet paper (HRNet-W32 on MPII 256x256,
SimpleBaseline at 256x192 / 384x288). The last line is JSON
``{config name: {"params_m": ..., "gflops": ..., "ms_per_image": ...}}`` where
``gflops`` is multiply-adds / 1e9 (plus ``gflops_1024`` in the tables' unit).

Issue 15's variants have no published size of their own; under their row the
table prints the model they are compared with, built here at the same input,
and the ratios (also ``reference`` in the JSON):

* soft-gated hourglass (``model.gated_skip``; Bulat et al., FG 2020): the
  original 8-stack HourGlass, 256 features. The paper's claim (abstract): about
  3x fewer parameters and FLOPs than it at the same accuracy (MPII/LSP). The
  paper's table values could not be read in this project's sources, so the
  bench states ratios, not published numbers;
* bottom-up models (``configs/bottom_up``, issue 16; PersonLab/StrongPose
  publish no size): the same network at the other output stride (8 <-> 16),
  i.e. what the atrous (dilated) stages cost; the trunk's parameters are
  torchvision's (ResNet-101 42.50M, ResNet-152 58.14M without the classifier);
* SimpleBaseline with attention heads (``model.attention``; after Chu et al.,
  CVPR 2017, who attend hourglasses, not ResNets): the same SimpleBaseline
  without attention (R50 at 256x192: published 34.0M / 8.9 GFLOPs).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pose.config import load_config  # noqa: E402
from trainer import flops  # noqa: E402
from trainer.models import build_model  # noqa: E402

MODEL_NAMES = ("hrnet", "hourglass", "simplebaseline", "bottom_up")
BATCH_SIZE = 8

# (architecture, input height, input width) -> (published params M, published GFLOPs)
PUBLISHED = {
    ("hrnet-w32", 128, 96): (28.5, 1.8),
    ("hrnet-w32", 256, 192): (28.5, 7.1),
    ("hrnet-w32", 384, 288): (28.5, 16.0),
    ("hrnet-w32", 256, 256): (28.5, 9.5),
    ("hrnet-w48", 128, 96): (63.6, 3.6),
    ("hrnet-w48", 256, 192): (63.6, 14.6),
    ("hrnet-w48", 384, 288): (63.6, 32.9),
    ("hourglass-4", 128, 96): (13.0, 2.7),
    ("hourglass-8", 128, 96): (25.1, 4.9),
    ("res50", 128, 96): (34.0, 2.3),
    ("res101", 128, 96): (53.0, 3.1),
    ("res152", 128, 96): (68.6, 3.9),
    ("res50", 256, 192): (34.0, 8.9),
    ("res101", 256, 192): (53.0, 12.4),
    ("res152", 256, 192): (68.6, 15.7),
    ("res50", 384, 288): (34.0, 20.0),
    ("res101", 384, 288): (53.0, 27.9),
    ("res152", 384, 288): (68.6, 35.6),
}


def architecture(config) -> str | None:
    """A label for the published tables, or None for non-standard variants (no published figure)."""
    model = config["model"]
    name = model["name"]
    if name == "hrnet" and set(model) <= {"name", "width", "sync_batchnorm"}:
        return f"hrnet-w{model.get('width', 32)}"
    if name == "hourglass" and all(model.get(key, default) == default for key, default in (
            ("num_blocks", 1), ("num_features", 256), ("depth", 4))):
        return f"hourglass-{model.get('num_stacks', 4)}"
    if name == "simplebaseline" and set(model) <= {"name", "depth", "sync_batchnorm"}:
        return f"res{model.get('depth', 50)}"
    return None


def reference_model(config):
    """``(label, model config)`` that an issue-15 variant is compared with, or None for other configs."""
    model = config["model"]
    if model["name"] == "hourglass" and model.get("gated_skip"):
        return ("hourglass-8 (Newell, 256 features): Bulat et al. claim ~3x fewer params/FLOPs",
                {"name": "hourglass", "num_stacks": 8})
    if model["name"] == "bottom_up":
        other = 16 if model.get("output_stride", 8) == 8 else 8
        return (f"the same network at output stride {other} (dilation cost)", dict(model, output_stride=other))
    if model["name"] == "simplebaseline" and model.get("attention"):
        return ("the same SimpleBaseline without attention",
                {key: value for key, value in model.items() if key != "attention"})
    return None


def forward_ms_per_image(model, input_size, runs: int) -> float:
    """Median forward time per image, ms, at batch :data:`BATCH_SIZE` (inference mode, tf.function)."""
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH_SIZE, *input_size, 3)), tf.float32)
    forward = tf.function(lambda x: model(x, training=False))
    tf.nest.map_structure(lambda t: t.numpy(), forward(images))  # trace + warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), forward(images))
        times.append(time.perf_counter() - start)
    return statistics.median(times) / BATCH_SIZE * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=None,
                        help="config files (default: configs/coco, configs/mpii and configs/bottom_up *.yaml)")
    parser.add_argument("--runs", type=int, default=3, help="timed forward passes per config (median)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        raise ValueError(f"--runs must be >= 1, got {args.runs}")
    paths = args.configs or sorted(glob.glob(os.path.join(ROOT, "configs", "coco", "*.yaml"))
                                   + glob.glob(os.path.join(ROOT, "configs", "mpii", "*.yaml"))
                                   + glob.glob(os.path.join(ROOT, "configs", "bottom_up", "*.yaml")))

    print(f"CPU forward at batch {BATCH_SIZE}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at "
          f"start), TF {tf.__version__}, Keras {keras.__version__}; GFLOPs = multiply-adds of conv/dense layers "
          f"(transposed convs counted per output position, as the published tables do)")
    header = (f"{'config':<38}{'input':>9}{'params M':>10}{'publ.':>7}{'ratio':>7}"
              f"{'GMACs':>8}{'/1024^3':>9}{'publ.':>7}{'ratio':>7}{'ms/image':>10}")
    print(header)
    print("-" * len(header))
    summary = {}
    for path in paths:
        config = load_config(path)
        if config["model"]["name"] not in MODEL_NAMES:
            continue
        input_size = tuple(config["data"]["input_size"])
        keras.backend.clear_session()
        model = build_model(config)
        params_m = flops.trainable_params(model) / 1e6
        gflops = flops.gflops(model)
        gflops_1024 = flops.gflops(model, binary=True)
        ms_per_image = forward_ms_per_image(model, input_size, args.runs)
        published = PUBLISHED.get((architecture(config), *input_size))
        if published:
            published_text = (f"{published[0]:>7.1f}{params_m / published[0]:>7.3f}{gflops:>8.2f}{gflops_1024:>9.2f}"
                              f"{published[1]:>7.1f}{gflops_1024 / published[1]:>7.3f}")
        else:
            published_text = f"{'-':>7}{'-':>7}{gflops:>8.2f}{gflops_1024:>9.2f}{'-':>7}{'-':>7}"
        print(f"{config['name']:<38}{input_size[0]:>5}x{input_size[1]:<3}{params_m:>10.2f}{published_text}"
              f"{ms_per_image:>10.1f}", flush=True)
        summary[config["name"]] = {"params_m": round(params_m, 3), "gflops": round(gflops, 3),
                                   "ms_per_image": round(ms_per_image, 2), "gflops_1024": round(gflops_1024, 3)}
        del model
        reference = reference_model(config)
        if reference:
            label, model_config = reference
            keras.backend.clear_session()
            baseline = build_model({**config, "model": model_config})
            baseline_params, baseline_gflops = flops.trainable_params(baseline) / 1e6, flops.gflops(baseline)
            print(f"{'':<4}vs {label}: {baseline_params:.2f}M params, {baseline_gflops:.2f} GMACs -> "
                  f"x{params_m / baseline_params:.3f} params, x{gflops / baseline_gflops:.3f} GMACs", flush=True)
            summary[config["name"]]["reference"] = {"label": label, "params_m": round(baseline_params, 3),
                                                    "gflops": round(baseline_gflops, 3)}
            del baseline
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
