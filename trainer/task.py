"""Trainer entry points: the CLI, the TFX-style ``run_fn`` and :func:`train_and_export`.

Command line (every worker of a multi-worker job runs the same command; the
strategy comes from ``TF_CONFIG``/``--tpu``, see :mod:`trainer.distribution`):

    python -m trainer.task --examples <dir with Split-train/> --config configs/coco/res50_256x192.yaml \\
        --model-dir <dir> [--small-run] [--max-steps N] [--tpu NAME]

Outputs under ``<model-dir>``:

* ``Format-Serving/``: SavedModel (:mod:`schemas.serving`, :mod:`trainer.export`);
* ``Format-Deploy/<format>/``: LiteRT / ONNX artifacts when ``export.formats`` lists them
  (:mod:`trainer.export_deploy`; int8 calibrated on the train files);
* ``model.keras``: the trained Keras model (fine-tuning);
* ``run/checkpoints/``: ``tf.train.CheckpointManager`` checkpoints (resume);
* ``run/tensorboard/``: loss, learning rate, throughput, keypoint previews;
* ``train_summary.json``: what :func:`train_and_export` returns.

Running the same command again resumes from the last checkpoint and stops at
the same step count.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Mapping, Sequence

import tensorflow as tf

from toolkit import cli
from pose.codec import HeatmapCodec
from pose.config import load_config
from schemas import examples as examples_layout
from schemas import serving
from schemas.dataset_meta import schema_for
from schemas import jsonio
from trainer import distribution, export, export_deploy, input_pipeline, pretrained, train_loop
from trainer.models import build_model

RUN_SUBDIR = "run"
SUMMARY_FILE = "train_summary.json"


def _count_records(files: Sequence[str]) -> int:
    compression = "GZIP" if files and files[0].endswith(".gz") else ""
    dataset = tf.data.TFRecordDataset(list(files), compression_type=compression)
    return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1).numpy())


def _manifest_of(train_files: Sequence[str]) -> Dict[str, Any] | None:
    split_dirs = {os.path.dirname(path) for path in train_files}
    if len(split_dirs) != 1:
        return None
    manifest = os.path.join(os.path.dirname(split_dirs.pop()), examples_layout.MANIFEST_FILE)
    if not tf.io.gfile.exists(manifest):
        return None
    with tf.io.gfile.GFile(manifest, "r") as handle:
        return dict(json.loads(handle.read()), path=manifest)


def check_examples_meta(train_files: Sequence[str], config: Mapping[str, Any]) -> None:
    """Refuses Examples made with another dataset meta than the config's (manifest ``dataset_meta_hash``).

    Raises:
        ValueError: naming the manifest, both layouts and both hashes.
    """
    manifest = _manifest_of(train_files)
    if not manifest or "dataset_meta_hash" not in manifest:
        return  # Examples from before dataset metas (COCO/MPII): checked record by record (dataset, K)
    schema = schema_for(config)
    if manifest["dataset_meta_hash"] != schema.hash:
        raise ValueError(f"{manifest['path']}: the Examples were made with dataset meta "
                         f"{manifest.get('dataset')!r} (hash {manifest['dataset_meta_hash'][:12]}) but the config's is "
                         f"{schema.name!r} (hash {schema.hash[:12]}): run ExampleGen with the same meta")


def _num_train_records(train_files: Sequence[str]) -> int:
    """Train split size: from ExampleGen's manifest next to ``Split-train`` if present, else counted."""
    split_dirs = {os.path.dirname(path) for path in train_files}
    if len(split_dirs) == 1:
        manifest = os.path.join(os.path.dirname(split_dirs.pop()), examples_layout.MANIFEST_FILE)
        if tf.io.gfile.exists(manifest):  # local or gs://
            with tf.io.gfile.GFile(manifest, "r") as handle:
                count = json.loads(handle.read()).get("splits", {}).get("train")
            if isinstance(count, int) and count > 0:
                return count
    return _count_records(train_files)


def plan_steps(train_config: Mapping[str, Any], num_records: int, max_steps: int | None = None) -> Dict[str, int]:
    """Steps per epoch and total steps of a run.

    ``steps_per_epoch`` = ``train.steps_per_epoch`` or ``num_records // batch_size``
    (at least 1); ``total_steps`` = ``epochs * steps_per_epoch`` capped by
    ``max_steps`` (argument) and ``train.max_steps``.

    Raises:
        ValueError: no records, or a non-positive ``max_steps``.
    """
    if num_records < 1:
        raise ValueError(f"the training split has no records (num_records={num_records})")
    steps_per_epoch = train_config.get("steps_per_epoch")
    if steps_per_epoch is not None and (isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int)
                                        or steps_per_epoch < 1):
        raise ValueError(f"train.steps_per_epoch must be a positive integer or null, got {steps_per_epoch!r}")
    steps_per_epoch = steps_per_epoch or max(1, num_records // int(train_config["batch_size"]))
    total = int(train_config["epochs"]) * int(steps_per_epoch)
    for cap_name, cap in (("max_steps", max_steps), ("train.max_steps", train_config.get("max_steps"))):
        if cap is not None:
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"{cap_name} must be a positive integer, got {cap!r}")
            total = min(total, cap)
    return {"steps_per_epoch": int(steps_per_epoch), "total_steps": int(total)}


