"""pipeline.predict inputs of issue 25: a person detector SavedModel (TF Object Detection API convention)
giving the boxes of a top-down model, and bad videos (cut short, zero frames, not a video).

The detectors are tiny tf.Modules written by the tests in that exact signature convention
(``serving_default(input_tensor: uint8 (1, H, W, 3))`` -> ``detection_boxes`` (1, N, 4) normalised
``[ymin, xmin, ymax, xmax]``, ``detection_scores``, ``detection_classes``, ``num_detections``),
returning fixed boxes; the image is a real, non-square COCO val2017 image (640 x 392).
"""
import os

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline import detector, predict
from pose.codec import HeatmapCodec
from pose.config import build_config
from schemas import jsonio, serving
from test_export import _render_model
from trainer import export

IMAGE_ID = 197388          # 640 wide, 392 high
# Rows: three people, a car (class 3), a person below the threshold, then a person row past num_detections.
NORMALISED = np.array([[0.10, 0.05, 0.90, 0.30], [0.20, 0.40, 0.95, 0.55], [0.05, 0.70, 0.60, 0.98],
                       [0.30, 0.30, 0.50, 0.60], [0.10, 0.10, 0.20, 0.20], [0.0, 0.0, 1.0, 1.0]], np.float32)
SCORES = np.array([0.95, 0.9, 0.8, 0.99, 0.3, 0.99], np.float32)
CLASSES = np.array([1, 1, 1, 3, 1, 1], np.float32)
NUM_DETECTIONS = 5


class FixedDetector(tf.Module):
    """A detector in the TF OD API convention that returns fixed rows (and only the named outputs)."""

    def __init__(self, classes=CLASSES, outputs=(detector.BOXES, detector.SCORES, detector.CLASSES,
                                                 detector.NUM_DETECTIONS)):
        super().__init__()
        self._classes, self._outputs = np.asarray(classes, np.float32), outputs

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
    def serve(self, input_tensor):
        batch = tf.shape(input_tensor)[:1]                      # uses the input, as a real detector does
        values = {detector.BOXES: tf.constant(NORMALISED[None]), detector.SCORES: tf.constant(SCORES[None]),
                  detector.CLASSES: tf.constant(self._classes[None]),
                  detector.NUM_DETECTIONS: tf.cast(tf.fill(batch, NUM_DETECTIONS), tf.float32)}
        return {name: values[name] for name in self._outputs}


def _save_detector(path, **kwargs):
    module = FixedDetector(**kwargs)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("predict_inputs")
    config = build_config({"data": {"input_size": [64, 48]}}, name="predict_inputs_test")
    keras.utils.set_random_seed(3)
    model_dir = str(directory / "coco")
    export.export_serving_model(_render_model(config), config, HeatmapCodec.from_config(config),
                                os.path.join(model_dir, serving.SAVED_MODEL_DIR))
    return model_dir


def _image(shared_data):
    return os.path.join(shared_data, "coco_val2017_mmpose4", "images", f"{IMAGE_ID:012d}.jpg")


def _read_json(path):
    with open(path, encoding="utf-8") as handle:
        return jsonio.loads(handle.read())


def test_detector_boxes_reach_predict_image_in_pixels(model, shared_data, tmp_path, monkeypatch):
    sent = []
    original = predict.ServingModel.__call__

    def spy(self, image_bytes, boxes):
        sent.append(np.array(boxes))
        return original(self, image_bytes, boxes)

    monkeypatch.setattr(predict.ServingModel, "__call__", spy)
    path = _save_detector(tmp_path / "detector")
    out = str(tmp_path / "out")
    assert predict.main(["--model", model, "--images", _image(shared_data), "--out", out,
                         "--detector", path, "--detector-score-threshold", "0.5"]) == 0
    height, width = cv2.imread(_image(shared_data)).shape[:2]
    assert (height, width) == (392, 640)
    people = NORMALISED[:3].astype(np.float64)             # persons >= 0.5 among the first num_detections rows
    expected = np.stack([people[:, 1] * width, people[:, 0] * height, (people[:, 3] - people[:, 1]) * width,
                         (people[:, 2] - people[:, 0]) * height], axis=-1).astype(np.float32)
    assert len(sent) == 1
    np.testing.assert_array_equal(sent[0], expected)
    summary = _read_json(os.path.join(out, predict.SUMMARY_FILE))
    assert summary["selection"] == {"det_score_below_threshold": 1, "not_person": 1}
    assert summary["detector_boxes"] == NUM_DETECTIONS and summary["detector_person_class"] == 1
    results = _read_json(os.path.join(out, predict.RESULTS_FILE))
    assert 1 <= len(results) <= 3 and summary["people"] == len(results)
    # The box scores of the detector are the pose scores' box factor (as for a det file).
    assert max(r["score"] for r in results) <= 0.95 + 1e-6


