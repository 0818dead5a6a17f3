"""SavedModel export: the three signatures, loaded in a fresh process, against the in-Python pipeline.

Inputs are real COCO val2017 people (../shared/data/coco_val2017_mmpose4),
cropped like ExampleGen crops them. The in-Python reference uses the NumPy
codec (``HeatmapCodec.decode``), a NumPy flip-back and the NumPy
``pose.coordinates`` helpers, so the graph is checked against independent code.
"""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose import coordinates
from pose.codec import HeatmapCodec
from pose.config import build_config
from records_util import coco_person_records
from schemas import features, serving
from schemas.keypoints import get_schema
from trainer import export
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exporting two models and loading them in a fresh interpreter takes ~30 s of CPU.
pytestmark = pytest.mark.slow

# A fresh interpreter loads the SavedModels (no Python objects shared with the test).
CHILD = r"""
import sys
import numpy as np
import tensorflow as tf
records_path, image_path, inputs_path, outputs_path = sys.argv[1:5]
export_dirs = sys.argv[5:]
inputs = np.load(inputs_path, allow_pickle=False)
examples = [record.numpy() for record in tf.data.TFRecordDataset(records_path)]
with open(image_path, "rb") as handle:
    image = handle.read()
out = {}
for index, export_dir in enumerate(export_dirs):
    loaded = tf.saved_model.load(export_dir)
    for name, value in loaded.signatures["serving_default"](examples=tf.constant(examples)).items():
        out[f"{index}/serving/{name}"] = value.numpy()
    for name, value in loaded.signatures["predict_image"](image=tf.constant(image),
                                                          boxes=tf.constant(inputs["boxes"])).items():
        out[f"{index}/predict/{name}"] = value.numpy()
    out[f"{index}/heatmaps"] = loaded.signatures["heatmaps"](images=tf.constant(inputs["crops"]))["heatmaps"].numpy()
np.savez(outputs_path, **out)
"""


class RenderGaussians(keras.layers.Layer):
    """Test model head: soft-argmax of per-joint score maps -> rendered Gaussian heatmaps.

    Gives well-conditioned, image-dependent peaks at sub-pixel positions, so the
    DARK decode of graph and NumPy can be compared tightly (a randomly
    initialised network's flat maps make the Taylor step ill-conditioned).
    Joint k's amplitude is 1 + 0.05 k, so flip-averaged maps have no ties.
    """

    def __init__(self, sigma=1.5, sharpness=20.0, **kwargs):
        super().__init__(**kwargs)
        self.sigma, self.sharpness = sigma, sharpness

    def call(self, scores):
        ops = keras.ops
        height, width, joints = scores.shape[1:]
        flat = ops.reshape(scores, (-1, height * width, joints))
        weights = ops.softmax(self.sharpness * (flat - ops.mean(flat, axis=1, keepdims=True)), axis=1)
        rows, cols = np.meshgrid(np.arange(height, dtype="float32"), np.arange(width, dtype="float32"),
                                 indexing="ij")
        grid_x, grid_y = ops.convert_to_tensor(cols.reshape(-1, 1)), ops.convert_to_tensor(rows.reshape(-1, 1))
        mean_x = ops.sum(weights * grid_x, axis=1)[:, None, None, :]       # (B, 1, 1, K)
        mean_y = ops.sum(weights * grid_y, axis=1)[:, None, None, :]
        distance = (cols[None, :, :, None] - mean_x) ** 2 + (rows[None, :, :, None] - mean_y) ** 2
        amplitude = ops.convert_to_tensor((1.0 + 0.05 * np.arange(joints)).astype("float32"))
        return amplitude * ops.exp(-distance / (2.0 * self.sigma ** 2))


def _render_model(config):
    """A contract-conforming model with intermediate supervision (list output, last = prediction)."""
    height, width = config["data"]["input_size"]
    inputs = keras.Input((height, width, 3))
    pooled = keras.layers.AveragePooling2D(config["data"]["heatmap_stride"])(inputs / 255.0)
    scores = keras.layers.Conv2D(17, 1, use_bias=False,
                                 kernel_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=5))(pooled)
    heatmaps = RenderGaussians()(scores)
    return keras.Model(inputs, [0.5 * heatmaps, heatmaps])


def _config(flip_test=True):
    return build_config({
        "model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [32, 32]},
        "data": {"input_size": [64, 48]},
        "eval": {"flip_test": flip_test},
    }, name="export_test")


