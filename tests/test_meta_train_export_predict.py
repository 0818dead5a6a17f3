"""Any keypoint set end to end (issue 23): ExampleGen -> a few training steps -> export -> pipeline.predict
on the real CrowdPose, AP-10K and OneHand10K samples, with the meta's skeleton drawn; and the export's
in-graph flip test under each meta's flip index (pairs for CrowdPose / AP-10K, the identity for hands).

Everything is tiny: 64x48 crops, a 3-stage SimpleBaseline R18 with 32-filter deconvolutions, two
training steps. One ExampleGen run per set is shared by the tests (module fixture). The training test is
marked slow (about 70 s for the three sets on a shared 2-core machine); the flip tests take ~4 s a set.
"""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import example_gen
from pipeline import predict
from pose import draw
from pose.codec import HeatmapCodec
from pose.config import build_config
from pose.images import decode_image_tf
from schemas import dataset_meta, serving
from schemas import examples as examples_layout
from tests.test_example_gen import IN_MEMORY
from tests.test_export import RenderGaussians
from trainer import export, task

SETS = {"crowdpose_mmpose2": "test_crowdpose.json", "ap10k_mmpose2": "test_ap10k.json",
        "onehand10k_mmpose4": "test_onehand10k.json"}
TINY_MODEL = {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [32, 32]}
STEPS = 2


def _config(shared_data, folder, flip_test=True):
    return build_config({
        "dataset_meta": os.path.join(shared_data, folder, "dataset_meta.json"),
        "model": TINY_MODEL,
        "data": {"input_size": [64, 48]},
        "train": {"batch_size": 2, "epochs": 100, "log_every_steps": 1, "checkpoint_every_steps": STEPS},
        "eval": {"flip_test": flip_test},
    }, name=f"meta_{folder}")


@pytest.fixture(scope="module", params=sorted(SETS))
def examples(request, shared_data, tmp_path_factory):
    """ExampleGen with the set's meta on its annotation file (as train and eval split)."""
    folder = request.param
    config = _config(shared_data, folder)
    annotations = os.path.join(shared_data, folder, SETS[folder])
    images = os.path.join(shared_data, folder, "images")
    out_dir = str(tmp_path_factory.mktemp(folder) / "examples")
    manifest = example_gen.run_example_gen(config["dataset"], out_dir, config, train_annotations=annotations,
                                           train_images=images, eval_annotations=annotations,
                                           eval_images=images, beam_args=IN_MEMORY)
    files = tf.io.gfile.glob(examples_layout.shard_pattern(out_dir, "eval"))
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")]
    assert len(serialized) == manifest["splits"]["eval"] > 0
    return dict(folder=folder, config=config, out_dir=out_dir, manifest=manifest, serialized=serialized,
                schema=dataset_meta.schema_for(config), annotations=annotations, images=images)


@pytest.mark.slow   # ~15-30 s per set on a shared 2-core machine (train + export + predict)
def test_train_export_predict_draws_the_meta_skeleton(examples, tmp_path, monkeypatch):
    config, schema, folder = examples["config"], examples["schema"], examples["folder"]
    model_dir = str(tmp_path / "model")
    summary = task.train_and_export(examples["out_dir"], config, model_dir, max_steps=STEPS, log=lambda line: None)
    assert np.all(np.isfinite([loss for _, loss in summary["history"]]))
    export_dir = os.path.join(model_dir, serving.SAVED_MODEL_DIR)
    # K output channels = the meta's joint count, in the raw heatmaps signature and in serving_default.
    loaded = tf.saved_model.load(export_dir)
    crops = tf.zeros([1, 64, 48, 3], tf.float32)
    assert loaded.signatures[serving.HEATMAPS](images=crops)[serving.OUTPUT_HEATMAPS].shape == (
        1, 16, 12, schema.num_joints)
    result = loaded.signatures[serving.SERVING_DEFAULT](examples=tf.constant(examples["serialized"]))
    assert result[serving.OUTPUT_KEYPOINTS_CROP].shape == (len(examples["serialized"]), schema.num_joints, 2)
    assert dataset_meta.read_serving_meta(export_dir).hash == schema.hash

    # predict on the set's images, one box per ground-truth annotation (no category: the default class).
    with open(examples["annotations"]) as handle:
        gt = json.load(handle)
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps([{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0}
                                    for a in gt["annotations"]]))
    drawn = []
    original = draw.draw_poses

    def spy(image, keypoints, scores, drawn_schema, *args, **kwargs):
        drawn.append((np.asarray(keypoints).shape, drawn_schema))
        return original(image, keypoints, scores, drawn_schema, *args, **kwargs)

    monkeypatch.setattr(draw, "draw_poses", spy)
    out = str(tmp_path / "predict")
    assert predict.main(["--model", model_dir, "--images", examples["images"], "--out", out,
                         "--det-file", str(det_file)]) == 0
    with open(os.path.join(out, predict.SUMMARY_FILE)) as handle:
        predict_summary = json.load(handle)
    with open(os.path.join(out, predict.RESULTS_FILE)) as handle:
        results = json.load(handle)
    assert predict_summary["dataset"] == schema.name and predict_summary["num_joints"] == schema.num_joints
    assert predict_summary["images"] == len(gt["images"])
    assert results and all(len(r["keypoints"]) == 3 * schema.num_joints for r in results)
    assert {r["image_id"] for r in results} <= {image["id"] for image in gt["images"]}
    # The overlay of every image is drawn with the meta's skeleton, K joints per person.
    assert len(drawn) == len(gt["images"])
    assert all(s.hash == schema.hash and s.skeleton == schema.skeleton for _, s in drawn)
    assert all(shape[-2:] == (schema.num_joints, 2) for shape, _ in drawn)
    assert sum(shape[0] for shape, _ in drawn if len(shape) == 3) >= len(results)


