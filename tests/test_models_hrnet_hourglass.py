"""HRNet and stacked Hourglass: published sizes, output shapes, a training step, export/reload.

Sizes are checked against the DarkPose README (17 COCO joints): trainable
parameters within 2%, multiply-adds (:mod:`trainer.flops`) within 10% (and within
2% in the tables' unit of 1024**3).
Training steps and exports use real person crops of
``../shared/data/coco_val2017_mmpose4`` (cropped like ExampleGen does).

Model builds dominate the runtime (~2-10 s CPU each), so the two models
several tests use are built once per module. The SavedModel export tests
are marked slow (tracing and saving the serving graph takes ~35-50 s CPU per model).
"""
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.config import build_config, load_config
from schemas import features, serving
from schemas.keypoints import get_schema
from tests.records_util import coco_person_records
from trainer import flops
from trainer.losses import keypoint_mse
from trainer.models import build_model, hourglass, hrnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config -> (published params in millions, published GFLOPs) from the DarkPose README
PUBLISHED = {
    "coco/w32_128x96": (28.5, 1.8),
    "coco/w48_128x96": (63.6, 3.6),
    "coco/hourglass4_128x96": (13.0, 2.7),
    "coco/hourglass8_128x96": (25.1, 4.9),
    "coco/w32_256x192": (28.5, 7.1),
}
# configs whose sizes the README gives at other inputs: output shapes only
SHAPE_ONLY = ("coco/w32_384x288", "coco/w48_384x288", "mpii/w32_256x256")
# the soft-gated hourglass configs (issue 15): sizes, shapes and training in tests/test_hourglass_gated.py
COVERED_ELSEWHERE = ("coco/hourglass4_gated_256x192", "mpii/hourglass4_gated_256x256")


def _config_path(name: str) -> str:
    return os.path.join(ROOT, "configs", name + ".yaml")


# models used by several tests (built once per module); the others are built per test and dropped
REUSED = ("coco/w32_128x96", "coco/hourglass4_128x96")


@pytest.fixture(scope="module")
def models():
    """``models(name) -> (config, keras.Model)``; the :data:`REUSED` ones are cached for the module."""
    cache = {}

    def get(name):
        if name in cache:
            return cache[name]
        config = load_config(_config_path(name))
        keras.utils.set_random_seed(0)
        built = (config, build_model(config))
        if name in REUSED:
            cache[name] = built
        return built

    yield get
    cache.clear()
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def real_records(shared_data):
    """Real COCO person crops at 128x96 with their DARK targets (records of schemas.features)."""
    config = load_config(_config_path("coco/w32_128x96"))
    codec = HeatmapCodec.from_config(config)
    folder = os.path.join(shared_data, "coco_val2017_mmpose4")
    records = coco_person_records(os.path.join(folder, "person_keypoints_val2017_mmpose4.json"),
                                  os.path.join(folder, "images"), config, codec, limit=4)
    assert len(records) == 4
    return records


def _batch(records):
    images = np.stack([tf.io.decode_jpeg(r["image/encoded"]).numpy() for r in records]).astype(np.float32)
    heatmaps = np.stack([r["heatmaps/encoded"] for r in records]).astype(np.float32)
    weights = np.stack([r["target_weight"] for r in records]).astype(np.float32)
    return images, heatmaps, weights


def _expected_output_shape(config):
    return (*config["data"]["heatmap_size"], get_schema(config["dataset"]).num_joints)


