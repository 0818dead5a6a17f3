"""CI model-blessing gate: evaluate a candidate (vs a baseline) and exit 0 / 1 / 2.

Usage::

    python -m pipeline.gate --candidate runs/123/model --eval-data runs/123/examples \
        --config configs/coco/res50_256x192.yaml [--baseline <model>|auto --push-destination <dir>] \
        [--gt-annotations person_keypoints_val2017.json] [--output-dir <blessing dir>]
    python -m pipeline.gate --candidate <model> --eval-data <examples> --config my.yaml \
        --dataset-meta my_meta.yaml --gt-annotations val.json      # any keypoint set

``--dataset-meta <file>`` (or ``--dataset <bundled name>``: coco, mpii, crowdpose,
ap10k, onehand10k) sets the config's keypoint layout (:mod:`schemas.dataset_meta`);
the gate then uses the meta's metric: OKS AP/AR with its sigmas and categories
(``metric: oks``), or ``PCK@0.2`` / ``AUC`` / ``EPE`` (``metric: pck``, lower EPE is
better: gate it with ``upper_bound``; needs ``--gt-annotations``, the boxes normalise PCK).
A candidate whose export carries another meta is refused (exit 2).

``--baseline auto`` resolves the latest blessed, completely pushed model at
``--push-destination``: our Pusher's committed versions or TFX's standard
Pusher's ``<unix time>/`` folders, as the TFX pipeline writes them (see
:func:`components.pusher.latest_blessed_version`; none yet: change thresholds
are skipped, value thresholds still apply). Thresholds come from the config's ``eval.thresholds``,
which must hold at least one value threshold (``lower_bound`` / ``upper_bound``): a config
without one is refused with exit status 2 before any work
(:func:`pose.config.require_value_threshold`, docs/evaluator.md).

Prints a verdict table; exit status 0 = blessed, 1 = not blessed, 2 = error
(bad arguments, missing model/data, failed evaluation).
"""
from __future__ import annotations

import logging
import sys
import tempfile
from typing import List

from toolkit import cli
from schemas import jsonio
from schemas.dataset_meta import BUNDLED

EXIT_BLESSED, EXIT_NOT_BLESSED, EXIT_ERROR = 0, 1, 2




def verdict_table(blessing: dict) -> str:
    """Readable verdict: one row per threshold check, then the verdict and reasons."""
    lines = [f"{'metric':<10} {'check':<12} {'bound':>9} {'value':>9}  result"]
    for check in blessing.get("checks", []):
        value = "-" if check["value"] is None else f"{check['value']:9.4f}"
        result = "SKIPPED (no baseline)" if check["skipped"] else ("PASS" if check["passed"] else "FAIL")
        lines.append(f"{check['metric']:<10} {check['kind']:<12} {check['bound']:9.4f} {value:>9}  {result}")
    if not blessing.get("checks"):
        lines.append("(no thresholds configured)")
    lines.append("")
    metrics = blessing.get("metrics", {})
    lines.append("metrics: " + ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()))
    lines.append(f"baseline: {blessing.get('baseline') or 'none'}")
    lines.append(f"verdict: {'BLESSED' if blessing['blessed'] else 'NOT_BLESSED'}")
    for reason in blessing.get("reasons", []):
        lines.append(f"  - {reason}")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m pipeline.gate",
                                description="Evaluate a pose model and gate on its blessing. Other flags must "
                                            "be Beam pipeline options (checked by Beam's option parser).")
    parser.add_argument("--candidate", required=True, help="model dir (with Format-Serving) or SavedModel dir")
    parser.add_argument("--baseline", default=None, help="baseline model dir, or 'auto'")
    parser.add_argument("--push-destination", default=None, help="where '--baseline auto' looks")
    parser.add_argument("--eval-data", required=True, help="examples dir (Split-eval) or records dir/glob")
    parser.add_argument("--config", required=True, help="experiment/eval config yaml")
    parser.add_argument("--gt-annotations", default=None, help="COCO json or MPII gt_valid.mat")
    parser.add_argument("--output-dir", default=None, help="blessing dir (default: a temporary dir)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--dataset", default=None, choices=sorted(BUNDLED),
                        help="bundled dataset meta (overrides the config's dataset)")
    parser.add_argument("--dataset-meta", default=None,
                        help="dataset meta file (YAML/JSON) of the eval data (overrides the config's dataset_meta)")
    args, beam_args = parser.parse_args_and_beam_flags(argv)  # exit 2 on a flag that is neither
    logging.basicConfig(level=logging.WARNING)
    try:
        from pose.config import load_config, meta_overrides, require_value_threshold

        config = load_config(args.config, small_run=args.small_run,  # before the heavy imports: fail fast
                             overrides=meta_overrides(args.dataset, args.dataset_meta))
        require_value_threshold(config["eval"]["thresholds"], args.config)
        from components import evaluator, tfma_metrics
        from schemas.dataset_meta import schema_for

        tfma_metrics.validate_thresholds(config["eval"]["thresholds"], schema_for(config))
        baseline = args.baseline
        if baseline == "auto":
            if not args.push_destination:
                raise ValueError("--baseline auto needs --push-destination")
            baseline = evaluator.resolve_baseline(args.push_destination)
        output_dir = args.output_dir or tempfile.mkdtemp(prefix="gate-")
        blessing = evaluator.run_evaluator(args.candidate, args.eval_data, config, output_dir,
                                           baseline_model_dir=baseline, gt_annotations=args.gt_annotations,
                                           beam_args=beam_args or None)
    except (ValueError, OSError) as error:  # ours: the message names the file (and the entry)
        print(f"gate error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 -- a library's error (TF, Beam, pycocotools): add our inputs
        inputs = ", ".join(f"{name} {value}" for name, value in (
            ("candidate", args.candidate), ("baseline", args.baseline), ("eval data", args.eval_data),
            ("config", args.config), ("gt annotations", args.gt_annotations)) if value)
        print(f"gate error: {cli.describe_exception(error)} (inputs: {inputs})", file=sys.stderr)
        return EXIT_ERROR
    print(verdict_table(blessing))
    print(jsonio.dumps({"blessed": blessing["blessed"], "output_dir": output_dir, "metrics": blessing["metrics"]}))
    return EXIT_BLESSED if blessing["blessed"] else EXIT_NOT_BLESSED


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m pipeline.gate"))