def _reference_heatmaps(model, crops, flip_index, flip_test):
    """NumPy flip test: average the model's heatmaps with the mirrored crop's, flipped back."""
    def predict(images):
        outputs = model(images, training=False)
        return np.asarray(outputs[-1] if isinstance(outputs, list) else outputs)

    direct = predict(crops)
    if not flip_test:
        return direct
    mirrored = predict(crops[:, :, ::-1, :].copy())
    return 0.5 * (direct + mirrored[:, :, ::-1, :][..., flip_index])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    config = _config()
    codec = HeatmapCodec.from_config(config)
    coco = os.path.join(shared_data, "coco_val2017_mmpose4")
    annotations = os.path.join(coco, "person_keypoints_val2017_mmpose4.json")
    records = coco_person_records(annotations, os.path.join(coco, "images"), config, codec)
    keras.utils.set_random_seed(3)
    models = {"simple": build_model(config), "render": _render_model(config)}
    directory = tmp_path_factory.mktemp("export")
    export_dirs = []
    for name, model in models.items():
        export_dirs.append(str(directory / name / serving.SAVED_MODEL_DIR))
        export.export_serving_model(model, config, codec, export_dirs[-1])
    keras_path = export.save_keras_model(models["simple"], str(directory / "simple" / serving.KERAS_FILE))

    with open(annotations, encoding="utf-8") as handle:
        coco_json = json.load(handle)
    image_id = 197388
    boxes = np.array([a["bbox"] for a in coco_json["annotations"] if a["image_id"] == image_id], np.float32)
    image_path = os.path.join(coco, "images", f"{image_id:012d}.jpg")
    with open(image_path, "rb") as handle:
        image_bytes = handle.read()
    records_path = str(directory / "records.tfrecord")
    with tf.io.TFRecordWriter(records_path) as writer:
        for record in records:
            writer.write(features.build_example(record).SerializeToString())
    crops = tf.cast(tf.stack([tf.io.decode_jpeg(r["image/encoded"], channels=3) for r in records]), tf.float32)
    inputs_path = str(directory / "inputs.npz")
    np.savez(inputs_path, boxes=boxes, crops=crops.numpy())
    outputs_path = str(directory / "outputs.npz")
    subprocess.run([sys.executable, "-c", CHILD, records_path, image_path, inputs_path, outputs_path, *export_dirs],
                   check=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    raw = dict(np.load(outputs_path))
    outputs = {name: {key.split("/", 1)[1]: value for key, value in raw.items() if key.startswith(f"{index}/")}
               for index, name in enumerate(models)}
    return dict(config=config, codec=codec, models=models, records=records, crops=crops.numpy(), boxes=boxes,
                image_bytes=image_bytes, outputs=outputs, keras_path=keras_path, export_dirs=export_dirs)


@pytest.mark.parametrize("name", ["simple", "render"])
def test_heatmaps_signature_matches_keras_model(exported, name):
    model = exported["models"][name]
    expected = _reference_heatmaps(model, exported["crops"], None, flip_test=False)
    got = exported["outputs"][name]["heatmaps"]
    assert got.shape == (len(exported["records"]), 16, 12, 17)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_serving_default_matches_numpy_pipeline(exported):
    outputs, codec, records = exported["outputs"]["render"], exported["codec"], exported["records"]
    flip_index = get_schema("coco").flip_index
    heatmaps = _reference_heatmaps(exported["models"]["render"], exported["crops"], flip_index, True)
    keypoints_crop, scores = codec.decode(heatmaps)                  # NumPy DARK
    assert outputs["serving/keypoints_crop"].shape == (len(records), 17, 2)
    np.testing.assert_allclose(outputs["serving/scores"], scores, atol=1e-5)
    np.testing.assert_allclose(outputs["serving/keypoints_crop"], keypoints_crop, atol=1e-3)
    # keypoints_image is the crop output mapped back with the records' windows (NumPy coordinates).
    center = np.stack([r["bbox/center"] for r in records])
    scale = np.stack([r["bbox/scale"] for r in records])
    mapped = coordinates.crop_to_image(outputs["serving/keypoints_crop"], center, scale, codec.input_size)
    np.testing.assert_allclose(outputs["serving/keypoints_image"], mapped, atol=1e-3)
    # Pass-through fields.
    np.testing.assert_array_equal(outputs["serving/image_id"], [r["image/id"] for r in records])
    np.testing.assert_array_equal(outputs["serving/annotation_id"], [r["annotation/id"] for r in records])
    np.testing.assert_allclose(outputs["serving/area"], [r["person/area"] for r in records], rtol=1e-6)
    np.testing.assert_allclose(outputs["serving/bbox_score"], [r["bbox/score"] for r in records])
    np.testing.assert_allclose(outputs["serving/center"], center, rtol=1e-6)
    np.testing.assert_allclose(outputs["serving/scale"], scale, rtol=1e-6)


def test_serving_outputs_of_simplebaseline(exported):
    outputs, records = exported["outputs"]["simple"], exported["records"]
    assert outputs["serving/keypoints_crop"].shape == (len(records), 17, 2)
    assert outputs["serving/keypoints_image"].shape == (len(records), 17, 2)
    assert np.all(np.isfinite(outputs["serving/keypoints_image"]))
    center = np.stack([r["bbox/center"] for r in records])
    scale = np.stack([r["bbox/scale"] for r in records])
    mapped = coordinates.crop_to_image(outputs["serving/keypoints_crop"], center, scale, exported["codec"].input_size)
    np.testing.assert_allclose(outputs["serving/keypoints_image"], mapped, atol=1e-3)


def test_predict_image_matches_python_pipeline(exported):
    outputs, codec, config = exported["outputs"]["render"], exported["codec"], exported["config"]
    boxes = exported["boxes"]
    height, width = codec.input_size
    image = tf.cast(tf.io.decode_jpeg(exported["image_bytes"], channels=3), tf.float32)
    center, scale = coordinates.box_to_center_scale_tf(boxes, width / height, config["data"]["padding"])
    matrix = coordinates.crop_affine_tf(center, scale, codec.input_size)
    crops = coordinates.warp_images_tf(tf.repeat(image[None], len(boxes), axis=0), matrix, codec.input_size)
    heatmaps = _reference_heatmaps(exported["models"]["render"], crops.numpy(), get_schema("coco").flip_index, True)
    keypoints_crop, scores = codec.decode_tf(tf.constant(heatmaps))
    keypoints = coordinates.crop_to_image(keypoints_crop.numpy(), center.numpy(), scale.numpy(), codec.input_size)
    assert outputs["predict/keypoints"].shape == (len(boxes), 17, 2)
    np.testing.assert_allclose(outputs["predict/scores"], scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(outputs["predict/keypoints"], keypoints, atol=1e-3)


def test_keras_file_reloads_with_same_outputs(exported):
    model = exported["models"]["simple"]
    reloaded = keras.models.load_model(exported["keras_path"])
    np.testing.assert_allclose(np.asarray(reloaded(exported["crops"][:3], training=False)),
                               np.asarray(model(exported["crops"][:3], training=False)), atol=1e-6)


def test_flip_test_off_equals_raw_heatmaps(exported):
    config = _config(flip_test=False)
    model = exported["models"]["simple"]
    module = export.PoseServingModule(model, config, exported["codec"])
    crops = tf.constant(exported["crops"][:4])
    np.testing.assert_allclose(module.predict_heatmaps(crops).numpy(),
                               np.asarray(model(crops, training=False)), atol=1e-6)


def test_export_rejects_mismatched_codec(exported, tmp_path):
    wrong = HeatmapCodec(input_size=(128, 96), heatmap_size=(32, 24), sigma=1.0, blur_kernel=3)
    with pytest.raises(ValueError, match="input"):
        export.export_serving_model(exported["models"]["simple"], exported["config"], wrong, str(tmp_path / "x"))


def test_serving_rejects_crop_of_wrong_size(exported):
    loaded = tf.saved_model.load(exported["export_dirs"][0])
    record = dict(exported["records"][0])
    record["image/encoded"] = tf.io.encode_jpeg(tf.zeros([32, 24, 3], tf.uint8)).numpy()
    record["crop/height"], record["crop/width"] = 32, 24
    example = features.build_example(record).SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError, match="crop size differs"):
        loaded.signatures["serving_default"](examples=tf.constant([example]))


def test_empty_inputs_give_empty_outputs(exported):
    loaded = tf.saved_model.load(exported["export_dirs"][0])
    predicted = loaded.signatures["predict_image"](image=tf.constant(exported["image_bytes"]),
                                                   boxes=tf.zeros([0, 4]))
    assert predicted["keypoints"].shape == (0, 17, 2) and predicted["scores"].shape == (0, 17)
    served = loaded.signatures["serving_default"](examples=tf.zeros([0], tf.string))
    assert served["keypoints_image"].shape == (0, 17, 2) and served["image_id"].shape == (0,)


def test_xla_compiled_decoder_exports_and_matches(exported, tmp_path):
    """codec.decode_jit_compile: the SavedModel holds an XLA-compiled decoder with the same outputs."""
    config = _config()
    config["codec"]["decode_jit_compile"] = True
    codec = HeatmapCodec.from_config(config)
    assert codec.decode_jit_compile
    directory = str(tmp_path / serving.SAVED_MODEL_DIR)
    export.export_serving_model(exported["models"]["render"], config, codec, directory)
    loaded = tf.saved_model.load(directory)
    examples = tf.constant([features.build_example(r).SerializeToString() for r in exported["records"]])
    got = loaded.signatures["serving_default"](examples=examples)
    expected = exported["outputs"]["render"]
    np.testing.assert_allclose(got["keypoints_crop"].numpy(), expected["serving/keypoints_crop"], atol=1e-3)
    np.testing.assert_allclose(got["scores"].numpy(), expected["serving/scores"], atol=1e-6)
    empty = loaded.signatures["predict_image"](image=tf.constant(exported["image_bytes"]), boxes=tf.zeros([0, 4]))
    assert empty["keypoints"].shape == (0, 17, 2)