def _check_outputs(config, outputs, symbolic=False):
    """The builder contract: one (B, H_hm, W_hm, K) float32 tensor, or a list (hourglass).

    ``symbolic``: ``outputs`` are the model's static (Keras) outputs; values are not checked.
    """
    expected = _expected_output_shape(config)
    if config["model"]["name"] == "hourglass":
        assert isinstance(outputs, (list, tuple)) and len(outputs) == config["model"]["num_stacks"]
    else:
        outputs = [outputs]
    for output in outputs:
        assert tuple(output.shape[1:]) == expected
        assert output.dtype in (tf.float32, "float32")
        if not symbolic:
            assert np.all(np.isfinite(np.asarray(output)))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_gflops(models, name):
    config, model = models(name)
    published_params, published_gflops = PUBLISHED[name]
    params = flops.trainable_params(model) / 1e6
    gflops = flops.gflops(model)
    assert abs(params - published_params) / published_params < 0.02, (name, params)
    assert abs(gflops - published_gflops) / published_gflops < 0.10, (name, gflops)
    # The tables' "GFLOPs" are multiply-adds / 1024**3 (HRNet's get_model_summary): then they agree to 2%.
    binary = flops.gflops(model, binary=True)
    assert abs(binary - published_gflops) / published_gflops < 0.02, (name, binary)
    assert math.isclose(binary * 1024 ** 3, gflops * 1e9)
    assert tuple(model.input_shape[1:]) == (*config["data"]["input_size"], 3)
    _check_outputs(config, model.outputs if len(model.outputs) > 1 else model.outputs[0], symbolic=True)


@pytest.mark.parametrize("name", SHAPE_ONLY)
def test_output_shapes_at_config_input_size(models, name):
    config, model = models(name)
    assert tuple(model.input_shape[1:]) == (*config["data"]["input_size"], 3)
    images = np.random.default_rng(0).uniform(0, 255, (1, *config["data"]["input_size"], 3)).astype(np.float32)
    _check_outputs(config, model(images, training=False))


def test_exact_parameter_counts(models):
    """Regression guard on the architecture (the counts derived by hand in docs/models.md)."""
    assert flops.trainable_params(models("coco/w32_128x96")[1]) == 28_536_113
    assert flops.trainable_params(models("coco/hourglass4_128x96")[1]) == 13_020_612


@pytest.mark.parametrize("name", REUSED)
def test_one_training_step_on_real_crops(models, real_records, name):
    """A gradient step with the real loss (summed over hourglass stacks) reaches every weight and lowers the loss."""
    config, model = models(name)
    images, heatmaps, weights = _batch(real_records[:2])

    def loss_value():
        outputs = model(images, training=True)
        return tf.reduce_mean(keypoint_mse(heatmaps, outputs, weights)), outputs

    with tf.GradientTape() as tape:
        loss, outputs = loss_value()
    _check_outputs(config, outputs)
    gradients = tape.gradient(loss, model.trainable_variables)
    # Every weight is reached by the loss (all HRNet branches, every hourglass stack).
    missing = [v.path for v, g in zip(model.trainable_variables, gradients) if g is None]
    assert not missing
    assert all(np.all(np.isfinite(g.numpy())) for g in gradients)
    assert np.isfinite(float(loss)) and float(loss) > 0
    # Plain gradient descent sized for a first-order decrease of 1% of the loss.
    squared_norm = float(tf.add_n([tf.reduce_sum(tf.square(g)) for g in gradients]))
    assert squared_norm > 0
    optimizer = keras.optimizers.SGD(learning_rate=0.01 * float(loss) / squared_norm)
    before = model.trainable_variables[-1].numpy().copy()
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    assert not np.array_equal(before, model.trainable_variables[-1].numpy())
    new_loss, _ = loss_value()
    assert float(new_loss) < float(loss)


