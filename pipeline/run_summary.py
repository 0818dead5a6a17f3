"""The run summary, read from ML Metadata: stage states and times, metrics, verdict, push and lineage.

:func:`run_record` reads one pipeline run (a ``pipeline_run`` context, by name) from the
MLMD store: every node's execution, state (``COMPLETE``, ``CACHED``, ``FAILED``)
and input/output artifacts with their properties. :func:`summarise` turns it
into the run's verdict, metrics, baseline, pushed path, the lineage of the
model (which Examples, which Trainer execution) and one row per deployment artifact
(LiteRT / ONNX: format, precision, metric, delta, verdict, size, ms/crop, pushed; from the
blessing's ``deploy_artifacts`` property); :func:`format_summary` prints it.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping

from schemas import jsonio

INDEX_FILE = "index.json"
INDEX_JSON = INDEX_FILE
INDEX_MD = "INDEX.md"


def _store(metadata_path: str):
    from ml_metadata.metadata_store import metadata_store
    from tfx.orchestration import metadata

    return metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))


def _properties(artifact) -> Dict[str, Any]:
    """The artifact's properties (e.g. ``split_names``) and custom properties in one dict."""
    values = {}
    for name, value in list(artifact.properties.items()) + list(artifact.custom_properties.items()):
        kind = value.WhichOneof("value")
        if kind in ("int_value", "double_value", "string_value"):
            values[name] = getattr(value, kind)
        elif kind == "struct_value":   # JSON custom properties (e.g. ExampleAnomalies' {split: blessed})
            from google.protobuf import json_format

            values[name] = json_format.MessageToDict(value.struct_value)
        else:
            values[name] = str(value)
    return values


