"""End-to-end cost against the number of people in the image, top-down and bottom-up, in one run (issue 25).

Run:  .venv/bin/python bench/people.py [--people 1,2,5,10,20,50] [--runs 5] [--plot bench_people.png]
      .venv/bin/python bench/people.py --people 1,2 --runs 1        (a smoke run)

For each count n it draws one synthetic image of n figures (the demo
generator's, :func:`pipeline.synthetic.sample_pose` / ``draw_figure``, on a
grid, 480 x 640, JPEG quality 90) and times, as a user calls them, the
exported SavedModels of the two demo-sized models:

* top-down: ``configs/demo.yaml`` (64 x 48, flip test), ``predict_image(image,
  boxes)`` with the n figures' boxes: JPEG decode, box rule, crops, network on
  the crops and their mirrors, flip averaging, DARK decoding, inverse affine;
  and the network alone, the ``heatmaps`` signature on a batch of
  2 x 50 crops (a person's crop and its mirror) divided by 50: one
  person's network pass;
* bottom-up: ``configs/bottom_up/demo_res18_129.yaml`` (129 x 129, flip test
  as configured, ``bottom_up.max_people`` raised to 50 so that every count
  uses the same graph), ``predict_image(image)``: decode, letterbox, network,
  decoding, grouping, inverse affine. Its network's output is the real
  network's output times 0 plus the encoded targets of the image's n figures
  (:func:`pose.bottom_up_codec.encode`), one export per n: the network runs
  at full cost and the decoder groups n real people (random weights would
  give the decoder noise, whose cost has nothing to do with n; with the flip
  test the mirrored half of the batch gets the mirrored image's targets, see
  :class:`PlusTargets`). The ``found`` column is the decoder's ``num_people``
  on that output (n when every figure is found whole).

Weights are random (speed does not depend on them). Each figure is the
median of ``--runs`` calls after one warm-up call; the calls of all counts
and both approaches take turns in one loop, so that load from other
processes, or a slow spell of the machine, hits every figure alike. Targets of issue 25 (benchmark figures, not
tests): bottom-up ``t(50) / t(1) <= 1.5``; top-down per extra person
``(t(50) - t(1)) / 49 <= 1.1`` x one person's network pass (nothing but the
network grows with the people). The first line gives TF, the cores, the
load average and the CPU's vector flags (``/proc/cpuinfo``: avx2, avx512*,
amx*); a PNG plot of ms per image against n is written to ``--plot``; the
last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.timing import interleaved_median_seconds  # noqa: E402
from pipeline.synthetic import draw_figure, sample_pose  # noqa: E402
from pose import bottom_up_codec, coordinates  # noqa: E402
from pose.codec import HeatmapCodec  # noqa: E402
from pose.config import load_config  # noqa: E402
from schemas import bottom_up as bottom_up_schema  # noqa: E402
from schemas import serving  # noqa: E402
from trainer import export  # noqa: E402
from trainer.models import build_model  # noqa: E402

PEOPLE = (1, 2, 5, 10, 20, 50)
IMAGE_SIZE = (480, 640)
TOP_DOWN_CONFIG = "configs/demo.yaml"
BOTTOM_UP_CONFIG = "configs/bottom_up/demo_res18_129.yaml"
CPU_FLAG_PREFIXES = ("avx", "fma", "amx", "sse4")


def cpu_flags() -> str:
    """The vector-unit flags of the first CPU in ``/proc/cpuinfo`` (or why they are unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = sorted(f for f in line.partition(":")[2].split() if f.startswith(CPU_FLAG_PREFIXES))
                    return " ".join(flags) or "none of avx/fma/amx/sse4"
    except OSError as error:
        return f"unknown ({error})"
    return "unknown (no flags line)"


def scene(count: int, size=IMAGE_SIZE, seed: int = 0):
    """A JPEG of ``count`` figures on a grid, their boxes (n, 4) COCO pixels and keypoints (n, 17, 3)."""
    height, width = size
    rng = np.random.default_rng(seed + count)
    columns = math.ceil(math.sqrt(count * width / height))
    rows = math.ceil(count / columns)
    cell_height, cell_width = height / rows, width / columns
    canvas = np.full((height, width, 3), 200, np.uint8)
    boxes, keypoints = [], []
    for index in range(count):
        row, column = divmod(index, columns)
        pose = sample_pose(rng, min(cell_height * 0.8, cell_width * 1.6))
        points = pose["keypoints"]
        middle = (points.max(axis=0) + points.min(axis=0)) / 2
        origin = np.array([(column + 0.5) * cell_width, (row + 0.5) * cell_height]) - middle
        mask = np.zeros((height, width), np.uint8)
        draw_figure(canvas, mask, pose, origin, rng)
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
        keypoints.append(np.concatenate([points + origin, np.full((17, 1), 2.0)], axis=1))
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes(), np.asarray(boxes, np.float32), np.asarray(keypoints)


class PlusTargets(keras.layers.Layer):
    """``outputs * 0 + targets``: the network runs, the decoder sees fixed people.

    With the flip test the exported model runs one batch ``[images, mirrored images]``
    (:meth:`trainer.export_bottom_up` ``predict_outputs``): its second half gets the targets of the
    mirrored image (``schemas.bottom_up.flip_channels`` of the mirrored maps), so that the flip-back
    averages the people with themselves, as a real network's output would, not with their mirror images.
    """

    def __init__(self, targets, dataset: str, flip_test: bool, **kwargs):
        super().__init__(**kwargs)
        targets = np.asarray(targets, np.float32)
        self._table = np.stack([targets, bottom_up_schema.flip_channels(targets[:, ::-1], dataset)])
        self._flip_test = bool(flip_test)

    def build(self, input_shape):
        self.table = self.add_weight(shape=self._table.shape, trainable=False, name="targets",
                                     initializer=keras.initializers.Constant(self._table))

    def call(self, outputs):
        count = tf.shape(outputs)[0]
        mirrored = tf.range(count) >= count // 2 if self._flip_test else tf.zeros([count], tf.bool)
        return outputs * 0.0 + tf.gather(self.table, tf.cast(mirrored, tf.int32))


def _median_ms(functions, runs):
    """``{name: median ms}`` of calls made in turn after one warm-up call each."""
    return {name: seconds * 1e3 for name, seconds in interleaved_median_seconds(functions, runs).items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--people", default=",".join(map(str, PEOPLE)), help="comma-separated people counts")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per figure (median)")
    parser.add_argument("--plot", default="bench_people.png", help="PNG plot of ms per image against people")
    args = parser.parse_args(argv)
    counts = sorted({int(v) for v in args.people.split(",") if v})
    if not counts or counts[0] < 1 or args.runs < 1:
        raise ValueError(f"--people must be counts >= 1 and --runs >= 1, got {args.people!r}, {args.runs}")
    load = os.getloadavg()[0]
    print(f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} cores, load average {load:.1f} at start; "
          f"CPU flags: {cpu_flags()}; image {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}; medians of {args.runs} calls", flush=True)
    top_config = load_config(os.path.join(ROOT, TOP_DOWN_CONFIG))
    bottom_config = load_config(os.path.join(ROOT, BOTTOM_UP_CONFIG))
    bottom_config = dict(bottom_config, bottom_up=dict(bottom_config["bottom_up"], max_people=max(50, counts[-1])))
    size = int(bottom_config["data"]["input_size"][0])
    keras.utils.set_random_seed(0)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_people_") as directory:
        top_dir = os.path.join(directory, "top_down")
        export.export_serving_model(build_model(top_config), top_config, HeatmapCodec.from_config(top_config), top_dir)
        top = tf.saved_model.load(top_dir)
        top_predict, heatmaps = top.signatures[serving.PREDICT_IMAGE], top.signatures[serving.HEATMAPS]
        height, width = top_config["data"]["input_size"]
        crops = tf.constant(np.random.default_rng(1).uniform(0, 255, (100, height, width, 3)), tf.float32)
        bottom_network = build_model(bottom_config)
        functions = {"pass": lambda: heatmaps(images=crops)[serving.OUTPUT_HEATMAPS].numpy()}
        found = {}
        for count in counts:
            image, boxes, keypoints = scene(count)
            affine = coordinates.letterbox_affine(IMAGE_SIZE[0], IMAGE_SIZE[1], size)
            letterboxed = keypoints.copy()
            letterboxed[..., :2] = coordinates.apply_affine(keypoints[..., :2], affine)
            inputs = keras.Input((size, size, 3))
            outputs = bottom_network(inputs)
            outputs = outputs[-1] if isinstance(outputs, (list, tuple)) else outputs
            model = keras.Model(inputs, PlusTargets(bottom_up_codec.encode(letterboxed, bottom_config),
                                                    bottom_config["dataset"],
                                                    bottom_config["eval"]["flip_test"])(outputs))
            bottom_dir = os.path.join(directory, f"bottom_up_{count}")
            export.export_serving_model(model, bottom_config, None, bottom_dir)
            bottom_predict = tf.saved_model.load(bottom_dir).signatures[serving.PREDICT_IMAGE]
            image_tensor, box_tensor = tf.constant(image), tf.constant(boxes)
            found[count] = int(bottom_predict(image=image_tensor)[serving.OUTPUT_NUM_PEOPLE])
            functions[("top_down", count)] = (lambda predict=top_predict, image=image_tensor, boxes=box_tensor:
                                              predict(image=image, boxes=boxes)[serving.OUTPUT_KEYPOINTS].numpy())
            functions[("bottom_up", count)] = (lambda predict=bottom_predict, image=image_tensor:
                                               predict(image=image)[serving.OUTPUT_KEYPOINTS].numpy())
            print(f"  {count:>3} people: exported ({found[count]} found by the bottom-up decoder)", flush=True)
        # Every count's calls take turns in one loop: a slow spell of the machine hits all counts alike.
        times = _median_ms(functions, args.runs)
        pass_ms = times["pass"] / 50.0                          # one person: its crop and its mirror
        for count in counts:
            rows[count] = {"top_down_ms": times[("top_down", count)], "bottom_up_ms": times[("bottom_up", count)],
                           "bottom_up_found": found[count]}
    first, last = counts[0], counts[-1]
    per_extra = ((rows[last]["top_down_ms"] - rows[first]["top_down_ms"]) / (last - first)) if last > first else None
    bottom_ratio = rows[last]["bottom_up_ms"] / rows[first]["bottom_up_ms"]
    print(f"{'people':>7}{'top-down ms':>13}{'bottom-up ms':>14}{'found':>7}")
    for count, row in rows.items():
        print(f"{count:>7}{row['top_down_ms']:>13.1f}{row['bottom_up_ms']:>14.1f}{row['bottom_up_found']:>7}")
    print(f"top-down: one person's network pass (crop + mirror) {pass_ms:.2f} ms; per extra person "
          + (f"{per_extra:.2f} ms = {per_extra / pass_ms:.2f} x the pass (target <= 1.1)" if per_extra else "n/a"))
    print(f"bottom-up: {last} people / {first} = {bottom_ratio:.2f} (target <= 1.5)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    _plot(rows, args.plot)
    print(json.dumps({"people": {str(k): v for k, v in rows.items()}, "top_down_pass_ms": pass_ms,
                      "top_down_per_extra_person_ms": per_extra,
                      "top_down_per_extra_person_over_pass": per_extra / pass_ms if per_extra else None,
                      "bottom_up_ratio_last_to_first": bottom_ratio, "plot": args.plot,
                      "image_size": list(IMAGE_SIZE), "top_down_config": TOP_DOWN_CONFIG,
                      "bottom_up_config": BOTTOM_UP_CONFIG,
                      "machine": {"cores": os.cpu_count(), "cpu_flags": cpu_flags(), "load_start": load,
                                  "load_end": os.getloadavg()[0], "tensorflow": tf.__version__}}))


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = list(rows)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(counts, [rows[c]["top_down_ms"] for c in counts], "o-", label="top-down (boxes given)")
    axis.plot(counts, [rows[c]["bottom_up_ms"] for c in counts], "s-", label="bottom-up")
    axis.set_xlabel("people in the image")
    axis.set_ylabel("ms per image, end to end")
    axis.set_title("predict_image cost against people (demo models)")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main()
