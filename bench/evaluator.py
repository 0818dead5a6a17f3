"""Evaluator post-processing speed: vectorised OKS-NMS vs a per-pair loop, and scoring throughput.

Run (from the repository root)::

    .venv/bin/python bench/evaluator.py [--images 40] [--poses 60]

* OKS-NMS: :func:`components.metrics_coco.oks_nms` (one (N, N, K) OKS matrix
  per image) against a reference that computes OKS pair by pair in Python
  (the shape of HRNet's ``oks_iou`` loop) on the same synthetic poses; both
  must keep the same poses.
* Scoring: rescoring + OKS-NMS + pycocotools on the real noisy results of
  ``coco_train2017_mini28`` (persons/s), and PCKh on the 1476 rows of
  ``mpii_val_pckh_dev`` (persons/s).

Baseline: the per-pair loop. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components import metrics_coco, metrics_mpii  # noqa: E402
from schemas.keypoints import COCO  # noqa: E402

DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def loop_oks_nms(keypoints, scores, areas, threshold, sigmas):
    """Reference: greedy OKS-NMS with OKS computed pair by pair in Python."""
    variances = (2.0 * sigmas) ** 2
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        survivors = []
        for other in order:
            squared = np.sum((keypoints[best] - keypoints[other]) ** 2, axis=-1)
            area = (areas[best] + areas[other]) / 2.0 + np.spacing(1)
            oks = np.mean(np.exp(-squared / variances / area / 2.0))
            if oks <= threshold:
                survivors.append(other)
        order = survivors
    return keep


def timed(function, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--poses", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sigmas = COCO.sigmas()
    images = []
    for _ in range(args.images):
        people = rng.uniform(0, 600, (args.poses // 3, 1, 2)) + rng.normal(0, 30, (args.poses // 3, 17, 2))
        # Three near-duplicates per person, as a detector's overlapping boxes give.
        keypoints = np.repeat(people, 3, axis=0) + rng.normal(0, 2, (3 * (args.poses // 3), 17, 2))
        images.append((keypoints, rng.uniform(0.2, 1, len(keypoints)), rng.uniform(2000, 40000, len(keypoints))))

    vector_time, vector_keep = timed(lambda: [metrics_coco.oks_nms(k, s, a, 0.9, sigmas).tolist() for k, s, a in images])
    loop_time, loop_keep = timed(lambda: [loop_oks_nms(k, s, a, 0.9, sigmas) for k, s, a in images], repeats=1)
    if vector_keep != loop_keep:
        raise SystemExit("vectorised and loop OKS-NMS disagree")
    poses = sum(len(s) for _, s, _ in images)

    directory = os.path.join(DATA, "coco_train2017_mini28")
    results = metrics_coco.load_results(os.path.join(directory, "synthetic_noisy_keypoint_results.json"))
    gt_path = os.path.join(directory, "person_keypoints_train2017_mini28.json")
    persons = [{"image_id": r["image_id"], "keypoints": np.asarray(r["keypoints"]).reshape(-1, 3)[:, :2],
                "keypoint_scores": np.asarray(r["keypoints"]).reshape(-1, 3)[:, 2], "box_score": r["score"],
                "area": 1e4} for r in results]
    api = metrics_coco.load_ground_truth(gt_path)
    coco_time, (stats, _, _) = timed(lambda: metrics_coco.evaluate_persons(persons, gt=api))
    gt = metrics_mpii.load_gt_valid(os.path.join(DATA, "mpii_val_pckh_dev", "gt_valid_dev.mat"))
    pckh_time, _ = timed(lambda: metrics_mpii.pckh_table(gt["pos_pred_src"], gt["keypoints"], gt["visible"],
                                                          gt["head_sizes"]))

    rows = [
        ("OKS-NMS per-pair loop (baseline)", loop_time, poses / loop_time, 1.0),
        ("OKS-NMS vectorised", vector_time, poses / vector_time, loop_time / vector_time),
        ("COCO rescore+NMS+COCOeval (mini28)", coco_time, len(persons) / coco_time, None),
        ("MPII PCKh table (1476 rows)", pckh_time, gt["keypoints"].shape[0] / pckh_time, None),
    ]
    print(f"{'step':<38} {'seconds':>9} {'poses/s':>12} {'vs loop':>8}")
    for name, seconds, rate, ratio in rows:
        print(f"{name:<38} {seconds:9.4f} {rate:12.0f} {'' if ratio is None else f'{ratio:7.1f}x':>8}")
    print(json.dumps({"oks_nms_poses": poses, "oks_nms_loop_s": round(loop_time, 4),
                      "oks_nms_vectorised_s": round(vector_time, 4),
                      "oks_nms_speedup": round(loop_time / vector_time, 1),
                      "coco_eval_persons_per_s": round(len(persons) / coco_time, 1),
                      "coco_eval_AP": round(stats["AP"], 6),
                      "pckh_persons_per_s": round(gt["keypoints"].shape[0] / pckh_time, 1)}))


if __name__ == "__main__":
    main()
