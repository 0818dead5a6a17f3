"""Serving benchmark: what a serving user sees end to end, against the network's own limit (issue 17).

Run:  .venv/bin/python bench/serve.py                                 (HRNet-W32 256x192 and the demo model)
      .venv/bin/python bench/serve.py --models demo --runs 3 --demo-keras runs/<run>/.../model/model.keras

For HRNet-W32 at 256x192 (``configs/coco/w32_256x192.yaml``) and the demo
model (``configs/demo.yaml``, 64x48), each exported at ``float32`` and at
``bfloat16`` (:func:`trainer.export.serving_network`), it prints one table from
one run:

  (a) the network forward alone, the limit: the serving network in a
      ``tf.function``, batch :data:`BATCH_SIZE` crops, ms per crop;
  (b) the ``heatmaps`` signature of the exported SavedModel (TF2 loader), same
      batch, ms per crop;
  (c) the ``predict_image`` signature (decode, box rule, crop warp, network on
      the crops and their mirrors (flip test), flip averaging, DARK decoding,
      inverse affine) on a real COCO val2017 image of the shared samples with
      1, 5 and 20 boxes: persons per second, and the ratio of (c)'s time per
      person to (a)'s time per crop. With flip test every person is two
      network passes, so the ratio cannot go below ~2; the column ``/pass``
      divides by 2 (the overhead of cropping, flipping and decoding alone);
  (d) for HRNet-W32, the same network in PyTorch float32 (the reference
      ``pose_hrnet`` of ``tests/torch_refs/``, eval mode, ``torch.no_grad``),
      batch :data:`BATCH_SIZE`, ms per crop, and the ratio of (d) to (a).

Weights: random (speed does not depend on them), or the demo model's trained
``model.keras`` with ``--demo-keras``. Times are medians of ``--runs`` calls
after one warm-up call; the forwards (a) of both precisions take turns call by
call, so that load from other processes hits them alike (the header and the
JSON give the load average); (d) runs on its own after them. bfloat16 on a machine without native bfloat16 is
exported forced (the table says so; it measures emulation there).
Targets of issue 17 (benchmark figures, not tests): (a) bfloat16 >= 2x the
PyTorch float32 reference; (c) per person within 1.3x of the limit at 5+
persons. The last line is JSON: ``{model: {precision: {...}}, "torch": {...}, "machine": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.timing import interleaved_median_seconds, load_or_build_model  # noqa: E402
from pose.codec import HeatmapCodec  # noqa: E402
from pose.config import load_config  # noqa: E402
from schemas import serving  # noqa: E402
from trainer import export  # noqa: E402

BATCH_SIZE = 8
BOX_COUNTS = (1, 5, 20)
MODELS = {"hrnet_w32": "configs/coco/w32_256x192.yaml", "demo": "configs/demo.yaml"}
COCO_DIR = os.path.join(os.path.dirname(ROOT), "shared", "data", "coco_val2017_mmpose4")
IMAGE_ID = 197388  # several people (the image tests/test_export.py serves)


def _median_seconds(function, runs: int) -> float:
    function()  # trace + warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _image_and_boxes(coco_dir: str):
    """The encoded JPEG of :data:`IMAGE_ID` and (20, 4) boxes: its GT boxes, cycled with a few-pixel jitter."""
    annotations = os.path.join(coco_dir, "person_keypoints_val2017_mmpose4.json")
    with open(annotations, encoding="utf-8") as handle:
        coco = json.load(handle)
    boxes = np.array([a["bbox"] for a in coco["annotations"] if a["image_id"] == IMAGE_ID and not a.get("iscrowd")],
                     np.float32)
    if not len(boxes):
        raise ValueError(f"{annotations}: no boxes for image {IMAGE_ID}")
    rng = np.random.default_rng(0)
    count = max(BOX_COUNTS)
    cycled = boxes[np.arange(count) % len(boxes)] + rng.uniform(-4, 4, (count, 4)).astype(np.float32)
    cycled[:, 2:] = np.maximum(cycled[:, 2:], 8.0)
    with open(os.path.join(coco_dir, "images", f"{IMAGE_ID:012d}.jpg"), "rb") as handle:
        return handle.read(), cycled


def _torch_forward(height: int, width: int, threads: int | None = None):
    """``(forward callable, torch version, threads)``: PyTorch float32 ``pose_hrnet`` W32 on a batch of
    :data:`BATCH_SIZE` crops (eval mode, ``torch.no_grad``, denormals flushed to zero as TensorFlow's
    kernels do); None without torch."""
    try:
        import torch

        from tests.torch_refs.pose_hrnet import PoseHighResolutionNet
    except ImportError as error:
        print(f"PyTorch reference skipped: {error}", flush=True)
        return None
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    network = PoseHighResolutionNet(width=32, num_joints=17).eval()
    images = torch.rand(BATCH_SIZE, 3, height, width)

    def forward():
        with torch.no_grad():
            network(images)

    return forward, torch.__version__, torch.get_num_threads()


def _export_config(config, precision: str):
    supported, _ = export.bfloat16_support()
    forced = precision == "bfloat16" and not supported
    return dict(config, export={"precision": precision, "force_precision": forced}), forced


def bench_model(name: str, config, precisions, runs: int, image: bytes, boxes: np.ndarray, directory: str,
                keras_path: str | None = None, torch_forward=None):
    """Times (a) for every precision (and (d)) in turn, then exports each precision and times (b) and (c).

    Returns:
        ``({precision: figures}, torch ms per crop or None)``.
    """
    height, width = config["data"]["input_size"]
    model = load_or_build_model(config, keras_path)
    crops = tf.constant(np.random.default_rng(1).uniform(0, 255, (BATCH_SIZE, height, width, 3)), tf.float32)
    forwards = {}
    for precision in precisions:
        network = export.serving_network(model, _export_config(config, precision)[0], precision)
        function = tf.function(lambda x, network=network: tf.cast(network(x, training=False), tf.float32))
        forwards[precision] = lambda function=function: function(crops).numpy()
    limits = {key: seconds / BATCH_SIZE for key, seconds in interleaved_median_seconds(forwards, runs).items()}
    if torch_forward is not None:
        # on its own: OpenMP threads that spin after a call would slow the TensorFlow call after it
        limits["torch"] = _median_seconds(torch_forward, runs) / BATCH_SIZE

    results = {}
    for precision in precisions:
        export_config, forced = _export_config(config, precision)
        limit = limits[precision]
        export_dir = os.path.join(directory, f"{name}_{precision}")
        start = time.perf_counter()
        export.export_serving_model(model, export_config, HeatmapCodec.from_config(export_config), export_dir)
        export_seconds = time.perf_counter() - start
        loaded = tf.saved_model.load(export_dir)
        heatmaps = loaded.signatures[serving.HEATMAPS]
        per_crop = _median_seconds(lambda: heatmaps(images=crops)[serving.OUTPUT_HEATMAPS].numpy(), runs) / BATCH_SIZE
        predict = loaded.signatures[serving.PREDICT_IMAGE]
        image_tensor = tf.constant(image)
        persons = {}
        for count in BOX_COUNTS:
            box_tensor = tf.constant(boxes[:count])
            seconds = _median_seconds(lambda: predict(image=image_tensor, boxes=box_tensor)[
                serving.OUTPUT_KEYPOINTS].numpy(), runs)
            persons[count] = {"persons_per_s": count / seconds, "ms_per_person": seconds / count * 1e3,
                              "ratio_to_limit": seconds / count / limit,
                              "ratio_per_pass": seconds / count / limit / (2 if config["eval"]["flip_test"] else 1)}
        results[precision] = {
            "limit_ms_per_crop": limit * 1e3, "heatmaps_ms_per_crop": per_crop * 1e3,
            "heatmaps_ratio_to_limit": per_crop / limit, "predict_image": persons,
            "flip_test": bool(config["eval"]["flip_test"]), "forced": forced,
            "export_seconds": export_seconds, "input_size": [height, width]}
    return results, (limits["torch"] * 1e3 if "torch" in limits else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--precisions", default=",".join(export.PRECISIONS), help="comma-separated precisions")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--demo-keras", default=None, help="trained demo model.keras (default: random weights)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="PyTorch intra-op threads (default: PyTorch's, one per core); on a loaded machine "
                             "OpenMP's spinning threads make 2 threads on 2 busy cores many times slower than 1")
    args = parser.parse_args(argv)
    names = [name for name in args.models.split(",") if name]
    precisions = [precision for precision in args.precisions.split(",") if precision]
    unknown = [name for name in names if name not in MODELS] + [p for p in precisions if p not in export.PRECISIONS]
    if unknown or args.runs < 1:
        raise ValueError(f"unknown models/precisions {unknown} or --runs < 1 ({args.runs})")
    image, boxes = _image_and_boxes(COCO_DIR)
    supported, reason = export.bfloat16_support()
    load = os.getloadavg()[0]
    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} cores, load average {load:.1f} at start; "
          f"native bfloat16: {'yes' if supported else 'no'} ({reason}); batch {BATCH_SIZE} for (a), (b), (d); "
          f"image {IMAGE_ID} of {os.path.basename(COCO_DIR)}; medians of {args.runs} calls", flush=True)
    results = {}
    torch_result = None
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as directory:
        for name in names:
            config = load_config(os.path.join(ROOT, MODELS[name]))
            keras_path = args.demo_keras if name == "demo" else None
            torch_forward = None
            if name == "hrnet_w32" and not args.no_torch:
                torch_forward = _torch_forward(*config["data"]["input_size"], threads=args.torch_threads)
            results[name], torch_ms = bench_model(name, config, precisions, args.runs, image, boxes, directory,
                                                  keras_path, torch_forward[0] if torch_forward else None)
            if torch_ms is not None:
                torch_result = {"model": name, "ms_per_crop": torch_ms, "torch": torch_forward[1],
                                "threads": torch_forward[2]}
            for precision, row in results[name].items():
                print(f"  {name} {precision}: (a) {row['limit_ms_per_crop']:.2f} ms/crop, (b) "
                      f"{row['heatmaps_ms_per_crop']:.2f} ms/crop, (c) persons/s "
                      + ", ".join(f"{count}: {row['predict_image'][count]['persons_per_s']:.1f}"
                                  for count in BOX_COUNTS), flush=True)

    header = (f"{'model':<11}{'precision':<10}{'(a) ms/crop':>12}{'(b) ms/crop':>12}{'(b)/(a)':>8}"
              + "".join(f"{f'(c) {n} p/s':>12}{'/(a)':>6}{'/pass':>6}" for n in BOX_COUNTS)
              + f"{'(d) torch':>10}{'(d)/(a)':>8}")
    print(header)
    print("-" * len(header))
    for name, by_precision in results.items():
        for precision, row in by_precision.items():
            line = (f"{name:<11}{precision + ('*' if row['forced'] else ''):<10}{row['limit_ms_per_crop']:>12.2f}"
                    f"{row['heatmaps_ms_per_crop']:>12.2f}{row['heatmaps_ratio_to_limit']:>8.2f}")
            for count in BOX_COUNTS:
                figures = row["predict_image"][count]
                line += (f"{figures['persons_per_s']:>12.1f}{figures['ratio_to_limit']:>6.2f}"
                         f"{figures['ratio_per_pass']:>6.2f}")
            if torch_result and name == torch_result["model"]:
                line += f"{torch_result['ms_per_crop']:>10.2f}{torch_result['ms_per_crop'] / row['limit_ms_per_crop']:>8.2f}"
            print(line)
    print("(a) network forward alone; (b) heatmaps signature; (c) predict_image with flip test, persons/s, "
          "ms per person / (a) ms per crop, and that / 2 (two passes per person); (d) PyTorch float32 forward, "
          "ms per crop, and (d) / (a).  * forced: no native bfloat16 here.")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    summary = {name: {precision: dict(row, predict_image={str(k): v for k, v in row["predict_image"].items()})
                      for precision, row in by_precision.items()} for name, by_precision in results.items()}
    summary["torch"] = torch_result
    summary["machine"] = {"cores": os.cpu_count(), "load_start": load, "load_end": os.getloadavg()[0],
                          "native_bfloat16": supported, "reason": reason, "tensorflow": tf.__version__}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
