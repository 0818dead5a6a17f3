"""pipeline.predict with a bottom-up model (issue 25): box-free, through the model's own predict_image(image).

Real multi-person COCO train2017 images (../shared/data/coco_train2017_mini28). The model is a
constant-output network (tests/test_bottom_up_decode.ConstantOutputs) whose outputs are the encoded
targets of image 227000's people, exported with the real bottom-up exporter: on that image it finds
those people, on the others the same poses mapped through their letterbox (wrong people, real numbers).
pipeline.score on predict's results gives the AP the Evaluator's bottom-up path reports for the same
model on the same images' records.
"""
import json
import os
import shutil

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from components import evaluator, ingest_bottom_up, ingest_core
from pipeline import predict, score
from pose import bottom_up_codec, coordinates
from pose.config import build_config
from schemas import jsonio, serving
from tests.test_bottom_up_decode import ConstantOutputs
from trainer import export

SIZE = 257
SCENE_ID = 227000
IMAGE_IDS = [790, 227000, 322517, 370162]     # the scene, a small group and two crowded images


def _config():
    return build_config({"approach": "bottom_up", "data": {"input_size": [SIZE, SIZE], "heatmap_stride": 4},
                         "eval": {"flip_test": False, "batch_size": 2, "thresholds": {"AP": {"lower_bound": 0.0}}}},
                        name="predict_bottom_up_test")


@pytest.fixture(scope="module")
def scene(shared_data, tmp_path_factory):
    """Four mini28 images (copied to a temporary folder), their GT file, and the exported constant model."""
    mini = os.path.join(shared_data, "coco_train2017_mini28")
    with open(os.path.join(mini, "person_keypoints_train2017_mini28.json"), encoding="utf-8") as handle:
        annotations = json.load(handle)
    root = tmp_path_factory.mktemp("predict_bottom_up")
    images = root / "images"
    images.mkdir()
    for image_id in IMAGE_IDS:
        shutil.copy(os.path.join(mini, "images", f"{image_id:012d}.jpg"), images / f"{image_id:012d}.jpg")
    gt_path = str(root / "gt.json")
    with open(gt_path, "w", encoding="utf-8") as handle:
        json.dump({**annotations, "images": [i for i in annotations["images"] if i["id"] in IMAGE_IDS],
                   "annotations": [a for a in annotations["annotations"] if a["image_id"] in IMAGE_IDS]}, handle)
    config = _config()
    info = next(i for i in annotations["images"] if i["id"] == SCENE_ID)
    people = [a for a in annotations["annotations"] if a["image_id"] == SCENE_ID and a["num_keypoints"] > 0
              and not a["iscrowd"]]
    truth = np.array([a["keypoints"] for a in people], np.float64).reshape(-1, 17, 3)
    letterboxed = truth.copy()
    letterboxed[..., :2] = coordinates.apply_affine(truth[..., :2],
                                                    coordinates.letterbox_affine(info["height"], info["width"], SIZE))
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, ConstantOutputs(bottom_up_codec.encode(letterboxed, config))(inputs))
    model_dir = root / "model"
    export.export_serving_model(model, config, None, str(model_dir / serving.SAVED_MODEL_DIR))
    loaded = tf.saved_model.load(str(model_dir / serving.SAVED_MODEL_DIR))
    return dict(config=config, gt=gt_path, images=str(images), model=str(model_dir), root=root, truth=truth,
                signature=loaded.signatures[serving.PREDICT_IMAGE], loaded=loaded)


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return jsonio.loads(handle.read())


