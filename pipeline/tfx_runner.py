"""Runs the TFX pipeline locally (LocalDagRunner, ML Metadata in SQLite) and summarises the run from MLMD.

    python -m pipeline.tfx_runner --runner=DirectRunner [--data coco|mpii ...] [--config <yaml>]

Takes the same flags as ``pipeline.py`` (:func:`pipeline.local_runner.build_parser`);
unknown flags are Beam flags and become the pipeline's ``beam_pipeline_args``.
Layout under ``--runs-dir`` (default ``runs/``): ``tfx/`` (the pipeline root,
shared by runs so TFX's cache can reuse outputs), ``metadata.sqlite`` (ML
Metadata), ``serving/`` (the Pusher's destination), ``<run-id>/index.json``.

Exit status: 0 blessed and pushed, 1 not blessed (nothing pushed), 2 a component failed.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Sequence

from pipeline import configs, local_runner

TFX_ROOT_SUBDIR = "tfx"
METADATA_FILE = "metadata.sqlite"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _store(metadata_path: str):
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def _properties(artifact) -> Dict[str, Any]:
    """The artifact's properties (e.g. ``split_names``) and custom properties in one dict."""
    values = {}
    for name, value in list(artifact.properties.items()) + list(artifact.custom_properties.items()):
        kind = value.WhichOneof("value")
        values[name] = getattr(value, kind) if kind in ("int_value", "double_value", "string_value") else str(value)
    return values


