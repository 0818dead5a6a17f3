"""Deployment artifacts (trainer/export_deploy.py): LiteRT fp32/fp16/int8 and ONNX, DARK inside.

Inputs are real people: COCO val2017 crops (../shared/data/coco_val2017_mmpose4) run through every
artifact, int8 calibrated on train Examples written from COCO train2017 crops
(../shared/data/coco_train2017_mini28), both cropped like ExampleGen. The model is test_export's
render model (a conv + soft-argmax head that draws Gaussians at image-dependent sub-pixel positions),
so the maps have real, well-conditioned peaks for DARK. The reference is the SavedModel's
``serving_default`` (flip test + float64 DARK in TensorFlow). Each artifact runs in a fresh process
that imports only its runtime (and components.deploy_runtime): ``tensorflow`` must be absent there.
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from records_util import coco_person_records, write_split
from schemas import features, serving
from test_export import _render_model
from trainer import export, export_deploy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

# Measured bounds (crop pixels, 64x48 crops) against the SavedModel; see docs/deploy.md.
FLOAT32_BOUND = 0.05          # the bound for tflite_fp32 and onnx
# float16 weights: 90% of joints within 0.05 px, none beyond 1 px (measured: p90 0.011, max 0.77 px; the
# render head's softmax of sharpness 20 amplifies the weights' float16 rounding on flat crops).
FLOAT16_P90_BOUND, FLOAT16_MAX_BOUND = 0.05, 1.0
# int8: the decode must be float DARK on the artifact's own maps (no silent difference) ...
INT8_DECODE_BOUND = 0.05
# ... and the 8-bit network is bounded loosely here (measured: median 6.3, p90 15.7 px on 64x48 crops: the
# render head is a softmax over 192 positions, which 8 bits barely resolve). Its accuracy on a trained
# model is what the Evaluator measures and gates (|dAP| <= 0.01, docs/deploy.md).
INT8_MEDIAN_BOUND = 10.0

CHILD = r"""
import json, sys
import numpy as np
from components.deploy_runtime import DeployRunner
args = json.loads(sys.argv[1])
runner = DeployRunner(args["model"], threads=1)
outputs = runner.run(np.load(args["crops"]))
assert "tensorflow" not in sys.modules, "the runtime check imported tensorflow"
outputs["modules"] = np.array(sorted(m for m in ("ai_edge_litert", "onnxruntime", "tensorflow") if m in sys.modules))
np.savez(args["out"], **outputs)
"""


def _config():
    return build_config({
        "model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [32, 32]},
        "data": {"input_size": [64, 48]},
        "eval": {"flip_test": True},
        "export": {"formats": list(serving.DEPLOY_FORMATS), "calibration_crops": 64},
    }, name="deploy_test")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, shared_data):
    config = _config()
    codec = HeatmapCodec.from_config(config)
    directory = tmp_path_factory.mktemp("deploy")
    val = os.path.join(shared_data, "coco_val2017_mmpose4")
    records = coco_person_records(os.path.join(val, "person_keypoints_val2017_mmpose4.json"),
                                  os.path.join(val, "images"), config, codec)
    train = os.path.join(shared_data, "coco_train2017_mini28")
    train_records = coco_person_records(os.path.join(train, "person_keypoints_train2017_mini28.json"),
                                        os.path.join(train, "images"), config, codec, limit=64)
    write_split(train_records, str(directory / "examples"), "train", num_shards=2)
    crops = tf.cast(tf.stack([decode_image_tf(r["image/encoded"]) for r in records]), tf.float32).numpy()
    keras.utils.set_random_seed(3)
    model = _render_model(config)
    saved_model = str(directory / serving.SAVED_MODEL_DIR)
    export.export_serving_model(model, config, codec, saved_model)
    loaded = tf.saved_model.load(saved_model)
    examples = tf.constant([features.build_example(r).SerializeToString() for r in records])
    reference = {k: v.numpy() for k, v in loaded.signatures[serving.SERVING_DEFAULT](examples=examples).items()}
    written = export_deploy.export_deploy_artifacts(
        model, config, codec, str(directory / serving.DEPLOY_DIR),
        train_files=str(directory / "examples" / "Split-train"), log=lambda message: None)
    crops_path = str(directory / "crops.npy")
    np.save(crops_path, crops)
    outputs = {}
    for name, path in written.items():
        out = str(directory / f"{name}.npz")
        subprocess.run([sys.executable, "-c", CHILD, json.dumps({"model": path, "crops": crops_path, "out": out})],
                       check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
        outputs[name] = dict(np.load(out))
    eval_dir = str(directory / "eval_examples")
    write_split(records, eval_dir, "eval", num_shards=1)
    return dict(config=config, codec=codec, model=model, crops=crops, reference=reference, written=written,
                outputs=outputs, records=records, directory=directory,
                eval_pattern=os.path.join(eval_dir, "Split-eval", "*"))


def _errors(deployed, name):
    got = deployed["outputs"][name][serving.OUTPUT_KEYPOINTS_CROP]
    want = deployed["reference"][serving.OUTPUT_KEYPOINTS_CROP]
    assert got.shape == want.shape == (len(deployed["crops"]), 17, 2)
    return np.linalg.norm(got - want, axis=-1)


@pytest.mark.parametrize("name", ["tflite_fp32", "onnx"])
def test_float32_artifacts_match_saved_model(deployed, name):
    errors = _errors(deployed, name)
    print(f"{name}: max keypoint error {errors.max():.2e} px")
    assert errors.max() <= FLOAT32_BOUND
    np.testing.assert_allclose(deployed["outputs"][name][serving.OUTPUT_SCORES],
                               deployed["reference"][serving.OUTPUT_SCORES], atol=1e-4)


def test_float16_artifact_within_bound(deployed):
    errors = _errors(deployed, "tflite_fp16")
    print(f"tflite_fp16: median {np.median(errors):.3f} px, p90 {np.percentile(errors, 90):.3f} px, "
          f"max {errors.max():.3f} px")
    assert np.percentile(errors, 90) <= FLOAT16_P90_BOUND
    assert errors.max() <= FLOAT16_MAX_BOUND


def test_int8_artifact_within_bound(deployed):
    errors = _errors(deployed, "tflite_int8")
    print(f"tflite_int8: median {np.median(errors):.3f} px, p90 {np.percentile(errors, 90):.3f} px, "
          f"max {errors.max():.3f} px")
    assert np.median(errors) <= INT8_MEDIAN_BOUND
    # The in-graph decode of the int8 model is float DARK: it equals the NumPy codec on its own output maps.
    outputs, codec = deployed["outputs"]["tflite_int8"], deployed["codec"]
    expected, _ = codec.decode(outputs[serving.OUTPUT_HEATMAPS])
    decode_error = np.abs(outputs[serving.OUTPUT_KEYPOINTS_CROP] - expected).max()
    print(f"tflite_int8: in-graph decode vs pose.codec_np on its own maps: {decode_error:.2e} px")
    assert decode_error <= INT8_DECODE_BOUND


@pytest.mark.parametrize("name", list(serving.DEPLOY_FORMATS))
def test_artifact_runs_without_tensorflow(deployed, name):
    runtime = serving.DEPLOY_FORMAT_INFO[name][0]
    modules = list(deployed["outputs"][name]["modules"])
    assert modules == [{"litert": "ai_edge_litert", "onnxruntime": "onnxruntime"}[runtime]]
    spec = json.load(open(os.path.join(os.path.dirname(deployed["written"][name]), serving.DEPLOY_SPEC_FILE)))
    assert spec["format"] == name and spec["decode"]["in_graph"] and spec["flip_test"]
    assert spec["input"]["dtype"] == ("uint8" if name == "tflite_int8" else "float32")


def test_builtin_ops_only(deployed):
    for name, path in deployed["written"].items():
        if path.endswith(".tflite"):
            with open(path, "rb") as handle:
                names = export_deploy.check_tflite_ops(handle.read(), name)
            assert not [op for op in names if op.startswith("Flex")]
            assert "ARG_MAX" in names and "LOG" in names  # the decode is in the graph


def test_flex_op_is_refused():
    # A model whose graph needs a TF select op (tf.linalg.det has no LiteRT built-in): conversion with
    # TFLITE_BUILTINS only must fail, never fall back to Flex.
    inputs = keras.Input((4, 4))
    outputs = keras.layers.Lambda(lambda x: tf.linalg.det(x))(inputs)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with pytest.raises(Exception):
        converter.convert()


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        export_deploy.deploy_formats({"export": {"formats": ["tflite_fp8"]}})


@pytest.mark.parametrize("formats", [["tflite_fp8"], ["onnx", "onnx"], "onnx"])
def test_config_refuses_bad_formats(formats):
    with pytest.raises(ValueError, match="export.formats"):
        build_config({"export": {"formats": formats}})


def test_trainer_export_cli_writes_deploy_artifacts(tmp_path):
    # python -m trainer.export with export.formats in the YAML: the SavedModel plus Format-Deploy beside it.
    from trainer.models import build_model

    config = build_config({"model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                                     "deconv_filters": [16, 16]}, "data": {"input_size": [64, 48]}})
    keras_path = export.save_keras_model(build_model(config), str(tmp_path / serving.KERAS_FILE))
    yaml_path = tmp_path / "deploy.yaml"
    yaml_path.write_text("model: {name: simplebaseline, depth: 18, backbone_stages: 3, deconv_filters: [16, 16]}\n"
                         "data: {input_size: [64, 48]}\nexport: {formats: [tflite_fp32, onnx]}\n")
    out = tmp_path / "model" / serving.SAVED_MODEL_DIR
    assert export.main(["--keras-model", keras_path, "--config", str(yaml_path), "--out", str(out)]) == 0
    assert (out / "saved_model.pb").exists()
    for name in ("tflite_fp32", "onnx"):
        folder = tmp_path / "model" / serving.DEPLOY_DIR / name
        assert (folder / serving.DEPLOY_FORMAT_INFO[name][2]).stat().st_size > 0
        assert json.loads((folder / serving.DEPLOY_SPEC_FILE).read_text())["format"] == name


def _pseudo_gt_persons(deployed):
    """Joined persons whose ground truth is the SavedModel's own prediction (all joints visible).

    The render model is not trained, so against COCO's labels every artifact scores AP ~ 0 and no gate
    could tell them apart; against the SavedModel's keypoints the SavedModel scores AP 1 and each
    artifact loses exactly what it changes.
    """
    reference, persons = deployed["reference"], []
    for index, record in enumerate(deployed["records"]):
        keypoints = reference[serving.OUTPUT_KEYPOINTS_IMAGE][index]
        prediction = np.concatenate([keypoints, reference[serving.OUTPUT_SCORES][index][:, None]], axis=-1)
        scale = record["bbox/scale"]
        persons.append({
            "image_id": record["image/id"], "annotation_id": record["annotation/id"],
            "image_height": record["image/height"], "image_width": record["image/width"],
            "gt_area": float(scale[0] * scale[1]) / 1.25 ** 2, "box_score": 1.0,
            "window_area": float(scale[0] * scale[1]), "center": record["bbox/center"], "scale": scale,
            "gt_keypoints": keypoints.reshape(-1).tolist(), "visibility": [2] * 17, "head_size": 0.0,
            "prediction": prediction.reshape(-1).tolist()})
    return persons


def test_deploy_gate_refuses_int8_with_corrupted_calibration(deployed, tmp_path):
    from components import deploy_eval, evaluator
    from schemas.dataset_meta import schema_for

    config, codec = deployed["config"], deployed["codec"]
    options = {"gt_annotations": None, "rescore_threshold": 0.2, "nms_threshold": 0.9, "soft_nms": False,
               "restrict_to_eval_images": False}

    def metrics_fn(persons):
        return evaluator._direct_metrics(schema_for(config), persons, options)["metrics"]

    persons = _pseudo_gt_persons(deployed)
    reference = metrics_fn(persons)
    assert reference["AP"] > 0.99
    rows = deploy_eval.evaluate_artifacts(str(deployed["directory"] / serving.DEPLOY_DIR), list(serving.DEPLOY_FORMATS),
                                          deployed["eval_pattern"], config, persons, reference, metrics_fn)
    verdicts = {row["format"]: row for row in rows}
    for name, row in verdicts.items():
        print(f"{name}: AP {row['metrics'].get('AP'):.4f} delta {row['delta']:+.4f} {row['verdict']} "
              f"{row['ms_per_crop']:.2f} ms/crop")
    assert verdicts["tflite_fp32"]["verdict"] == verdicts["onnx"]["verdict"] == deploy_eval.BLESSED
    assert set(verdicts["tflite_fp32"]["metrics"]) >= {"AP", "AP50", "AP75", "AR"}   # the full table
    # int8 calibrated on one constant grey image: its input range is a single value, every crop saturates.
    corrupt_dir = str(tmp_path / serving.DEPLOY_DIR)
    export_deploy.export_deploy_artifacts(deployed["model"], config, codec, corrupt_dir, formats=["tflite_int8"],
                                          calibration=np.full((1, 64, 48, 3), 128.0, np.float32),
                                          log=lambda message: None)
    row, = deploy_eval.evaluate_artifacts(corrupt_dir, ["tflite_int8"], deployed["eval_pattern"], config, persons,
                                          reference, metrics_fn)
    print(f"corrupted int8: AP {row['metrics'].get('AP'):.4f}, {row['verdict']}: {row['reasons']}")
    assert row["verdict"] == deploy_eval.NOT_BLESSED
    assert "AP" in row["reasons"][0] and "> 0.0100" in row["reasons"][0]
    assert row["metrics"]["AP"] < verdicts["tflite_int8"]["metrics"]["AP"]

    # Pusher: the blessed artifacts go beside the SavedModel in the same committed version, with a
    # manifest; the refused int8 artifacts are named, not pushed, and do not block the SavedModel.
    import hashlib

    from components import pusher

    extra, fields = pusher.deploy_files(rows + [row])
    record = pusher.publish(str(deployed["directory"] / serving.SAVED_MODEL_DIR), str(tmp_path / "pushed"),
                            {"run_id": "deploy-test", "blessed": True, **fields}, extra_files=extra)
    version = tmp_path / "pushed" / str(record["version"])
    assert (version / "saved_model.pb").exists() and (version / pusher.COMMIT_MARKER).exists()
    manifest = json.loads((version / "deploy" / serving.DEPLOY_MANIFEST_FILE).read_text())
    assert sorted(entry["format"] for entry in manifest["artifacts"]) == ["onnx", "tflite_fp16", "tflite_fp32"]
    for entry in manifest["artifacts"]:
        data = (version / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert entry["input"]["name"] == "images" and entry["metrics"]["AP"] > 0.99
    assert [entry["format"] for entry in record["deploy_refused"]] == ["tflite_int8", "tflite_int8"]
    assert not (version / "deploy" / "tflite_int8").exists()



def test_evaluator_scores_artifacts_on_a_remote_filesystem(deployed):
    """A pipeline root on gs:// puts Format-Deploy there; the runtimes read local files only, so each artifact
    is scored from a local copy (TF's ram:// filesystem stands in for gs:// here: any tf.io.gfile scheme)."""
    from components import deploy_eval, evaluator
    from schemas.dataset_meta import schema_for

    config = deployed["config"]
    options = {"gt_annotations": None, "rescore_threshold": 0.2, "nms_threshold": 0.9, "soft_nms": False,
               "restrict_to_eval_images": False}

    def metrics_fn(persons):
        return evaluator._direct_metrics(schema_for(config), persons, options)["metrics"]

    remote = "ram://deploy_remote/Format-Deploy"
    for name in ("tflite_fp32", "onnx"):
        folder = deployed["directory"] / serving.DEPLOY_DIR / name
        tf.io.gfile.makedirs(f"{remote}/{name}")
        for file in os.listdir(folder):
            tf.io.gfile.copy(str(folder / file), f"{remote}/{name}/{file}", overwrite=True)
    persons = _pseudo_gt_persons(deployed)
    rows = deploy_eval.evaluate_artifacts(remote, ["tflite_fp32", "onnx"], deployed["eval_pattern"], config, persons,
                                          metrics_fn(persons), metrics_fn, log=lambda message: None)
    for row in rows:
        assert row["verdict"] == deploy_eval.BLESSED, row["reasons"]
        assert row["path"].startswith("ram://") and row["size_bytes"] == tf.io.gfile.stat(row["path"]).length
    missing, = deploy_eval.evaluate_artifacts(remote, ["tflite_int8"], deployed["eval_pattern"], config, persons,
                                              metrics_fn(persons), metrics_fn, log=lambda message: None)
    assert missing["verdict"] == deploy_eval.NOT_BLESSED and "model not found" in missing["reasons"][0]


def _matched_errors(reference, results):
    """Largest keypoint distance (px) from each result to the reference result of its image closest to it."""
    errors = []
    for result in results:
        mine = np.asarray(result["keypoints"], np.float64).reshape(-1, 3)
        candidates = [np.asarray(r["keypoints"], np.float64).reshape(-1, 3) for r in reference
                      if r["image_id"] == result["image_id"]]
        assert candidates, result["image_id"]
        errors.append(min(np.linalg.norm(mine[:, :2] - other[:, :2], axis=-1).max() for other in candidates))
    return np.asarray(errors)


@pytest.mark.parametrize("name", ["tflite_fp32", "onnx"])
def test_predict_with_artifact_matches_saved_model(deployed, shared_data, tmp_path, name):
    """pipeline.predict --model model.tflite | model.onnx: same boxes, crops, rescoring and NMS as with the
    SavedModel (COCO val images, the detector boxes of the mmpose samples): same people, keypoints within 0.05 px."""
    from pipeline import predict

    val = os.path.join(shared_data, "coco_val2017_mmpose4")
    images, det_file = os.path.join(val, "images"), os.path.join(val, "person_detection_results_AP_H_56.json")
    config = deployed["config"]
    saved = predict.predict(str(deployed["directory"] / serving.SAVED_MODEL_DIR), images, str(tmp_path / "saved"),
                            det_file=det_file, det_score_threshold=0.3, config=config)
    code = predict.main(["--model", deployed["written"][name], "--images", images, "--out", str(tmp_path / name),
                         "--det-file", det_file, "--det-score-threshold", "0.3"])
    assert code == 0
    load = lambda folder, file: json.load(open(os.path.join(tmp_path, folder, file)))   # noqa: E731
    reference, results = load("saved", predict.RESULTS_FILE), load(name, predict.RESULTS_FILE)
    summary = load(name, predict.SUMMARY_FILE)
    assert saved["people"] >= 4 and summary["people"] == saved["people"] == len(results) == len(reference)
    assert summary["skipped"] == saved["skipped"] and summary["model_found_as"].startswith("deployment artifact")
    assert sorted(r["image_id"] for r in results) == sorted(r["image_id"] for r in reference)
    errors = _matched_errors(reference, results)
    print(f"predict {name}: max keypoint error vs SavedModel {errors.max():.2e} px over {len(results)} people")
    assert errors.max() <= FLOAT32_BOUND
    np.testing.assert_allclose(sorted(r["score"] for r in results), sorted(r["score"] for r in reference), atol=1e-3)
    assert sorted(os.listdir(tmp_path / name / predict.OVERLAY_DIR)) == \
        sorted(os.listdir(tmp_path / "saved" / predict.OVERLAY_DIR))


def test_predict_refuses_an_artifact_without_its_spec(deployed, shared_data, tmp_path, capsys):
    import shutil

    from pipeline import predict

    bare = tmp_path / "model.onnx"
    shutil.copy(deployed["written"]["onnx"], bare)
    code = predict.main(["--model", str(bare), "--images", os.path.join(shared_data, "coco_val2017_mmpose4", "images"),
                         "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "no deploy.json" in error and str(bare) in error


def test_detector_crops_of_one_image_are_told_apart(deployed, tmp_path):
    """Detector-box crops all carry annotation id -1: each artifact prediction must still meet its own crop
    (the demo's eval split is detector boxes; keyed by (image, annotation) alone, an image's crops collapsed
    onto one and a trained demo model's artifacts scored AP 0.24 against the SavedModel's 0.84)."""
    from components import deploy_eval

    records = [{**record, "annotation/id": -1} for record in deployed["records"]]
    assert len({r["image/id"] for r in records}) < len(records)   # several crops per image
    write_split(records, str(tmp_path), "eval", num_shards=1)
    predictions, _ = deploy_eval.artifact_predictions(
        deployed["written"]["onnx"], os.path.join(str(tmp_path), "Split-eval", "*"), 17,
        deployed["config"]["data"]["input_size"])
    assert len(predictions) == len(records)
    reference = deployed["reference"]
    persons = [{"image_id": int(image_id), "annotation_id": -1, "center": center.tolist(), "scale": scale.tolist(),
                "prediction": np.concatenate([keypoints, scores[:, None]], axis=-1).reshape(-1).tolist()}
               for image_id, center, scale, keypoints, scores in zip(
                   reference["image_id"], reference["center"], reference["scale"],
                   reference[serving.OUTPUT_KEYPOINTS_IMAGE], reference[serving.OUTPUT_SCORES])]
    replaced, missing = deploy_eval.persons_with(persons, predictions)
    assert missing == 0
    for person, mine in zip(persons, replaced):
        got = np.asarray(mine["prediction"]).reshape(-1, 3)
        want = np.asarray(person["prediction"]).reshape(-1, 3)
        scale = float(np.max(person["scale"])) / 64.0   # image pixels per crop pixel (at most)
        assert np.abs(got[:, :2] - want[:, :2]).max() <= FLOAT32_BOUND * scale + 1e-3



def test_int8_check_refuses_a_rescaled_copy_op(deployed, monkeypatch):
    """The LiteRT quantizer gave REVERSE_V2 (the flip test's mirror of the input) its own output scale although
    the int8 kernel copies codes: every mirrored pixel came back wrong and nothing failed (demo model: AP
    -0.057). The export refuses such a model; the flip test now mirrors with a strided slice."""
    layers = export_deploy._layers

    def reversing_layers():
        flip_images, flip_average, dark_decode = layers()

        class ReverseLayer(flip_images):
            def call(self, images):
                return tf.reverse(images, axis=[2])

        return ReverseLayer, flip_average, dark_decode

    monkeypatch.setattr(export_deploy, "_layers", reversing_layers)
    from trainer.models import build_model

    keras.utils.set_random_seed(0)
    network = build_model(deployed["config"])   # the demo's layout (input normalisation, ResNet, deconvolutions)
    deploy_model = export_deploy.deploy_keras_model(network, deployed["config"], deployed["codec"])
    crops = deployed["crops"][:16]
    with pytest.raises(export_deploy.DeployExportError, match="REVERSE_V2"):
        export_deploy.convert_tflite(deploy_model, "int8", crops)
    monkeypatch.undo()   # the shipped flip (strided slice) keeps the input's scale: accepted
    deploy_model = export_deploy.deploy_keras_model(network, deployed["config"], deployed["codec"])
    assert "STRIDED_SLICE" in export_deploy.check_tflite_ops(export_deploy.convert_tflite(deploy_model, "int8", crops),
                                                             "tflite_int8")
