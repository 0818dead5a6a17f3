"""pipeline.predict: a user's images / video through the exported ``predict_image`` signature.

Real COCO val2017 images and detector boxes (../shared/data/coco_val2017_mmpose4), MPII images
(../shared/data/mpii_val_mmpose2); small exported models (test_export's Gaussian-rendering model,
whose peaks depend on the image, and a tiny 16-joint MPII model). The expected keypoints are what
the SavedModel's ``predict_image`` returns for the same image and boxes, called here directly.
"""
import copy
import json
import os
import shutil
import sys

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from components import ingest_core, metrics_coco
from pipeline import predict
from pose import coordinates, draw
from pose.codec import HeatmapCodec
from pose.config import build_config
from schemas import jsonio, serving
from schemas.keypoints import COCO, MPII
from test_export import _render_model
from trainer import export

IMAGE_IDS = [785, 40083, 196141, 197388]


def _coco_dir(shared_data):
    return os.path.join(shared_data, "coco_val2017_mmpose4")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A COCO model dir (Trainer layout) and an MPII SavedModel dir."""
    directory = tmp_path_factory.mktemp("predict_models")
    coco_config = build_config({"data": {"input_size": [64, 48]}}, name="predict_test")
    keras.utils.set_random_seed(3)
    coco_dir = str(directory / "coco")
    export.export_serving_model(_render_model(coco_config), coco_config, HeatmapCodec.from_config(coco_config),
                                os.path.join(coco_dir, serving.SAVED_MODEL_DIR))
    mpii_config = build_config({"dataset": "mpii", "data": {"input_size": [64, 64]}, "eval": {"flip_test": False}},
                               name="predict_test_mpii")
    inputs = keras.Input((64, 64, 3))
    pooled = keras.layers.AveragePooling2D(4)(inputs / 255.0)
    heatmaps = keras.layers.Conv2D(16, 3, padding="same", activation="sigmoid")(pooled)
    mpii_dir = str(directory / "mpii_saved_model")
    export.export_serving_model(keras.Model(inputs, heatmaps), mpii_config, HeatmapCodec.from_config(mpii_config),
                                mpii_dir)
    return {"coco": coco_dir, "mpii": mpii_dir, "coco_config": coco_config}


@pytest.fixture(scope="module")
def signature(models):
    loaded = tf.saved_model.load(os.path.join(models["coco"], serving.SAVED_MODEL_DIR))
    function = loaded.signatures[serving.PREDICT_IMAGE]

    def call(image_bytes, boxes):
        outputs = function(image=tf.constant(image_bytes), boxes=tf.constant(np.asarray(boxes, np.float32)))
        return {name: value.numpy() for name, value in outputs.items()}

    call.loaded = loaded  # keep the object alive
    return call


def _results(out):
    with open(os.path.join(out, predict.RESULTS_FILE), encoding="utf-8") as handle:
        return jsonio.loads(handle.read())        # strict JSON: no NaN / Infinity tokens


def _summary(out):
    with open(os.path.join(out, predict.SUMMARY_FILE), encoding="utf-8") as handle:
        return jsonio.loads(handle.read())


def _load_res(shared_data, results):
    from pycocotools.coco import COCO as CocoApi

    gt = CocoApi(os.path.join(_coco_dir(shared_data), "person_keypoints_val2017_mmpose4.json"))
    return gt, gt.loadRes(results)


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_folder_without_det_file_whole_image_boxes(models, signature, shared_data, tmp_path, capsys):
    images = os.path.join(_coco_dir(shared_data), "images")
    out = str(tmp_path / "out")
    assert predict.main(["--model", models["coco"], "--images", images, "--out", out]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("predict: 4 images, 4 people, 0 skipped") and line.endswith(predict.RESULTS_FILE)
    results = _results(out)
    assert sorted(r["image_id"] for r in results) == IMAGE_IDS
    gt, detections = _load_res(shared_data, results)
    assert len(detections.getAnnIds()) == 4
    for result in results:
        name = f"{result['image_id']:012d}.jpg"
        image = cv2.imread(os.path.join(images, name))
        height, width = image.shape[:2]
        expected = signature(_read(os.path.join(images, name)), [[0.0, 0.0, width, height]])
        triplets = np.asarray(result["keypoints"]).reshape(17, 3)
        np.testing.assert_array_equal(triplets[:, :2], expected["keypoints"][0].astype(np.float64))
        np.testing.assert_array_equal(triplets[:, 2], expected["scores"][0].astype(np.float64))
        # Rescored as the Evaluator does (box score 1 for a whole-image box).
        assert result["score"] == pytest.approx(metrics_coco.rescore(triplets[None, :, 2], np.ones(1))[0], abs=1e-12)
        assert result["category_id"] == 1
        overlay = cv2.imread(os.path.join(out, predict.OVERLAY_DIR, name))
        assert overlay.shape == image.shape                                   # the original's size
        assert np.abs(overlay.astype(int) - image).max() > 100                 # something was drawn
    summary = _summary(out)
    assert summary["images"] == 4 and summary["people"] == 4 and summary["skipped"] == {}
    assert summary["dataset"] == "coco" and summary["model_found_as"] == "model dir"
    assert summary["image_ids"]["000000000785.jpg"] == 785
    assert not [name for name in os.listdir(out) if name.startswith(".")]      # no staging left behind


def test_det_file_boxes_batched_per_image(models, signature, shared_data, tmp_path):
    coco = _coco_dir(shared_data)
    det_file = os.path.join(coco, "person_detection_results_AP_H_56.json")
    out = str(tmp_path / "out")
    assert predict.main(["--model", models["coco"], "--images", os.path.join(coco, "images"), "--out", out,
                         "--det-file", det_file, "--det-score-threshold", "0.5"]) == 0
    with open(det_file, encoding="utf-8") as handle:
        detections = json.load(handle)
    results = _results(out)
    summary = _summary(out)
    kept = [d for d in detections if d["score"] >= 0.5]
    assert summary["selection"] == {"det_score_below_threshold": len(detections) - len(kept)}
    assert summary["skipped"] == {}
    gt, loaded = _load_res(shared_data, copy.deepcopy(results))              # loadRes adds keys in place
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(gt, loaded, "keypoints")
    evaluator.evaluate()
    evaluator.accumulate()                                                   # runs on our results as they are
    persons = []
    for image_id in IMAGE_IDS:
        boxes = np.array([d["bbox"] for d in kept if d["image_id"] == image_id], np.float32)
        box_scores = np.array([d["score"] for d in kept if d["image_id"] == image_id])
        image_path = os.path.join(coco, "images", f"{image_id:012d}.jpg")
        expected = signature(_read(image_path), boxes)
        assert expected["box_valid"].all()
        # The Evaluator's persons: NMS area = the crop window of ExampleGen's clipped box.
        height, width = cv2.imread(image_path).shape[:2]
        clipped, _ = ingest_core.clip_boxes(boxes, width, height)
        _, scale = coordinates.box_to_center_scale(clipped, 48 / 64, 1.25)
        persons += [{"image_id": image_id, "keypoints": expected["keypoints"][i].astype(np.float64),
                     "keypoint_scores": expected["scores"][i].astype(np.float64), "box_score": box_scores[i],
                     "area": scale[i, 0] * scale[i, 1]} for i in range(len(boxes))]
        ours = [r for r in results if r["image_id"] == image_id]
        # OKS-NMS (0.9) may drop near-duplicates; every result is one box's predict_image output, rescored.
        assert 0 < len(ours) <= len(boxes)
        candidates = np.concatenate([expected["keypoints"], expected["scores"][..., None]], -1).reshape(len(boxes), -1)
        for result in ours:
            matches = np.flatnonzero(np.all(candidates.astype(np.float64) == np.asarray(result["keypoints"]), axis=1))
            assert matches.size, f"result of image {image_id} is no predict_image output"
            score = metrics_coco.rescore(expected["scores"][matches[:1]], box_scores[matches[:1]])[0]
            assert result["score"] == pytest.approx(score, abs=1e-12)
    # The whole file is what the Evaluator's scoring writes for these persons (rescore + OKS-NMS 0.9).
    assert results == metrics_coco.persons_to_results(persons, rescore_threshold=0.2, nms_threshold=0.9)
    assert len(results) == summary["people"]
    assert summary["oks_nms_threshold"] == 0.9


def test_bad_inputs_are_counted_skips(models, shared_data, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    source = os.path.join(_coco_dir(shared_data), "images", "000000000785.jpg")
    shutil.copy(source, folder / "000000000785.jpg")
    (folder / "broken.jpg").write_bytes(_read(source)[:3000])               # truncated JPEG
    Image.new("RGB", (20, 20)).save(folder / "7.gif")                        # a format we do not decode
    (folder / "sub").mkdir()
    shutil.copy(source, folder / "sub" / "photo")                           # no extension, JPEG by its bytes
    detections = [
        {"image_id": 785, "category_id": 1, "bbox": [277.1, 45.7, 225.1, 333.6], "score": 0.99},
        {"image_id": 785, "category_id": 1, "bbox": [float("nan"), 100.0, 50.0, 80.0], "score": 0.9},
        {"image_id": 785, "category_id": 1, "bbox": [300.0, 100.0, -50.0, 80.0], "score": 0.9},
        {"image_id": 785, "category_id": 1, "bbox": [700.0, 100.0, 50.0, 80.0], "score": 0.9},
        {"image_id": 999, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "score": 0.9},
        {"image_id": 785, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 80.0], "score": "0.9"},
        {"image_id": 785, "category_id": 2, "bbox": [10.0, 10.0, 50.0, 80.0], "score": 0.9},
        {"file_name": "sub/photo", "category_id": 1, "bbox": [277.1, 45.7, 225.1, 333.6], "score": 0.8},
        {"file_name": "broken.jpg", "category_id": 1, "bbox": [1.0, 1.0, 5.0, 5.0], "score": 0.8},
    ]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(detections))                             # Python writes the NaN token
    out = str(tmp_path / "out")
    assert predict.main(["--model", models["coco"], "--images", str(folder), "--out", out,
                         "--det-file", str(det_file)]) == 0
    summary = _summary(out)
    assert summary["skipped"] == {"box_outside_image": 1, "corrupt_image": 1, "invalid_box": 2,
                                  "malformed_annotation": 1, "unknown_image": 1, "unsupported_image_format": 1}
    assert summary["selection"] == {"not_person": 1}
    by_reason = {}
    for skip in summary["skips"]:
        by_reason.setdefault(skip["reason"], []).append(skip)
    assert {s["detection_entry"] for s in by_reason["invalid_box"]} == {1, 2}
    assert by_reason["invalid_box"][0]["file"] == "000000000785.jpg"
    assert by_reason["invalid_box"][0]["bbox"][0] == "NaN"                    # shown, in strict JSON
    assert by_reason["box_outside_image"][0]["detection_entry"] == 3
    assert by_reason["unknown_image"][0] == {"reason": "unknown_image", "detection_entry": 4, "image_id": 999}
    assert by_reason["malformed_annotation"][0]["detection_entry"] == 5
    assert by_reason["corrupt_image"][0]["file"] == "broken.jpg"
    assert by_reason["unsupported_image_format"][0]["file"] == "7.gif"
    assert summary["images"] == 2 and summary["people"] == 2
    results = _results(out)
    photo_id = predict.image_id_of("sub/photo")
    assert sorted(r["image_id"] for r in results) == sorted([785, photo_id])
    # The same file under two names gives the same keypoints (file_name matching = image_id matching).
    first, second = sorted(results, key=lambda r: r["image_id"] != 785)
    assert first["keypoints"] == second["keypoints"]
    assert os.path.exists(os.path.join(out, predict.OVERLAY_DIR, "sub", "photo.jpg"))
    assert summary["overlays"] == {"000000000785.jpg": "overlays/000000000785.jpg",
                                   "sub/photo": "overlays/sub/photo.jpg"}
    broken = [skip for skip in summary["skips"] if skip.get("file") == "broken.jpg"]
    assert broken[0]["num_boxes"] == 1             # its detection is not counted again as unknown_image
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "2 images, 2 people, 7 skipped (box_outside_image 1, corrupt_image 1" in line
    assert "boxes left out: not_person 1" in line


def test_video_gives_annotated_video_and_results_per_frame(models, signature, shared_data, tmp_path):
    image = cv2.imread(os.path.join(_coco_dir(shared_data), "images", "000000000785.jpg"))
    video = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 212))
    frames = [cv2.resize(np.roll(image, 40 * index, axis=1), (320, 212)) for index in range(5)]
    for frame in frames:
        writer.write(frame)
    writer.release()
    out = str(tmp_path / "out")
    assert predict.main(["--model", models["coco"], "--images", video, "--out", out]) == 0
    results = _results(out)
    assert [r["image_id"] for r in results] == [0, 1, 2, 3, 4]
    annotated = cv2.VideoCapture(os.path.join(out, "clip" + predict.VIDEO_SUFFIX))
    count = 0
    source = cv2.VideoCapture(video)
    while True:
        ok, frame = annotated.read()
        if not ok:
            break
        ok_source, decoded = source.read()
        assert ok_source and frame.shape == (212, 320, 3)
        # Keypoints of the frame the way the user's decoder sees it, through predict_image.
        png = cv2.imencode(".png", decoded)[1].tobytes()
        expected = signature(png, [[0.0, 0.0, 320.0, 212.0]])
        triplets = np.asarray(results[count]["keypoints"]).reshape(17, 3)
        np.testing.assert_array_equal(triplets[:, :2], expected["keypoints"][0].astype(np.float64))
        count += 1
    assert count == 5
    summary = _summary(out)
    assert summary["frames"] == 5 and summary["video"] == "clip" + predict.VIDEO_SUFFIX and summary["fps"] == 10.0


def test_mpii_model_and_single_image(models, shared_data, tmp_path):
    image = os.path.join(shared_data, "mpii_val_mmpose2", "images", "052475643.jpg")
    out = str(tmp_path / "out")
    assert predict.main(["--model", models["mpii"], "--images", image, "--out", out, "--draw-threshold", "0"]) == 0
    results = _results(out)
    assert len(results) == 1 and results[0]["image_id"] == 52475643
    assert len(results[0]["keypoints"]) == 3 * MPII.num_joints
    summary = _summary(out)
    assert summary["dataset"] == "mpii" and summary["num_joints"] == 16 and summary["oks_nms_threshold"] is None
    assert summary["model_found_as"] == "SavedModel dir"
    assert cv2.imread(os.path.join(out, predict.OVERLAY_DIR, "052475643.jpg")).shape == cv2.imread(image).shape
    # A COCO config does not fit a 16-joint model.
    config = tmp_path / "coco.yaml"
    config.write_text("dataset: coco\n")
    assert predict.main(["--model", models["mpii"], "--images", image, "--out", out, "--config", str(config)]) == 2


def test_model_path_resolution(models, tmp_path):
    saved_model = os.path.join(models["coco"], serving.SAVED_MODEL_DIR)
    assert predict.resolve_model(models["coco"]) == (saved_model, "model dir")
    assert predict.resolve_model(saved_model) == (saved_model, "SavedModel dir")
    destination = tmp_path / "serving"
    ours = destination / "1"
    shutil.copytree(saved_model, ours)
    (ours / "push_record.json").write_text('{"blessed": true}')
    (ours / "PUSH_COMPLETE").write_text("")
    assert predict.resolve_model(str(destination))[0] == str(ours)
    tfx = destination / "1700000000"                                          # TFX Pusher's <unix time>/
    shutil.copytree(saved_model, tfx)
    assert predict.resolve_model(str(destination)) == (str(tfx), f"newest pushed version of {destination}")
    cut_short = destination / "1700000001"
    shutil.copytree(ours, cut_short)
    os.remove(cut_short / "PUSH_COMPLETE")
    assert predict.resolve_model(str(destination))[0] == str(tfx)
    with pytest.raises(ValueError, match="did not complete"):
        predict.resolve_model(str(cut_short))
    with pytest.raises(FileNotFoundError, match="no SavedModel found"):
        predict.resolve_model(str(tmp_path))


def test_errors_exit_2_and_publish_nothing(models, shared_data, tmp_path, capsys):
    images = os.path.join(_coco_dir(shared_data), "images")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--model", models["coco"], "--images", images, "--out", str(out), "--det-fil", "x"])
    assert exit_info.value.code == 2 and "--det-file" in capsys.readouterr().err
    assert predict.main(["--model", str(tmp_path), "--images", images, "--out", str(out)]) == 2
    assert "no SavedModel found" in capsys.readouterr().err
    bad_json = tmp_path / "dets.json"
    bad_json.write_text("[{")
    assert predict.main(["--model", models["coco"], "--images", images, "--out", str(out),
                         "--det-file", str(bad_json)]) == 2
    assert "dets.json is not valid JSON" in capsys.readouterr().err
    assert not out.exists()
    # A previous complete run stays as it was when a later run reads no image.
    (out / "overlays").mkdir(parents=True)
    (out / predict.RESULTS_FILE).write_text("[]")
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert predict.main(["--model", models["coco"], "--images", str(empty), "--out", str(out)]) == 2
    assert "no image could be read" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["keypoint_results.json", "overlays"]


def test_progress_falls_back_to_a_counter_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)                           # import tqdm -> ImportError
    bar = predict.progress(12, "images")
    assert isinstance(bar, predict._Counter)
    for _ in range(12):
        bar.update(1)
    bar.close()
    err = capsys.readouterr().err
    assert "predict: 10/12 images" in err and err.rstrip().endswith("predict: 12/12 images")


def test_draw_poses_draws_only_confident_joints():
    image = np.zeros((60, 80, 3), np.uint8)
    keypoints = np.zeros((2, 17, 2))
    keypoints[0, :, 0], keypoints[0, :, 1] = np.linspace(5, 75, 17), 20.0
    keypoints[1, :, 0], keypoints[1, :, 1] = np.linspace(5, 75, 17), 45.0
    scores = np.full((2, 17), 0.9)
    scores[1] = 0.1                                                           # the second person: not drawn
    keypoints[0, 3] = np.nan                                                  # nor a NaN joint
    canvas = draw.draw_poses(image, keypoints, scores, COCO, threshold=0.2)
    assert canvas.shape == image.shape and canvas.dtype == np.uint8 and not image.any()
    assert canvas[20, int(round(keypoints[0, 0, 0]))].any()                  # a confident joint
    assert not canvas[40:50].any()                                            # the unconfident person
    with pytest.raises(ValueError, match="schema"):
        draw.draw_poses(image, keypoints[:, :16], scores, COCO)