@pytest.mark.slow  # ~35-50 s CPU each: tracing the three signatures, saving and reloading
@pytest.mark.parametrize("name", REUSED)
def test_export_and_reload(models, real_records, tmp_path, name):
    from trainer.export import export_serving_model

    config, model = models(name)
    codec = HeatmapCodec.from_config(config)
    export_dir = os.path.join(tmp_path, serving.SAVED_MODEL_DIR)
    export_serving_model(model, config, codec, export_dir)
    loaded = tf.saved_model.load(export_dir)
    assert {serving.SERVING_DEFAULT, serving.PREDICT_IMAGE, serving.HEATMAPS} <= set(loaded.signatures)

    images, _, _ = _batch(real_records)
    direct = model(images, training=False)
    if isinstance(direct, (list, tuple)):
        direct = direct[-1]  # the last stack is the prediction
    exported = loaded.signatures[serving.HEATMAPS](images=tf.constant(images))["heatmaps"]
    np.testing.assert_allclose(exported.numpy(), np.asarray(direct), rtol=1e-4, atol=1e-5)
    # The session loader (saved_model_cli run, TF Serving) restores every variable too.
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir).signature_def[serving.HEATMAPS]
        from_session = session.run(signature.outputs[serving.OUTPUT_HEATMAPS].name,
                                   {signature.inputs[serving.INPUT_IMAGES].name: np.asarray(images)})
    np.testing.assert_allclose(from_session, exported.numpy(), rtol=1e-5, atol=1e-6)

    serialized = tf.constant([features.build_example(r).SerializeToString() for r in real_records])
    result = loaded.signatures[serving.SERVING_DEFAULT](examples=serialized)
    num_joints = get_schema(config["dataset"]).num_joints
    assert result[serving.OUTPUT_KEYPOINTS_CROP].shape == (len(real_records), num_joints, 2)
    assert result[serving.OUTPUT_SCORES].shape == (len(real_records), num_joints)
    assert np.all(np.isfinite(result[serving.OUTPUT_KEYPOINTS_IMAGE].numpy()))
    np.testing.assert_array_equal(result["image_id"].numpy(), [r["image/id"] for r in real_records])


def test_keras_file_round_trip(models, tmp_path):
    """model.keras (what the trainer writes) reloads without custom objects and predicts the same."""
    config, model = models("coco/hourglass4_128x96")
    path = os.path.join(tmp_path, serving.KERAS_FILE)
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = np.random.default_rng(1).uniform(0, 255, (1, *config["data"]["input_size"], 3)).astype(np.float32)
    for a, b in zip(model(images, training=False), reloaded(images, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# -- small, fast checks ---------------------------------------------------------------------------------------------

def _conv_reference_macs(out_hw, kernel, c_in, c_out):
    return out_hw[0] * out_hw[1] * kernel[0] * kernel[1] * c_in * c_out


def test_flops_matches_hand_count_per_layer_type():
    inputs = keras.Input((15, 10, 6))
    a = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)                  # 8x5
    b = keras.layers.Conv2D(8, (1, 3), groups=2, padding="valid", name="grouped")(a)               # 8x3
    c = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="depthwise")(b)   # 8x3x16
    d = keras.layers.SeparableConv2D(4, 3, padding="same", name="separable")(c)                    # 8x3x4
    e = keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same", name="transpose")(d)         # 16x6x5
    f = keras.layers.Dense(7, name="dense")(e)
    g = keras.layers.MaxPooling2D(name="pool")(f)
    model = keras.Model(inputs, g)
    table = flops.layer_macs(model)
    expected = {
        "conv": _conv_reference_macs((8, 5), (3, 3), 6, 8),
        "grouped": _conv_reference_macs((8, 3), (1, 3), 4, 8),
        "depthwise": 8 * 3 * 9 * 8 * 2,
        "separable": 8 * 3 * (9 * 16 + 16 * 4),
        "transpose": 16 * 6 * 16 * 4 * 5,  # the papers' convention: kernel weights x output positions
        "dense": 16 * 6 * 5 * 7,
    }
    assert table == expected
    assert flops.count_macs(model) == sum(expected.values())
    physical = flops.layer_macs(model, transposed="input")
    assert physical == {**expected, "transpose": 8 * 3 * 16 * 4 * 5}  # each input position scatters one kernel
    with pytest.raises(ValueError, match="transposed"):
        flops.layer_macs(model, transposed="both")
    # A model called inside another counts once per call; batch size is irrelevant.
    outer_inputs = keras.Input((15, 10, 6))
    outer = keras.Model(outer_inputs, [model(outer_inputs), model(outer_inputs)])
    assert flops.count_macs(outer) == 2 * sum(expected.values())