def test_detector_person_class_flag_and_conversion():
    pixels = detector.boxes_to_pixels([[0.25, 0.5, 0.75, 1.0]], height=200, width=100)
    np.testing.assert_array_equal(pixels, [[50.0, 50.0, 50.0, 100.0]])


def test_detector_without_an_output_exits_2_naming_it(model, shared_data, tmp_path, capsys):
    path = _save_detector(tmp_path / "detector", outputs=(detector.BOXES, detector.SCORES))
    out = tmp_path / "out"
    assert predict.main(["--model", model, "--images", _image(shared_data), "--out", str(out),
                         "--detector", path]) == 2
    error = capsys.readouterr().err
    assert "has no detection_classes output" in error and path in error
    assert not out.exists()
    assert predict.main(["--model", model, "--images", _image(shared_data), "--out", str(out),
                         "--detector", str(tmp_path / "nothing")]) == 2
    assert "no saved_model.pb" in capsys.readouterr().err


def test_detector_finding_no_person_gives_zero_results(model, shared_data, tmp_path):
    path = _save_detector(tmp_path / "detector", classes=np.full(6, 3.0))
    out = str(tmp_path / "out")
    assert predict.main(["--model", model, "--images", _image(shared_data), "--out", out, "--detector", path]) == 0
    assert _read_json(os.path.join(out, predict.RESULTS_FILE)) == []
    summary = _read_json(os.path.join(out, predict.SUMMARY_FILE))
    assert summary["images"] == 1 and summary["people"] == 0 and summary["images_without_boxes"] == 1
    assert summary["selection"] == {"not_person": NUM_DETECTIONS}
    # The same detector with the car's class as the person class finds the car row.
    out2 = str(tmp_path / "out2")
    assert predict.main(["--model", model, "--images", _image(shared_data), "--out", out2, "--detector", path,
                         "--detector-person-class", "3"]) == 0
    assert _read_json(os.path.join(out2, predict.SUMMARY_FILE))["images_without_boxes"] == 0


def _write_video(path, frames, fourcc="MJPG"):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()


def test_video_cut_short_counts_dropped_frames(model, shared_data, tmp_path, capsys):
    image = cv2.resize(cv2.imread(_image(shared_data)), (160, 98))
    full = tmp_path / "full.avi"
    _write_video(full, [np.roll(image, 8 * index, axis=1) for index in range(10)])
    data = full.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) * 6 // 10])            # the header still says 10 frames
    out = str(tmp_path / "out")
    assert predict.main(["--model", model, "--images", str(cut), "--out", out]) == 0
    summary = _read_json(os.path.join(out, predict.SUMMARY_FILE))
    assert summary["frame_count"] == 10 and 0 < summary["frames"] < 10
    assert summary["frames_dropped"] == 10 - summary["frames"]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{summary['frames_dropped']} of 10 frames dropped" in line
    results = _read_json(os.path.join(out, predict.RESULTS_FILE))
    assert sorted({r["image_id"] for r in results}) == list(range(summary["frames"]))
    assert all(r["track_id"] == 0 for r in results)        # one whole-image box per frame, one track


def test_zero_frame_and_unreadable_videos_exit_2(model, tmp_path, capsys):
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (16, 16))
    writer.release()                                        # a container with no frame
    assert empty.stat().st_size > 0
    out = tmp_path / "out"
    assert predict.main(["--model", model, "--images", str(empty), "--out", str(out)]) == 2
    assert "no frame could be read from the video (it reports 0 frames)" in capsys.readouterr().err
    assert not os.path.exists(out) or os.listdir(out) == []                      # nothing written
    garbage = tmp_path / "clip.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert predict.main(["--model", model, "--images", str(garbage), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "clip.mp4" in error and ("nor a video OpenCV can open" in error or "no frame could be read" in error)
    assert not os.path.exists(out) or os.listdir(out) == []
