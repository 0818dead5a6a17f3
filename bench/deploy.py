"""Deployment benchmark (issue 24): ms per crop of every artifact on this CPU, against the CPU user's anchor.

Run:  .venv/bin/python bench/deploy.py                       (HRNet-W32 256x192 and the demo model; quiet machine)
      .venv/bin/python bench/deploy.py --quick               (smoke run: demo model, tiny anchor, 2 calls each)
      .venv/bin/python bench/deploy.py --demo-keras runs/<run>/.../model/model.keras

For HRNet-W32 at 256x192 (``configs/coco/w32_256x192.yaml``) and the demo model (``configs/demo.yaml``,
64x48), random weights (speed does not depend on them) unless ``--demo-keras``, it times at batch 1 and 8,
with 1 and 2 CPU threads:

* ``savedmodel_fp32``: the exported SavedModel's ``heatmaps`` signature (TF2 loader; float32), and
  ``savedmodel_bf16`` only where :func:`trainer.export.bfloat16_support` says the CPU has native bfloat16
  (elsewhere it would time emulation); TensorFlow's thread count is fixed at start-up, so each thread count
  runs in its own process;
* ``tflite_fp32`` / ``tflite_fp16`` / ``tflite_int8``: the LiteRT artifacts (:mod:`trainer.export_deploy`) in
  ``ai_edge_litert``'s interpreter with XNNPACK (:class:`components.deploy_runtime.DeployRunner`);
* ``onnx``: our ONNX export in ONNX Runtime's CPU provider;
* the anchor ``torch_onnx``: what a CPU user picks today, the PyTorch HRNet-W32 of the published architecture
  (``tests/torch_refs/pose_hrnet.py``) exported by ``torch.onnx.export`` (opset 17, dynamic batch) and run
  in ONNX Runtime with the same session options.

Every artifact and SavedModel is exported with ``eval.flip_test`` off, so each crop is one network pass,
as in the anchor; ours include the DARK decode in the graph (the SavedModel's ``heatmaps`` signature and the
anchor do not decode). int8 is calibrated on random crops (a timing run; its accuracy is the Evaluator's
business). ``ratio`` = anchor ms / row ms at the same batch and threads (> 1: faster than the anchor), for
the HRNet-W32 rows. The issue's target (our best artifact >= 1.5x the anchor at batch 1, with its accuracy
within the deployment gate) is judged with the gate verdicts of an Evaluator run (``--blessing``: a
``blessing.json``, by default the newest of the demo pipeline under ``runs/``): the fastest HRNet-W32 artifact at
batch 1 whose format the gate blessed on the trained demo model (the same conversion recipe). Times are medians of ``--runs`` calls after one warm-up call. The CPU flags that matter
(AVX2, AVX-512, VNNI, bfloat16, AMX) are printed; the last line is one JSON object
``{"rows": [...], "machine": {...}}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

MODELS = {"hrnet_w32": "configs/coco/w32_256x192.yaml", "demo": "configs/demo.yaml"}
BATCHES = (1, 8)
THREADS = (1, 2)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "avx_vnni")
QUICK_ANCHOR_SIZE = (64, 64)
"""The anchor's input in ``--quick`` (HRNet needs sides divisible by 32)."""

SAVEDMODEL_CHILD = r"""
import json, os, statistics, sys, time
args = json.loads(sys.argv[1])
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
tf.config.threading.set_inter_op_parallelism_threads(1)
signature = tf.saved_model.load(args["path"]).signatures["heatmaps"]
out = {}
for batch in args["batches"]:
    crops = tf.constant(np.random.default_rng(1).uniform(0, 255, (batch, *args["size"], 3)), tf.float32)
    call = lambda: [value.numpy() for value in signature(images=crops).values()]
    call()
    times = []
    for _ in range(args["runs"]):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    out[str(batch)] = statistics.median(times) / batch * 1e3
print(json.dumps(out))
"""


