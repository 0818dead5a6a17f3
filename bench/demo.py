"""Benchmark: does the demo (`make demo`) fit its budget (<= 10 min, AP >= 0.8)?

Run:  .venv/bin/python bench/demo.py [--runs-dir DIR] [--keep] [-- extra pipeline.py flags]

Runs ``python pipeline.py --runner=DirectRunner`` (the embedded synthetic
dataset, ``configs/demo.yaml``) twice into a fresh runs directory: the first
run generates the dataset and has no baseline; the second reuses the dataset
and is gated against the first run's pushed model. Prints, for both runs side
by side, each stage's wall time and its share of the 600 s budget, the AP and
its ratio to the 0.8 bar, the verdicts and the pushed paths. The last line is
JSON: ``{"runs": [{"total_s", "budget_ratio", "AP", "verdict", "stages"}, ...]}``.

The numbers depend on the machine's load: on a shared machine they are
pessimistic.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 600.0
AP_BAR = 0.8
STAGES = ("data", "PoseExampleGen", "Trainer", "latest_blessed_model_resolver", "PoseEvaluator", "Pusher")


def run_demo(runs_dir: str, run_id: str, extra) -> dict:
    clock = time.perf_counter()
    process = subprocess.run(
        [sys.executable, os.path.join(ROOT, "pipeline.py"), "--runner=DirectRunner", "--runs-dir", runs_dir,
         "--run-id", run_id, *extra], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    index_path = os.path.join(runs_dir, run_id, "index.json")
    if not os.path.exists(index_path):
        sys.stderr.write(process.stdout[-5000:] + process.stderr[-5000:])
        raise RuntimeError(f"run {run_id} wrote no index (exit status {process.returncode})")
    with open(index_path) as handle:
        index = json.load(handle)
    return {"run_id": run_id, "exit": process.returncode, "wall_s": round(wall, 1),
            "total_s": index.get("total_s"), "stages": index["stage_times_s"],
            "AP": index.get("metrics", {}).get("AP"), "verdict": index["verdict"],
            "baseline": (index.get("baseline") or {}).get("uri"), "pushed": index.get("pushed_path"),
            "examples_cached": ((index.get("lineage") or {}).get("examples") or {}).get("cached")}


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default=None, help="default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the runs directory")
    args, extra = parser.parse_known_args()
    extra = [flag for flag in extra if flag != "--"]
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="bench_demo_")
    try:
        runs = [run_demo(runs_dir, "first", extra), run_demo(runs_dir, "second", extra)]
    finally:
        if not args.keep and not args.runs_dir:
            shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"{'':<14}" + "".join(f"{run['run_id']:>22}" for run in runs))
    for stage in STAGES:
        cells = []
        for run in runs:
            seconds = run["stages"].get(stage)
            cells.append(f"{seconds:8.1f} s ({seconds / BUDGET_S:5.1%})" if seconds is not None else "-")
        print(f"{stage[:14]:<14}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"{'total':<14}" + "".join(f"{run['wall_s']:8.1f} s ({run['wall_s'] / BUDGET_S:5.1%})".rjust(22)
                                     for run in runs))
    print(f"{'AP (/0.8)':<14}" + "".join(
        (f"{run['AP']:.4f} ({run['AP'] / AP_BAR:.3f}x)" if run["AP"] is not None else "-").rjust(22) for run in runs))
    print(f"{'verdict':<14}" + "".join(f"{run['verdict']:>22}" for run in runs))
    for run in runs:
        print(f"{run['run_id']}: baseline={run['baseline']} pushed={run['pushed']} exit={run['exit']} "
              f"examples from the cache={run['examples_cached']}")
    print(json.dumps({"budget_s": BUDGET_S, "ap_bar": AP_BAR, "runs": [
        {"run_id": run["run_id"], "total_s": run["wall_s"], "budget_ratio": round(run["wall_s"] / BUDGET_S, 3),
         "AP": run["AP"], "verdict": run["verdict"], "stages": run["stages"]} for run in runs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