def test_flops_rejects_dynamic_spatial_shapes():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs))
    with pytest.raises(ValueError, match="not static"):
        flops.count_macs(model)


@pytest.mark.parametrize("factor, size, target", [(2, (2, 2), (4, 3)), (4, (3, 2), (9, 8)), (2, (3, 3), (6, 6))])
def test_upsample_to_matches_numpy_repeat_and_crop(factor, size, target):
    """Nearest upsampling cropped to the skip branch (odd sizes after "same" stride-2 convs)."""
    values = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
    for upsample in (lambda x, ref: hrnet.upsample_to(x, ref, factor, "up"),
                     lambda x, ref: hourglass.upsample_to(x, ref, "up") if factor == 2 else None):
        inputs = keras.Input(size + (3,))
        reference = keras.Input(target + (3,))
        output = upsample(inputs, reference)
        if output is None:
            continue
        model = keras.Model([inputs, reference], output)
        result = model([values, np.zeros((2, *target, 3), np.float32)])
        expected = values.repeat(factor, axis=1).repeat(factor, axis=2)[:, :target[0], :target[1]]
        np.testing.assert_array_equal(np.asarray(result), expected)


def test_upsample_to_rejects_a_too_small_result():
    with pytest.raises(ValueError, match="smaller than"):
        hrnet.upsample_to(keras.Input((2, 2, 3)), keras.Input((5, 4, 3)), 2, "up")


def test_fuse_handles_odd_branch_sizes():
    """HRNet fusion at a 64x48 input: branches 16x12, 8x6, 4x3, 2x2 (ceil) fuse back to each size."""
    widths = [4, 8, 16, 32]
    sizes = [(16, 12), (8, 6), (4, 3), (2, 2)]
    inputs = [keras.Input((h, w, c)) for (h, w), c in zip(sizes, widths)]
    outputs = hrnet.fuse(inputs, widths, len(inputs), "fuse_test", synchronized=False)
    assert [tuple(o.shape[1:]) for o in outputs] == [(h, w, c) for (h, w), c in zip(sizes, widths)]


@pytest.mark.parametrize("model_config, match", [
    ({"name": "hrnet", "width": 0}, "model.width"),
    ({"name": "hrnet", "width": 32, "stacks": 2}, "unknown model keys"),
    ({"name": "hourglass", "num_stacks": 0}, "model.num_stacks"),
    ({"name": "hourglass", "num_features": 255}, "model.num_features"),
    ({"name": "hourglass", "sync_batchnorm": "yes"}, "model.sync_batchnorm"),
])
def test_invalid_model_options_raise(model_config, match):
    with pytest.raises(ValueError, match=match):
        build_model(build_config({"model": model_config, "data": {"input_size": [64, 48]}}))


@pytest.mark.parametrize("name", ["hrnet", "hourglass"])
def test_heatmap_stride_other_than_4_is_rejected(name):
    config = build_config({"model": {"name": name}, "data": {"input_size": [64, 48], "heatmap_stride": 2}})
    with pytest.raises(ValueError, match="heatmap_stride=4"):
        build_model(config)


def test_every_config_file_of_these_models_is_covered():
    covered = set(PUBLISHED) | set(SHAPE_ONLY) | set(COVERED_ELSEWHERE)
    for folder in ("coco", "mpii"):
        for file_name in sorted(os.listdir(os.path.join(ROOT, "configs", folder))):
            config = load_config(os.path.join(ROOT, "configs", folder, file_name))
            if config["model"]["name"] in ("hrnet", "hourglass"):
                assert config["name"] in covered
    assert math.isclose(load_config(_config_path("coco/w32_128x96"))["data"]["sigma"], 1.0)
