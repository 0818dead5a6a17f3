"""ExampleGen throughput and record size, against the decode-only limit.

Run (from the repository root)::

    .venv/bin/python bench/ingest.py [--replicas 6] [--config configs/...yaml]

The shared COCO samples (coco_train2017_mini28 + coco_val2017_mmpose4: 32
images, 98 selected persons) are replicated into a temporary folder under
/tmp (symlinked images, fresh image and annotation ids) to R x 98 >= 500
persons, then:

* decode-only limit: the same image files only read and decoded (the
  pipeline's own reader, :func:`components.ingest_core.decode_image`), one
  process, images/s;
* ExampleGen on the Beam DirectRunner, ``multi_processing`` with 1 and with
  2 workers, each at R and 2R replicas (and, for reference, ``in_memory``:
  one process, no worker data plane). Worker start-up (importing
  TensorFlow in each worker) is a fixed cost, so the steady-state rate is
  the marginal one: ``(images(2R) - images(R)) / (t(2R) - t(R))``, with the
  runs of ``--repeats`` rounds over all configurations pooled (summed); the
  plain ``images / wall`` rates are printed too;
* bytes per record of the written TFRecords, and a heatmap storage table
  (float16 / uint8 / uint16, channels-last vs joint-major) on the crop
  keypoints of the written records: gzip'd bytes per record (level 1, as
  the writer) and the DARK round-trip error the format adds over float32.

Targets (issue 3): per worker, image throughput >= 60 % of the decode-only
rate; >= 1.6x speed-up from 1 to 2 workers. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import glob
import math
import resource
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components import example_gen, ingest_core  # noqa: E402
from pose.codec import HeatmapCodec  # noqa: E402
from schemas import features  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
SOURCES = (("coco_train2017_mini28", "person_keypoints_train2017_mini28.json"),
           ("coco_val2017_mmpose4", "person_keypoints_val2017_mmpose4.json"))


def replicate(work_dir: str, replicas: int) -> tuple[str, str, int]:
    """Writes a COCO json + image folder with ``replicas`` copies of the samples."""
    images_dir = os.path.join(work_dir, f"images_{replicas}")
    os.makedirs(images_dir, exist_ok=True)
    merged = {"images": [], "annotations": [], "categories": None}
    for copy in range(replicas):
        for source_index, (folder, name) in enumerate(SOURCES):
            with open(os.path.join(SHARED, folder, name), encoding="utf-8") as handle:
                data = json.load(handle)
            merged["categories"] = data["categories"]
            offset = (copy * len(SOURCES) + source_index + 1) * 10_000_000
            for image in data["images"]:
                file_name = f"r{copy}_{image['file_name']}"
                target = os.path.join(images_dir, file_name)
                if not os.path.exists(target):
                    os.symlink(os.path.join(SHARED, folder, "images", image["file_name"]), target)
                merged["images"].append(dict(image, id=image["id"] + offset, file_name=file_name))
            for ann in data["annotations"]:
                merged["annotations"].append(dict(ann, id=ann["id"] + offset, image_id=ann["image_id"] + offset))
    path = os.path.join(work_dir, f"annotations_{replicas}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(merged, handle)
    return path, images_dir, len(merged["images"])


def _cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children: the Beam worker processes) user + system CPU seconds."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def decode_only(annotations: str, images_dir: str, config) -> tuple[float, float, int]:
    """Images/s (wall and per CPU second) of reading + decoding the images ExampleGen reads."""
    tasks = [task for task in ingest_core.load_coco("train", annotations, images_dir, config)["tasks"]
             if task["image_path"]]
    max_pixels = int(config["data"]["max_image_pixels"])
    ingest_core.decode_image(ingest_core.read_bytes(tasks[0]["image_path"]), max_pixels)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for task in tasks:
        ingest_core.decode_image(ingest_core.read_bytes(task["image_path"]), max_pixels)
    return len(tasks) / (time.perf_counter() - start), len(tasks) / (time.process_time() - cpu), len(tasks)


def stage_breakdown(annotations: str, images_dir: str, config, limit: int = 96) -> dict:
    """CPU ms per image of each step, in one process without Beam (where the time goes)."""
    from components import ingest_core as core

    codec = HeatmapCodec.from_config(config)
    tasks = [task for task in core.load_coco("train", annotations, images_dir, config)["tasks"]
             if task["image_path"]][:limit]
    totals = {"read + decode": 0.0, "crop (clip, warp, JPEG)": 0.0, "heatmaps + tf.Example": 0.0,
              "gzip (level %d, Z_RLE)" % example_gen.GZIP_LEVEL: 0.0}
    persons = 0
    for task in tasks:
        clock = time.process_time()
        image = core.decode_image(core.read_bytes(task["image_path"]), int(config["data"]["max_image_pixels"]))
        totals["read + decode"] += time.process_time() - clock
        clock = time.process_time()
        cropped, _ = core.crop_persons(image, task, config)
        totals["crop (clip, warp, JPEG)"] += time.process_time() - clock
        for person in cropped:
            clock = time.process_time()
            record = core.build_record(person, codec, config)
            totals["heatmaps + tf.Example"] += time.process_time() - clock
            clock = time.process_time()
            example_gen.gzip_bytes(record)
            totals["gzip (level %d, Z_RLE)" % example_gen.GZIP_LEVEL] += time.process_time() - clock
        persons += len(cropped)
    breakdown = {name: seconds / len(tasks) * 1e3 for name, seconds in totals.items()}
    breakdown["persons per image"] = persons / len(tasks)
    return breakdown


def run_pipeline(annotations: str, images_dir: str, config, out_dir: str, workers: int,
                 mode: str = "multi_processing") -> dict:
    """One DirectRunner run: wall seconds, CPU seconds of the workers and of the runner, manifest."""
    args = [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"]
    own_before, workers_before = _cpu_seconds()
    start = time.perf_counter()
    manifest = example_gen.run_example_gen("coco", out_dir, config, train_annotations=annotations,
                                           train_images=images_dir, beam_args=args)
    seconds = time.perf_counter() - start
    own_after, workers_after = _cpu_seconds()
    return {"seconds": seconds, "worker_cpu": workers_after - workers_before, "runner_cpu": own_after - own_before,
            "images": manifest["images_read"]["train"], "records": manifest["splits"]["train"], "out": out_dir}


def storage_table(out_dir: str, config, limit: int = 200) -> list[dict]:
    """Heatmap formats on the crop keypoints of written records: bytes and added DARK error."""
    import tensorflow as tf

    codec = HeatmapCodec.from_config(config)
    num_joints = 17
    files = sorted(glob.glob(os.path.join(out_dir, "Split-train", "*.gz")))
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(limit)))
    parsed = features.parse_records(batch, num_joints)
    keypoints = parsed["keypoints/crop"].numpy()
    visibility = parsed["keypoints/visibility"].numpy()
    heatmaps, weights = codec.encode(keypoints, visibility)  # (N, H, W, K) float32 reference
    reference, _ = codec.decode(heatmaps)
    labelled = weights > 0
    formats = {
        "float16 HWK": (heatmaps.astype("<f2"), lambda a: a.astype(np.float32)),
        "uint8 HWK": (np.rint(heatmaps * 255).astype(np.uint8), lambda a: a.astype(np.float32) / 255),
        "uint16 HWK": (np.rint(heatmaps * 65535).astype("<u2"), lambda a: a.astype(np.float32) / 65535),
        "float16 KHW": (heatmaps.astype("<f2"), lambda a: a.astype(np.float32)),
        "uint8 KHW": (np.rint(heatmaps * 255).astype(np.uint8), lambda a: a.astype(np.float32) / 255),
        "uint16 KHW (stored)": (np.rint(heatmaps * 65535).astype("<u2"), lambda a: a.astype(np.float32) / 65535),
    }
    rows = []
    for name, (stored, restore) in formats.items():
        order = (0, 3, 1, 2) if "KHW" in name else (0, 1, 2, 3)
        blobs = [np.ascontiguousarray(np.transpose(stored, order)[i]).tobytes() for i in range(len(stored))]
        start = time.perf_counter()
        sizes = [len(example_gen.gzip_bytes(blob)) for blob in blobs]
        seconds = (time.perf_counter() - start) / len(blobs)
        decoded, _ = codec.decode(restore(stored))
        added = np.linalg.norm(decoded - reference, axis=-1)[labelled]
        rows.append({"format": name, "raw_bytes": len(blobs[0]), "gz_bytes": float(np.mean(sizes)),
                     "gz_ms": seconds * 1e3, "added_err_mean": float(added.mean()),
                     "added_err_max": float(added.max())})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=20,
                        help="R: copies of the 32 images / 98 sample persons (>= 6, i.e. >= 500 persons)")
    parser.add_argument("--config", help="experiment config (default: COCO 256x192)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds over all configurations; the runs of each are pooled")
    parser.add_argument("--num-shards", type=int, default=8,
                        help="data.num_shards of the runs (the writers run in parallel per shard)")
    args = parser.parse_args(argv)
    if args.replicas < 6:
        raise SystemExit("--replicas must be >= 6 (>= 500 persons)")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.config:
        from pose.config import load_config
        config = load_config(args.config, overrides={"data": {"num_shards": args.num_shards}})
    else:
        config = example_gen.default_config("coco", {"data": {"num_shards": args.num_shards}})
    work_dir = tempfile.mkdtemp(prefix="bench_ingest_", dir="/tmp")
    try:
        small = replicate(work_dir, args.replicas)
        large = replicate(work_dir, 2 * args.replicas)
        load_before = os.getloadavg()[0]
        decode_rate, decode_cpu_rate, decode_images = 0.0, 0.0, 0
        runs = {}

        def marginal(count: float, seconds: float) -> float:
            return count / seconds if seconds > 0 else float("nan")

        # Rounds run every configuration; the runs of a configuration are pooled (sums of
        # seconds, images, CPU), which damps this shared VM's drift and start-up outliers.
        for round_index in range(args.repeats):
            rate, cpu_rate, decode_images = decode_only(large[0], large[1], config)
            decode_rate, decode_cpu_rate = max(decode_rate, rate), max(decode_cpu_rate, cpu_rate)
            for workers, mode in ((1, "multi_processing"), (2, "multi_processing"), (1, "in_memory")):
                for label, (annotations, images_dir, _) in (("R", small), ("2R", large)):
                    out_dir = os.path.join(work_dir, f"out_{mode}_{workers}_{label}_{round_index}")
                    runs.setdefault((mode, workers, label), []).append(
                        run_pipeline(annotations, images_dir, config, out_dir, workers, mode=mode))
        pooled = {key: {field: sum(run[field] for run in group) for field in
                        ("seconds", "worker_cpu", "runner_cpu", "images", "records")} | {"out": group[0]["out"]}
                  for key, group in runs.items()}
        results = {(workers, label): pooled[("multi_processing", workers, label)]
                   for workers in (1, 2) for label in ("R", "2R")}
        in_memory = {label: pooled[("in_memory", 1, label)] for label in ("R", "2R")}
        load_after = os.getloadavg()[0]

        rows = []
        for workers in (1, 2):
            small_run, large_run = results[(workers, "R")], results[(workers, "2R")]
            delta_images = large_run["images"] - small_run["images"]
            delta_t = large_run["seconds"] - small_run["seconds"]
            rows.append({
                "workers": workers,
                "images_per_s": marginal(delta_images, delta_t),
                "records_per_s": marginal(large_run["records"] - small_run["records"], delta_t),
                "wall_images_per_s": large_run["images"] / large_run["seconds"],
                "images_per_worker_cpu_s": marginal(delta_images, large_run["worker_cpu"] - small_run["worker_cpu"]),
                "images_per_total_cpu_s": marginal(delta_images, large_run["worker_cpu"] + large_run["runner_cpu"]
                                                   - small_run["worker_cpu"] - small_run["runner_cpu"]),
                "wall_s_R": small_run["seconds"], "wall_s_2R": large_run["seconds"],
                "records_2R": large_run["records"]})
        large_out = results[(1, "2R")]["out"]
        shard_files = glob.glob(os.path.join(large_out, "Split-train", "*.gz"))
        first_large = runs[("multi_processing", 1, "2R")][0]
        bytes_per_record = sum(os.path.getsize(path) for path in shard_files) / first_large["records"]
        persons_per_run = (runs[("multi_processing", 1, "R")][0]["records"], first_large["records"])
        storage = storage_table(large_out, config)
        breakdown = stage_breakdown(small[0], small[1], config)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    one, two = rows
    in_memory_rate = marginal(in_memory["2R"]["images"] - in_memory["R"]["images"],
                              in_memory["2R"]["seconds"] - in_memory["R"]["seconds"])
    in_memory_records = marginal(in_memory["2R"]["records"] - in_memory["R"]["records"],
                                 in_memory["2R"]["seconds"] - in_memory["R"]["seconds"])
    print(f"\nload average (1 min) {load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs")
    print(f"ExampleGen throughput, COCO samples x{args.replicas} / x{2 * args.replicas} "
          f"({persons_per_run[0]} / {persons_per_run[1]} persons, {args.repeats} round(s) pooled), "
          f"input {config['data']['input_size']}, heatmap {config['data']['heatmap_size']}")
    print(f"{'run':<26}{'images/s':>9}{'records/s':>10}{'wall img/s':>11}{'vs decode':>10}{'vs 1w':>7}"
          f"{'img/worker-CPU-s':>17}{'vs decode':>10}{'img/CPU-s all':>14}")
    print(f"{'decode only (1 process)':<26}{decode_rate:>9.1f}{'':>10}{'':>11}{1.0:>10.2f}{'':>7}"
          f"{decode_cpu_rate:>17.1f}{1.0:>10.2f}{decode_cpu_rate:>14.1f}")
    for row in rows:
        print(f"{'ExampleGen ' + str(row['workers']) + ' worker(s)':<26}{row['images_per_s']:>9.1f}"
              f"{row['records_per_s']:>10.1f}{row['wall_images_per_s']:>11.1f}"
              f"{row['images_per_s'] / row['workers'] / decode_rate:>10.2f}"
              f"{row['images_per_s'] / one['images_per_s']:>7.2f}"
              f"{row['images_per_worker_cpu_s']:>17.1f}{row['images_per_worker_cpu_s'] / decode_cpu_rate:>10.2f}"
              f"{row['images_per_total_cpu_s']:>14.1f}")
    print(f"{'ExampleGen 1, in_memory':<26}{in_memory_rate:>9.1f}{in_memory_records:>10.1f}"
          f"{in_memory['2R']['images'] / in_memory['2R']['seconds']:>11.1f}{in_memory_rate / decode_rate:>10.2f}"
          f"{in_memory_rate / one['images_per_s']:>7.2f}")
    print(f"(images/s, records/s: marginal wall rates between R and 2R; 'vs decode' per worker. "
          f"Walls R/2R (summed over rounds): 1w {one['wall_s_R']:.1f}/{one['wall_s_2R']:.1f} s, "
          f"2w {two['wall_s_R']:.1f}/{two['wall_s_2R']:.1f} s; decode-only over {decode_images} images, best round. "
          f"CPU columns: marginal images per CPU second of the worker processes, and of workers + runner.)")
    print(f"bytes per record (TFRecord, gzip level {example_gen.GZIP_LEVEL}, Z_RLE): {bytes_per_record:.0f}")
    print("\nCPU ms per image by step (one process, no Beam; the rest of the worker CPU is Beam's)")
    for name, value in breakdown.items():
        print(f"  {name:<28}{value:>8.2f}")
    print("\nHeatmap storage on the written records' keypoints (per record; error in crop pixels, "
          "DARK decode vs float32 targets)")
    print(f"{'format':<22}{'raw B':>9}{'gzip B':>9}{'gzip ms':>9}{'err mean':>10}{'err max':>9}")
    for row in storage:
        print(f"{row['format']:<22}{row['raw_bytes']:>9}{row['gz_bytes']:>9.0f}{row['gz_ms']:>9.3f}"
              f"{row['added_err_mean']:>10.5f}{row['added_err_max']:>9.4f}")
    def number(value: float, digits: int = 2):
        return round(value, digits) if math.isfinite(value) else None

    summary = {
        "images_per_s_1w": number(one["images_per_s"]),
        "images_per_s_2w": number(two["images_per_s"]),
        "decode_only_images_per_s": number(decode_rate),
        "bytes_per_record": number(bytes_per_record, 1),
        "records_per_s_1w": number(one["records_per_s"]),
        "records_per_s_2w": number(two["records_per_s"]),
        "per_worker_vs_decode": number(one["images_per_s"] / decode_rate, 3),
        "speedup_2w": number(two["images_per_s"] / one["images_per_s"], 3),
        "images_per_s_1w_in_memory": number(in_memory_rate),
        "per_worker_vs_decode_2w": number(two["images_per_s"] / 2 / decode_rate, 3),
        "images_per_worker_cpu_s_1w": number(one["images_per_worker_cpu_s"]),
        "decode_only_images_per_cpu_s": number(decode_cpu_rate),
        "load_average": [round(load_before, 1), round(load_after, 1)],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
