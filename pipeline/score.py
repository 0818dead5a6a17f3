"""Score existing predictions without a model: OKS AP (COCO or any meta with sigmas), PCK/AUC/EPE or MPII PCKh.

Usage::

    python -m pipeline.score --coco-gt person_keypoints_val2017.json --results results.json
    python -m pipeline.score --coco-gt ann.json --results results.json --dataset-meta meta.yaml
    python -m pipeline.score --coco-gt ann.json --results results.json --dataset ap10k|crowdpose|onehand10k
    python -m pipeline.score --coco-gt ann.json --results results.json --model <pushed model or destination>
    python -m pipeline.score --mpii-gt gt_valid.mat --preds pred.mat [--preds-index-base 1|0]

COCO results are scored as given (no rescoring or NMS: that is the Evaluator's
job before it writes its results file), after checks that name the file and
entry of any bad one: ``image_id``/``category_id`` integers (integer strings such
as ``"785"`` are converted, with a note), ids present in the ground truth,
``3 * 17`` finite keypoint values, a finite score. Results are put in a fixed
order (image, descending score, content) so equal scores give the same AP in any
input order. Ground-truth annotations without ``area`` get the OKS area
``0.53 * w * h`` of their box (xtcocotools/mmpose, :func:`components.metrics_coco.oks_area`),
reported on a ``note:`` line. AP_M/AP_L/AR_M/AR_L are pycocotools' values: ``-1``
when the ground truth has no person in that size range.

MPII predictions are read from ``preds`` ((N, 16, 2) or (N, 16, 3): HRNet's,
DarkPose's, mmpose's ``pred.mat`` and bearpaw/pytorch-pose's files) or
``pos_pred_src`` ((16, 2, N), Tompson / the MPII toolkit), as **1-based** MATLAB
pixels: the references add 1 before saving. ``--preds-index-base 0`` reads files
holding 0-based pixels (1 is added). ``--preds`` may be left out when the gt file
itself holds ``pos_pred_src``.

With ``--dataset-meta <file>`` (or ``--dataset <bundled name>``) the layout comes
from the dataset meta (:mod:`schemas.dataset_meta`), checked against the annotation
file first (joint count, category names): metric ``oks`` runs COCOeval with the
meta's ``kpt_oks_sigmas`` over the meta's categories (``params.catIds``); metric
``pck`` (a set without sigmas) reports PCK@0.2 of the box's longer side, AUC and EPE
in pixels (:mod:`components.metrics_pck`). Without either flag the file must be
COCO's person layout: a category whose keypoint names are not COCO's is refused,
so OKS AP with COCO's sigmas on another layout cannot be computed.

``--model <dir>`` (a Trainer model dir, a SavedModel, a pushed version or a push
destination, as ``pipeline.predict --model``) takes the layout from the meta the
export carries (``assets.extra/dataset_meta.json``): no other flag is needed for a
model that made the results. An export without a meta (made before dataset metas)
needs ``--dataset-meta``/``--dataset``; a meta flag that disagrees with the model's is refused.

Prints a table, then, as the last line, one JSON object with the stats:
``{"AP", "AP50", "AP75", "AP_M", "AP_L", "AR", "AR50", "AR75", "AR_M", "AR_L"}``,
``{"PCK@0.2", "AUC", "EPE"}`` or ``{"Head", ..., "Ankle", "Mean", "Mean14", "Mean@0.1", ...}``.
Exit status: 0 on success, 2 on bad input or any failure (one line on stderr
naming the file and, where there is one, the entry).
"""
from __future__ import annotations

import sys
from typing import Dict, List

import numpy as np

from components import metrics_coco, metrics_mpii, metrics_pck
from schemas import dataset_meta, jsonio
from schemas.dataset_meta import KeypointSchema
from toolkit import cli


