"""Runs the TFX pipeline locally (LocalDagRunner, ML Metadata in SQLite), or compiles it for Kubeflow / Vertex AI.

Entry point of ``python pipeline.py`` (see ``docs/pipeline.md``)::

    python pipeline.py --runner=DirectRunner                      # embedded synthetic demo
    python pipeline.py --runner=DirectRunner --data coco --coco-root data/coco \\
        [--det-file data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json] \\
        --config configs/coco/w32_256x192.yaml
    python pipeline.py --runner=DirectRunner --data mpii --mpii-root data/mpii --config configs/mpii/...
    python pipeline.py --runner=DirectRunner --dataset-meta my_meta.yaml --coco-root data/hands \
        --train-annotations train.json --val-annotations val.json --train-images images --val-images images \
        --config my_experiment.yaml --threshold PCK@0.2=0.8       # any keypoint set (COCO-format files)
    python pipeline.py --compile pipeline.yaml [--image REGISTRY/darkpose-tf-python:TAG]

Every other flag must be a Beam pipeline option that Beam's own option parser
recognises (``--runner``, ``--direct_num_workers``, ``--direct_running_mode``,
Dataflow's ``--project``/``--region``/``--temp_location``/``--setup_file`` ...);
it goes unchanged to the Beam steps (ExampleGen, Evaluator). Any other flag
(a typo, a prefix of a flag) stops the command before any work with exit
status 2, naming the flag and its closest match (``toolkit/cli.py``).
``--runner=DirectRunner`` (or no ``--runner``) gets the local defaults of
:func:`toolkit.cli.local_beam_flags`: ``--direct_running_mode=in_memory`` unless
a running mode is given, and ``--allow_unsafe_triggers``, which makes Beam's
DirectRunner skip its Prism attempt (an sdist build and a download per Beam
step) and run the FnApiRunner directly.

Layout under ``--runs-dir`` (default ``runs/``): ``tfx/`` (the TFX pipeline root,
shared by runs so TFX's cache reuses ExampleGen's output for unchanged data),
``metadata.sqlite`` (ML Metadata: every artifact and its lineage),
``serving/`` (the Pusher's destination unless ``--push-destination`` says
otherwise) and ``<run-id>/index.json`` (the run summary, read from this run's own
``pipeline_run`` context in ML Metadata, ``<run-id>.<UTC time>.<random>``, so runs
sharing a ``--runs-dir``, even at the same time, each report their own). The evaluator's
baseline is the latest blessed model found in ML Metadata by the Resolver, so a
second run is gated against the first one's model.

Exit status: 0 blessed (and pushed), 1 not blessed (nothing pushed), 2 a stage failed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import os
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

from pipeline import configs
from pipeline.fingerprint import input_fingerprint  # noqa: F401  (ExampleGen's cache key; also this module's API)
from toolkit import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


COCO_FILES = {
    "train_annotations": os.path.join("annotations", "person_keypoints_train2017.json"),
    "train_images": os.path.join("images", "train2017"),
    "eval_annotations": os.path.join("annotations", "person_keypoints_val2017.json"),
    "eval_images": os.path.join("images", "val2017"),
}
"""Where ``--data coco`` finds its files under ``--coco-root`` (the DarkPose layout) unless the flags say otherwise."""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="pipeline.py",
        description="Run the darkpose-tf TFX pipeline locally (LocalDagRunner) or compile it for Kubeflow / Vertex AI. "
                    "Other flags must be Beam pipeline options (checked by Beam's option parser), "
                    "passed to the Beam steps unchanged.")
    parser.add_argument("--config", default=None,
                        help=f"experiment config (default: {configs.DEMO_CONFIG} for the embedded data, "
                             f"{configs.COCO_CONFIG} / {configs.MPII_CONFIG} for --data coco / mpii)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--approach", choices=("top_down", "bottom_up"), default=None,
                        help="top_down (person boxes, the default) or bottom_up (box-free, whole images; "
                             f"default config {configs.BOTTOM_UP_DEMO_CONFIG}); must agree with --config")
    parser.add_argument("--data", choices=("synthetic", "coco", "mpii"), default=None,
                        help="dataset: the embedded synthetic set (default; coco with --dataset-meta) or a real "
                             "one laid out the DarkPose way")
    parser.add_argument("--dataset-meta", default=None,
                        help="dataset meta file (YAML/JSON) of COCO-format annotation files: any keypoint set "
                             "(docs/custom_keypoints.md); sets the config's dataset_meta and implies --data coco")
    parser.add_argument("--coco-root", help="COCO root: annotations/person_keypoints_{train,val}2017.json, "
                                            "images/{train,val}2017/ (or the files named by the four flags below)")
    for split, default_file, default_images in (("train", COCO_FILES["train_annotations"], COCO_FILES["train_images"]),
                                                ("val", COCO_FILES["eval_annotations"], COCO_FILES["eval_images"])):
        parser.add_argument(f"--{split}-annotations", default=None,
                            help=f"--data coco: the {split} annotation file, relative to --coco-root "
                                 f"(default {default_file})")
        parser.add_argument(f"--{split}-images", default=None,
                            help=f"--data coco: the {split} image folder, relative to --coco-root "
                                 f"(default {default_images})")
    parser.add_argument("--mpii-root", help="MPII root: annot/{train,valid}.json, annot/gt_valid.mat, images/")
    parser.add_argument("--det-file", default="",
                        help="person detection results (COCO results json) for the eval split; "
                             "default: ground-truth boxes (the embedded data uses its detector-like boxes)")
    parser.add_argument("--gt-boxes", action="store_true", help="embedded data: evaluate on ground-truth boxes")
    parser.add_argument("--runs-dir", default=configs.RUNS_DIR, help="parent of the run directories")
    parser.add_argument("--run-id", default=None, help="run directory name (default: UTC timestamp)")
    parser.add_argument("--push-destination", default=None,
                        help=f"where blessed models go (default: <runs-dir>/{configs.SERVING_SUBDIR})")
    parser.add_argument("--max-steps", type=int, default=0, help="cap on training steps (0: the config's schedule)")
    parser.add_argument("--threshold", action="append", default=[], metavar="METRIC=LOWER_BOUND",
                        help="value gate, e.g. AP=0.8 (repeatable; replaces the config's bound for that metric)")
    parser.add_argument("--max-drop", action="append", default=[], metavar="METRIC=DROP",
                        help="change gate against the latest blessed model, e.g. AP=0.01 (repeatable)")
    parser.add_argument("--deploy", default=None, metavar="FORMATS",
                        help="deployment artifacts to export, evaluate and push beside the SavedModel: 'all', "
                             "'none' or a comma-separated subset of tflite_fp32,tflite_fp16,tflite_int8,onnx "
                             "(sets export.formats and eval.deploy_artifacts; default: the config's)")
    parser.add_argument("--data-validation", action="store_true",
                        help="add the data gate: TFDV statistics of box area, box score and labelled joints, "
                             "checked against schemas/data_gate.pbtxt and the previous run's statistics; "
                             "anomalies refuse the blessing")
    parser.add_argument("--synthetic-train-images", type=int, default=configs.SYNTHETIC_TRAIN_IMAGES)
    parser.add_argument("--synthetic-val-images", type=int, default=configs.SYNTHETIC_VAL_IMAGES)
    parser.add_argument("--compile", metavar="FILE.{yaml,json}", default=None,
                        help="write the Kubeflow / Vertex AI pipeline and exit (nothing runs): .yaml/.yml kfp's "
                             "PipelineSpec YAML (compile-time values as parameter defaults), else TFX's "
                             "PipelineJob JSON")
    parser.add_argument("--image", default=configs.PIPELINE_IMAGE, help="component image for --compile")
    parser.add_argument("--pipeline-root", default="",
                        help="TFX pipeline root, the artifacts' folder (local or gs://; default <runs-dir>/tfx); "
                             "required with --compile (e.g. gs://BUCKET/tfx)")
    parser.add_argument("--trainer-accelerator", default="",
                        help="--compile: accelerator type of the Trainer step (e.g. NVIDIA_TESLA_A100)")
    parser.add_argument("--trainer-accelerator-count", type=int, default=0,
                        help="--compile: number of accelerators of the Trainer step")
    parser.add_argument("--trainer-cpu", default="", help="--compile: CPU limit of the Trainer step (e.g. 8)")
    parser.add_argument("--trainer-memory", default="", help="--compile: memory limit of the Trainer step (e.g. 32G)")
    return parser


def _parse_gate(entries: Sequence[str], flag: str) -> Dict[str, float]:
    gates = {}
    for entry in entries:
        name, separator, value = entry.partition("=")
        try:
            if not separator or not name:
                raise ValueError
            gates[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{flag} expects METRIC=NUMBER, got {entry!r}") from None
    return gates


def beam_flags(extra: Sequence[str], own_options: Sequence[str] = ()) -> List[str]:
    """Beam flags for the Beam steps: the command-line flags that are not ours, unchanged, plus local defaults.

    Args:
        extra: the tokens our parser did not consume.
        own_options: our flags, offered as close matches in the error message.

    Raises:
        cli.UsageError (a ``ValueError``): a flag that Beam's option parser
            does not recognise either, a stray argument, or a value Beam
            rejects (see :func:`toolkit.cli.parse_beam_flags`).
    """
    cli.parse_beam_flags(list(extra), own_options)
    return cli.local_beam_flags(extra)


def default_config_path(data: str, approach: str = "top_down") -> str:
    if approach == "bottom_up":
        path = {"synthetic": configs.BOTTOM_UP_DEMO_CONFIG, "coco": configs.BOTTOM_UP_COCO_CONFIG}.get(data)
        if path is None:
            raise ValueError(f"--approach bottom_up is for COCO-format data (--data synthetic or coco), not --data {data}")
    else:
        path = {"synthetic": configs.DEMO_CONFIG, "coco": configs.COCO_CONFIG, "mpii": configs.MPII_CONFIG}[data]
    return os.path.join(REPO_ROOT, path)


def deploy_overrides(flag: str | None) -> Dict[str, Any] | None:
    """``--deploy`` as config overrides: the same formats for ``export.formats`` and ``eval.deploy_artifacts``.

    ``None`` (flag absent): no override; ``all``: :data:`schemas.serving.DEPLOY_FORMATS`; ``none``: no artifact.

    Raises:
        ValueError: an unknown or repeated format (named, with the choices).
    """
    from schemas.serving import DEPLOY_FORMATS

    if flag is None:
        return None
    if flag.strip() == "all":
        formats = list(DEPLOY_FORMATS)
    elif flag.strip() == "none":
        formats = []
    else:
        formats = [name.strip() for name in flag.split(",") if name.strip()]
    unknown = [name for name in formats if name not in DEPLOY_FORMATS]
    if unknown or len(set(formats)) != len(formats):
        raise ValueError(f"--deploy {flag!r}: give 'all', 'none' or distinct formats from {', '.join(DEPLOY_FORMATS)}"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else " (a format is repeated)"))
    return {"export": {"formats": formats}, "eval": {"deploy_artifacts": formats}}


def load_run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Loads the experiment config and applies the gate thresholds (defaults, then flags).

    Raises:
        ValueError: a bad config, or a gate without a value threshold (the config file and
            ``eval.thresholds`` named; :func:`pose.config.require_value_threshold`).
    """
    from pose.config import load_config, require_value_threshold
    from schemas import dataset_meta

    if args.config is None:
        resolve_data_flag(args)
    path = args.config or default_config_path(args.data, args.approach or "top_down")
    meta_path = getattr(args, "dataset_meta", None)
    overrides: Dict[str, Any] = {"dataset_meta": meta_path} if meta_path else {}
    deploy = deploy_overrides(getattr(args, "deploy", None))
    if deploy:
        overrides.update(deploy)
    config = load_config(path, small_run=args.small_run, overrides=overrides or None)
    if args.data is None:   # a config naming a dataset meta reads COCO-format files
        args.data = "coco" if config.get("dataset_meta") is not None else "synthetic"
    if args.approach and config.get("approach", "top_down") != args.approach:
        raise ValueError(f"--approach {args.approach} but --config {path} has approach "
                         f"{config.get('approach', 'top_down')!r}")
    if config.get("dataset_meta") is not None:
        if args.data != "coco":
            raise ValueError(f"a dataset meta ({meta_path or path}) is for COCO-format annotation files: "
                             f"use --data coco --coco-root <dir>, not --data {args.data}")
        # approach bottom_up with a meta never gets here: pose.config refuses it, naming the meta.
        # The layout travels inline (to_meta) in every component's config: same hash, no file to find later.
        config["dataset_meta"] = dataset_meta.schema_for(config).to_meta()
    else:
        expected = "mpii" if args.data == "mpii" else "coco"
        if config["dataset"] != expected:
            raise ValueError(f"--config {path} is for dataset {config['dataset']!r} but --data {args.data} "
                             f"needs a {expected!r} config")
    schema = dataset_meta.schema_for(config)
    thresholds = {name: dict(gate) for name, gate in (config["eval"]["thresholds"] or {}).items()}
    if not thresholds and schema.name not in ("coco", "mpii"):
        thresholds = {name: dict(gate) for name, gate in (
            configs.PCK_THRESHOLDS if schema.metric == "pck" else configs.META_OKS_THRESHOLDS).items()}
    if not thresholds:
        defaults = ({"synthetic": configs.BOTTOM_UP_DEMO_THRESHOLDS, "coco": configs.BOTTOM_UP_COCO_THRESHOLDS}
                    if config.get("approach") == "bottom_up" else
                    {"synthetic": configs.DEMO_THRESHOLDS, "coco": configs.COCO_THRESHOLDS,
                     "mpii": configs.MPII_THRESHOLDS})[args.data]
        thresholds = {name: dict(gate) for name, gate in defaults.items()}
    from components.metrics_pck import LOWER_IS_BETTER

    for name, bound in _parse_gate(args.threshold, "--threshold").items():   # EPE (lower is better): an upper bound
        thresholds.setdefault(name, {})["upper_bound" if name in LOWER_IS_BETTER else "lower_bound"] = bound
    for name, drop in _parse_gate(args.max_drop, "--max-drop").items():
        thresholds.setdefault(name, {})["max_drop"] = drop
    flags = " with --threshold / --max-drop" if args.threshold or args.max_drop else ""
    require_value_threshold(thresholds, f"{path}{flags}")   # a gate of max_drop alone never blesses
    config["eval"]["thresholds"] = thresholds
    return config


