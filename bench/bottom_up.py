"""Benchmark of the bottom-up decoder (pose/bottom_up_decode_tf.py).

Run:  .venv/bin/python bench/bottom_up.py [--config configs/bottom_up/demo_res18_129.yaml] [--repeats 20]

Without ``--config`` it uses PersonLab's COCO geometry (401 x 401 input,
output stride 8 -> 51 x 51; Papandreou et al. ECCV 2018, Sec. 4). For one
image (B = 1) with 1, 5, 20 and 50 people (targets from the encoder,
``pose/bottom_up_codec.py``; ``bottom_up.max_people`` set to 50 for every
count, so the graph and N are the same), it prints the median time of

* the whole decode (``decode``: peaks, skeletons, greedy grouping, fragment
  re-attachment, the N best), a traced ``tf.function`` as in the SavedModel;
* peak finding alone (``find_peaks``: max-pool NMS, top-k, DARK step, Hough step);

and the ratio of the two. Baseline (PersonLab Sec. 3.3): the grouping should
stay close to flat in the number of people; the target here is a 50-people
decode within 2x of the 1-person decode. It also checks that every person is
found (``num_people``). The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pose import bottom_up_codec, bottom_up_decode_tf  # noqa: E402
from pose.config import build_config, load_config  # noqa: E402
from schemas import bottom_up as layout  # noqa: E402

PEOPLE = (1, 5, 20, 50)
MAX_PEOPLE = 50
# Person template (x, y) in units of its size, COCO joint order (a standing figure 7 units tall).
TEMPLATE = np.array([[0, -3], [-.4, -3.3], [.4, -3.3], [-.8, -3], [.8, -3], [-1.2, -2], [1.2, -2], [-1.5, -.8],
                     [1.5, -.8], [-1.6, .3], [1.6, .3], [-.8, .5], [.8, .5], [-.8, 2], [.8, 2], [-.8, 3.5],
                     [.8, 3.5]])


def scene(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 17, 3) people on a jittered grid filling the S x S input, input pixels, all labelled."""
    columns = int(np.ceil(np.sqrt(count * 0.6)))
    rows = int(np.ceil(count / columns))
    cell_w, cell_h = size / columns, size / rows
    unit = min(cell_w / 4.0, cell_h / 8.0)
    people = []
    for index in range(count):
        row, column = divmod(index, columns)
        centre = np.array([(column + 0.5) * cell_w, (row + 0.5) * cell_h]) + rng.uniform(-0.1, 0.1, 2) * unit
        points = centre + unit * rng.uniform(0.85, 1.0) * TEMPLATE
        people.append(np.concatenate([points, np.full((17, 1), 2.0)], axis=-1))
    return np.stack(people)


def median_seconds(function, argument, repeats: int) -> float:
    function(argument)                                                 # warm-up (tracing done before)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(argument)
        tf.nest.map_structure(lambda tensor: tensor.numpy(), result)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--config", default=None, help="bottom-up experiment YAML (default: PersonLab's 401/8)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    overrides = {"bottom_up": {"max_people": MAX_PEOPLE}}
    if args.config:
        config = load_config(args.config, overrides=overrides)
    else:
        config = build_config({"approach": "bottom_up", "data": {"input_size": [401, 401], "heatmap_stride": 8},
                               **overrides}, name="personlab_401")
    settings = bottom_up_decode_tf.DecoderSettings.from_config(config)
    size, output = settings.input_size, settings.output_size
    channels = layout.num_channels(config["dataset"])
    spec = tf.TensorSpec([1, *output, channels], tf.float32)
    decode = tf.function(lambda outputs: bottom_up_decode_tf.decode(outputs, settings),
                         input_signature=[spec]).get_concrete_function()

    def peaks_only(outputs):
        parts = layout.split_channels(outputs, config["dataset"])
        return bottom_up_decode_tf.find_peaks(parts["heatmaps"], parts["short"], settings)

    peaks = tf.function(peaks_only, input_signature=[spec]).get_concrete_function()
    rng = np.random.default_rng(0)
    rows = []
    for count in PEOPLE:
        targets = tf.constant(bottom_up_codec.encode(scene(count, size, rng), config)[None])
        found = int(decode(targets)["num_people"][0])
        decode_seconds = median_seconds(decode, targets, args.repeats)
        peak_seconds = median_seconds(peaks, targets, args.repeats)
        rows.append((count, found, decode_seconds, peak_seconds))
    print(f"bottom-up decode, input {size}x{size}, output {output[0]}x{output[1]}, C = {channels}, "
          f"N = {MAX_PEOPLE}, B = 1, median of {args.repeats}")
    print(f"{'people':>7}{'found':>7}{'decode ms':>12}{'peaks ms':>11}{'decode / peaks':>16}")
    for count, found, decode_seconds, peak_seconds in rows:
        print(f"{count:>7}{found:>7}{decode_seconds * 1e3:>12.2f}{peak_seconds * 1e3:>11.2f}"
              f"{decode_seconds / peak_seconds:>16.2f}")
    flatness = rows[-1][2] / rows[0][2]
    print(f"decode time 50 people / 1 person = {flatness:.2f}  target <= 2  -> {'PASS' if flatness <= 2 else 'FAIL'}")
    summary = {"input_size": size, "output_size": list(output), "max_people": MAX_PEOPLE,
               "decode_ms": {str(count): round(d * 1e3, 3) for count, _, d, _ in rows},
               "peaks_ms": {str(count): round(p * 1e3, 3) for count, _, _, p in rows},
               "decode_over_peaks": {str(count): round(d / p, 2) for count, _, d, p in rows},
               "found": {str(count): found for count, found, _, _ in rows},
               "flatness_50_over_1": round(flatness, 2)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
