"""Runs the pipeline locally with kfp.local, or compiles it for Kubeflow / Vertex AI.

Entry point of ``python pipeline.py`` (see ``docs/pipeline.md``)::

    python pipeline.py --runner=DirectRunner                      # embedded synthetic demo
    python pipeline.py --runner=DirectRunner --data coco --coco-root data/coco \\
        [--det-file data/coco/person_detection_results/COCO_val2017_detections_AP_H_56_person.json] \\
        --config configs/coco/w32_256x192.yaml
    python pipeline.py --runner=DirectRunner --data mpii --mpii-root data/mpii --config configs/mpii/...
    python pipeline.py --compile pipeline.yaml [--image REGISTRY/darkpose-tf-python:TAG]

Every other flag must be a Beam pipeline option that Beam's own option parser
recognises (``--runner``, ``--direct_num_workers``, ``--direct_running_mode``,
Dataflow's ``--project``/``--region``/``--temp_location``/``--setup_file`` ...);
it goes unchanged to the Beam steps (ExampleGen, Evaluator). Any other flag
(a typo, a prefix of a flag) stops the command before any work with exit
status 2, naming the flag and its closest match (``pipeline/cli.py``).
``--runner=DirectRunner`` without ``--direct_running_mode`` gets
``--direct_running_mode=in_memory``.

Outputs of a local run go to ``<runs-dir>/<run-id>/`` (kfp's pipeline root,
``index.json`` and ``INDEX.md``); blessed models are pushed to
``<runs-dir>/serving/`` unless ``--push-destination`` says otherwise, so a
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
import warnings
from typing import Any, Dict, List, Sequence, Tuple

from pipeline import cli, configs, run_summary, stages
from schemas import jsonio

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="pipeline.py",
        description="Run the darkpose-tf pipeline locally (kfp.local) or compile it for Kubeflow / Vertex AI. "
                    "Other flags must be Beam pipeline options (checked by Beam's option parser), "
                    "passed to the Beam steps unchanged.")
    parser.add_argument("--config", default=None,
                        help=f"experiment config (default: {configs.DEMO_CONFIG} for the embedded data, "
                             f"{configs.COCO_CONFIG} / {configs.MPII_CONFIG} for --data coco / mpii)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--data", choices=("synthetic", "coco", "mpii"), default="synthetic",
                        help="dataset: the embedded synthetic set (default) or a real one laid out the DarkPose way")
    parser.add_argument("--coco-root", help="COCO root: annotations/person_keypoints_{train,val}2017.json, "
                                            "images/{train,val}2017/")
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
    parser.add_argument("--synthetic-train-images", type=int, default=configs.SYNTHETIC_TRAIN_IMAGES)
    parser.add_argument("--synthetic-val-images", type=int, default=configs.SYNTHETIC_VAL_IMAGES)
    parser.add_argument("--compile", metavar="FILE.yaml", default=None,
                        help="write the Kubeflow / Vertex AI pipeline spec and exit (nothing runs)")
    parser.add_argument("--image", default=configs.PIPELINE_IMAGE, help="component image for --compile")
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
            rejects (see :func:`pipeline.cli.parse_beam_flags`).
    """
    flags = list(extra)
    options = cli.parse_beam_flags(flags, own_options)
    runner = options.runner or "DirectRunner"
    if (runner.lower() in ("directrunner", "direct")
            and not any(flag.startswith("--direct_running_mode") for flag in flags)):
        flags.extend(configs.LOCAL_BEAM_DEFAULTS)
    return flags


def default_config_path(data: str) -> str:
    path = {"synthetic": configs.DEMO_CONFIG, "coco": configs.COCO_CONFIG, "mpii": configs.MPII_CONFIG}[data]
    return os.path.join(REPO_ROOT, path)