def run_record(metadata_path: str, pipeline_name: str, run_context_name: str | None = None) -> Dict[str, Any]:
    """What ML Metadata holds about one pipeline run.

    Args:
        metadata_path: the ML Metadata SQLite file.
        pipeline_name: the TFX pipeline name.
        run_context_name: the run's ``pipeline_run`` context name (TFX's pipeline run id,
            :func:`pipeline.pipeline.pipeline_run_name` for our runner); ``None`` = the newest
            run, which is another run's when several share the store: a runner reads its own by name.

    Raises:
        ValueError: no such pipeline or run in the store.

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
        named = f" named {run_context_name!r}" if run_context_name is not None else ""
        raise ValueError(f"no run{named} of {pipeline_name!r} in {metadata_path}")
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    executions = sorted(store.get_executions_by_context(run.id), key=lambda execution: execution.id)
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
    return {"run": run.name, "nodes": nodes, "baseline_metrics": _baseline_metrics(store, nodes)}


def _baseline_metrics(store, nodes: Mapping[str, Any]) -> Dict[str, float]:
    """The metrics of the evaluator's baseline model, from the blessing that blessed it (ML Metadata).

    The baseline is the model the ``LatestBlessedModelStrategy`` resolver gave
    the evaluator; its metrics are the float properties of the ``ModelBlessing``
    whose ``current_model_id`` is that model and which says ``blessed``. Empty
    when there is no baseline (first blessed model).
    """
    baselines = nodes.get("PoseEvaluator", {}).get("inputs", {}).get("baseline_model") or []
    if not baselines:
        return {}
    model_id = baselines[0]["id"]
    candidates = []
    for artifact in store.get_artifacts_by_type("ModelBlessing"):
        properties = _properties(artifact)
        if properties.get("current_model_id") == model_id and properties.get("blessed") == 1:
            candidates.append((artifact.id, properties))
    if not candidates:
        return {}
    _, properties = max(candidates, key=lambda item: item[0])
    return {name: value for name, value in properties.items() if isinstance(value, float)}


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
    anomalies = first("PoseDataValidator", "outputs", "anomalies")
    data_gate = None
    if anomalies is not None:
        splits = anomalies["properties"].get("blessed") or {}
        data_gate = {"passed": bool(splits) and all(int(value) == 1 for value in splits.values()),
                     "splits": splits, "anomalies_uri": anomalies["uri"]}
    failed = {node: entry["state"] for node, entry in nodes.items() if entry["state"] == "FAILED"}
    blessed = bool(blessing and blessing["properties"].get("blessed") == 1)
    is_pushed = bool(pushed and pushed["properties"].get("pushed") == 1)
    verdict = "FAILED" if failed or blessing is None else ("BLESSED" if blessed else "NOT_BLESSED")
    metrics = {}
    if blessing:
        metrics = {name: value for name, value in blessing["properties"].items()
                   if isinstance(value, float)}
    from components import deploy_eval   # (imports TensorFlow: only when a summary is built)

    deploy = []
    if blessing:
        deploy = list((blessing["properties"].get(deploy_eval.SUMMARY_KEY) or {}).get("artifacts") or [])
        for row in deploy:   # pushed beside the SavedModel iff blessed itself and the SavedModel was pushed
            row["pushed"] = bool(is_pushed and row.get("verdict") == deploy_eval.BLESSED)
    return {
        "run": record["run"], "verdict": verdict, "failed": failed,
        "deploy_artifacts": deploy,
        "stages": {node: {"state": entry["state"], "wall_s": entry["wall_s"]} for node, entry in nodes.items()},
        "metrics": metrics,
        "baseline": baseline and {"model_id": baseline["id"], "uri": baseline["uri"],
                                  "metrics": dict(record.get("baseline_metrics") or {})},
        "data_gate": data_gate,
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
    baseline_metrics = (summary.get("baseline") or {}).get("metrics") or {}
    if summary["metrics"] and baseline_metrics:
        lines.append(f"  {'metric':<10} {'model':>8} {'baseline':>9} {'change':>8}")
    for name, value in sorted(summary["metrics"].items()):
        if name in baseline_metrics:
            lines.append(f"  {name:<10} {value:8.4f} {baseline_metrics[name]:9.4f} {value - baseline_metrics[name]:+8.4f}")
        else:
            lines.append(f"  {name:<10} {value:.4f}")
    deploy = summary.get("deploy_artifacts") or []
    if deploy:
        from components import deploy_eval

        lines.append("  deployment artifacts (each run by its own runtime on the eval split, gated vs the SavedModel):")
        lines += deploy_eval.format_rows(deploy, indent="    ")
    lineage = summary["lineage"]
    if lineage.get("examples"):
        cached = " (reused from the cache)" if lineage["examples"]["cached"] else ""
        lines.append(f"  Examples #{lineage['examples']['id']}{cached}: {lineage['examples']['uri']}")
    if lineage.get("model"):
        lines.append(f"  Model #{lineage['model']['id']} (Trainer execution #{lineage['model']['trainer_execution_id']}):"
                     f" {lineage['model']['uri']}")
    lines.append(f"  baseline: {summary['baseline']['uri'] if summary['baseline'] else 'none (first blessed model)'}")
    gate = summary.get("data_gate")
    if gate:
        failing = sorted(split for split, value in gate["splits"].items() if int(value) != 1)
        lines.append("  data gate: " + ("passed" if gate["passed"] else
                                        f"anomalies in split(s) {', '.join(failing)} ({gate['anomalies_uri']})"))
    lines.append(f"  pushed: {summary['pushed_path'] or 'nothing'}")
    return "\n".join(lines)


def write_index(run_dir: str, summary: Mapping[str, Any]) -> str:
    """Writes ``<run_dir>/index.json`` (strict JSON) and a short ``INDEX.md``; returns the JSON's path.

    ``INDEX.md`` lists the run's artifacts (ML Metadata id and URI) and the
    printed summary, for a person browsing ``runs/``.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, INDEX_FILE)
    jsonio.write(path, summary, indent=2, sort_keys=True, default=str)
    lines = [f"# Run {summary.get('run_id') or summary.get('run')}: {summary.get('verdict')}", ""]
    lineage = summary.get("lineage") or {}
    rows = [(name, entry) for name, entry in lineage.items() if entry]
    if rows or summary.get("pushed_path"):
        lines += ["| artifact | ML Metadata id | uri |", "|---|---|---|"]
        lines += [f"| {name} | {entry.get('id', '')} | `{entry.get('uri', '')}` |" for name, entry in rows]
        if summary.get("baseline"):
            lines.append(f"| baseline model | {summary['baseline'].get('model_id', '')} | "
                         f"`{summary['baseline'].get('uri', '')}` |")
        if summary.get("pushed_path"):
            lines.append(f"| pushed model | | `{summary['pushed_path']}` |")
        lines.append("")
    if summary.get("error"):
        lines += [f"error: {summary['error']}", ""]
    try:
        text = format_summary(summary).strip()
    except (KeyError, TypeError, ValueError):
        text = ""
    if text:
        lines += ["```", text, "```"]
    with open(os.path.join(run_dir, INDEX_MD), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
