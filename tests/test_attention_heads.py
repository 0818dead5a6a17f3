"""SimpleBaseline attention heads (after Chu et al., CVPR 2017): the maps, the vectorised part-wise head
against a per-joint NumPy reference, the attention model, sizes, options, the overlay drawing.

Tiny networks (ResNet-18, 3 stages, two 16-filter deconvolutions at 64x48); the
short training runs, the export and the report are in tests/test_variants_train_export.py.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.config import build_config, load_config
from pose.overlay import blend_maps
from schemas import serving
from trainer import export, flops
from trainer.models import ATTENTION_LAYER, attention_model, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(attention, **model):
    return build_config({"model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                                   "deconv_filters": [16, 16], "attention": attention, **model},
                         "data": {"input_size": [64, 48]}}, name="attention_test")


def _images(count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, 64, 48, 3)).astype("float32")


def _randomise_head(model, seed=0):
    """Larger head weights than the N(0, 0.001) start, so that the maps vary over the image."""
    rng = np.random.default_rng(seed)
    for name in ("attention_conv", "final_conv"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.3, w.shape).astype("float32") for w in layer.get_weights()])


def _features_model(model):
    return keras.Model(model.inputs[0], model.get_layer("deconv2_relu").output)


def test_holistic_map_reweights_every_channel_before_the_final_conv():
    model = build_model(_config("holistic"))
    _randomise_head(model)
    images = _images()
    features = np.asarray(_features_model(model)(images, training=False)).astype(np.float64)   # (B, H, W, C)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("final_conv").get_weights())
    attention_kernel, attention_bias = (w.astype(np.float64) for w in model.get_layer("attention_conv").get_weights())
    # Reference: Phi = sigmoid(conv3x3(f)) (zero padding), h = Phi * f, heatmaps = conv1x1(h).
    padded = np.pad(features, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = features.shape[1:3]
    scores = attention_bias + sum(np.einsum("bhwc,co->bhwo", padded[:, dy:dy + height, dx:dx + width],
                                            attention_kernel[dy, dx]) for dy in range(3) for dx in range(3))
    phi = 1.0 / (1.0 + np.exp(-scores))
    expected = np.einsum("bhwc,ck->bhwk", phi * features, kernel[0, 0]) + bias
    heatmaps, maps = attention_model(model)(images, training=False)
    assert maps.shape == (2, 16, 12, 1)
    np.testing.assert_allclose(np.asarray(maps), phi, atol=1e-5)
    np.testing.assert_allclose(np.asarray(heatmaps), expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(heatmaps), np.asarray(model(images, training=False)))


def test_partwise_head_equals_the_per_joint_reference():
    """Joint k's heatmap is the final 1x1 conv applied to its own reweighted features Phi_k * f
    (bias reweighted with it): a slow loop over joints in NumPy against the layer's single product."""
    model = build_model(_config("partwise"))
    _randomise_head(model)
    images = _images(3, seed=1)
    features = np.asarray(_features_model(model)(images, training=False)).astype(np.float64)
    kernel, bias = (w.astype(np.float64) for w in model.get_layer("final_conv").get_weights())
    heatmaps, maps = attention_model(model)(images, training=False)
    maps = np.asarray(maps).astype(np.float64)
    assert maps.shape == (3, 16, 12, 17) and np.all((maps > 0) & (maps < 1))
    expected = np.stack([maps[..., k] * (np.einsum("bhwc,c->bhw", features, kernel[0, 0, :, k]) + bias[k])
                         for k in range(17)], axis=-1)
    reweighted_then_conv = np.stack([np.einsum("bhwc,c->bhw", maps[..., k:k + 1] * features, kernel[0, 0, :, k])
                                     + maps[..., k] * bias[k] for k in range(17)], axis=-1)
    np.testing.assert_allclose(expected, reweighted_then_conv, atol=1e-9)
    np.testing.assert_allclose(np.asarray(heatmaps), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ["holistic", "partwise"])
def test_attention_maps_get_a_gradient_and_training_sees_heatmaps_only(attention):
    model = build_model(_config(attention))
    assert len(model.outputs) == 1 and model.output_shape == (None, 16, 12, 17)
    images = tf.constant(_images())
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(images, training=True) - 0.5))
    kernel = model.get_layer("attention_conv").kernel
    gradient = tape.gradient(loss, kernel)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0