def _resolve_files(patterns: str | Sequence[str]) -> List[str]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files: List[str] = []
    for pattern in patterns:
        if tf.io.gfile.isdir(pattern):  # local or gs://
            pattern = os.path.join(pattern, "*")
        files.extend(sorted(tf.io.gfile.glob(pattern)))
    files = [path for path in files  # like glob.glob: no hidden files; and no folders
             if not os.path.basename(path.rstrip("/")).startswith(".") and not tf.io.gfile.isdir(path)]
    if not files:
        raise ValueError(f"no training files match {patterns!r}")
    return files


def train_on_files(train_files: str | Sequence[str], config: Mapping[str, Any], serving_model_dir: str,
                   model_run_dir: str, keras_path: str | None = None, max_steps: int | None = None,
                   strategy: tf.distribute.Strategy | None = None, log=print) -> Dict[str, Any]:
    """Trains on ``train_files`` and exports; the core shared by the CLI, ``run_fn`` and ``train_and_export``.

    Returns:
        Summary dict: ``steps``, ``start_step``, ``final_loss``, ``history``,
        ``examples_per_second``, ``steps_per_second``, ``steps_per_epoch``,
        ``num_train_records``, ``replicas``, ``strategy``, ``chief`` and the paths
        (``serving_model_dir``, ``keras_model``, ``run_dir``, ``checkpoint``).
    """
    files = _resolve_files(train_files)
    # export.precision is checked before training (a refused bfloat16 export would waste the run)
    log(export.check_precision(*export.export_precision(config)))
    deploy_formats = export_deploy.deploy_formats(config)  # checked before training too
    strategy = strategy or distribution.choose_strategy()
    train_config = config["train"]
    check_examples_meta(files, config)
    num_records = _num_train_records(files)
    plan = plan_steps(train_config, num_records, max_steps)
    codec = HeatmapCodec.from_config(config)
    global_batch = int(train_config["batch_size"])
    log(f"training {config['model']} on {num_records} records ({len(files)} files), "
        f"{plan['total_steps']} steps of {global_batch} examples, {strategy.num_replicas_in_sync} replica(s) "
        f"with {distribution.strategy_name(strategy)}")

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        return input_pipeline.make_dataset(files, dict(config), codec, training=True,
                                           batch_size=input_context.get_per_replica_batch_size(global_batch),
                                           input_context=input_context)

    model, result = train_loop.train(
        config, lambda: pretrained.build_model_with_pretrained(config, model_run_dir, log), dataset_fn,
        model_run_dir, plan["total_steps"], plan["steps_per_epoch"], strategy=strategy, codec=codec, log=log)

    chief = distribution.is_chief(strategy)

    def finite_or_none(value: float):
        # JSON has no NaN: a resumed run that had nothing left to do reports None.
        return None if value != value else float(value)

    summary: Dict[str, Any] = {
        "steps": result.final_step,
        "start_step": result.start_step,
        "final_loss": finite_or_none(result.final_loss),
        "history": [[step, loss] for step, loss in result.history],
        "examples_per_second": finite_or_none(result.examples_per_second),
        "steps_per_second": finite_or_none(result.steps_per_second),
        "steps_per_epoch": plan["steps_per_epoch"],
        "num_train_records": num_records,
        "global_batch_size": global_batch,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": distribution.strategy_name(strategy),
        "chief": chief,
        "serving_model_dir": serving_model_dir if chief else None,
        "keras_model": keras_path if chief else None,
        "run_dir": model_run_dir,
        "checkpoint": result.checkpoint,
    }
    if chief:
        # Export from a plain copy built outside the strategy scope: saving needs no
        # collectives, so only the chief exports.
        plain = build_model(config)
        plain.set_weights(model.get_weights())
        export.export_serving_model(plain, config, codec, serving_model_dir)
        log(f"exported SavedModel to {serving_model_dir}")
        if deploy_formats:  # LiteRT / ONNX artifacts beside Format-Serving (trainer/export_deploy.py)
            deploy_dir = f"{os.path.dirname(serving_model_dir.rstrip('/'))}/{serving.DEPLOY_DIR}"
            summary["deploy_artifacts"] = export_deploy.export_deploy_artifacts(
                plain, config, codec, deploy_dir, train_files=files, log=log)
        if keras_path:
            export.save_keras_model(plain, keras_path)
    return summary


