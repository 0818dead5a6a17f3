"""Issue 15 model variants end to end on the embedded demo data: a short training run whose loss goes
down, export and reload (the exported graph still decodes DARK keypoints), the attention maps in the
``heatmaps`` signature (TF2 loader, session loader and ``saved_model_cli run``), in TensorBoard and in
the evaluator report's overlays.

The data are person crops of the embedded synthetic dataset (``pipeline/synthetic.py``, what
``make demo`` trains on) at 64x48; the variants are tiny versions of the shipped configs:
the gated hourglass (2 stacks, 32 features, 1 level, every paper option on) and SimpleBaseline
R18 with holistic and part-wise attention. Each run trains 16 steps on CPU and exports (~20-30 s).
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components import report
from pipeline import synthetic
from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from records_util import coco_person_records, write_split
from schemas import examples as examples_layout
from schemas import features, serving
from schemas.keypoints import get_schema
from trainer import task

pytestmark = pytest.mark.slow

VARIANTS = {
    "gated_hourglass": {"name": "hourglass", "num_stacks": 2, "num_features": 32, "depth": 1,
                        "gated_skip": True, "block": "multiscale", "skip_fusion": "concat"},
    "holistic_attention": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                           "deconv_filters": [32, 32], "attention": "holistic"},
    "partwise_attention": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                           "deconv_filters": [32, 32], "attention": "partwise"},
}
ATTENTION_CHANNELS = {"gated_hourglass": 0, "holistic_attention": 1, "partwise_attention": 17}
STEPS = 16


def _config(model):
    return build_config({
        "model": model,
        "data": {"input_size": [64, 48]},
        "augmentation": {"enabled": False},          # a fixed set of crops: the loss must go down
        "train": {"batch_size": 8, "epochs": 100, "learning_rate": 0.002,
                  "log_every_steps": 4, "checkpoint_every_steps": STEPS},
        "eval": {"flip_test": True},
    }, name="variant_test")


@pytest.fixture(scope="module")
def demo_examples(tmp_path_factory):
    """ExampleGen-like records of the embedded dataset's first train images (64x48 crops)."""
    directory = tmp_path_factory.mktemp("demo")
    spec = synthetic.SyntheticSpec(num_train_images=8, num_val_images=1)
    split = synthetic.generate_split(str(directory / "coco"), "train", spec)
    config = _config(VARIANTS["holistic_attention"])
    records = coco_person_records(split["annotations"], split["image_dir"], config, HeatmapCodec.from_config(config))
    assert len(records) >= 16
    examples_dir = str(directory / "examples")
    write_split(records, examples_dir, "train")
    return examples_dir, records


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def trained(request, demo_examples, tmp_path_factory):
    examples_dir, records = demo_examples
    config = _config(VARIANTS[request.param])
    model_dir = str(tmp_path_factory.mktemp(request.param))
    summary = task.train_and_export(examples_dir, config, model_dir, max_steps=STEPS, log=lambda line: None)
    export_dir = os.path.join(model_dir, serving.SAVED_MODEL_DIR)
    return dict(name=request.param, config=config, model_dir=model_dir, summary=summary, records=records,
                export_dir=export_dir, loaded=tf.saved_model.load(export_dir), examples_dir=examples_dir)


def test_short_run_loss_goes_down(trained):
    history = trained["summary"]["history"]
    assert [step for step, _ in history] == [4, 8, 12, 16]
    losses = [loss for _, loss in history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def _reference_keypoints(model, crops, codec, flip_index):
    """Flip test and DARK decoding in Python: Keras model, NumPy flip-back, NumPy codec."""
    def predict(images):
        outputs = model(images, training=False)
        return np.asarray(outputs[-1] if isinstance(outputs, list) else outputs)

    mirrored = predict(crops[:, :, ::-1].copy())[:, :, ::-1][..., flip_index]
    return codec.decode(0.5 * (predict(crops) + mirrored))


def test_export_reloads_and_decodes_dark_keypoints(trained):
    """serving_default of the reloaded SavedModel = the trained model.keras + flip test + NumPy DARK decode."""
    import keras

    loaded = trained["loaded"]
    records = trained["records"][:6]
    examples = tf.constant([features.build_example(r).SerializeToString() for r in records])
    result = loaded.signatures[serving.SERVING_DEFAULT](examples=examples)
    keypoints, scores = result[serving.OUTPUT_KEYPOINTS_CROP].numpy(), result[serving.OUTPUT_SCORES].numpy()
    assert keypoints.shape == (6, 17, 2) and np.all(np.isfinite(keypoints))
    assert np.all(np.isfinite(result[serving.OUTPUT_KEYPOINTS_IMAGE].numpy()))
    np.testing.assert_array_equal(result["image_id"].numpy(), [r["image/id"] for r in records])
    model = keras.models.load_model(os.path.join(trained["model_dir"], serving.KERAS_FILE))
    # The crops as the serving graph decodes them (pose.images: the accurate IDCT, as ExampleGen).
    crops = np.stack([decode_image_tf(r["image/encoded"]).numpy() for r in records]).astype(np.float32)
    codec = HeatmapCodec.from_config(trained["config"])
    expected_keypoints, expected_scores = _reference_keypoints(model, crops, codec, get_schema("coco").flip_index)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    # Confident joints (a clear peak): DARK's Taylor step agrees to sub-pixel precision; flat maps of a
    # 16-step model may not (an ill-conditioned Hessian amplifies float differences).
    # The ten clearest peaks (a fixed count: how many joints pass a score bar after 16 steps varies run to run).
    confident = expected_scores >= np.sort(expected_scores.ravel())[-10]
    assert confident.sum() >= 10
    np.testing.assert_allclose(keypoints[confident], expected_keypoints[confident], atol=1e-2)


def _heatmaps_outputs_with_session_loader(export_dir, crops):
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir).signature_def[serving.HEATMAPS]
        fetches = {name: info.name for name, info in signature.outputs.items()}
        return session.run(fetches, {signature.inputs[serving.INPUT_IMAGES].name: crops})