def _require_coco_layout(api, gt_path: str) -> None:
    """Refuses a ground truth whose categories name other joints than COCO's 17 (no meta given)."""
    coco = dataset_meta.bundled("coco")
    ours = [dataset_meta._normal(name) for name in coco.joint_names]
    for category in api.dataset.get("categories") or []:
        names = category.get("keypoints") or []
        if names and [dataset_meta._normal(name) for name in names] != ours:
            raise dataset_meta.DatasetMetaError(
                f"{gt_path}: category {category.get('id')} ({category.get('name')!r}) has {len(names)} keypoints "
                f"{list(names[:3])}... that are not COCO's 17 person keypoints: OKS AP with COCO's sigmas would be "
                "meaningless; give --dataset-meta <meta> (or --dataset <name>)")


def score_coco(gt_path: str, results_path: str, schema: KeypointSchema | None = None) -> Dict[str, float]:
    """The ten COCO keypoint stats of a results file (plus per-keypoint numbers printed).

    Args:
        schema: a dataset meta with sigmas (its sigmas and categories are used); ``None``: COCO
            person keypoints, and the ground truth must have COCO's layout.

    Raises:
        ValueError: malformed ground truth or results (naming the file and entry), a meta without
            sigmas, or a ground truth that does not match the layout.
    """
    api = metrics_coco.load_ground_truth(gt_path)
    results = metrics_coco.load_results(results_path)
    if schema is None:
        _require_coco_layout(api, gt_path)
        stats, per_keypoint = metrics_coco.evaluate_results(api, results, source=results_path)
    else:
        categories = dataset_meta.check_annotations(schema, api.dataset, gt_path)
        stats, per_keypoint = metrics_coco.evaluate_results(api, results, schema.sigmas(), source=results_path,
                                                            category_ids=categories,
                                                            joint_names=schema.joint_names)
        print(f"dataset meta: {dataset_meta.describe(schema)}; categories {categories[:10]}"
              f"{' ...' if len(categories) > 10 else ''} ({len(categories)})")
    print(f"{'metric':<8} {'value':>8}")
    for name, value in metrics_coco.iter_stat_items(stats):
        print(f"{name:<8} {value:8.4f}")
    print(f"\n{'joint':<16} {'OKS term':>8} {'>=0.5':>7} {'count':>6}")
    for name, values in per_keypoint.items():
        print(f"{name:<16} {values['similarity']:8.4f} {values['accuracy']:7.4f} {values['count']:6d}")
    if stats[metrics_coco.AREA_FROM_BOX]:
        print(f"note: {stats[metrics_coco.AREA_FROM_BOX]} ground-truth annotations of {gt_path} have no area: "
              f"OKS area = {metrics_coco.AREA_FROM_BOX_FACTOR} * bbox w * h (xtcocotools/mmpose rule)")
    if stats["ids_converted"]:
        print(f"note: {stats['ids_converted']} results of {results_path} had a non-integer image_id "
              "(e.g. \"785\"), converted to int")
    for name, value in metrics_coco.iter_stat_items(stats):
        if value == -1:
            print(f"note: {name} = -1: pycocotools found no ground-truth person in that size range")
    return {name: round(float(stats[name]), 6) for name in metrics_coco.STAT_NAMES}