def test_folder_one_result_per_person_found_and_overlays(scene, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert predict.main(["--model", scene["model"], "--images", scene["images"], "--out", out]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("predict: 4 images, ") and " 0 skipped" in line
    results = _read_json(os.path.join(out, predict.RESULTS_FILE))
    summary = _read_json(os.path.join(out, predict.SUMMARY_FILE))
    assert summary["box_free"] is True and summary["images"] == 4 and summary["people"] == len(results)
    for image_id in IMAGE_IDS:
        name = f"{image_id:012d}.jpg"
        with open(os.path.join(scene["images"], name), "rb") as handle:
            outputs = scene["signature"](image=tf.constant(handle.read()))
        count = int(outputs["num_people"])
        found = outputs["keypoints"].numpy()[:count].reshape(count, -1).astype(np.float64)
        ours = [r for r in results if r["image_id"] == image_id]
        # Every result is one person of the signature (OKS-NMS may drop near-duplicates), best first.
        assert 0 < len(ours) <= count
        for result in ours:
            assert np.any(np.all(found == np.asarray(result["keypoints"]), axis=1))
            assert result["category_id"] == 1 and "track_id" not in result
        assert [r["score"] for r in ours] == sorted((r["score"] for r in ours), reverse=True)
        image = cv2.imread(os.path.join(scene["images"], name))
        overlay = cv2.imread(os.path.join(out, predict.OVERLAY_DIR, name))
        assert overlay.shape == image.shape and np.abs(overlay.astype(int) - image).max() > 100
    # On the scene's own image the people found are annotated ones, each once (the constant model's
    # decoder finds 7 of the 9: two small people are missed).
    scene_results = [r for r in results if r["image_id"] == SCENE_ID]
    matched = []
    for result in scene_results:
        triplets = np.asarray(result["keypoints"]).reshape(17, 3)
        distances = [np.linalg.norm(triplets[person[:, 2] > 0, :2] - person[person[:, 2] > 0, :2], axis=-1).mean()
                     for person in scene["truth"]]
        assert min(distances) < 5.0          # pixels; one output cell is 4 * 640 / 256 = 10 original pixels
        matched.append(int(np.argmin(distances)))
    assert len(set(matched)) == len(matched) >= len(scene["truth"]) - 2


def test_score_of_the_results_is_the_evaluators_ap(scene, tmp_path):
    out = str(tmp_path / "out")
    assert predict.main(["--model", scene["model"], "--images", scene["images"], "--out", out]) == 0
    ours = score.score_coco(scene["gt"], os.path.join(out, predict.RESULTS_FILE))
    # The Evaluator on the same images' bottom-up records (ExampleGen's core), same model.
    config = scene["config"]
    loaded = ingest_bottom_up.load_coco("eval", scene["gt"], scene["images"], config)
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as writer:
        for task in loaded["tasks"]:
            image, _ = ingest_core.read_image(task["image_path"], 50_000_000)
            writer.write(ingest_bottom_up.build_image_record(image, task, config)[0])
    record = evaluator.run_evaluator(scene["model"], str(tmp_path / "examples"), config, str(tmp_path / "blessing"),
                                     gt_annotations=scene["gt"])
    print(f"pipeline.score AP {ours['AP']:.6f}, Evaluator AP {record['metrics']['AP']:.6f}")
    assert 0.05 < ours["AP"] < 0.95                      # a number that tells right from wrong people
    assert ours["AP"] == pytest.approx(record["metrics"]["AP"], abs=1e-6)     # score rounds to 6 decimals
    assert ours["AR"] == pytest.approx(record["metrics"]["AR"], abs=1e-6)


def test_video_tracks_and_smoothing(scene, tmp_path):
    image = cv2.imread(os.path.join(scene["images"], f"{SCENE_ID:012d}.jpg"))
    height, width = image.shape[:2]
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (width, height))
    for _ in range(4):
        writer.write(image)
    writer.release()
    outputs = {}
    for name, flags in (("plain", []), ("smooth", ["--smooth", "--smooth-beta", "0.1"])):
        out = str(tmp_path / name)
        assert predict.main(["--model", scene["model"], "--images", video, "--out", out] + flags) == 0
        outputs[name] = (_read_json(os.path.join(out, predict.RESULTS_FILE)),
                         _read_json(os.path.join(out, predict.SUMMARY_FILE)))
        assert os.path.exists(os.path.join(out, "clip" + predict.VIDEO_SUFFIX))
    results, summary = outputs["plain"]
    people = sum(r["image_id"] == 0 for r in results)          # 7: the people the constant model gives
    assert people >= 5 and len(results) == 4 * people
    assert summary["frames"] == 4 and summary["frame_count"] == 4 and summary["frames_dropped"] == 0
    assert summary["fps"] == 12.0 and summary["tracks"] == people and summary["smoothing"] is None
    by_frame = {}
    for result in results:
        by_frame.setdefault(result["image_id"], {})[result["track_id"]] = result["keypoints"]
    assert sorted(by_frame) == [0, 1, 2, 3]
    # The same people in every frame keep their ids 0..n-1, each with its own pose.
    assert all(sorted(frame) == list(range(people)) for frame in by_frame.values())
    assert all(by_frame[t][i] == by_frame[0][i] for t in by_frame for i in range(people))
    # Smoothing a still video changes nothing (up to float rounding) and is reported.
    smoothed, smooth_summary = outputs["smooth"]
    assert smooth_summary["smoothing"]["beta_per_pixel"] == 0.1
    assert [(r["image_id"], r["track_id"]) for r in smoothed] == [(r["image_id"], r["track_id"]) for r in results]
    np.testing.assert_allclose([r["keypoints"] for r in smoothed], [r["keypoints"] for r in results], atol=1e-9)


def test_boxes_for_a_bottom_up_model_exit_2(scene, tmp_path, capsys):
    detections = tmp_path / "dets.json"
    detections.write_text("[]")
    out = tmp_path / "out"
    assert predict.main(["--model", scene["model"], "--images", scene["images"], "--out", str(out),
                         "--det-file", str(detections)]) == 2
    assert "bottom-up (box-free) model finds the people itself" in capsys.readouterr().err
    assert not out.exists()
    assert predict.main(["--model", scene["model"], "--images", scene["images"], "--out", str(out),
                         "--smooth"]) == 2
    assert "--smooth" in capsys.readouterr().err and not out.exists()
