"""A model trained on any keypoint set carries its dataset meta: pipeline.predict draws the meta's
skeleton and pipeline.score needs no meta flag for it (issue 23). Real OneHand10K samples."""
import json
import os

import keras
import pytest

from pipeline import predict, score
from pose import draw
from pose.codec import HeatmapCodec
from pose.config import build_config
from schemas import dataset_meta, serving
from trainer import export

HAND = "onehand10k_mmpose4"


@pytest.fixture(scope="module")
def hand_model(shared_data, tmp_path_factory):
    meta = os.path.join(shared_data, HAND, "dataset_meta.json")
    config = build_config({"dataset_meta": meta, "data": {"input_size": [64, 48]}}, name="hand_predict")
    inputs = keras.Input((64, 48, 3))
    pooled = keras.layers.AveragePooling2D(4)(inputs / 255.0)
    heatmaps = keras.layers.Conv2D(21, 3, padding="same", activation="sigmoid")(pooled)
    model_dir = str(tmp_path_factory.mktemp("hand") / "model")
    export.export_serving_model(keras.Model(inputs, heatmaps), config, HeatmapCodec.from_config(config),
                                os.path.join(model_dir, serving.SAVED_MODEL_DIR))
    return model_dir, dataset_meta.load_meta(meta)


def test_predict_draws_the_carried_meta_skeleton(hand_model, shared_data, tmp_path, monkeypatch):
    model_dir, meta = hand_model
    drawn = []
    original = draw.draw_poses

    def spy(image, keypoints, scores, schema, *args, **kwargs):
        drawn.append(schema)
        return original(image, keypoints, scores, schema, *args, **kwargs)

    monkeypatch.setattr(draw, "draw_poses", spy)
    out = str(tmp_path / "out")
    assert predict.main(["--model", model_dir, "--images", os.path.join(shared_data, HAND, "images"),
                         "--out", out]) == 0
    with open(os.path.join(out, predict.SUMMARY_FILE)) as handle:
        summary = json.load(handle)
    assert summary["dataset"] == "onehand10k" and summary["num_joints"] == 21 and summary["images"] == 4
    assert summary["oks_nms_threshold"] is None            # no sigmas: no OKS-NMS
    assert len(drawn) == 4 and all(schema.skeleton == meta.skeleton for schema in drawn)
    assert drawn[0].hash == meta.hash
    # A meta that disagrees with the one the model carries is refused (exit 2), never drawn.
    assert predict.main(["--model", model_dir, "--images", os.path.join(shared_data, HAND, "images"),
                         "--out", str(tmp_path / "other"), "--dataset", "coco"]) == 2


def test_score_reads_the_meta_of_a_model(hand_model, shared_data, capsys):
    model_dir, _ = hand_model
    gt = os.path.join(shared_data, HAND, "test_onehand10k.json")
    results = os.path.join(shared_data, HAND, "synthetic_noisy_keypoint_results.json")
    assert score.main(["--coco-gt", gt, "--results", results, "--model", model_dir]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = json.load(open(os.path.join(shared_data, HAND, "expected_stats.json")))["stats"]
    assert stats["PCK@0.2"] == expected["PCK@0.2_bbox"] and stats["EPE"] == expected["EPE_px"]
    assert score.main(["--coco-gt", gt, "--results", results, "--model", model_dir, "--dataset", "ap10k"]) == 2
    assert "carries the dataset meta 'onehand10k'" in capsys.readouterr().err
