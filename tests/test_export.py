"""SavedModel export: the three signatures, loaded in a fresh process, against the in-Python pipeline.

Inputs are real COCO val2017 people (../shared/data/coco_val2017_mmpose4),
cropped like ExampleGen crops them. The in-Python reference uses the NumPy
codec (``HeatmapCodec.decode``), a NumPy flip-back and the NumPy
``pose.coordinates`` helpers, so the graph is checked against independent code.
"""
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import ingest_core
from pose import coordinates
from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from records_util import coco_person_records
from schemas import features, serving
from schemas.keypoints import get_schema
from trainer import export
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exporting two models, loading them in a fresh interpreter with both loaders and running
# saved_model_cli takes ~60 s of CPU.
pytestmark = pytest.mark.slow

# A fresh interpreter loads the SavedModels (no Python objects shared with the test), once with the
# TF2 object-graph loader and once with the TF1 session loader (the restore path of saved_model_cli
# run, TF Serving's C++ loader and Vertex AI's TensorFlow containers), and runs every signature.
CHILD = r"""
import json
import sys
import numpy as np
import tensorflow as tf
args = json.loads(sys.argv[1])
inputs = np.load(args["inputs"], allow_pickle=False)
examples = [record.numpy() for record in tf.data.TFRecordDataset(args["records"])]
images = {}
for name, path in args["images"].items():
    with open(path, "rb") as handle:
        images[name] = handle.read()
calls = {  # output prefix -> (signature, feeds)
    "serving": ("serving_default", {"examples": examples}),
    "predict": ("predict_image", {"image": images["people"], "boxes": inputs["boxes"]}),
    "degenerate": ("predict_image", {"image": images["785"], "boxes": inputs["degenerate_boxes"]}),
    "normal": ("predict_image", {"image": images["785"], "boxes": inputs["degenerate_boxes"][:1]}),
    "heatmaps": ("heatmaps", {"images": inputs["crops"]}),
}
out = {}
for index, export_dir in enumerate(args["export_dirs"]):
    loaded = tf.saved_model.load(export_dir)
    for prefix, (signature, feeds) in calls.items():
        result = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
        for name, value in result.items():
            out[f"{index}/{prefix}/{name}"] = value.numpy()
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for prefix, (signature, feeds) in calls.items():
            signature_def = meta_graph.signature_def[signature]
            fetches = {name: info.name for name, info in signature_def.outputs.items()}
            feed_dict = {signature_def.inputs[name].name: value for name, value in feeds.items()}
            for name, value in session.run(fetches, feed_dict).items():
                out[f"{index}/session/{prefix}/{name}"] = value
np.savez(args["outputs"], **out)
"""

# COCO val image 785 is 640x425; ../shared/data/interop_cases/degenerate_boxes/dets_degenerate.json
# holds, in order: a normal box, zero width, negative height, zero area, outside the image, 0.3 px,
# three normal boxes with bad scores (scores are not the signature's business) and a NaN x.
DEGENERATE_STATUS = ["valid", "invalid_box", "invalid_box", "invalid_box", "box_outside_image",
                     "valid", "valid", "valid", "valid", "invalid_box"]


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
    boxes = np.array([a["bbox"] for a in coco_json["annotations"] if a["image_id"] == image_id]
                     + [[-40.0, 200.0, 120.0, 250.0]], np.float32)    # the last one sticks out left and below
    image_path = os.path.join(coco, "images", f"{image_id:012d}.jpg")
    with open(image_path, "rb") as handle:
        image_bytes = handle.read()
    with open(os.path.join(shared_data, "interop_cases", "degenerate_boxes", "dets_degenerate.json")) as handle:
        degenerate_boxes = np.array([d["bbox"] for d in json.load(handle)], np.float32)   # json reads NaN
    image_785 = os.path.join(coco, "images", "000000000785.jpg")
    records_path = str(directory / "records.tfrecord")
    with tf.io.TFRecordWriter(records_path) as writer:
        for record in records:
            writer.write(features.build_example(record).SerializeToString())
    crops = tf.cast(tf.stack([decode_image_tf(r["image/encoded"]) for r in records]), tf.float32)
    inputs_path = str(directory / "inputs.npz")
    np.savez(inputs_path, boxes=boxes, crops=crops.numpy(), degenerate_boxes=degenerate_boxes)
    outputs_path = str(directory / "outputs.npz")
    args = {"records": records_path, "inputs": inputs_path, "outputs": outputs_path, "export_dirs": export_dirs,
            "images": {"people": image_path, "785": image_785}}
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)],
                   check=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300)
    raw = dict(np.load(outputs_path))
    outputs = {name: {key.split("/", 1)[1]: value for key, value in raw.items() if key.startswith(f"{index}/")}
               for index, name in enumerate(models)}
    return dict(config=config, codec=codec, models=models, records=records, crops=crops.numpy(), boxes=boxes,
                image_bytes=image_bytes, outputs=outputs, keras_path=keras_path, export_dirs=export_dirs,
                degenerate_boxes=degenerate_boxes, image_785=image_785, directory=directory)


