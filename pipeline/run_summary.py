"""Collects a finished local run's stage outputs into a summary, prints it, writes the index.

The local runner gives kfp.local a run directory as pipeline root; kfp writes
``<run_dir>/<pipeline-name>-<timestamp>/<task>/<output>/`` and each stage
writes ``stage_summary.json`` (or ``stage_error.json``) into its output (see
:mod:`pipeline.stages`). :func:`collect` finds them, :func:`format_summary`
renders the final table and :func:`write_index` writes ``index.json`` and
``INDEX.md`` at the top of the run directory.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping

from pipeline import stages
from schemas import jsonio

STAGE_ORDER = ("data", "example_gen", "trainer", "evaluator", "pusher")
INDEX_JSON = "index.json"
INDEX_MD = "INDEX.md"


def _find(run_dir: str, file_name: str) -> Dict[str, List[str]]:
    """stage name -> directories holding ``file_name`` (from its ``stage`` field)."""
    found: Dict[str, List[str]] = {}
    for folder, directories, files in os.walk(run_dir):
        # Do not descend into big outputs (records, SavedModels, checkpoints).
        directories[:] = [d for d in directories
                          if not d.startswith(("Split-", "Format-", "variables", "run", "evaluation"))]
        if file_name in files:
            try:
                with open(os.path.join(folder, file_name), encoding="utf-8") as handle:
                    stage = json.load(handle).get("stage")
            except (OSError, ValueError):
                continue
            if stage:
                found.setdefault(stage, []).append(folder)
    return found


def collect(run_dir: str) -> Dict[str, Any]:
    """Reads every stage summary / error under ``run_dir``.

    Returns:
        ``{"stages": {stage: summary}, "errors": {stage: error}, "dirs": {stage: output dir}}``.
    """
    stages_found, errors, dirs = {}, {}, {}
    for stage, folders in _find(run_dir, stages.STAGE_SUMMARY).items():
        folder = sorted(folders)[-1]
        dirs[stage] = folder
        with open(os.path.join(folder, stages.STAGE_SUMMARY), encoding="utf-8") as handle:
            stages_found[stage] = json.load(handle)
    for stage, folders in _find(run_dir, stages.STAGE_ERROR).items():
        folder = sorted(folders)[-1]
        with open(os.path.join(folder, stages.STAGE_ERROR), encoding="utf-8") as handle:
            errors[stage] = json.load(handle)
        dirs.setdefault(stage, folder)
    return {"stages": stages_found, "errors": errors, "dirs": dirs}


def _metric_rows(metrics: Mapping[str, Any]) -> List[str]:
    preferred = ("AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L",
                 "PCKh@0.5", "PCKh@0.1", "Mean", "Mean@0.1")
    names = [name for name in preferred if name in metrics]
    names += sorted(name for name, value in metrics.items()
                    if name not in names and isinstance(value, (int, float)))
    return names


def build_index(run_dir: str, run_id: str, collected: Mapping[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    """The run's index: verdict, paths of every output, per-stage times, counts and metrics."""
    stage_summaries = collected["stages"]
    timings = {stage: stage_summaries[stage]["wall_s"] for stage in STAGE_ORDER if stage in stage_summaries}
    if "data" in extra.get("stage_times", {}):
        timings = {"data": extra["stage_times"]["data"], **timings}
    manifest = stage_summaries.get("example_gen", {}).get("result", {})
    trainer = stage_summaries.get("trainer", {}).get("result", {})
    blessing = stage_summaries.get("evaluator", {}).get("result", {})
    push = stage_summaries.get("pusher", {}).get("result", {})
    blessed = blessing.get("blessed") if blessing else None
    pushed = stages.pushed_path(push) if push else ""
    return {
        "run_id": run_id,
        "run_dir": os.path.abspath(run_dir),
        "verdict": "FAILED" if collected["errors"] else ("BLESSED" if blessed else "NOT_BLESSED"
                                                         if blessed is not None else "INCOMPLETE"),
        "pushed_path": pushed or None,
        "stage_times_s": timings,
        "total_s": extra.get("total_s"),
        "records": {"splits": manifest.get("splits"), "skipped": manifest.get("skipped")},
        "training": {key: trainer.get(key) for key in ("steps", "final_loss", "examples_per_sec")
                     if key in trainer},
        "metrics": blessing.get("metrics", {}),
        "baseline": blessing.get("baseline"),
        "baseline_metrics": blessing.get("baseline_metrics"),
        "reasons": blessing.get("reasons"),
        "outputs": {stage: collected["dirs"][stage] for stage in STAGE_ORDER if stage in collected["dirs"]},
        "errors": {stage: error.get("message") for stage, error in collected["errors"].items()},
        **{key: value for key, value in extra.items() if key not in ("stage_times", "total_s")},
    }