def cpu_flags() -> list:
    """The flags of :data:`CPU_FLAGS` this CPU has (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _median_ms_per_crop(function, batch: int, runs: int) -> float:
    function()   # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / batch * 1e3


def time_runner(path: str, size, runs: int) -> dict:
    """``{(batch, threads): ms per crop}`` of one artifact through :class:`components.deploy_runtime.DeployRunner`."""
    from components.deploy_runtime import DeployRunner

    figures = {}
    for threads in THREADS:
        runner = DeployRunner(path, threads=threads)
        for batch in BATCHES:
            crops = np.random.default_rng(1).uniform(0, 255, (batch, *size, 3)).astype(np.float32)
            figures[(batch, threads)] = _median_ms_per_crop(lambda: runner.run(crops), batch, runs)
    return figures


def time_savedmodel(path: str, size, runs: int) -> dict:
    """Same for a SavedModel's ``heatmaps`` signature, one process per thread count."""
    figures = {}
    for threads in THREADS:
        args = json.dumps({"path": path, "size": list(size), "threads": threads, "batches": list(BATCHES),
                           "runs": runs})
        done = subprocess.run([sys.executable, "-c", SAVEDMODEL_CHILD, args], capture_output=True, text=True,
                              check=True, env=dict(os.environ, PYTHONPATH=ROOT))
        for batch, ms in json.loads(done.stdout.strip().splitlines()[-1]).items():
            figures[(int(batch), threads)] = ms
    return figures