@pytest.mark.parametrize("name", ["simple", "render"])
def test_heatmaps_signature_matches_keras_model(exported, name):
    model = exported["models"][name]
    expected = _reference_heatmaps(model, exported["crops"], None, flip_test=False)
    got = exported["outputs"][name]["heatmaps/heatmaps"]
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


def _reference_predict(exported, image_bytes, boxes):
    """predict_image in Python: ExampleGen's box rule and windows (NumPy), warp, model, NumPy flip, decode."""
    codec, config = exported["codec"], exported["config"]
    height, width = codec.input_size
    image = tf.cast(ingest_core.decode_image(image_bytes, 10**9), tf.float32)   # ExampleGen's decoder (pose.images)
    clipped, reason = ingest_core.clip_boxes(boxes, int(image.shape[1]), int(image.shape[0]))
    assert all(r is None for r in reason)
    center, scale = coordinates.box_to_center_scale(clipped, width / height, config["data"]["padding"])
    matrix = coordinates.crop_affine(center, scale, codec.input_size)
    crops = coordinates.warp_images_tf(tf.repeat(image[None], len(boxes), axis=0), matrix, codec.input_size)
    heatmaps = _reference_heatmaps(exported["models"]["render"], crops.numpy(), get_schema("coco").flip_index, True)
    keypoints_crop, scores = codec.decode_tf(tf.constant(heatmaps))
    return coordinates.crop_to_image(keypoints_crop.numpy(), center, scale, codec.input_size), scores.numpy()


def test_predict_image_matches_python_pipeline(exported):
    outputs, boxes = exported["outputs"]["render"], exported["boxes"]
    keypoints, scores = _reference_predict(exported, exported["image_bytes"], boxes)
    assert outputs["predict/keypoints"].shape == (len(boxes), 17, 2)
    np.testing.assert_allclose(outputs["predict/scores"], scores, atol=1e-5)
    np.testing.assert_allclose(outputs["predict/keypoints"], keypoints, atol=1e-3)
    assert outputs["predict/box_valid"].all() and not outputs["predict/box_status"].any()


@pytest.mark.parametrize("name", ["simple", "render"])
def test_session_loader_runs_every_signature_like_the_tf2_loader(exported, name):
    """tf.compat.v1 session loading (saved_model_cli run, TF Serving, Vertex AI) gives the TF2 loader's outputs."""
    outputs = exported["outputs"][name]
    tf2 = {key: value for key, value in outputs.items() if not key.startswith("session/")}
    session = {key[len("session/"):]: value for key, value in outputs.items() if key.startswith("session/")}
    assert set(session) == set(tf2)
    for prefix in ("serving", "predict", "degenerate", "normal", "heatmaps"):
        assert any(key.startswith(prefix + "/") for key in session), prefix
    for key, value in tf2.items():
        assert session[key].dtype == value.dtype and session[key].shape == value.shape, key
        np.testing.assert_allclose(session[key], value, atol=1e-6, rtol=1e-6, err_msg=key)


@pytest.mark.parametrize("loader", ["", "session/"])
def test_predict_image_applies_examplegen_box_rule(exported, loader):
    """dets_degenerate.json on image 785: invalid boxes flagged with keypoints/scores 0, never NaN; the
    normal box's output is the one it gets alone and the Python pipeline's."""
    boxes, outputs = exported["degenerate_boxes"], exported["outputs"]["render"]
    got = {name: outputs[f"{loader}degenerate/{name}"] for name in ("keypoints", "scores", "box_valid", "box_status")}
    assert got["keypoints"].shape == (10, 17, 2) and got["scores"].shape == (10, 17)
    assert got["box_valid"].dtype == bool and got["box_status"].dtype == np.int32
    assert all(np.isfinite(value).all() for value in got.values())
    # Same verdicts as ExampleGen (its clip_boxes names the skip reasons).
    assert [coordinates.BOX_STATUS[code] for code in got["box_status"]] == DEGENERATE_STATUS
    _, reasons = ingest_core.clip_boxes(boxes, 640, 425)
    assert [r or "valid" for r in reasons] == DEGENERATE_STATUS
    np.testing.assert_array_equal(got["box_valid"], got["box_status"] == coordinates.BOX_VALID)
    invalid = ~got["box_valid"]
    assert np.all(got["keypoints"][invalid] == 0) and np.all(got["scores"][invalid] == 0)
    valid = got["box_valid"]
    assert np.all(got["scores"][valid] > 0)
    # Valid boxes are unaffected by the invalid ones: the normal box alone gives the same output
    # (up to float rounding that depends on the batch position).
    np.testing.assert_allclose(got["keypoints"][0], outputs[f"{loader}normal/keypoints"][0], atol=1e-3)
    np.testing.assert_allclose(got["scores"][0], outputs[f"{loader}normal/scores"][0], atol=1e-5)
    np.testing.assert_allclose(got["keypoints"][6], got["keypoints"][8], atol=1e-3)
    with open(exported["image_785"], "rb") as handle:
        keypoints, scores = _reference_predict(exported, handle.read(), boxes[valid])
    np.testing.assert_allclose(got["keypoints"][valid], keypoints, atol=1e-3)
    np.testing.assert_allclose(got["scores"][valid], scores, atol=1e-5)