def _render_model(config, num_joints):
    """Image-dependent Gaussian peaks, joint k of amplitude 1 + 0.05 k: the flip-averaged maps of joint k
    mix joint k and joint flip_index[k], so a wrong flip index changes the decoded scores."""
    height, width = config["data"]["input_size"]
    inputs = keras.Input((height, width, 3))
    pooled = keras.layers.AveragePooling2D(config["data"]["heatmap_stride"])(inputs / 255.0)
    scores = keras.layers.Conv2D(num_joints, 1, use_bias=False,
                                 kernel_initializer=keras.initializers.RandomUniform(-1.0, 1.0, seed=7))(pooled)
    return keras.Model(inputs, RenderGaussians()(scores))


def test_export_flip_test_swaps_channels_with_the_meta_flip_index(examples, tmp_path):
    """serving_default's in-graph flip test = a NumPy flip test with schema.flip_index (not the identity,
    not COCO's), for a meta with flip pairs and for the hand meta without any."""
    config, schema = examples["config"], examples["schema"]
    codec = HeatmapCodec.from_config(config)
    keras.utils.set_random_seed(7)
    model = _render_model(config, schema.num_joints)
    export_dir = str(tmp_path / serving.SAVED_MODEL_DIR)
    export.export_serving_model(model, config, codec, export_dir)
    loaded = tf.saved_model.load(export_dir)
    result = loaded.signatures[serving.SERVING_DEFAULT](examples=tf.constant(examples["serialized"]))
    scores, keypoints = result[serving.OUTPUT_SCORES].numpy(), result[serving.OUTPUT_KEYPOINTS_CROP].numpy()

    parsed = [tf.train.Example.FromString(s).features.feature["image/encoded"].bytes_list.value[0]
              for s in examples["serialized"]]
    crops = np.stack([decode_image_tf(encoded).numpy() for encoded in parsed]).astype(np.float32)
    direct = np.asarray(model(crops, training=False))
    mirrored = np.asarray(model(crops[:, :, ::-1].copy(), training=False))[:, :, ::-1]

    def reference(index):
        return codec.decode(0.5 * (direct + mirrored[..., index]))

    # The raw heatmaps signature has no flip: the model's own output.
    raw = loaded.signatures[serving.HEATMAPS](images=tf.constant(crops))[serving.OUTPUT_HEATMAPS].numpy()
    np.testing.assert_allclose(raw, direct, atol=1e-5)
    expected_keypoints, expected_scores = reference(schema.flip_index)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    confident = expected_scores > 0.5 * expected_scores.max()
    np.testing.assert_allclose(keypoints[confident], expected_keypoints[confident], atol=1e-2)
    identity = np.arange(schema.num_joints)
    if schema.flip_pairs:   # the test can tell: the identity would give other scores
        assert not np.allclose(reference(identity)[1], scores, atol=1e-3)
        for left, right in schema.flip_pairs:
            assert schema.flip_index[left] == right and schema.flip_index[right] == left
    else:                   # the hand set: a mirrored hand is the same hand, channels unchanged
        np.testing.assert_array_equal(schema.flip_index, identity)