def test_heatmaps_signature_attention_output(trained, tmp_path):
    crops = np.stack([tf.io.decode_jpeg(r["image/encoded"]).numpy() for r in trained["records"][:4]]).astype(
        np.float32)
    loaded = trained["loaded"]
    outputs = {k: v.numpy() for k, v in loaded.signatures[serving.HEATMAPS](images=tf.constant(crops)).items()}
    channels = ATTENTION_CHANNELS[trained["name"]]
    if not channels:
        assert set(outputs) == {serving.OUTPUT_HEATMAPS}
        return
    assert set(outputs) == {serving.OUTPUT_HEATMAPS, serving.OUTPUT_ATTENTION}
    attention = outputs[serving.OUTPUT_ATTENTION]
    assert attention.shape == (4, 16, 12, channels) and np.all((attention >= 0) & (attention <= 1))
    if trained["name"] != "partwise_attention":   # the same export path: the loaders are checked once
        return
    # The session loader (TF Serving, Vertex AI) and saved_model_cli give the same maps.
    session = _heatmaps_outputs_with_session_loader(trained["export_dir"], crops)
    np.testing.assert_allclose(session[serving.OUTPUT_ATTENTION], attention, atol=1e-6)
    np.testing.assert_allclose(session[serving.OUTPUT_HEATMAPS], outputs[serving.OUTPUT_HEATMAPS], atol=1e-6)
    command = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    command = command if os.path.exists(command) else shutil.which("saved_model_cli")
    assert command, "saved_model_cli not found next to the interpreter or on PATH"
    crops_path = str(tmp_path / "crops.npy")
    np.save(crops_path, crops)
    run = subprocess.run([command, "run", "--dir", trained["export_dir"], "--tag_set", "serve", "--signature_def",
                          serving.HEATMAPS, "--inputs", f"images={crops_path}", "--outdir", str(tmp_path / "cli"),
                          "--overwrite"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_allclose(np.load(str(tmp_path / "cli" / "attention.npy")), attention, atol=1e-6)


def test_tensorboard_previews(trained):
    tags = set()
    tensorboard = os.path.join(trained["model_dir"], task.RUN_SUBDIR, "tensorboard")
    for name in os.listdir(tensorboard):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(tensorboard, name)):
            tags.update(value.tag for value in event.summary.value)
    assert "train/predicted_keypoints" in tags
    assert ("train/attention" in tags) is bool(ATTENTION_CHANNELS[trained["name"]])


def test_report_overlays_attention_maps(trained, tmp_path):
    records = trained["records"]
    persons = [{"image_id": r["image/id"], "annotation_id": r["annotation/id"], "center": list(r["bbox/center"])}
               for r in records]
    pattern = examples_layout.shard_pattern(trained["examples_dir"], "train")
    evaluation_dir = str(tmp_path / "evaluation")
    written = report.write_attention_overlays(evaluation_dir, trained["export_dir"], pattern, persons, "coco", 3)
    channels = ATTENTION_CHANNELS[trained["name"]]
    assert report.saved_model_attention_channels(trained["export_dir"]) == channels
    if not channels:
        assert written == []
        return
    assert len(written) == 3 and all(path.endswith(".png") and os.path.exists(path) for path in written)
    image = tf.io.decode_png(tf.io.read_file(written[0])).numpy()
    assert image.shape == (256, 192, 3)                    # the crop enlarged like the skeleton overlays
    markdown = report.render_markdown(
        {"dataset": "coco", "blessed": True, "candidate": trained["export_dir"], "num_persons": 3,
         "metrics": {"AP": 0.5}}, {}, [], evaluation_dir, written)
    assert "## Attention maps" in markdown and os.path.relpath(written[0], evaluation_dir) in markdown
    summary_path = os.path.join(trained["model_dir"], task.SUMMARY_FILE)
    assert json.load(open(summary_path))["steps"] == STEPS