def test_attention_model_survives_keras_file_and_is_none_without_attention(tmp_path):
    model = build_model(_config("partwise"))
    _randomise_head(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = attention_model(keras.models.load_model(path))
    images = _images()
    for a, b in zip(attention_model(model)(images, training=False), reloaded(images, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert attention_model(build_model(_config(None))) is None
    assert ATTENTION_LAYER not in {layer.name for layer in build_model(_config(None)).layers}


def test_serving_module_adds_attention_only_for_attention_models():
    """The heatmaps signature's function (traced, not saved: saving is tested in test_variants_train_export)."""
    images = tf.constant(_images())
    for attention, channels in ((None, None), ("holistic", 1), ("partwise", 17)):
        config = _config(attention)
        model = build_model(config)
        module = export.PoseServingModule(model, config, HeatmapCodec.from_config(config))
        outputs = module.heatmaps(images)
        assert module.has_attention is (attention is not None)
        expected_keys = {serving.OUTPUT_HEATMAPS} | ({serving.OUTPUT_ATTENTION} if attention else set())
        assert set(outputs) == expected_keys
        np.testing.assert_allclose(outputs[serving.OUTPUT_HEATMAPS].numpy(), np.asarray(model(images)), atol=1e-6)
        if attention:
            assert outputs[serving.OUTPUT_ATTENTION].shape == (2, 16, 12, channels)
            empty = module.heatmaps(tf.zeros([0, 64, 48, 3]))
            assert empty[serving.OUTPUT_ATTENTION].shape == (0, 16, 12, channels)


# (config, trainable parameters, multiply-adds): SimpleBaseline R50 + the attention conv (3x3x256xA + A)
PLAIN_RES50_PARAMS = 33_999_697          # configs/coco/res50_256x192.yaml (tests/test_simple_baseline.py: 34.0M)
SHIPPED = [("configs/coco/res50_attention_holistic_256x192.yaml", 34_002_002, 9.6613e9),
           ("configs/coco/res50_attention_partwise_256x192.yaml", 34_038_882, 9.7746e9)]


@pytest.mark.parametrize("path,params,macs", SHIPPED)
def test_shipped_configs_sizes(path, params, macs):
    config = load_config(os.path.join(ROOT, path))
    model = build_model(config)
    maps = 1 if config["model"]["attention"] == "holistic" else 17
    assert flops.trainable_params(model) == params == PLAIN_RES50_PARAMS + 3 * 3 * 256 * maps + maps
    assert abs(flops.count_macs(model) - macs) / macs < 1e-4
    assert model.output_shape == (None, 64, 48, 17)


@pytest.mark.parametrize("model_config,match", [
    ({"attention": "spatial"}, "model.attention"),
    ({"attention": "partwise", "final_kernel": 3}, "final_kernel: 1"),
])
def test_invalid_attention_options_raise(model_config, match):
    with pytest.raises(ValueError, match=match):
        build_model(_config(**model_config))


def test_holistic_with_3x3_final_kernel_builds():
    model = build_model(_config("holistic", final_kernel=3))
    assert model.get_layer("final_conv").kernel.shape == (3, 3, 16, 17)


def test_blend_maps_colours_and_aligns_corners():
    images = np.full((2, 8, 6, 3), 100, np.uint8)
    maps = np.zeros((2, 2, 2, 3), np.float32)
    maps[1, 0, 0, 2] = 1.0                       # one joint's map, top-left cell only
    blended = blend_maps(images, maps, opacity=1.0)
    assert blended.shape == (2, 8, 6, 3) and blended.dtype == np.uint8
    # Zero maps are jet's blue everywhere; the top-left crop pixel is at the top-left cell's value
    # (corners aligned) and is red; the far corner is blue.
    assert np.all(blended[0, ..., 2] > 100) and np.all(blended[0, ..., 0] == 0)
    assert blended[1, 0, 0, 0] > 100 and blended[1, 0, 0, 2] == 0
    np.testing.assert_array_equal(blended[1, -1, -1], blended[0, -1, -1])
    half = blend_maps(images, maps[..., 0], opacity=0.0)
    np.testing.assert_array_equal(half, images)
    with pytest.raises(ValueError, match="same N"):
        blend_maps(images, maps[:1])
    with pytest.raises(ValueError, match="opacity"):
        blend_maps(images, maps, opacity=1.5)
    assert blend_maps(images[:0], maps[:0]).shape == (0, 8, 6, 3)