def run_record(metadata_path: str, pipeline_name: str, run_context_name: str | None = None) -> Dict[str, Any]:
    """What ML Metadata holds about one pipeline run (default: the latest).

    Returns:
        ``run`` (the pipeline_run context name), ``nodes`` ({node id: {state, wall_s,
        execution_id, inputs: {key: [{id, uri, type, properties}]}, outputs: ...}}).
    """
    store = _store(metadata_path)
    pipeline_contexts = [c for c in store.get_contexts_by_type("pipeline") if c.name == pipeline_name]
    if not pipeline_contexts:
        raise ValueError(f"no pipeline {pipeline_name!r} in {metadata_path}")
    runs = [c for c in store.get_contexts_by_type("pipeline_run")
            if run_context_name is None or c.name == run_context_name]
    # Keep the runs of this pipeline: their executions share the pipeline context.
    pipeline_execution_ids = {e.id for e in store.get_executions_by_context(pipeline_contexts[0].id)}
    runs = [c for c in runs if {e.id for e in store.get_executions_by_context(c.id)} & pipeline_execution_ids]
    if not runs:
        raise ValueError(f"no run of {pipeline_name!r} in {metadata_path}")
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    executions = store.get_executions_by_context(run.id)
    types = {t.id: t.name for t in store.get_artifact_types()}
    from ml_metadata.proto.metadata_store_pb2 import Event, Execution

    state_names = {value: name for name, value in Execution.State.items()}
    node_type_ids = {t.id for t in store.get_context_types() if t.name == "node"}
    nodes: Dict[str, Any] = {}
    for execution in executions:
        node_names = [c.name for c in store.get_contexts_by_execution(execution.id)
                      if c.type_id in node_type_ids]
        node = node_names[0].split(".", 1)[-1] if node_names else str(execution.id)
        events = store.get_events_by_execution_ids([execution.id])
        artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        entry = {"execution_id": execution.id, "state": state_names.get(execution.last_known_state, "?"),
                 "wall_s": round((execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000, 1),
                 "inputs": {}, "outputs": {}}
        for event in events:
            direction = ("outputs" if event.type in (Event.OUTPUT, Event.INTERNAL_OUTPUT)
                         else "inputs" if event.type in (Event.INPUT, Event.INTERNAL_INPUT) else None)
            if direction is None or event.artifact_id not in artifacts:
                continue
            key = event.path.steps[0].key if event.path.steps else "?"
            artifact = artifacts[event.artifact_id]
            entry[direction].setdefault(key, []).append({
                "id": artifact.id, "uri": artifact.uri, "type": types.get(artifact.type_id),
                "properties": _properties(artifact)})
        nodes[node] = entry
    return {"run": run.name, "nodes": nodes}


def summarise(record: Mapping[str, Any]) -> Dict[str, Any]:
    """Verdict, metrics, push and lineage of a run record (:func:`run_record`)."""
    nodes = record["nodes"]

    def first(node: str, direction: str, key: str) -> Dict[str, Any] | None:
        values = nodes.get(node, {}).get(direction, {}).get(key) or []
        return values[0] if values else None

    examples = first("PoseExampleGen", "outputs", "examples")
    model = first("Trainer", "outputs", "model")
    blessing = first("PoseEvaluator", "outputs", "blessing")
    baseline = first("PoseEvaluator", "inputs", "baseline_model")
    pushed = first("Pusher", "outputs", "pushed_model")
    failed = {node: entry["state"] for node, entry in nodes.items() if entry["state"] == "FAILED"}
    blessed = bool(blessing and blessing["properties"].get("blessed") == 1)
    is_pushed = bool(pushed and pushed["properties"].get("pushed") == 1)
    verdict = "FAILED" if failed or blessing is None else ("BLESSED" if blessed else "NOT_BLESSED")
    metrics = {}
    if blessing:
        metrics = {name: value for name, value in blessing["properties"].items()
                   if isinstance(value, float)}
    return {
        "run": record["run"], "verdict": verdict, "failed": failed,
        "stages": {node: {"state": entry["state"], "wall_s": entry["wall_s"]} for node, entry in nodes.items()},
        "metrics": metrics,
        "baseline": baseline and {"model_id": baseline["id"], "uri": baseline["uri"]},
        "pushed": is_pushed,
        "pushed_path": pushed["properties"].get("pushed_destination") if is_pushed else None,
        "lineage": {
            "examples": examples and {"id": examples["id"], "uri": examples["uri"],
                                      "cached": nodes["PoseExampleGen"]["state"] == "CACHED"},
            "model": model and {"id": model["id"], "uri": model["uri"],
                                "trainer_execution_id": nodes["Trainer"]["execution_id"]},
            "blessing": blessing and {"id": blessing["id"], "uri": blessing["uri"]},
        },
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [f"=== run {summary['run']}: {summary['verdict']} ==="]
    for node, stage in summary["stages"].items():
        lines.append(f"  {node:<32} {stage['state']:<9} {stage['wall_s']:8.1f} s")
    for name, value in sorted(summary["metrics"].items()):
        lines.append(f"  {name:<10} {value:.4f}")
    lineage = summary["lineage"]
    if lineage.get("examples"):
        cached = " (reused from the cache)" if lineage["examples"]["cached"] else ""
        lines.append(f"  Examples #{lineage['examples']['id']}{cached}: {lineage['examples']['uri']}")
    if lineage.get("model"):
        lines.append(f"  Model #{lineage['model']['id']} (Trainer execution #{lineage['model']['trainer_execution_id']}):"
                     f" {lineage['model']['uri']}")
    lines.append(f"  baseline: {summary['baseline']['uri'] if summary['baseline'] else 'none (first blessed model)'}")
    lines.append(f"  pushed: {summary['pushed_path'] or 'nothing'}")
    return "\n".join(lines)


COMPILE_DATA_ROOT = "gs://YOUR_BUCKET/data"
COMPILE_PIPELINE_ROOT = "gs://YOUR_BUCKET/tfx"
COMPILE_PUSH_DESTINATION = "gs://YOUR_BUCKET/serving/darkpose"


def compile_pipeline(args, config: Dict[str, Any]) -> str:
    """Writes the Kubeflow / Vertex AI pipeline job (KubeflowV2DagRunner) to ``args.compile``.

    The data paths are placeholders under ``gs://YOUR_BUCKET`` (edit them in the spec or
    recompile); the config travels in the components' parameters.
    """
    from tfx import v1 as tfx

    from pipeline import tfx_pipeline

    if args.data == "mpii":
        paths = {"train_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/train.json",
                 "train_images": f"{COMPILE_DATA_ROOT}/mpii/images",
                 "eval_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/valid.json",
                 "eval_images": f"{COMPILE_DATA_ROOT}/mpii/images",
                 "gt_annotations": f"{COMPILE_DATA_ROOT}/mpii/annot/gt_valid.mat"}
    else:
        paths = {"train_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_train2017.json",
                 "train_images": f"{COMPILE_DATA_ROOT}/coco/images/train2017",
                 "eval_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_val2017.json",
                 "eval_images": f"{COMPILE_DATA_ROOT}/coco/images/val2017",
                 "gt_annotations": f"{COMPILE_DATA_ROOT}/coco/annotations/person_keypoints_val2017.json"}
    beam_args = [flag for flag in args.beam_args if not flag.startswith(("--direct_running_mode", "--setup_file"))]
    pipeline = tfx_pipeline.create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, pipeline_root=COMPILE_PIPELINE_ROOT, config=config,
        push_destination=COMPILE_PUSH_DESTINATION, det_file=args.det_file, beam_pipeline_args=beam_args,
        max_steps=args.max_steps, **paths)
    path = os.path.abspath(args.compile)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=os.path.dirname(path), output_filename=os.path.basename(path))
    runner.run(pipeline)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = local_runner.build_parser()
    parser.add_argument("--no-cache", action="store_true", help="disable TFX caching")
    args, extra = parser.parse_known_args(argv)
    clock = time.perf_counter()
    try:
        args.beam_args = local_runner.beam_flags(extra)
        if not any(flag.startswith(("--setup_file", "--extra_package")) for flag in args.beam_args):
            # Names the project's package for remote runners; without it TFX builds an ephemeral sdist.
            args.beam_args.append(f"--setup_file={os.path.join(REPO_ROOT, 'setup.py')}")
        config = local_runner.load_run_config(args)
        if args.compile:
            print(f"[pipeline] wrote the Kubeflow / Vertex AI pipeline job to {compile_pipeline(args, config)}")
            return 0
        inputs, data_info = local_runner.resolve_data(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return configs.EXIT_FAILED
    from pipeline import tfx_pipeline

    runs_dir = os.path.abspath(args.runs_dir)
    run_id = args.run_id or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    metadata_path = os.path.join(runs_dir, METADATA_FILE)
    destination = args.push_destination or os.path.join(runs_dir, configs.SERVING_SUBDIR)
    fingerprint = str(data_info.get("content_hash") or "")
    pipeline = tfx_pipeline.create_pipeline(
        pipeline_name=configs.PIPELINE_NAME, pipeline_root=os.path.join(runs_dir, TFX_ROOT_SUBDIR), config=config,
        push_destination=destination if "://" in destination else os.path.abspath(destination),
        input_fingerprint=fingerprint, beam_pipeline_args=args.beam_args, max_steps=args.max_steps,
        run_id=run_id, metadata_path=metadata_path, enable_cache=not args.no_cache, **inputs)
    print(f"[pipeline] run {run_id}: TFX LocalDagRunner, ML Metadata {metadata_path}", flush=True)
    error_message = None
    try:
        tfx_pipeline.run_local(pipeline)
    except Exception as error:  # a component failed: named from MLMD below
        error_message = f"{type(error).__name__}: {error}"
    summary = summarise(run_record(metadata_path, configs.PIPELINE_NAME))
    summary["total_s"] = round(time.perf_counter() - clock, 1)
    summary["run_id"] = run_id
    summary["data"] = data_info
    if error_message:
        summary["verdict"] = "FAILED"
        summary["error"] = error_message
    os.makedirs(os.path.join(runs_dir, run_id), exist_ok=True)
    with open(os.path.join(runs_dir, run_id, "index.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, sort_keys=True, default=str)
    print(format_summary(summary), flush=True)
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