def export_anchor(size, directory: str) -> str:
    """The anchor: PyTorch HRNet-W32 (tests/torch_refs) through ``torch.onnx.export`` (opset 17); returns the path."""
    import torch

    from tests.torch_refs.pose_hrnet import PoseHighResolutionNet

    torch.manual_seed(0)
    network = PoseHighResolutionNet(width=32, num_joints=17).eval()
    path = os.path.join(directory, "torch_hrnet_w32.onnx")
    with torch.no_grad():
        torch.onnx.export(network, torch.rand(1, 3, *size), path, opset_version=17, input_names=["images"],
                          output_names=["heatmaps"], dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    return path


def time_anchor(path: str, size, runs: int) -> dict:
    """``{(batch, threads): ms per crop}`` of the anchor in ONNX Runtime (NCHW input; same options as ours)."""
    import onnxruntime

    figures = {}
    for threads in THREADS:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        for batch in BATCHES:
            crops = np.random.default_rng(1).uniform(0, 1, (batch, 3, *size)).astype(np.float32)
            figures[(batch, threads)] = _median_ms_per_crop(lambda: session.run(None, {"images": crops}), batch, runs)
    return figures


def bench_model(name: str, config, directory: str, runs: int, keras_path: str | None, log) -> dict:
    """Exports ``name`` (SavedModel + every artifact, flip test off) and times each; ``{row: {(b, t): ms}}``."""
    from bench.timing import load_or_build_model
    from pose.codec import HeatmapCodec
    from schemas import serving
    from trainer import export, export_deploy

    config = dict(config, eval=dict(config["eval"], flip_test=False))
    size = tuple(config["data"]["input_size"])
    model = load_or_build_model(config, keras_path)
    codec = HeatmapCodec.from_config(config)
    rows = {}
    precisions = ["float32"] + (["bfloat16"] if export.bfloat16_support()[0] else [])
    for precision in precisions:
        export_dir = os.path.join(directory, f"{name}_{precision}")
        export.export_serving_model(model, dict(config, export=dict(config["export"], precision=precision)),
                                    codec, export_dir)
        label = "savedmodel_fp32" if precision == "float32" else "savedmodel_bf16"
        rows[label] = time_savedmodel(export_dir, size, runs)
        log(f"  {name} {label} timed")
    calibration = np.random.default_rng(2).uniform(0, 255, (16, *size, 3)).astype(np.float32)
    written = export_deploy.export_deploy_artifacts(model, config, codec, os.path.join(directory, f"{name}_deploy"),
                                                    formats=list(serving.DEPLOY_FORMATS), calibration=calibration,
                                                    log=lambda message: None)
    for fmt, path in written.items():
        rows[fmt] = time_runner(path, size, runs)
        log(f"  {name} {fmt} timed ({os.path.getsize(path) / 1e6:.1f} MB)")
    return rows


DEFAULT_BLESSING_GLOB = "runs/tfx/PoseEvaluator/blessing/*/blessing.json"
TARGET_RATIO = 1.5


def gate_verdicts(path: str | None) -> tuple:
    """``(blessing.json path or None, {format: {"verdict", "delta", "max_delta", "metric"}})`` of an Evaluator run.

    ``path`` None: the newest :data:`DEFAULT_BLESSING_GLOB` (none: no verdicts).

    Raises:
        ValueError: ``path`` is not a readable blessing.json with a ``deploy_artifacts`` list.
    """
    import glob

    if path is None:
        found = sorted(glob.glob(os.path.join(ROOT, DEFAULT_BLESSING_GLOB)), key=os.path.getmtime)
        if not found:
            return None, {}
        path = found[-1]
    try:
        with open(path, encoding="utf-8") as handle:
            rows = json.load(handle)["deploy_artifacts"] or []
        return path, {row["format"]: {"verdict": row["verdict"], "delta": row.get("delta"),
                                      "max_delta": row.get("max_delta"), "metric": row.get("primary_metric")}
                      for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--blessing {path}: not an Evaluator blessing.json with deploy_artifacts ({error})")


def judge_target(table, verdicts) -> dict:
    """The issue's target from the HRNet-W32 rows and the gate: best blessed artifact's ratio at batch 1."""
    blessed = [row for row in table if row["model"] == "hrnet_w32" and row["ratio_vs_anchor"]
               and verdicts.get(row["runtime"], {}).get("verdict") == "BLESSED"]
    if not any(row["model"] == "hrnet_w32" for row in table):
        return {"met": False, "reason": "no HRNet-W32 rows in this run (--quick or --models)"}
    if not blessed:
        return {"met": False, "reason": "no artifact with a BLESSED gate verdict (run make demo, or pass --blessing)"}
    best = max(blessed, key=lambda row: min(row["ratio_vs_anchor"]["b1_t1"], row["ratio_vs_anchor"]["b1_t2"]))
    ratios = {key: best["ratio_vs_anchor"][key] for key in ("b1_t1", "b1_t2")}
    return {"artifact": best["runtime"], "ratio_b1": ratios, "gate": verdicts[best["runtime"]],
            "target_ratio": TARGET_RATIO, "met": min(ratios.values()) >= TARGET_RATIO}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {sorted(MODELS)}")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per figure (median)")
    parser.add_argument("--demo-keras", default=None, help="trained demo model.keras (default: random weights)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: the demo model only, the anchor at {QUICK_ANCHOR_SIZE}, 2 calls each")
    parser.add_argument("--blessing", default=None,
                        help="an Evaluator blessing.json with deploy_artifacts verdicts (default: the newest "
                             f"{DEFAULT_BLESSING_GLOB})")
    args = parser.parse_args(argv)
    try:
        blessing_path, verdicts = gate_verdicts(args.blessing)
    except ValueError as error:
        print(f"bench/deploy.py: error: {error}", file=sys.stderr)
        return 2
    names = ["demo"] if args.quick else [name for name in args.models.split(",") if name]
    runs = 2 if args.quick else args.runs
    if [name for name in names if name not in MODELS] or runs < 1:
        print(f"bench/deploy.py: error: unknown models {names} or --runs < 1", file=sys.stderr)
        return 2
    import onnxruntime
    import tensorflow as tf

    from pose.config import load_config
    from trainer import export

    flags = cpu_flags()
    native_bf16, reason = export.bfloat16_support()
    load = os.getloadavg()[0]
    print(f"TF {tf.__version__}, ONNX Runtime {onnxruntime.__version__}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at start; CPU flags: {' '.join(flags) or 'unknown'}; native bfloat16: "
          f"{'yes' if native_bf16 else 'no'} ({reason}); medians of {runs} calls; flip test off", flush=True)
    table = []
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as directory:
        anchor_size = QUICK_ANCHOR_SIZE if args.quick else tuple(load_config(
            os.path.join(ROOT, MODELS["hrnet_w32"]))["data"]["input_size"])
        anchor = time_anchor(export_anchor(anchor_size, directory), anchor_size, runs)
        print(f"  anchor torch_onnx (PyTorch HRNet-W32 {anchor_size[0]}x{anchor_size[1]}, torch.onnx.export) timed",
              flush=True)
        for name in names:
            config = load_config(os.path.join(ROOT, MODELS[name]))
            rows = bench_model(name, config, directory, runs, args.demo_keras if name == "demo" else None,
                               lambda message: print(message, flush=True))
            if name == "hrnet_w32" or args.quick:
                rows["torch_onnx (anchor)"] = anchor
            for row, figures in rows.items():
                table.append({"model": name, "runtime": row,
                              "input_size": list(anchor_size if row.startswith("torch") else config["data"]["input_size"]),
                              "ms_per_crop": {f"b{b}_t{t}": figures[(b, t)] for b in BATCHES for t in THREADS},
                              "ratio_vs_anchor": ({f"b{b}_t{t}": anchor[(b, t)] / figures[(b, t)]
                                                   for b in BATCHES for t in THREADS} if name == "hrnet_w32" else None)})
    keys = [f"b{b}_t{t}" for b in BATCHES for t in THREADS]
    for row in table:
        row["gate"] = verdicts.get(row["runtime"])
    header = f"{'model':<10}{'runtime':<22}{'input':>8}" + "".join(f"{key + ' ms':>11}" for key in keys) + \
        "".join(f"{key + ' x':>10}" for key in keys) + f"  {'gate (demo model)':<24}"
    print(header)
    print("-" * len(header))
    for row in table:
        line = f"{row['model']:<10}{row['runtime']:<22}{'x'.join(map(str, row['input_size'])):>8}"
        line += "".join(f"{row['ms_per_crop'][key]:>11.2f}" for key in keys)
        line += "".join(f"{row['ratio_vs_anchor'][key]:>10.2f}" if row["ratio_vs_anchor"] else f"{'-':>10}"
                        for key in keys)
        gate = row["gate"]
        if gate:
            delta = "-" if gate["delta"] is None else f"{gate['delta']:+.4f}"
            line += f"  {gate['verdict']} d{gate['metric']} {delta}"
        print(line)
    print("ms per crop at batch b with t threads; x = anchor ms / row ms at the same b and t (HRNet-W32 rows; "
          "> 1 is faster than PyTorch->ONNX Runtime). Ours include DARK decoding in the graph (not the SavedModel "
          "heatmaps signature nor the anchor).")
    target = judge_target(table, verdicts)
    print(f"gate verdicts: {blessing_path or 'none found'}")
    if "artifact" in target:
        print(f"target (best blessed artifact >= {TARGET_RATIO}x the anchor at batch 1): {target['artifact']} "
              f"{target['ratio_b1']['b1_t1']:.2f}x (1 thread), {target['ratio_b1']['b1_t2']:.2f}x (2 threads), "
              f"gate {target['gate']['verdict']} d{target['gate']['metric']} {target['gate']['delta']:+.4f}: "
              f"{'met' if target['met'] else 'NOT met'}")
    else:
        print(f"target: NOT judged: {target['reason']}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    print(json.dumps({"rows": table, "quick": bool(args.quick), "target": target, "gate_file": blessing_path,
                      "machine": {
        "cores": os.cpu_count(), "cpu_flags": flags, "native_bfloat16": native_bf16, "reason": reason,
        "load_start": load, "load_end": os.getloadavg()[0], "tensorflow": tf.__version__,
        "onnxruntime": onnxruntime.__version__}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