def score_pck(gt_path: str, results_path: str, schema: KeypointSchema) -> Dict[str, float]:
    """PCK@0.2 of the box's longer side, AUC (alpha 0..0.5) and EPE (pixels) of a results file.

    Results are matched to the labelled annotations one to one (:func:`components.metrics_pck.match_results`).

    Raises:
        ValueError: malformed files, a layout mismatch, or results that do not match the annotations.
    """
    api = metrics_coco.load_ground_truth(gt_path)
    categories = dataset_meta.check_annotations(schema, api.dataset, gt_path)
    for annotation in api.dataset["annotations"]:
        if annotation.get("category_id") in categories and annotation.get("keypoints") \
                and len(annotation["keypoints"]) != 3 * schema.num_joints:
            raise ValueError(f"{gt_path}: annotation id {annotation.get('id')}: {len(annotation['keypoints'])} "
                             f"keypoint values, expected {3 * schema.num_joints} ({schema.num_joints} joints)")
    raw = metrics_coco.load_results(results_path)
    metrics_coco.normalise_results(raw, schema.num_joints, api.getImgIds(), categories, results_path)  # checks only
    checked = [dict(r, image_id=int(r["image_id"]), category_id=int(r.get("category_id", 1))) for r in raw]
    pred, gt, scored, sizes = metrics_pck.match_results(api.dataset, checked, schema.num_joints, categories,
                                                        source=results_path, gt_source=gt_path)
    stats = metrics_pck.pck_auc_epe(pred, gt, scored, sizes)
    print(f"dataset meta: {dataset_meta.describe(schema)}")
    print(f"{'metric':<8} {'value':>10}")
    for name in metrics_pck.STAT_NAMES:
        print(f"{name:<8} {stats[name]:10.4f}{' px' if name == 'EPE' else ''}")
    print(f"instances: {stats['instances']}  joints scored: {stats['joints_scored']}  "
          f"(PCK normalised by the box's longer side; AUC over alpha 0..{metrics_pck.AUC_MAX_ALPHA})")
    return {name: round(float(stats[name]), 6) for name in metrics_pck.STAT_NAMES}


def score_mpii(gt_path: str, preds_path: str | None,
               index_base: int = metrics_mpii.PREDICTION_INDEX_BASE) -> Dict[str, float]:
    """PCKh@0.5 / @0.1 table of predictions against a gt_valid.mat layout file.

    Args:
        gt_path: ``gt_valid.mat`` layout file.
        preds_path: ``.mat`` with ``preds`` or ``pos_pred_src`` (see :func:`metrics_mpii.load_predictions`);
            ``None``: the gt file's own ``pos_pred_src``.
        index_base: 1 (default, the references' files) or 0 for files in 0-based pixels.

    Raises:
        ValueError: unreadable or malformed files, or predictions that do not match the gt rows.
    """
    gt = metrics_mpii.load_gt_valid(gt_path)
    if preds_path:
        predictions = metrics_mpii.load_predictions(preds_path, index_base)
    elif "pos_pred_src" in gt:
        predictions = gt["pos_pred_src"] + (1.0 if index_base == 0 else 0.0)
    else:
        raise ValueError(f"--preds is required: {gt_path} holds no pos_pred_src")
    if predictions.shape != gt["keypoints"].shape:
        raise ValueError(f"predictions of {preds_path or gt_path} {predictions.shape} do not match the ground truth "
                         f"{gt_path} {gt['keypoints'].shape} (one row per gt_valid person, same order)")
    table = metrics_mpii.pckh_table(predictions, gt["keypoints"], gt["visible"], gt["head_sizes"])
    names = list(metrics_mpii.GROUP_NAMES) + ["Mean", "Mean14"]
    print(f"{'':<10}" + "".join(f"{name:>9}" for name in names))
    for suffix, label in (("", "PCKh@0.5"), ("@0.1", "PCKh@0.1")):
        print(f"{label:<10}" + "".join(f"{table[name + suffix]:9.2f}" for name in names))
    print(f"persons: {table['num_persons']}  (predictions read as {index_base}-based pixels)")
    non_finite = int(np.count_nonzero(~np.isfinite(predictions).all(-1) & gt["visible"]))
    if non_finite:
        print(f"note: {non_finite} labelled joints have non-finite predictions (counted as wrong, as HRNet does)")
    output = {}
    for suffix in ("", "@0.1"):
        output.update({name + suffix: round(float(table[name + suffix]), 4) for name in names})
    return output