def load_run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Loads the experiment config and applies the gate thresholds (defaults, then flags)."""
    from pose.config import load_config

    path = args.config or default_config_path(args.data)
    config = load_config(path, small_run=args.small_run)
    expected = "mpii" if args.data == "mpii" else "coco"
    if config["dataset"] != expected:
        raise ValueError(f"--config {path} is for dataset {config['dataset']!r} but --data {args.data} "
                         f"needs a {expected!r} config")
    thresholds = {name: dict(gate) for name, gate in (config["eval"]["thresholds"] or {}).items()}
    if not thresholds:
        defaults = {"synthetic": configs.DEMO_THRESHOLDS, "coco": configs.COCO_THRESHOLDS,
                    "mpii": configs.MPII_THRESHOLDS}[args.data]
        thresholds = {name: dict(gate) for name, gate in defaults.items()}
    for name, bound in _parse_gate(args.threshold, "--threshold").items():
        thresholds.setdefault(name, {})["lower_bound"] = bound
    for name, drop in _parse_gate(args.max_drop, "--max-drop").items():
        thresholds.setdefault(name, {})["max_drop"] = drop
    config["eval"]["thresholds"] = thresholds
    return config


def resolve_data(args: argparse.Namespace) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """The ExampleGen / Evaluator inputs for ``--data`` and a description for the index.

    Returns:
        (inputs, info): inputs has ``train_annotations``, ``train_images``,
        ``eval_annotations``, ``eval_images``, ``det_file``, ``gt_annotations``.

    Raises:
        ValueError: a missing root flag. FileNotFoundError: a missing file or folder (named).
    """
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
        inputs = {
            "train_annotations": paths["train_annotations"], "train_images": paths["train_images"],
            "eval_annotations": paths["val_annotations"], "eval_images": paths["val_images"],
            "det_file": args.det_file or (paths["detections"] if use_detections else ""),
            "gt_annotations": paths["val_annotations"],
        }
        return inputs, {"data": "synthetic", "dataset_dir": os.path.abspath(folder),
                        "dataset_reused": info["reused"], "dataset_splits": info["splits"],
                        "content_hash": info["content_hash"]}
    if args.data == "coco":
        if not args.coco_root:
            raise ValueError("--data coco needs --coco-root <dir>")
        root = _root(args.coco_root)
        inputs = {
            "train_annotations": os.path.join(root, "annotations", "person_keypoints_train2017.json"),
            "train_images": os.path.join(root, "images", "train2017"),
            "eval_annotations": os.path.join(root, "annotations", "person_keypoints_val2017.json"),
            "eval_images": os.path.join(root, "images", "val2017"),
            "det_file": _root(args.det_file) if args.det_file else "",
        }
        inputs["gt_annotations"] = inputs["eval_annotations"]
    else:
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


def compile_pipeline(args: argparse.Namespace, config: Dict[str, Any]) -> str:
    """Writes the pipeline spec to ``args.compile``; data paths become parameters to set at submission."""
    from kfp import compiler

    from pipeline.pipeline import create_pipeline

    placeholder = "gs://YOUR_BUCKET/data"
    if args.data == "mpii":
        paths = {"train_annotations": f"{placeholder}/mpii/annot/train.json",
                 "train_images": f"{placeholder}/mpii/images",
                 "eval_annotations": f"{placeholder}/mpii/annot/valid.json",
                 "eval_images": f"{placeholder}/mpii/images",
                 "gt_annotations": f"{placeholder}/mpii/annot/gt_valid.mat"}
    else:
        paths = {"train_annotations": f"{placeholder}/coco/annotations/person_keypoints_train2017.json",
                 "train_images": f"{placeholder}/coco/images/train2017",
                 "eval_annotations": f"{placeholder}/coco/annotations/person_keypoints_val2017.json",
                 "eval_images": f"{placeholder}/coco/images/val2017",
                 "gt_annotations": f"{placeholder}/coco/annotations/person_keypoints_val2017.json"}
    pipeline_func = create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, image=args.image, config=config, det_file=args.det_file,
        beam_args=[flag for flag in args.beam_args if not flag.startswith("--direct_running_mode")],
        push_destination="gs://YOUR_BUCKET/serving/darkpose", max_steps=args.max_steps,
        description=configs.PIPELINE_DESCRIPTION, trainer_accelerator_type=args.trainer_accelerator,
        trainer_accelerator_count=args.trainer_accelerator_count or (1 if args.trainer_accelerator else 0),
        trainer_cpu_limit=args.trainer_cpu, trainer_memory_limit=args.trainer_memory, **paths)
    directory = os.path.dirname(os.path.abspath(args.compile))
    os.makedirs(directory, exist_ok=True)
    compiler.Compiler().compile(pipeline_func, args.compile)
    return args.compile


@contextlib.contextmanager
def _local_environment():
    """Makes the repository importable by the component subprocesses and quiets TF."""
    saved = {key: os.environ.get(key) for key in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "PYTHONUNBUFFERED")}
    paths = [REPO_ROOT] + [path for path in (saved["PYTHONPATH"] or "").split(os.pathsep) if path]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_local(args: argparse.Namespace, config: Dict[str, Any]) -> int:
    """Runs the whole pipeline through kfp.local; returns the exit status."""
    from kfp import local

    from pipeline.pipeline import create_pipeline

    clock = time.perf_counter()
    run_id = args.run_id or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.abspath(os.path.join(args.runs_dir, run_id))
    if os.path.exists(run_dir):
        raise FileExistsError(f"run directory already exists: {run_dir} (choose another --run-id)")
    destination = args.push_destination or os.path.join(args.runs_dir, configs.SERVING_SUBDIR)
    push_destination = destination if "://" in destination else os.path.abspath(destination)

    # Inputs first: a missing input fails here, before any run directory is made.
    print(f"[data] preparing --data {args.data}", flush=True)
    inputs, data_info = resolve_data(args)
    data_seconds = time.perf_counter() - clock
    print(f"[data] ready in {data_seconds:.1f} s: " + jsonio.dumps(data_info.get("dataset_splits", data_info)),
          flush=True)
    os.makedirs(run_dir)
    print(f"[pipeline] run {run_id}: outputs in {run_dir}, push destination {push_destination}", flush=True)
    print(f"[pipeline] Beam flags: {' '.join(args.beam_args)}", flush=True)

    pipeline_func = create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, image="python:3.11", config=config,
        beam_args=args.beam_args, push_destination=push_destination, run_id=run_id, max_steps=args.max_steps,
        description=configs.PIPELINE_DESCRIPTION, **inputs)
    failed_message = None
    with _local_environment():
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=run_dir, raise_on_error=True)
        try:
            pipeline_func()
        except RuntimeError as error:
            failed_message = str(error)
    collected = run_summary.collect(run_dir)
    index = run_summary.build_index(run_dir, run_id, collected, {
        "stage_times": {"data": round(data_seconds, 2)},
        "total_s": round(time.perf_counter() - clock, 1),
        "config": config.get("name"),
        "push_destination": push_destination,
        "beam_args": list(args.beam_args),
        "inputs": inputs,
        **data_info,
    })
    if failed_message and not collected["errors"]:
        index["verdict"] = "FAILED"
        index["errors"] = {"pipeline": failed_message}
    run_summary.write_index(run_dir, index)
    print(run_summary.format_summary(index), flush=True)
    if index["verdict"] == "FAILED":
        return configs.EXIT_FAILED
    if index["verdict"] == "BLESSED" and index.get("pushed_path"):
        return configs.EXIT_BLESSED
    if index["verdict"] == "BLESSED":   # blessed but the pusher left no record
        return configs.EXIT_FAILED
    return configs.EXIT_NOT_BLESSED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        args.beam_args = beam_flags(extra, parser.option_strings())
    except cli.UsageError as error:
        parser.error(str(error))  # usage + message, exit status 2 (= EXIT_FAILED), before any work
    try:
        config = load_run_config(args)
        if args.compile:
            path = compile_pipeline(args, config)
            print(f"[pipeline] wrote the Kubeflow / Vertex AI pipeline spec to {path}")
            return 0
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        logging.getLogger().setLevel(logging.INFO)
        return run_local(args, config)
    except (ValueError, FileNotFoundError, FileExistsError, stages.StageError) as error:
        print(f"pipeline.py: error: {error}", file=sys.stderr)
        return configs.EXIT_FAILED
