"""Integration: a real exported model (trainer) on real ExampleGen output, with detector boxes."""
import json
import os

import numpy as np
import pytest

from components import evaluator, metrics_coco
from pose.config import build_config

pytestmark = pytest.mark.slow

TINY = {
    "dataset": "coco",
    "model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [64, 64]},
    "data": {"input_size": [64, 48], "heatmap_stride": 4},
    # A 2-step model's heatmaps are nearly flat; there DARK's Taylor step (as in the
    # reference) may land far outside the map, which made the image-frame check below
    # flaky. Quarter-pixel decoding stays on the map, so the check tests the mapping.
    "codec": {"decoding": "standard"},
    "train": {"batch_size": 4, "epochs": 1, "max_steps": 2},
    "eval": {"batch_size": 16, "thresholds": {"AP": {"lower_bound": 0.0}}},
}


def test_trained_model_on_example_gen_detector_boxes(shared_data, tmp_path):
    from components.example_gen import run_example_gen
    from trainer.task import train_and_export

    directory = os.path.join(shared_data, "coco_val2017_mmpose4")
    gt = os.path.join(directory, "person_keypoints_val2017_mmpose4.json")
    config = build_config(TINY)
    beam_args = list(evaluator.DEFAULT_BEAM_ARGS)
    manifest = run_example_gen("coco", str(tmp_path / "examples"), config, train_annotations=gt,
                               train_images=os.path.join(directory, "images"), eval_annotations=gt,
                               eval_images=os.path.join(directory, "images"),
                               det_file=os.path.join(directory, "person_detection_results_AP_H_56.json"),
                               beam_args=beam_args)
    assert manifest["splits"]["eval"] > 0
    train_and_export(str(tmp_path / "examples"), config, str(tmp_path / "model"), max_steps=2)
    result = evaluator.run_evaluator(str(tmp_path / "model"), str(tmp_path / "examples"), config,
                                     str(tmp_path / "blessing"), gt_annotations=gt, beam_args=beam_args)
    # Every detector crop was evaluated, TFMA agrees with pycocotools, the gate ran (AP >= 0 passes).
    assert result["skipped"] == {}
    assert result["num_persons"] == manifest["splits"]["eval"]
    assert result["blessed"] is True, result["reasons"]
    for name, value in result["metrics"].items():
        assert np.isfinite(value) and result["tfma_metrics"][name] == pytest.approx(value, abs=1e-12)
    results = metrics_coco.load_results(os.path.join(tmp_path, "blessing", "evaluation", "keypoint_results.json"))
    stats, _ = metrics_coco.evaluate_results(gt, results)
    assert stats["AP"] == pytest.approx(result["metrics"]["AP"], abs=1e-12)
    # Keypoints come back in original-image pixels: inside (a margin around) their images.
    with open(gt) as handle:
        sizes = {image["id"]: (image["height"], image["width"]) for image in json.load(handle)["images"]}
    for result_entry in results:
        height, width = sizes[result_entry["image_id"]]
        points = np.asarray(result_entry["keypoints"]).reshape(-1, 3)
        assert np.all((points[:, 0] > -0.5 * width) & (points[:, 0] < 1.5 * width))
        assert np.all((points[:, 1] > -0.5 * height) & (points[:, 1] < 1.5 * height))
