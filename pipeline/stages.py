"""The pipeline's stage bodies: plain functions that the kfp components call.

Each stage checks its inputs (a missing input raises :class:`StageError`
naming the stage and the input), runs the project's code for that stage
(:mod:`components.example_gen`, :mod:`trainer.task`,
:mod:`components.evaluator`, :mod:`components.pusher`), times it and writes
``stage_summary.json`` into its output artifact directory. A failure writes
``stage_error.json`` there and raises :class:`StageError` whose message names
the stage and its inputs, so the local runner and the Kubeflow UI show which
step failed on what.

These functions know nothing about kfp, so they can be tested and called
directly (``components.py`` holds the kfp wrappers).
"""
from __future__ import annotations

import datetime
import json
import os
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Sequence

from pipeline import cli
from schemas import examples as examples_layout
from schemas import jsonio
from schemas.serving import SAVED_MODEL_DIR

STAGE_SUMMARY = "stage_summary.json"
STAGE_ERROR = "stage_error.json"


class StageError(RuntimeError):
    """A pipeline stage failed; the message names the stage and its inputs."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf  # gs:// and other remote file systems
        return bool(tf.io.gfile.exists(path))
    return os.path.exists(path)


def _write_json(directory: str, name: str, payload: Mapping[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        handle.write(jsonio.dumps(payload, indent=2, sort_keys=True, default=str))


def check_inputs(stage: str, inputs: Mapping[str, str | None]) -> None:
    """Raises StageError naming ``stage`` and the first missing input path.

    ``inputs`` maps an input name to a path; empty/None entries are optional
    inputs that were not given and are skipped.
    """
    for name, path in inputs.items():
        if path and not _exists(path):
            raise StageError(f"stage {stage!r}: input {name} not found: {path}")


def run_stage(stage: str, output_dir: str, inputs: Mapping[str, Any], body: Callable[[], Dict[str, Any]]
              ) -> Dict[str, Any]:
    """Runs ``body`` as stage ``stage``, writing its summary (or error) to ``output_dir``.

    Args:
        stage: stage name (``example_gen``, ``trainer``, ``evaluator``, ``pusher``).
        output_dir: the stage's output artifact directory.
        inputs: the stage's inputs (paths and settings), recorded in the summary.
        body: callable returning a JSON-serialisable result dict.

    Returns:
        The summary dict: ``stage``, ``started``, ``finished``, ``wall_s``,
        ``inputs`` and ``result``.

    Raises:
        StageError: ``body`` raised; the message names the stage and inputs.
    """
    started, clock = _now(), time.perf_counter()
    print(f"[{stage}] started at {started}; inputs: "
          + ", ".join(f"{key}={value}" for key, value in inputs.items() if key != "config"), flush=True)
    try:
        result = body()
    except Exception as error:  # re-raised below with the stage named
        described = ", ".join(f"{key}={value}" for key, value in inputs.items()
                              if key != "config" and value not in (None, "", []))
        message = f"stage {stage!r} failed ({type(error).__name__}: {error}); inputs: {described}"
        _write_json(output_dir, STAGE_ERROR, {
            "stage": stage, "error": f"{type(error).__name__}: {error}", "message": message,
            "inputs": {key: value for key, value in inputs.items() if key != "config"},
            "traceback": traceback.format_exc(), "started": started, "failed": _now(),
        })
        if isinstance(error, StageError):
            raise
        raise StageError(message) from error
    wall_s = time.perf_counter() - clock
    summary = {"stage": stage, "started": started, "finished": _now(), "wall_s": round(wall_s, 2),
               "inputs": {key: value for key, value in inputs.items() if key != "config"}, "result": result}
    _write_json(output_dir, STAGE_SUMMARY, summary)
    print(f"[{stage}] finished in {wall_s:.1f} s", flush=True)
    return summary


def _optional(value: str | None) -> str | None:
    return value or None


def example_gen_stage(examples_dir: str, dataset: str, config: Dict[str, Any], train_annotations: str,
                      train_images: str, eval_annotations: str, eval_images: str, det_file: str = "",
                      beam_args: Sequence[str] = ()) -> Dict[str, Any]:
    """ExampleGen: annotations + images -> ``examples_dir/Split-{train,eval}/`` person-crop records.

    Returns:
        The stage summary; ``result`` is ExampleGen's manifest (``splits``, ``skipped``, ...).
    """
    inputs = {"dataset": dataset, "train_annotations": train_annotations, "train_images": train_images,
              "eval_annotations": eval_annotations, "eval_images": eval_images, "det_file": det_file,
              "beam_args": list(beam_args)}

    def body():
        cli.check_beam_flags(beam_args)  # a spec submitted with edited beam_args: fail before any work
        check_inputs("example_gen", {key: inputs[key] for key in (
            "train_annotations", "train_images", "eval_annotations", "eval_images", "det_file")})
        from components.example_gen import run_example_gen
        manifest = run_example_gen(
            dataset=dataset, out_dir=examples_dir, config=config,
            train_annotations=_optional(train_annotations), train_images=_optional(train_images),
            eval_annotations=_optional(eval_annotations), eval_images=_optional(eval_images),
            det_file=_optional(det_file), beam_args=list(beam_args))
        splits = manifest.get("splits", {})
        if not splits.get("train") or not splits.get("eval"):
            raise StageError(f"stage 'example_gen' wrote no records for a split: splits={splits}, "
                             f"skipped={manifest.get('skipped')}")
        return manifest

    return run_stage("example_gen", examples_dir, inputs, body)


def trainer_stage(model_dir: str, examples_dir: str, config: Dict[str, Any], max_steps: int | None = None
                  ) -> Dict[str, Any]:
    """Trainer: ``examples_dir`` -> ``model_dir/Format-Serving`` (+ model.keras, run/)."""
    inputs = {"examples": examples_dir, "max_steps": max_steps, "model": config.get("model")}

    def body():
        check_inputs("trainer", {f"examples/Split-{split}": examples_layout.split_dir(examples_dir, split)
                                 for split in examples_layout.SPLITS})
        from trainer.task import train_and_export
        return train_and_export(examples_dir, config, model_dir, max_steps=max_steps)

    return run_stage("trainer", model_dir, inputs, body)


def evaluator_stage(blessing_dir: str, model_dir: str, examples_dir: str, config: Dict[str, Any],
                    push_destination: str = "", gt_annotations: str = "", beam_args: Sequence[str] = ()
                    ) -> Dict[str, Any]:
    """Evaluator: scores the model on ``Split-eval`` against the latest blessed model; writes the blessing."""
    inputs = {"model": model_dir, "examples": examples_dir, "push_destination": push_destination,
              "gt_annotations": gt_annotations, "thresholds": config.get("eval", {}).get("thresholds"),
              "beam_args": list(beam_args)}

    def body():
        cli.check_beam_flags(beam_args)
        check_inputs("evaluator", {f"model/{SAVED_MODEL_DIR}": os.path.join(model_dir, SAVED_MODEL_DIR),
                                   "examples/Split-eval": os.path.join(examples_dir, "Split-eval"),
                                   "gt_annotations": gt_annotations})
        from components.evaluator import resolve_baseline, run_evaluator
        baseline = resolve_baseline(push_destination) if push_destination else None
        print(f"[evaluator] baseline (latest blessed model): {baseline or 'none'}", flush=True)
        blessing = run_evaluator(model_dir, examples_dir, config, blessing_dir, baseline_model_dir=baseline,
                                 gt_annotations=_optional(gt_annotations), beam_args=list(beam_args))
        blessing = dict(blessing)
        blessing.setdefault("baseline", baseline)
        return blessing

    return run_stage("evaluator", blessing_dir, inputs, body)


def pusher_stage(pushed_dir: str, model_dir: str, blessing_dir: str, push_destination: str, run_id: str,
                 metrics: Mapping[str, Any] | None = None) -> Dict[str, Any]:
    """Pusher: copies a blessed model to ``push_destination``; records where in ``pushed_dir``.

    ``metrics`` defaults to the metrics of ``blessing_dir/blessing.json``.
    """
    inputs = {"model": model_dir, "blessing": blessing_dir, "push_destination": push_destination,
              "run_id": run_id}

    def body():
        if not push_destination:
            raise StageError("stage 'pusher': push_destination is empty")
        check_inputs("pusher", {f"model/{SAVED_MODEL_DIR}": os.path.join(model_dir, SAVED_MODEL_DIR),
                                "blessing": blessing_dir})
        from components.pusher import PUSH_RECORD, run_pusher
        pushed_metrics = dict(metrics) if metrics is not None else blessing_metrics(read_blessing(blessing_dir) or {})
        record = run_pusher(model_dir, blessing_dir, push_destination, run_id, metrics=pushed_metrics)
        record = {"pushed": record is not None, **(dict(record) if record else {})}
        _write_json(pushed_dir, PUSH_RECORD, record)
        return record

    return run_stage("pusher", pushed_dir, inputs, body)


def read_summary(directory: str) -> Dict[str, Any] | None:
    """Reads a stage's ``stage_summary.json`` (None if absent)."""
    path = os.path.join(directory, STAGE_SUMMARY)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def read_blessing(directory: str) -> Dict[str, Any] | None:
    """Reads ``blessing.json`` of a blessing directory (None if absent)."""
    path = os.path.join(directory, "blessing.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pushed_path(record: Mapping[str, Any]) -> str:
    """The pushed model's location from a push record ("" when nothing was pushed)."""
    for key in ("pushed_destination", "destination", "path", "pushed_path", "uri"):
        if record.get(key):
            return str(record[key])
    return ""


def blessing_metrics(blessing: Mapping[str, Any]) -> Dict[str, float]:
    """The scalar metrics of a blessing dict (for the pusher's record)."""
    metrics = blessing.get("metrics", {}) or {}
    return {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}


def beam_args_list(beam_args: Any) -> List[str]:
    """Normalises a kfp list parameter of Beam flags to a list of strings."""
    if beam_args is None:
        return []
    if isinstance(beam_args, str):
        return json.loads(beam_args) if beam_args.strip().startswith("[") else beam_args.split()
    return [str(value) for value in beam_args]