def model_schema(model: str, given: KeypointSchema | None = None) -> KeypointSchema | None:
    """The dataset meta a model carries (``None`` for COCO's own, scored exactly as without a meta).

    Args:
        model: a model dir, SavedModel, pushed version or push destination
            (:func:`pipeline.predict.resolve_model`).
        given: the layout of ``--dataset-meta`` / ``--dataset``, if any: must equal the carried one.

    Raises:
        ValueError: the export carries no meta and none is given, or the two disagree.
        FileNotFoundError: no model at ``model``.
    """
    from pipeline.predict import resolve_model

    saved_model_dir, _ = resolve_model(model)
    carried = dataset_meta.read_serving_meta(saved_model_dir)
    if carried is None:
        if given is None:
            raise ValueError(f"--model {model}: the export carries no dataset meta ({saved_model_dir}/"
                             f"{dataset_meta.SERVING_META_FILE}; made before dataset metas): give --dataset-meta")
        return given
    if given is not None and given.hash != carried.hash:
        raise ValueError(f"--model {model} carries the dataset meta {carried.name!r} ({carried.num_joints} joints) "
                         f"but --dataset-meta/--dataset give {given.name!r} ({given.num_joints} joints)")
    return None if carried.hash == dataset_meta.bundled("coco").hash else carried


def main(argv: List[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m pipeline.score",
                                description="Score keypoint predictions (COCO AP or MPII PCKh).")
    parser.add_argument("--coco-gt", help="COCO person keypoints json")
    parser.add_argument("--results", help="COCO keypoint results json")
    parser.add_argument("--mpii-gt", help="gt_valid.mat layout file")
    parser.add_argument("--preds", help="mat with preds (N, 16, 2) or pos_pred_src (16, 2, N)")
    parser.add_argument("--preds-index-base", type=int, choices=(0, 1), default=metrics_mpii.PREDICTION_INDEX_BASE,
                        help="pixel index base of the --preds file: 1 (default; HRNet/DarkPose pred.mat, "
                             "bearpaw, Tompson) or 0 (0-based pixels: 1 is added)")
    parser.add_argument("--dataset", choices=sorted(dataset_meta.BUNDLED),
                        help="bundled dataset meta of the --coco-gt file (default: COCO person keypoints)")
    parser.add_argument("--dataset-meta", help="dataset meta file (YAML/JSON) of the --coco-gt file: OKS AP with "
                                               "its sigmas and categories, or PCK/AUC/EPE (metric pck)")
    parser.add_argument("--model", help="exported / pushed model (or push destination) whose carried dataset meta "
                                        "describes the --coco-gt file (instead of --dataset-meta)")
    args = parser.parse_args(argv)
    files = " and ".join(path for path in (args.coco_gt or args.mpii_gt, args.results or args.preds) if path)
    try:
        if args.coco_gt and args.mpii_gt:
            raise ValueError("give either --coco-gt or --mpii-gt, not both")
        if args.coco_gt:
            if not args.results:
                raise ValueError("--results is required with --coco-gt")
            schema = None
            if args.dataset_meta or (args.dataset and args.dataset != "coco"):
                schema = dataset_meta.resolve(args.dataset, args.dataset_meta)
            if args.model:
                schema = model_schema(args.model, schema if (args.dataset_meta or args.dataset) else None)
            if schema is not None and schema.metric == "pck":
                stats = score_pck(args.coco_gt, args.results, schema)
            elif schema is not None and schema.metric == "pckh":
                raise ValueError(f"dataset meta {schema.name!r} is scored by PCKh: use --mpii-gt")
            else:
                stats = score_coco(args.coco_gt, args.results, schema)
        elif args.mpii_gt:
            if args.dataset_meta or args.dataset not in (None, "mpii"):
                raise ValueError("--dataset-meta / --dataset other than mpii go with --coco-gt (COCO-format files)")
            stats = score_mpii(args.mpii_gt, args.preds, args.preds_index_base)
        else:
            raise ValueError("one of --coco-gt or --mpii-gt is required")
        line = jsonio.dumps(stats)  # strict JSON: a NaN metric is null
    except (ValueError, OSError) as error:  # ours: the message names the file and entry
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 -- a library's own error (pycocotools assert, KeyError, ...)
        print(f"error: scoring {files} failed: {cli.describe_exception(error)}", file=sys.stderr)
        return 2
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m pipeline.score"))