def resolve_data_flag(args: argparse.Namespace) -> None:
    """``--data`` left out: ``coco`` with ``--dataset-meta`` (COCO-format files), else ``synthetic``."""
    if getattr(args, "data", None) is None:
        args.data = "coco" if getattr(args, "dataset_meta", None) else "synthetic"


def resolve_data(args: argparse.Namespace) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """The ExampleGen / Evaluator inputs for ``--data`` and a description for the index.

    Returns:
        (inputs, info): inputs has ``train_annotations``, ``train_images``,
        ``eval_annotations``, ``eval_images``, ``det_file``, ``gt_annotations``.

    Raises:
        ValueError: a missing root flag. FileNotFoundError: a missing file or folder (named).
    """
    resolve_data_flag(args)
    if args.data == "synthetic":
        from pipeline import synthetic

        spec = synthetic.SyntheticSpec(num_train_images=args.synthetic_train_images,
                                       num_val_images=args.synthetic_val_images, seed=configs.SYNTHETIC_SEED)
        folder = os.path.join(args.runs_dir, configs.SYNTHETIC_SUBDIR,
                              f"synthetic-v{synthetic.GENERATOR_VERSION}-seed{spec.seed}"
                              f"-{spec.num_train_images}x{spec.num_val_images}")
        info = synthetic.generate_dataset(folder, spec)
        paths = info["paths"]
        use_detections = configs.SYNTHETIC_USE_DETECTIONS and not args.gt_boxes
        bottom_up = getattr(args, "approach", None) == "bottom_up"
        inputs = {
            "train_annotations": paths["train_annotations"], "train_images": paths["train_images"],
            "eval_annotations": paths["val_annotations"], "eval_images": paths["val_images"],
            "det_file": args.det_file or (paths["detections"] if use_detections and not bottom_up else ""),
            "gt_annotations": paths["val_annotations"],
        }
        return inputs, {"data": "synthetic", "dataset_dir": os.path.abspath(folder),
                        "dataset_reused": info["reused"], "dataset_splits": info["splits"],
                        "content_hash": info["content_hash"]}
    if getattr(args, "approach", None) == "bottom_up" and args.det_file:
        raise ValueError("--det-file is for top-down models: --approach bottom_up is box-free")
    if args.data == "coco":
        if not args.coco_root:
            raise ValueError("--data coco needs --coco-root <dir>")
        root = _root(args.coco_root)
        chosen = {"train_annotations": getattr(args, "train_annotations", None),
                  "train_images": getattr(args, "train_images", None),
                  "eval_annotations": getattr(args, "val_annotations", None),
                  "eval_images": getattr(args, "val_images", None)}
        inputs = {name: os.path.join(root, chosen[name] or default) for name, default in COCO_FILES.items()}
        inputs["det_file"] = _root(args.det_file) if args.det_file else ""
        inputs["gt_annotations"] = inputs["eval_annotations"]
    else:
        if any(getattr(args, flag, None) for flag in ("train_annotations", "val_annotations", "train_images",
                                                      "val_images")):
            raise ValueError("--train/val-annotations and --train/val-images are for --data coco")
        if not args.mpii_root:
            raise ValueError("--data mpii needs --mpii-root <dir>")
        root = _root(args.mpii_root)
        inputs = {
            "train_annotations": os.path.join(root, "annot", "train.json"),
            "train_images": os.path.join(root, "images"),
            "eval_annotations": os.path.join(root, "annot", "valid.json"),
            "eval_images": os.path.join(root, "images"),
            "det_file": "",
            "gt_annotations": os.path.join(root, "annot", "gt_valid.mat"),
        }
        if args.det_file:
            raise ValueError("--det-file is for COCO; MPII evaluates on its annotated person boxes")
    for name, path in inputs.items():
        if path and "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(f"--data {args.data}: {name} not found: {path}")
    return inputs, {"data": args.data, "root": root}


