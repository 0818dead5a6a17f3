"""ExampleGen: COCO / MPII annotations -> person-crop TFRecords, on Apache Beam.

Command line (at least one split; Beam flags pass through unchanged, any other
flag stops the command with exit status 2, see ``toolkit/cli.py``)::

    python -m components.example_gen --dataset coco \\
        --train-annotations person_keypoints_train2017.json --train-images train2017/ \\
        --eval-annotations person_keypoints_val2017.json --eval-images val2017/ \\
        [--det-file COCO_val2017_detections_AP_H_56_person.json] \\
        --out examples/ [--config configs/coco/res50_256x192.yaml] \\
        [--direct_running_mode=multi_processing --direct_num_workers=2]

Output (TFX layout), published atomically (built in ``<out>.tmp-<uuid>``,
moved into place at the end, ``manifest.json`` written last)::

    <out>/Split-train/data_tfrecord-00000-of-0000N.gz   gzip'd tf.Examples
    <out>/Split-eval/data_tfrecord-...
    <out>/dead_letter.jsonl     one JSON line per bad input, with its reason
    <out>/manifest.json         counts, skips by reason, geometry, sources, content hash

Pipeline (one per run, both splits)::

    ReadFromText(image tasks: JSON lines written by the launcher) -> Reshuffle
        -> CropPersons (read + checks + decode, image -> persons fan-out, dead letters)
        -> Reshuffle -> KeyByShard -> GroupByKey(split, shard)
        -> WriteShards (DARK heatmaps + tf.Example, sorted by (image id, annotation id, box), gzip)
    dead letters + image digests + shard counts -> ToList -> WriteStats

With ``approach: bottom_up`` in the config (or ``--approach bottom_up``) the
records are whole images instead (:mod:`schemas.bottom_up`, built by
:mod:`components.ingest_bottom_up`; COCO-format annotations only)::

    ReadFromText(image tasks) -> Reshuffle
        -> BuildImageRecords (read + checks + decode, letterbox, targets, loss mask; dead letters, masked counts)
        -> KeyByShard -> GroupByKey(split, shard) -> WriteRecords (sorted by image id, gzip)

Records are byte-identical for the same inputs and config: shard of a record
= CRC32 of its sort key, records sorted by key inside a shard, the shard
count fixed by ``data.num_shards`` or by the planned record count, Examples
serialized deterministically.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import uuid
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from components import ingest_core as core
from components import metrics_coco
from schemas import examples as examples_layout
from schemas import jsonio
from toolkit import cli

RECORDS_PER_SHARD = 1000
"""Shard size target when ``data.num_shards`` is None (about 30 MB at 256x192)."""
BOTTOM_UP_RECORDS_PER_SHARD = 100
"""The same for bottom-up image records (each holds a whole image and its dense targets)."""
GZIP_LEVEL = 1
"""zlib level of the TFRecords (with :data:`GZIP_STRATEGY` the level hardly matters)."""
GZIP_STRATEGY = zlib.Z_RLE
"""zlib strategy Z_RLE: matches only runs (the heatmaps' zero tails) and skips the match search in
JPEG bytes, which do not compress: 2x faster than the default strategy, and slightly smaller
(bench/ingest.py). The files are ordinary gzip; readers need nothing special."""
DEAD_LETTER = "dead_letter.jsonl"
STATS_FILE = "_stats.json"
TASKS_FILE = "_image_tasks.jsonl"
COUNTER_NAMESPACE = "example_gen"


def _dumps(entry: Mapping[str, Any]) -> str:
    # Dead letters keep what the bad input held: a NaN box coordinate is written as "NaN".
    return jsonio.dumps(entry, nonfinite=jsonio.NONFINITE_STRING, sort_keys=True)


# --------------------------------------------------------------------------
# DoFns
# --------------------------------------------------------------------------

class _ImageTaskFn(beam.DoFn):
    """Shared part of the image-task DoFns: settings, the skip counter + dead letter, the image read.

    Subclasses implement :meth:`build` (the decoded image -> main outputs and
    tagged outputs); :meth:`process` handles the task's selection skips and
    dead letters, reads the image (``core.read_image``: decode rule, size guard)
    and emits its digest.
    """

    DEAD_LETTER = "dead_letter"
    DIGEST = "digest"
    NEEDS_PERSONS = True   # an image task without persons writes nothing (top-down)

    def __init__(self, config: Mapping[str, Any]):
        self._config = dict(config)  # picklable settings only; heavy set-up in setup()

    def setup(self):
        import cv2

        cv2.setNumThreads(1)  # one worker process per core; avoid oversubscription
        self._max_pixels = int(self._config["data"]["max_image_pixels"])
        self._images = Metrics.counter(COUNTER_NAMESPACE, "images_read")

    def _skip(self, entry: Dict[str, Any]):
        Metrics.counter(COUNTER_NAMESPACE, f"skipped_{entry['reason']}").inc(int(entry.get("count", 1)))
        return beam.pvalue.TaggedOutput(self.DEAD_LETTER, _dumps(entry))

    def build(self, image, task: Dict[str, Any]) -> Iterator[Any]:
        raise NotImplementedError

    def process(self, task: Dict[str, Any]) -> Iterator[Any]:
        for reason, count in task.get("selection_skips", {}).items():  # counted only, no dead letter
            Metrics.counter(COUNTER_NAMESPACE, f"skipped_{reason}").inc(int(count))
        for entry in task["skips"]:
            yield self._skip(entry)
        if task["image_path"] is None or (self.NEEDS_PERSONS and not task["persons"]):
            return
        ids = {"split": task["split"], "image_id": task["image_id"], "file_name": task["file_name"],
               "num_persons": len(task["persons"])}
        try:
            image, digest = core.read_image(task["image_path"], self._max_pixels)
            outputs = list(self.build(image, task))
        except core.ImageError as error:
            yield self._skip(dict(ids, reason=error.reason, message=str(error)))
            return
        self._images.inc()
        yield beam.pvalue.TaggedOutput(self.DIGEST, (task["split"], task["image_id"], digest))
        yield from outputs


class CropPersonsFn(_ImageTaskFn):
    """Image task -> cropped persons (main), dead letters and image digests (tagged)."""

    def setup(self):
        super().setup()
        self._persons = Metrics.counter(COUNTER_NAMESPACE, "persons_cropped")

    def build(self, image, task: Dict[str, Any]) -> Iterator[Any]:
        persons, skips = core.crop_persons(image, task, self._config)
        for entry in skips:
            yield self._skip(entry)
        self._persons.inc(len(persons))
        yield from persons


class BuildImageRecordsFn(_ImageTaskFn):
    """Bottom-up image task -> one serialized image record (main), dead letters, digests and masked counts (tagged)."""

    MASKED = "masked"
    NEEDS_PERSONS = False   # an image whose persons are all masked still gives a record (all loss masked)

    def setup(self):
        super().setup()
        self._records = Metrics.counter(COUNTER_NAMESPACE, "image_records_built")

    def build(self, image, task: Dict[str, Any]) -> Iterator[Any]:
        from components import ingest_bottom_up

        record, skips, masked = ingest_bottom_up.build_image_record(image, task, self._config)
        for entry in skips:
            yield self._skip(entry)
        for reason, count in masked.items():
            Metrics.counter(COUNTER_NAMESPACE, f"masked_{reason}").inc(count)
            yield beam.pvalue.TaggedOutput(self.MASKED, [task["split"], reason, count])
        self._records.inc()
        yield {"split": task["split"], "sort_key": (int(task["image_id"]),), "record": record}


class WriteRecordsFn(beam.DoFn):
    """(split, shard), serialized records -> one gzip'd TFRecord file sorted by key (bottom-up)."""

    def __init__(self, root: str, num_shards: Mapping[str, int]):
        self._root = root
        self._num_shards = dict(num_shards)

    def process(self, element: Tuple[Tuple[str, int], Iterable[Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
        import tensorflow as tf

        (split, shard), items = element
        items = sorted(items, key=lambda item: tuple(item["sort_key"]))
        path = examples_layout.shard_path(self._root, split, shard, self._num_shards[split])
        tf.io.gfile.makedirs(examples_layout.split_dir(self._root, split))
        with tf.io.TFRecordWriter(path, record_options()) as writer:
            for item in items:
                writer.write(item["record"])
        Metrics.counter(COUNTER_NAMESPACE, f"records_{split}").inc(len(items))
        yield {"kind": "shard", "split": split, "shard": shard, "records": len(items)}


class KeyByShardFn(beam.DoFn):
    """Cropped person -> ((split, shard), person); shard = CRC32 of the sort key."""

    def __init__(self, num_shards: Mapping[str, int]):
        self._num_shards = dict(num_shards)

    def process(self, person: Dict[str, Any]) -> Iterator[Tuple[Tuple[str, int], Dict[str, Any]]]:
        split = person["split"]
        yield (split, core.shard_of(person["sort_key"], self._num_shards[split])), person


class WriteShardFn(beam.DoFn):
    """(split, shard), persons -> one gzip'd TFRecord file of tf.Examples sorted by key.

    The records (DARK heatmaps + tf.Example) are built here, after the
    shuffle: a cropped person is ~4x smaller than its serialized record
    (raw heatmaps), so the shuffle moves far fewer bytes.
    """

    def __init__(self, config: Mapping[str, Any], root: str, num_shards: Mapping[str, int]):
        self._config = dict(config)
        self._root = root
        self._num_shards = dict(num_shards)

    def setup(self):
        from pose.codec import HeatmapCodec

        self._codec = HeatmapCodec.from_config(self._config)

    def process(self, element: Tuple[Tuple[str, int], Iterable[Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
        import tensorflow as tf

        (split, shard), persons = element
        persons = sorted(persons, key=lambda person: tuple(person["sort_key"]))
        path = examples_layout.shard_path(self._root, split, shard, self._num_shards[split])
        tf.io.gfile.makedirs(examples_layout.split_dir(self._root, split))
        options = record_options()
        with tf.io.TFRecordWriter(path, options) as writer:
            for person in persons:
                writer.write(core.build_record(person, self._codec, self._config))
        Metrics.counter(COUNTER_NAMESPACE, f"records_{split}").inc(len(persons))
        yield {"kind": "shard", "split": split, "shard": shard, "records": len(persons)}


class WriteStatsFn(beam.DoFn):
    """All stats items (one list) -> ``dead_letter.jsonl`` and ``_stats.json`` in the temp dir."""

    def __init__(self, root: str):
        self._root = root

    def process(self, items: List[Any]) -> Iterator[str]:
        import tensorflow as tf

        dead = sorted(item[1] for item in items if item[0] == "dead")
        digests = sorted(item[1] for item in items if item[0] == "digest")
        shards = sorted((item[1] for item in items if item[0] == "shard"),
                        key=lambda entry: (entry["split"], entry["shard"]))
        masked: Dict[str, Dict[str, int]] = {}  # bottom-up: {split: {reason: regions}}
        for split, reason, count in (item[1] for item in items if item[0] == "masked"):
            masked.setdefault(split, {})
            masked[split][reason] = masked[split].get(reason, 0) + int(count)
        with tf.io.gfile.GFile(f"{self._root}/{DEAD_LETTER}", "w") as handle:
            handle.write("".join(line + "\n" for line in dead))
        stats = {"shards": shards, "digests": [list(digest) for digest in digests],
                 "dead_letter": [json.loads(line) for line in dead], "masked": masked}
        with tf.io.gfile.GFile(f"{self._root}/{STATS_FILE}", "w") as handle:
            handle.write(jsonio.dumps(stats, nonfinite=jsonio.NONFINITE_STRING, sort_keys=True))
        yield self._root


def record_options():
    """The ``tf.io.TFRecordOptions`` of every shard: gzip, :data:`GZIP_LEVEL`, :data:`GZIP_STRATEGY`."""
    import tensorflow as tf

    return tf.io.TFRecordOptions(compression_type="GZIP", compression_level=GZIP_LEVEL,
                                 compression_strategy=GZIP_STRATEGY)


def gzip_bytes(data: bytes) -> bytes:
    """``data`` compressed as the shard writer does (for measurements: bench/ingest.py)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31, 8, GZIP_STRATEGY)
    return compressor.compress(data) + compressor.flush()


def write_tasks(tasks: Sequence[Mapping[str, Any]], path: str) -> None:
    """Writes image tasks as JSON lines (read by the workers; keeps the job graph small)."""
    gfile = core._gfile()
    with gfile.GFile(path, "w") as handle:
        for task in tasks:
            # Strict JSON: a non-finite box coordinate travels as "NaN"/"Infinity", which
            # np.asarray(..., dtype=float64) reads back as the float (crop_persons, clip_boxes).
            handle.write(jsonio.dumps(task, nonfinite=jsonio.NONFINITE_STRING, sort_keys=True) + "\n")


def build_pipeline(pipeline: beam.Pipeline, tasks_file: str, config: Mapping[str, Any],
                   num_shards: Mapping[str, int], root: str) -> None:
    """Adds the ExampleGen transforms to ``pipeline``: image tasks (JSON lines) -> shards under ``root``."""
    cropped = (
        pipeline
        | "ReadImageTasks" >> beam.io.ReadFromText(tasks_file)
        | "ParseImageTasks" >> beam.Map(json.loads)
        | "ReshuffleImageTasks" >> beam.Reshuffle()
        | "CropPersons" >> beam.ParDo(CropPersonsFn(config)).with_outputs(
            CropPersonsFn.DEAD_LETTER, CropPersonsFn.DIGEST, main="persons"))
    shards = (
        cropped.persons
        | "ReshufflePersons" >> beam.Reshuffle()
        | "KeyByShard" >> beam.ParDo(KeyByShardFn(num_shards))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteShards" >> beam.ParDo(WriteShardFn(config, root, num_shards)))
    dead = cropped[CropPersonsFn.DEAD_LETTER] | "TagDeadLetters" >> beam.Map(lambda line: ("dead", line))
    digests = cropped[CropPersonsFn.DIGEST] | "TagDigests" >> beam.Map(lambda digest: ("digest", digest))
    counts = shards | "TagShards" >> beam.Map(lambda entry: ("shard", entry))
    _ = ((dead, digests, counts)
         | "FlattenStats" >> beam.Flatten()
         | "CollectStats" >> beam.combiners.ToList()
         | "WriteStats" >> beam.ParDo(WriteStatsFn(root)))


def build_pipeline_bottom_up(pipeline: beam.Pipeline, tasks_file: str, config: Mapping[str, Any],
                             num_shards: Mapping[str, int], root: str) -> None:
    """Adds the bottom-up ExampleGen transforms: image tasks (JSON lines) -> image-record shards under ``root``."""
    built = (
        pipeline
        | "ReadImageTasks" >> beam.io.ReadFromText(tasks_file)
        | "ParseImageTasks" >> beam.Map(json.loads)
        | "ReshuffleImageTasks" >> beam.Reshuffle()
        | "BuildImageRecords" >> beam.ParDo(BuildImageRecordsFn(config)).with_outputs(
            BuildImageRecordsFn.DEAD_LETTER, BuildImageRecordsFn.DIGEST, BuildImageRecordsFn.MASKED, main="records"))
    shards = (
        built.records
        | "KeyByShard" >> beam.ParDo(KeyByShardFn(num_shards))
        | "GroupByShard" >> beam.GroupByKey()
        | "WriteRecords" >> beam.ParDo(WriteRecordsFn(root, num_shards)))
    dead = built[BuildImageRecordsFn.DEAD_LETTER] | "TagDeadLetters" >> beam.Map(lambda line: ("dead", line))
    digests = built[BuildImageRecordsFn.DIGEST] | "TagDigests" >> beam.Map(lambda digest: ("digest", digest))
    masked = built[BuildImageRecordsFn.MASKED] | "TagMasked" >> beam.Map(lambda entry: ("masked", entry))
    counts = shards | "TagShards" >> beam.Map(lambda entry: ("shard", entry))
    _ = ((dead, digests, masked, counts)
         | "FlattenStats" >> beam.Flatten()
         | "CollectStats" >> beam.combiners.ToList()
         | "WriteStats" >> beam.ParDo(WriteStatsFn(root)))


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

def pipeline_options(beam_args: Sequence[str] | None) -> PipelineOptions:
    """Beam options from command-line flags with the local DirectRunner defaults (:func:`toolkit.cli.local_beam_flags`)."""
    options = PipelineOptions(cli.local_beam_flags(beam_args))
    if options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        # Worker processes import this package: make sure they can find it.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
    return options


def _check_arguments(dataset: str, out_dir: str, config: Mapping[str, Any], splits: Mapping[str, Tuple],
                     det_file: str | None) -> None:
    from schemas.keypoints import SCHEMAS

    if dataset not in SCHEMAS and not (isinstance(config, Mapping) and config.get("dataset_meta")):
        raise ValueError(f"dataset must be one of {sorted(SCHEMAS)} or come from a dataset meta, got {dataset!r}")
    if not out_dir:
        raise ValueError("out_dir must be a non-empty path")
    if not isinstance(config, Mapping) or "data" not in config:
        raise ValueError("config must be a loaded config dict (pose.config.load_config)")
    if config.get("dataset") != dataset:
        raise ValueError(f"config['dataset'] is {config.get('dataset')!r} but dataset is {dataset!r}")
    given = {split: pair for split, pair in splits.items() if any(pair)}
    if not given:
        raise ValueError("give at least one split: train_annotations/train_images or eval_annotations/eval_images")
    for split, (annotations, images) in given.items():
        if not annotations or not images:
            raise ValueError(f"{split}_annotations and {split}_images must be given together, "
                             f"got {annotations!r} and {images!r}")
    if det_file and "eval" not in given:
        raise ValueError("det_file needs eval_annotations and eval_images (the image list)")
    if det_file and dataset == "mpii":
        raise ValueError("det_file is only supported for COCO-format annotations (not dataset 'mpii')")
    if config.get("approach", "top_down") == "bottom_up":
        if dataset != "coco":
            raise ValueError(f"approach bottom_up needs COCO-format annotations (dataset 'coco'; the loss mask "
                             f"comes from COCO segmentations), got dataset {dataset!r}")
        if det_file:
            raise ValueError("det_file is not used by approach bottom_up (box-free: no person boxes)")
    num_shards = config["data"].get("num_shards")
    if num_shards is not None and (not isinstance(num_shards, int) or num_shards < 1):
        raise ValueError(f"data.num_shards must be a positive integer or None, got {num_shards!r}")


def _load_split(dataset: str, split: str, annotations: str, images: str, config: Mapping[str, Any],
                det_file: str | None) -> Dict[str, Any]:
    gfile = core._gfile()
    if not gfile.isdir(images):
        raise core.InputError(f"{split}_images is not a directory: {images}")
    if config.get("approach", "top_down") == "bottom_up":
        from components import ingest_bottom_up

        return ingest_bottom_up.load_coco(split, annotations, images, config)
    if dataset == "mpii" and not config.get("dataset_meta"):
        return core.load_mpii(split, annotations, images, config)
    return core.load_coco(split, annotations, images, config, det_file if split == "eval" else None)


def _remove(path: str) -> None:
    gfile = core._gfile()
    if gfile.exists(path):
        if gfile.isdir(path):
            gfile.rmtree(path)
        else:
            gfile.remove(path)


def _publish(tmp_dir: str, out_dir: str, entries: Sequence[str]) -> None:
    """Moves ``entries`` of ``tmp_dir`` into ``out_dir``, then the manifest (last).

    An old ``manifest.json`` in ``out_dir`` is removed first, so a crash in
    the middle never leaves a manifest next to mixed outputs.
    """
    gfile = core._gfile()
    gfile.makedirs(out_dir)
    _remove(f"{out_dir}/{examples_layout.MANIFEST_FILE}")
    local = "://" not in out_dir
    for name in list(entries) + [examples_layout.MANIFEST_FILE]:
        source, target = f"{tmp_dir}/{name}", f"{out_dir}/{name}"
        _remove(target)
        if local:
            os.replace(source, target)
        elif gfile.isdir(source):  # object stores cannot rename folders: copy file by file
            for folder, _, files in gfile.walk(source):
                relative = folder[len(source):]
                gfile.makedirs(target + relative)
                for file_name in files:
                    gfile.copy(f"{folder}/{file_name}", f"{target}{relative}/{file_name}", overwrite=True)
        else:
            gfile.copy(source, target, overwrite=True)
    _remove(tmp_dir)


def _content_hash(dataset: str, config: Mapping[str, Any], sources: Mapping[str, Any],
                  digests: Sequence[Sequence[Any]]) -> str:
    from schemas import features

    payload = {
        "schema_version": features.SCHEMA_VERSION, "dataset": dataset,
        "data": config["data"], "codec": config["codec"],
        "files": {role: entry["sha256"] for role, entry in sources.items() if "sha256" in entry},
        "images": [list(digest) for digest in digests],
    }
    if config.get("dataset_meta") or dataset not in ("coco", "mpii"):  # COCO/MPII hashes stay as they were
        from schemas.dataset_meta import schema_for

        payload["dataset_meta_hash"] = schema_for(config).hash
    if config.get("approach", "top_down") == "bottom_up":  # top-down hashes stay as they were
        from schemas import bottom_up

        payload.update(approach="bottom_up", bottom_up_schema_version=bottom_up.SCHEMA_VERSION,
                       bottom_up=config["bottom_up"])
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _bottom_up_manifest(config: Mapping[str, Any], masked: Mapping[str, Mapping[str, int]],
                        loaded: Mapping[str, Any]) -> Dict[str, Any]:
    """The bottom-up manifest entries (replacing the person-crop ones that do not apply)."""
    from schemas import bottom_up

    dataset = config["dataset"]
    return {
        "approach": "bottom_up",
        "schema_version": bottom_up.SCHEMA_VERSION,
        "record": "image",
        "num_channels": bottom_up.num_channels(dataset),
        "channels": {name: [part.start, part.stop] for name, part in bottom_up.channel_slices(dataset).items()},
        "edges": [list(edge) for edge in bottom_up.BOTTOM_UP_EDGES[dataset]],
        "bottom_up": dict(config["bottom_up"]),
        "heatmap_storage": f"{bottom_up.HEATMAP_DTYPE.str} * {bottom_up.HEATMAP_SCALE:g}",
        "offset_storage": f"{bottom_up.OFFSET_DTYPE.str} * {bottom_up.OFFSET_SCALE:g}",
        "masked": {split: dict(sorted(masked.get(split, {}).items())) for split in core.SPLITS if split in loaded},
        "padding": None, "box_source": None, "det_score_threshold": None,
    }


def run_example_gen(dataset: str, out_dir: str, config: dict, train_annotations: str | None = None,
                    train_images: str | None = None, eval_annotations: str | None = None,
                    eval_images: str | None = None, det_file: str | None = None,
                    beam_args: List[str] | None = None) -> dict:
    """Runs ExampleGen and publishes ``out_dir``; returns the manifest.

    Args:
        dataset: a bundled name (``"coco"``, ``"mpii"``, ``"ap10k"``, ...) or the ``dataset_name`` of
            the config's ``dataset_meta`` (must equal ``config["dataset"]``); every other
            name reads COCO-format annotation files with the meta's layout and categories.
        out_dir: output folder (local or ``gs://``); replaced when it exists.
        config: loaded experiment config (:func:`pose.config.load_config`);
            ``data`` gives the crop/heatmap geometry, padding, detector score
            threshold, image-size guard, shard count, crop format.
        train_annotations, train_images: train split (COCO JSON or HRNet MPII JSON, image folder).
        eval_annotations, eval_images: eval split.
        det_file: COCO detection results JSON: eval crops from detector boxes.
        beam_args: Beam pipeline flags, passed through unchanged
            (``--runner``, ``--direct_running_mode``, ``--direct_num_workers``,
            ``--setup_file``, ...).

    Returns:
        The manifest dict (also ``<out_dir>/manifest.json``): ``splits``
        ``{split: records}``, ``skipped`` ``{reason: count}`` (all splits),
        ``skipped_by_split``, ``num_shards``, ``schema_version``,
        ``input_size``, ``heatmap_size``, ``sigma``, ``num_joints``,
        ``dataset``, ``dataset_meta`` (the layout, :meth:`KeypointSchema.to_meta`),
        ``dataset_meta_hash``, ``dataset_meta_source``, ``box_source``, ``sources``, ``images_read``,
        ``area_from_box`` ``{split: n}`` (annotations without ``area`` whose OKS
        area was derived from the box, :func:`components.metrics_coco.oks_area`),
        ``content_hash``, ``heatmap_storage``, ``dead_letter``.

    Raises:
        ValueError: bad arguments, a malformed input file (``InputError``),
            or a split that yields no records.
        RuntimeError: the Beam pipeline failed.
    """
    splits = {"train": (train_annotations, train_images), "eval": (eval_annotations, eval_images)}
    _check_arguments(dataset, out_dir, config, splits, det_file)
    bottom_up = config.get("approach", "top_down") == "bottom_up"
    from schemas import features
    from schemas.dataset_meta import schema_for

    schema = schema_for(config)
    out_dir = out_dir.rstrip("/")
    loaded = {split: _load_split(dataset, split, annotations, images, config, det_file)
              for split, (annotations, images) in splits.items() if annotations}
    for split, result in loaded.items():
        if result["planned"] == 0:
            skipped = core.count_reasons(skip for task in result["tasks"] for skip in task["skips"])
            raise ValueError(f"{split} split: no {'image' if bottom_up else 'person'} passes the selection rules "
                             f"(selection skips {result['selection_skips']}, bad inputs {skipped})")
    configured = config["data"].get("num_shards")
    per_shard = BOTTOM_UP_RECORDS_PER_SHARD if bottom_up else RECORDS_PER_SHARD
    num_shards = {split: int(configured or max(1, math.ceil(result["planned"] / per_shard)))
                  for split, result in loaded.items()}
    tasks = [task for split in core.SPLITS if split in loaded for task in loaded[split]["tasks"]]

    tmp_dir = f"{out_dir}.tmp-{uuid.uuid4().hex}"
    gfile = core._gfile()
    try:
        gfile.makedirs(tmp_dir)
        options = pipeline_options(beam_args)
        pipeline = beam.Pipeline(options=options)
        tasks_file = f"{tmp_dir}/{TASKS_FILE}"
        write_tasks(tasks, tasks_file)
        (build_pipeline_bottom_up if bottom_up else build_pipeline)(pipeline, tasks_file, config, num_shards, tmp_dir)
        result = pipeline.run()
        state = result.wait_until_finish()
        if state not in (None, "DONE"):
            raise RuntimeError(f"ExampleGen pipeline finished in state {state}")
        with gfile.GFile(f"{tmp_dir}/{STATS_FILE}", "r") as handle:
            stats = json.loads(handle.read())
        gfile.remove(f"{tmp_dir}/{STATS_FILE}")
        gfile.remove(tasks_file)

        counts = {split: 0 for split in loaded}
        written = set()
        for entry in stats["shards"]:
            counts[entry["split"]] += entry["records"]
            written.add((entry["split"], entry["shard"]))
        empty = [split for split, count in counts.items() if count == 0]
        bad = core.count_reasons(stats["dead_letter"])
        if empty:
            raise ValueError(f"split(s) {empty} yielded no records; skipped: {bad}")
        import tensorflow as tf

        options_gz = record_options()
        for split, total in num_shards.items():  # shards that got no record still exist, empty
            for shard in range(total):
                if (split, shard) not in written:
                    with tf.io.TFRecordWriter(examples_layout.shard_path(tmp_dir, split, shard, total), options_gz):
                        pass

        skipped_by_split = {}
        for split in loaded:
            reasons = dict(loaded[split]["selection_skips"])
            for reason, count in core.count_reasons(
                    entry for entry in stats["dead_letter"] if entry.get("split") == split).items():
                reasons[reason] = reasons.get(reason, 0) + count
            skipped_by_split[split] = dict(sorted(reasons.items()))
        skipped: Dict[str, int] = {}
        for reasons in skipped_by_split.values():
            for reason, count in reasons.items():
                skipped[reason] = skipped.get(reason, 0) + count
        sources = {}
        for split, result in loaded.items():
            sources.update(result["sources"])
            sources[f"{split}_images"] = {"path": splits[split][1]}
        data = config["data"]
        manifest = {
            "schema_version": features.SCHEMA_VERSION,
            "dataset": dataset,
            "num_joints": schema.num_joints,
            # the layout the records were made with (a Trainer refuses Examples of another meta hash)
            "dataset_meta": schema.to_meta(),
            "dataset_meta_hash": schema.hash,
            "dataset_meta_source": (config["dataset_meta"] if isinstance(config.get("dataset_meta"), str)
                                    else f"bundled:{schema.name}"),
            "splits": {split: counts[split] for split in core.SPLITS if split in counts},
            "skipped": dict(sorted(skipped.items())),
            "skipped_by_split": skipped_by_split,
            "num_shards": num_shards,
            "file_pattern": examples_layout.SHARD_FILE.replace("{shard:05d}", "SSSSS").replace("{num_shards:05d}", "NNNNN"),
            "input_size": list(data["input_size"]),
            "heatmap_size": list(data["heatmap_size"]),
            "sigma": float(data["sigma"]),
            "padding": float(data["padding"]),
            "image_format": data["image_format"],
            "heatmap_storage": f"{features.HEATMAP_DTYPE.str} * {features.HEATMAP_SCALE:g}",
            "box_source": {split: ("detector" if split == "eval" and det_file else "ground_truth")
                           for split in loaded},
            "det_score_threshold": float(data["det_score_threshold"]) if det_file else None,
            # ground-truth annotations without area: OKS area = 0.53 * box w * h (metrics_coco.oks_area)
            "area_from_box": {split: int(loaded[split].get("area_from_box", 0)) for split in loaded},
            "area_rule": f"{metrics_coco.AREA_FROM_BOX_FACTOR} * bbox w * h where an annotation has no usable area",
            "images_read": {split: sum(1 for digest in stats["digests"] if digest[0] == split)
                            for split in loaded},
            "sources": sources,
            "content_hash": _content_hash(dataset, config, sources, stats["digests"]),
            "dead_letter": DEAD_LETTER,
            "dead_letter_count": len(stats["dead_letter"]),
        }
        if bottom_up:
            manifest.update(_bottom_up_manifest(config, stats.get("masked", {}), loaded))
        with gfile.GFile(f"{tmp_dir}/{examples_layout.MANIFEST_FILE}", "w") as handle:
            handle.write(jsonio.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _publish(tmp_dir, out_dir, [examples_layout.SPLIT_DIR.format(split=split) for split in loaded] + [DEAD_LETTER])
        return manifest
    finally:
        _remove(tmp_dir)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _parse(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
    """Our flags and the Beam flags; exits 2 naming any flag that is neither (see ``toolkit/cli.py``)."""
    parser = cli.ArgumentParser(
        prog="python -m components.example_gen",
        description="COCO/MPII annotations -> person-crop TFRecords (TFX layout) with DARK heatmaps. "
                    "Other flags must be Beam pipeline options (checked by Beam's option parser); "
                    "they are passed to Beam unchanged.")
    from schemas.keypoints import SCHEMAS

    parser.add_argument("--dataset", choices=sorted(SCHEMAS),
                        help="bundled dataset meta (coco, mpii: HRNet's JSON list, crowdpose, ap10k, onehand10k); "
                             "default coco, or the --dataset-meta's")
    parser.add_argument("--dataset-meta", help="dataset meta file (YAML/JSON): the keypoint layout of COCO-format "
                                               "annotation files (overrides the config's dataset_meta)")
    parser.add_argument("--train-annotations", help="COCO keypoints JSON or HRNet MPII JSON (train split)")
    parser.add_argument("--train-images", help="image folder of the train split (local or gs://)")
    parser.add_argument("--eval-annotations", help="annotations of the eval split")
    parser.add_argument("--eval-images", help="image folder of the eval split")
    parser.add_argument("--det-file", help="COCO person detection results JSON: eval crops from detector boxes")
    parser.add_argument("--det-score-threshold", type=float,
                        help="overrides data.det_score_threshold (detector boxes below are skipped)")
    parser.add_argument("--out", required=True, help="output folder (replaced atomically)")
    parser.add_argument("--config", help="experiment config YAML (default: built-in defaults for the dataset)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--num-shards", type=int, help="overrides data.num_shards")
    parser.add_argument("--approach", choices=("top_down", "bottom_up"),
                        help="person crops (top_down) or whole images (bottom_up, COCO only); default: the config's "
                             "approach; must agree with --config when both are given")
    return parser.parse_args_and_beam_flags(argv)


def default_config(dataset: str, overrides: Mapping[str, Any] | None = None,
                   approach: str = "top_down") -> Dict[str, Any]:
    """The built-in config of a dataset: 256x192 for COCO, 256x256 for MPII; bottom-up: PersonLab's 401x401, stride 8."""
    from pose.config import build_config

    base: Dict[str, Any] = {"dataset": dataset}
    if dataset == "mpii":
        base["data"] = {"input_size": [256, 256]}
    if approach == "bottom_up":
        base.update(approach="bottom_up", data={"input_size": [401, 401], "heatmap_stride": 8})
    return build_config(base, name=f"{dataset}_default", extra=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = _parse(sys.argv[1:] if argv is None else argv)
    data_overrides: Dict[str, Any] = {}
    if args.det_score_threshold is not None:
        data_overrides["det_score_threshold"] = args.det_score_threshold
    if args.num_shards is not None:
        data_overrides["num_shards"] = args.num_shards
    overrides: Dict[str, Any] | None = {"data": data_overrides} if data_overrides else None
    if args.dataset_meta:
        overrides = dict(overrides or {}, dataset_meta=args.dataset_meta)
    try:
        if args.dataset_meta and args.dataset == "mpii":
            raise ValueError("--dataset-meta reads COCO-format annotation files; --dataset mpii is HRNet's MPII list")
        if args.config:
            from pose.config import load_config

            config = load_config(args.config, small_run=args.small_run, overrides=overrides)
            if args.approach and config["approach"] != args.approach:
                raise ValueError(f"--approach {args.approach} but {args.config} has approach {config['approach']!r}")
        else:
            config = default_config(args.dataset or "coco", overrides, args.approach or "top_down")
        if args.dataset and config["dataset"] != args.dataset:
            raise ValueError(f"--dataset {args.dataset} but the config/meta is for {config['dataset']!r}")
        manifest = run_example_gen(
            config["dataset"], args.out, config, train_annotations=args.train_annotations,
            train_images=args.train_images, eval_annotations=args.eval_annotations,
            eval_images=args.eval_images, det_file=args.det_file, beam_args=beam_args)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"example_gen: error: {error}", file=sys.stderr)
        return 2
    print(jsonio.dumps({"out": args.out, "splits": manifest["splits"], "skipped": manifest["skipped"],
                      "content_hash": manifest["content_hash"]}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m components.example_gen"))