def format_summary(index: Mapping[str, Any]) -> str:
    """Renders the final summary printed at the end of a local run."""
    lines = ["", "=" * 72, f"darkpose-tf pipeline run {index['run_id']}: {index['verdict']}", "=" * 72]
    lines.append("stage          time (s)")
    for stage, seconds in index["stage_times_s"].items():
        lines.append(f"  {stage:<12} {seconds:8.1f}")
    if index.get("total_s") is not None:
        lines.append(f"  {'total':<12} {index['total_s']:8.1f}")
    splits = (index.get("records") or {}).get("splits")
    if splits:
        order = sorted(splits, key=lambda split: (split != "train", split != "eval", split))
        lines.append("records: " + ", ".join(f"{split}={splits[split]}" for split in order))
        skipped = (index.get("records") or {}).get("skipped") or {}
        if skipped:
            lines.append("skipped: " + ", ".join(f"{reason}={count}" for reason, count in sorted(skipped.items())))
    if index.get("training"):
        lines.append("training: " + ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                                              for key, value in index["training"].items()))
    metrics = index.get("metrics") or {}
    if metrics:
        baseline = index.get("baseline_metrics") or {}
        lines.append(f"{'metric':<10} {'value':>8}" + (f" {'baseline':>9}" if baseline else ""))
        for name in _metric_rows(metrics):
            value = metrics[name]
            row = f"  {name:<8} {value:8.4f}"
            if baseline and isinstance(baseline.get(name), (int, float)):
                row += f" {baseline[name]:9.4f}"
            lines.append(row)
    if index["verdict"] in ("BLESSED", "NOT_BLESSED"):
        lines.append(f"baseline: {index.get('baseline') or 'none (first blessed model)'}")
    lines.append(f"blessing: {index['verdict']}")
    for reason in index.get("reasons") or []:
        lines.append(f"  - {reason}")
    lines.append(f"pushed:   {index.get('pushed_path') or 'nothing pushed'}")
    for stage, message in (index.get("errors") or {}).items():
        lines.append(f"ERROR in stage {stage}: {message}")
    lines.append(f"run dir:  {index['run_dir']} (index: {INDEX_MD}, {INDEX_JSON})")
    return "\n".join(lines)


def write_index(run_dir: str, index: Mapping[str, Any]) -> None:
    """Writes ``index.json`` and a short ``INDEX.md`` at the top of ``run_dir``."""
    with open(os.path.join(run_dir, INDEX_JSON), "w", encoding="utf-8") as handle:
        handle.write(jsonio.dumps(index, indent=2, sort_keys=True, default=str))
    lines = [f"# Run {index['run_id']}: {index['verdict']}", ""]
    lines.append("| output | path |")
    lines.append("|---|---|")
    for stage, path in (index.get("outputs") or {}).items():
        lines.append(f"| {stage} | `{os.path.relpath(path, run_dir)}` |")
    if index.get("pushed_path"):
        lines.append(f"| pushed model | `{index['pushed_path']}` |")
    lines.append("")
    lines.append("```")
    lines.append(format_summary(index).strip())
    lines.append("```")
    with open(os.path.join(run_dir, INDEX_MD), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