def _saved_model_cli(*args):
    """Runs the real saved_model_cli of this environment (session loader, as TF Serving's)."""
    command = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(command):
        command = shutil.which("saved_model_cli")
    assert command, "saved_model_cli not found next to the interpreter or on PATH"
    result = subprocess.run([command, *args], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]


def test_saved_model_cli_runs_heatmaps_and_predict_image(exported):
    """`saved_model_cli run` (session loader) on heatmaps with an .npy of crops, and on predict_image
    with the degenerate boxes: the TF2 loader's numbers."""
    directory, export_dir = exported["directory"], exported["export_dirs"][1]
    crops_path, image_path, boxes_path = (str(directory / name) for name in ("crops.npy", "image.npy", "boxes.npy"))
    np.save(crops_path, exported["crops"])
    with open(exported["image_785"], "rb") as handle:
        np.save(image_path, np.array(handle.read()))             # a () bytes array: the encoded JPEG
    np.save(boxes_path, exported["degenerate_boxes"])
    outputs = exported["outputs"]["render"]
    out_dir = str(directory / "cli_heatmaps")
    _saved_model_cli("run", "--dir", export_dir, "--tag_set", "serve", "--signature_def", "heatmaps",
                     "--inputs", f"images={crops_path}", "--outdir", out_dir, "--overwrite")
    np.testing.assert_allclose(np.load(os.path.join(out_dir, "heatmaps.npy")), outputs["heatmaps/heatmaps"],
                               atol=1e-6)
    out_dir = str(directory / "cli_predict")
    _saved_model_cli("run", "--dir", export_dir, "--tag_set", "serve", "--signature_def", "predict_image",
                     "--inputs", f"image={image_path};boxes={boxes_path}", "--outdir", out_dir, "--overwrite")
    for name in ("keypoints", "scores", "box_valid", "box_status"):
        got = np.load(os.path.join(out_dir, f"{name}.npy"))
        np.testing.assert_allclose(got, outputs[f"degenerate/{name}"], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("dataset", ["coco", "mpii"])
def test_predict_image_windows_follow_examplegen(shared_data, dataset):
    """A box partly outside the image: COCO models clip it first, MPII models use it as given (as
    ExampleGen does for each). Heatmaps that ignore the image give one crop point for every box,
    so each output reveals the window it was mapped back through."""
    config = build_config({"dataset": dataset, "data": {"input_size": [64, 48]}, "eval": {"flip_test": False}},
                          name="windows_test")
    codec = HeatmapCodec.from_config(config)
    height, width = codec.input_size
    inputs = keras.Input((height, width, 3))
    pooled = keras.layers.AveragePooling2D(config["data"]["heatmap_stride"])(inputs)
    constant = keras.layers.Conv2D(get_schema(dataset).num_joints, 1, kernel_initializer="zeros",
                                   bias_initializer=keras.initializers.Constant(0.5))(pooled)
    module = export.PoseServingModule(keras.Model(inputs, constant), config, codec)
    with open(os.path.join(shared_data, "coco_val2017_mmpose4", "images", "000000000785.jpg"), "rb") as handle:
        image = handle.read()                                                    # 640 x 425
    boxes = np.array([[200.0, 100.0, 120.0, 200.0], [-40.0, 300.0, 120.0, 200.0]], np.float32)
    got = module.predict_image(tf.constant(image), tf.constant(boxes))
    assert got["box_valid"].numpy().all()
    keypoints = got["keypoints"].numpy().astype(np.float64)

    def window(box):
        return coordinates.box_to_center_scale(box[None], width / height, config["data"]["padding"])

    crop_point = coordinates.apply_affine(keypoints[:1], coordinates.crop_affine(*window(boxes[0]), codec.input_size))
    clipped, _ = ingest_core.clip_boxes(boxes[1:], 640, 425)
    assert clipped[0, 3] < boxes[1, 3]                                            # it does stick out
    expected_box = clipped[0] if dataset == "coco" else boxes[1]
    expected = coordinates.crop_to_image(crop_point, *window(expected_box), codec.input_size)
    np.testing.assert_allclose(keypoints[1:], expected, atol=1e-3)


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
    assert predicted["box_valid"].shape == (0,) and predicted["box_status"].shape == (0,)
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
    # The session loader runs it too (TensorFlow always can; TF Serving needs XLA enabled, see docs/serving.md).
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], directory).signature_def["serving_default"]
        scores = session.run(signature.outputs["scores"].name,
                             {signature.inputs["examples"].name: examples.numpy()})
    np.testing.assert_allclose(scores, expected["serving/scores"], atol=1e-6)
