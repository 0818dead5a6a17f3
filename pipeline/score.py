"""Score existing predictions without a model: COCO keypoint AP or MPII PCKh.

Usage::

    python -m pipeline.score --coco-gt person_keypoints_val2017.json --results results.json
    python -m pipeline.score --mpii-gt gt_valid.mat --preds pred.mat

COCO results are scored as given (no rescoring or NMS: that is the Evaluator's
job before it writes its results file). MPII predictions are read from
``pos_pred_src`` (16x2xN, MATLAB 1-based, used as is) or ``preds`` (Nx16x2,
0-based like HRNet's pred.mat; 1 is added, as HRNet does). ``--preds`` may be
left out when the gt file itself holds ``pos_pred_src``.

Prints a table, then, as the last line, one JSON object with the stats:
``{"AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L"}``
or ``{"Head", ..., "Ankle", "Mean", "Mean14", "Mean@0.1", ...}``.
Exit status: 0 on success, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List

from components import metrics_coco, metrics_mpii


def score_coco(gt_path: str, results_path: str) -> Dict[str, float]:
    """The ten COCO keypoint stats of a results file (plus per-keypoint numbers printed)."""
    stats, per_keypoint = metrics_coco.evaluate_results(gt_path, metrics_coco.load_results(results_path))
    print(f"{'metric':<8} {'value':>8}")
    for name, value in metrics_coco.iter_stat_items(stats):
        print(f"{name:<8} {value:8.4f}")
    print(f"\n{'joint':<16} {'OKS term':>8} {'>=0.5':>7} {'count':>6}")
    for name, values in per_keypoint.items():
        print(f"{name:<16} {values['similarity']:8.4f} {values['accuracy']:7.4f} {values['count']:6d}")
    return {name: round(float(stats[name]), 6) for name in metrics_coco.STAT_NAMES}


def score_mpii(gt_path: str, preds_path: str | None) -> Dict[str, float]:
    """PCKh@0.5 / @0.1 table of predictions against a gt_valid.mat layout file."""
    gt = metrics_mpii.load_gt_valid(gt_path)
    if preds_path:
        predictions = metrics_mpii.load_predictions(preds_path)
    elif "pos_pred_src" in gt:
        predictions = gt["pos_pred_src"]
    else:
        raise ValueError(f"--preds is required: {gt_path} holds no pos_pred_src")
    if predictions.shape != gt["keypoints"].shape:
        raise ValueError(f"predictions {predictions.shape} do not match the ground truth {gt['keypoints'].shape}")
    table = metrics_mpii.pckh_table(predictions, gt["keypoints"], gt["visible"], gt["head_sizes"])
    names = list(metrics_mpii.GROUP_NAMES) + ["Mean", "Mean14"]
    print(f"{'':<10}" + "".join(f"{name:>9}" for name in names))
    for suffix, label in (("", "PCKh@0.5"), ("@0.1", "PCKh@0.1")):
        print(f"{label:<10}" + "".join(f"{table[name + suffix]:9.2f}" for name in names))
    print(f"persons: {table['num_persons']}")
    output = {}
    for suffix in ("", "@0.1"):
        output.update({name + suffix: round(float(table[name + suffix]), 4) for name in names})
    return output


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score keypoint predictions (COCO AP or MPII PCKh).")
    parser.add_argument("--coco-gt", help="COCO person keypoints json")
    parser.add_argument("--results", help="COCO keypoint results json")
    parser.add_argument("--mpii-gt", help="gt_valid.mat layout file")
    parser.add_argument("--preds", help="mat with pos_pred_src (1-based) or preds (0-based)")
    args = parser.parse_args(argv)
    try:
        if args.coco_gt and args.mpii_gt:
            raise ValueError("give either --coco-gt or --mpii-gt, not both")
        if args.coco_gt:
            if not args.results:
                raise ValueError("--results is required with --coco-gt")
            stats = score_coco(args.coco_gt, args.results)
        elif args.mpii_gt:
            stats = score_mpii(args.mpii_gt, args.preds)
        else:
            raise ValueError("one of --coco-gt or --mpii-gt is required")
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