def _root(path: str) -> str:
    """Absolute local path; remote URIs (gs://...) unchanged."""
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


class _ProgressFilter(logging.Filter):
    """Lets LocalDagRunner's per-component lines through (as ``[pipeline] ...``), nothing else of absl's INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        if message.startswith("Component ") and message.endswith((" is running.", " is finished.")):
            print(f"[pipeline] {message} ({datetime.datetime.now().strftime('%H:%M:%S')})", flush=True)
        return False


@contextlib.contextmanager
def _progress_lines():
    """Per-component progress from LocalDagRunner's log, without the rest of its INFO output."""
    logger = logging.getLogger("absl")
    saved = logger.level
    progress = _ProgressFilter()
    logger.addFilter(progress)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeFilter(progress)
        logger.setLevel(saved)


TFX_ROOT_SUBDIR = "tfx"
METADATA_FILE = "metadata.sqlite"


def claim_run_id(runs_dir: str) -> str:
    """The default run id, a UTC timestamp (``20240131-120000``), whose ``<runs_dir>/<id>/`` this run creates.

    Two runs started in the same second on one ``--runs-dir`` get ``<time>`` and
    ``<time>-2`` (the folder is created atomically), so neither writes the other's
    ``index.json``. An explicit ``--run-id`` is used as given.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    os.makedirs(runs_dir, exist_ok=True)
    for attempt in range(1, 1000):
        run_id = stamp if attempt == 1 else f"{stamp}-{attempt}"
        try:
            os.mkdir(os.path.join(runs_dir, run_id))
            return run_id
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run directory for {stamp} in {runs_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.add_argument("--no-cache", action="store_true", help="disable TFX caching")
    args, extra = parser.parse_known_args(argv)
    clock = time.perf_counter()
    try:
        args.beam_args = beam_flags(extra, parser.option_strings())
        args.user_beam_args = list(extra)  # --compile: the components add the local defaults themselves
    except cli.UsageError as error:
        parser.error(str(error))  # usage + message, exit status 2 (= EXIT_FAILED), before any work
    try:
        config = load_run_config(args)
        if args.compile:
            from pipeline.kubeflow_v2_runner import compile_pipeline

            if args.data == "synthetic":
                args.data = "coco"   # the embedded data is generated locally; a compiled job reads COCO/MPII

            print(f"[pipeline] wrote the Kubeflow / Vertex AI pipeline job to {compile_pipeline(args, config)}")
            return 0
        if not any(flag.startswith(("--setup_file", "--extra_package")) for flag in args.beam_args):
            # Names the project's package; without a dependency flag TFX builds an ephemeral sdist of
            # itself in $TMPDIR for every Beam component.
            args.beam_args.append(f"--setup_file={os.path.join(REPO_ROOT, 'setup.py')}")
        print(f"[data] preparing --data {args.data}", flush=True)
        inputs, data_info = resolve_data(args)
        data_seconds = time.perf_counter() - clock
        print(f"[data] ready in {data_seconds:.1f} s", flush=True)
    except (ValueError, FileNotFoundError) as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return configs.EXIT_FAILED
    from pipeline import pipeline as pipeline_definition
    from pipeline import run_summary

    runs_dir = os.path.abspath(args.runs_dir)
    run_id = args.run_id or claim_run_id(runs_dir)
    metadata_path = os.path.join(runs_dir, METADATA_FILE)
    destination = args.push_destination or os.path.join(runs_dir, configs.SERVING_SUBDIR)
    fingerprint = str(data_info.get("content_hash") or "")
    if not fingerprint:
        clock_hash, hashed = time.perf_counter(), {}
        try:
            fingerprint = input_fingerprint(inputs, run_id, hashed)
        except OSError as error:
            print(f"pipeline: error: cannot read an input for ExampleGen's cache key: {error}", file=sys.stderr)
            return configs.EXIT_FAILED
        if hashed:
            print(f"[data] content hash of the inputs (ExampleGen's cache key): {hashed['files']} files, "
                  f"{hashed['bytes'] / 1e6:.1f} MB in {time.perf_counter() - clock_hash:.1f} s", flush=True)
    pipeline = pipeline_definition.create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, pipeline_root=_root(args.pipeline_root) if args.pipeline_root
        else os.path.join(runs_dir, TFX_ROOT_SUBDIR), config=config,
        push_destination=destination if "://" in destination else os.path.abspath(destination),
        input_fingerprint=fingerprint, beam_pipeline_args=args.beam_args, max_steps=args.max_steps,
        run_id=run_id, metadata_path=metadata_path, enable_cache=not args.no_cache,
        data_validation=args.data_validation, **inputs)
    # This run's pipeline_run context in ML Metadata, named before it starts: the summary, index.json and
    # the exit status are read from it, never from whichever run is newest (another run may share --runs-dir).
    run_context = pipeline_definition.pipeline_run_name(run_id)
    print(f"[pipeline] run {run_id}: TFX LocalDagRunner, ML Metadata {metadata_path} (pipeline_run {run_context})",
          flush=True)
    error_message = None
    try:
        with _progress_lines():
            pipeline_definition.run_local(pipeline, run_context)
    except Exception as error:  # a component failed: named from MLMD below
        error_message = f"{type(error).__name__}: {error}"
    try:
        record = run_summary.run_record(metadata_path, configs.PIPELINE_NAME, run_context_name=run_context)
    except ValueError as error:  # the run stopped before ML Metadata recorded any of its steps
        record = {"run": run_context, "nodes": {}, "baseline_metrics": {}}
        error_message = error_message or str(error)
    summary = run_summary.summarise(record)
    summary["total_s"] = round(time.perf_counter() - clock, 1)
    summary["stage_times_s"] = {"data": round(data_seconds, 2),
                                **{node: stage["wall_s"] for node, stage in summary["stages"].items()}}
    summary["run_id"] = run_id
    summary["data"] = data_info
    if error_message:
        summary["verdict"] = "FAILED"
        summary["error"] = error_message
    run_summary.write_index(os.path.join(runs_dir, run_id), summary)
    print(run_summary.format_summary(summary), flush=True)
    print(f"  total {summary['total_s']} s", flush=True)
    if summary["verdict"] == "FAILED":
        failed = ", ".join(summary["failed"]) or "unknown component"
        print(f"pipeline: component {failed} failed: {error_message}", file=sys.stderr)
        return configs.EXIT_FAILED
    if summary["verdict"] == "BLESSED":
        return configs.EXIT_BLESSED if summary["pushed"] else configs.EXIT_FAILED
    return configs.EXIT_NOT_BLESSED


if __name__ == "__main__":
    sys.exit(main())