def train_and_export(examples_dir: str, config: Mapping[str, Any], model_dir: str,
                     max_steps: int | None = None, strategy: tf.distribute.Strategy | None = None,
                     log=print) -> Dict[str, Any]:
    """Trains on ``<examples_dir>/Split-train`` and writes ``<model_dir>/{Format-Serving, model.keras, run/}``.

    Args:
        examples_dir: ExampleGen output (``Split-train/data_tfrecord-*.gz``).
        config: loaded experiment config (:func:`pose.config.load_config`).
        model_dir: output directory (created).
        max_steps: caps the run (and ``train.max_steps``).
        strategy: overrides :func:`trainer.distribution.choose_strategy`.
        log: progress sink.

    Returns:
        The summary dict of :func:`train_on_files`, also written to ``<model_dir>/train_summary.json``.

    Raises:
        ValueError: no ``Split-train`` shards, or bad step settings.
        trainer.train_loop.NonFiniteLossError: the loss became NaN/Inf.
    """
    split_dir = examples_layout.split_dir(examples_dir, "train")
    if not tf.io.gfile.isdir(split_dir):  # local or gs://
        raise ValueError(f"examples_dir {examples_dir!r} has no Split-train directory")
    tf.io.gfile.makedirs(model_dir)
    summary = train_on_files(
        examples_layout.shard_pattern(examples_dir, "train"), config, os.path.join(model_dir, serving.SAVED_MODEL_DIR),
        os.path.join(model_dir, RUN_SUBDIR), os.path.join(model_dir, serving.KERAS_FILE), max_steps,
        strategy, log)
    if summary["chief"]:
        with tf.io.gfile.GFile(os.path.join(model_dir, SUMMARY_FILE), "w") as handle:
            handle.write(jsonio.dumps(summary, indent=2))
    return summary


def config_from_custom(custom_config: Mapping[str, Any] | None) -> Dict[str, Any]:
    """The experiment config of a TFX ``custom_config``: ``config`` (dict) or ``config_path`` (+ ``small_run``).

    Raises:
        ValueError: neither ``config`` nor ``config_path`` given.
    """
    custom_config = dict(custom_config or {})
    if isinstance(custom_config.get("config"), Mapping):
        return dict(custom_config["config"])
    if custom_config.get("config_path"):
        return load_config(custom_config["config_path"], small_run=bool(custom_config.get("small_run")))
    raise ValueError("custom_config must hold 'config' (a loaded config dict) or 'config_path'")


def run_fn(fn_args) -> Dict[str, Any]:
    """TFX Trainer entry point.

    Uses ``fn_args.train_files`` (list of patterns), ``serving_model_dir``
    (``.../Format-Serving``), ``model_run_dir`` (checkpoints + TensorBoard),
    ``train_steps`` (int or None) and ``custom_config`` (see
    :func:`config_from_custom`). ``model.keras`` goes next to ``serving_model_dir``.
    """
    config = config_from_custom(getattr(fn_args, "custom_config", None))
    serving_model_dir = fn_args.serving_model_dir
    # No os.path.normpath: it turns "gs://bucket/..." into the local path "gs:/bucket/...".
    keras_path = os.path.join(os.path.dirname(serving_model_dir.rstrip("/")), serving.KERAS_FILE)
    train_steps = getattr(fn_args, "train_steps", None)
    return train_on_files(fn_args.train_files, config, serving_model_dir, fn_args.model_run_dir, keras_path,
                          int(train_steps) if train_steps else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m trainer.task", description=__doc__.split("\n")[0])
    parser.add_argument("--examples", required=True, help="ExampleGen output dir (with Split-train/)")
    parser.add_argument("--config", required=True, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument("--model-dir", required=True, help="output dir (Format-Serving/, model.keras, run/)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--max-steps", type=int, default=None, help="cap the number of steps")
    parser.add_argument("--tpu", default=None, help="TPU name/address, or 'local'")
    args = parser.parse_args(argv)
    config = load_config(args.config, small_run=args.small_run)
    strategy = distribution.choose_strategy(tpu=args.tpu)

    def log(message: str) -> None:
        print(message, flush=True)

    summary = train_and_export(args.examples, config, args.model_dir, args.max_steps, strategy, log)
    print(jsonio.dumps({key: summary[key] for key in ("steps", "start_step", "final_loss", "examples_per_second",
                                                     "serving_model_dir")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m trainer.task"))
