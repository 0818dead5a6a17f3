"""Stacked Hourglass with soft-gated skip connections (Bulat et al., FG 2020): gate, blocks, sizes, configs.

Tiny networks (16-32 features, 2 levels) keep every test at a few seconds; the
two shipped configs are built once each for their sizes. The short training run
on the embedded data and the export are in tests/test_variants_train_export.py.
"""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pose.config import build_config, load_config
from trainer import flops
from trainer.losses import keypoint_mse
from trainer.models import build_model, hourglass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _block_model(in_channels, filters, options, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 6, in_channels))
    return keras.Model(inputs, hourglass.residual(inputs, filters, "block", options))


def _copy_weights_by_name(source, target):
    """Copies every weight of ``source`` into the same-named layer of ``target``; returns the layers not set."""
    untouched = []
    by_name = {layer.name: layer for layer in source.layers}
    for layer in target.layers:
        if layer.name in by_name:
            layer.set_weights(by_name[layer.name].get_weights())
        elif layer.weights:
            untouched.append(layer.name)
    return untouched


def _randomise_batch_norm(model, rng):
    """Non-trivial BN statistics, so that the comparison does not hinge on identity BNs."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, variance.shape)])


@pytest.mark.parametrize("block", ["bottleneck", "multiscale"])
@pytest.mark.parametrize("in_channels", [16, 8])     # identity, and the 1x1 projection when channels change
def test_gates_at_one_equal_the_ungated_block_exactly(block, in_channels):
    gated = _block_model(in_channels, 16, hourglass.BlockOptions(block=block, gated_skip=True), seed=1)
    plain = _block_model(in_channels, 16, hourglass.BlockOptions(block=block, gated_skip=False), seed=2)
    rng = np.random.default_rng(0)
    _randomise_batch_norm(plain, rng)
    untouched = _copy_weights_by_name(plain, gated)
    assert untouched == ["block_gate"]                       # the gate is the only extra weight
    np.testing.assert_array_equal(gated.get_layer("block_gate").get_weights()[0], np.ones((1, 1, 16, 1)))
    x = rng.normal(0, 1, (3, 8, 6, in_channels)).astype("float32")
    for training in (False, True):
        np.testing.assert_array_equal(np.asarray(gated(x, training=training)),
                                      np.asarray(plain(x, training=training)))
    # alpha scales the identity path per channel: y = alpha * shortcut + F(x).
    alpha = rng.uniform(-1, 2, 16).astype("float32")
    gated.get_layer("block_gate").set_weights([alpha.reshape(1, 1, 16, 1)])
    shortcut = x if in_channels == 16 else np.asarray(plain.get_layer("block_shortcut_conv")(x))
    branch = np.asarray(plain(x, training=False)) - shortcut
    np.testing.assert_allclose(np.asarray(gated(x, training=False)), alpha * shortcut + branch, atol=1e-5)


def test_multiscale_block_concatenates_three_chained_3x3_convs():
    model = _block_model(16, 16, hourglass.BlockOptions(block="multiscale"))
    kernels = [model.get_layer(f"block_conv{i}").kernel.shape for i in (1, 2, 3)]
    assert kernels == [(3, 3, 16, 8), (3, 3, 8, 4), (3, 3, 4, 4)]
    assert model.get_layer("block_concat").output.shape[-1] == 16


def test_gate_receives_a_gradient():
    model = _block_model(16, 16, hourglass.BlockOptions(block="multiscale", gated_skip=True))
    x = tf.constant(np.random.default_rng(3).normal(0, 1, (2, 8, 6, 16)), tf.float32)
    gate = model.get_layer("block_gate").kernel
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(x, training=True)))
    gradient = tape.gradient(loss, gate)
    assert gradient is not None and gradient.shape == (1, 1, 16, 1)
    assert np.all(np.isfinite(gradient.numpy())) and np.count_nonzero(gradient.numpy()) == 16


def _tiny(input_size=(64, 48), num_stacks=2, **model):
    options = {"name": "hourglass", "num_stacks": num_stacks, "num_features": 16, "depth": 2,
               "gated_skip": True, "block": "multiscale", "skip_fusion": "concat", **model}
    return build_config({"model": options, "data": {"input_size": list(input_size)}}, name="gated_test")


@pytest.mark.parametrize("input_size,num_stacks,depth", [((64, 48), 1, 2), ((72, 56), 2, 3), ((128, 96), 3, 4),
                                                         ((64, 64), 2, 4)])
def test_every_input_size_and_stack_count(input_size, num_stacks, depth):
    """Odd sizes inside the hourglass (72x56 -> 18x14 -> 9x7 -> 5x4; 128x96 -> 4x3 -> 2x2) and 1-3 stacks."""
    config = _tiny(input_size, num_stacks, depth=depth)
    model = build_model(config)
    images = np.random.default_rng(0).uniform(0, 255, (2, *input_size, 3)).astype("float32")
    outputs = model(images, training=False)
    if num_stacks == 1:                                                  # Keras unwraps a one-output list
        outputs = [outputs]
    assert isinstance(outputs, list) and len(outputs) == num_stacks     # intermediate supervision
    for output in outputs:
        assert tuple(output.shape) == (2, input_size[0] // 4, input_size[1] // 4, 17)
        assert output.dtype == tf.float32 and np.all(np.isfinite(np.asarray(output)))
    gates = [layer for layer in model.layers if layer.name.endswith("_gate")]
    blocks = [layer for layer in model.layers if layer.name.endswith("_add") and "_res" in layer.name]
    assert len(gates) == len(blocks) > 0                                 # every block is gated


@pytest.mark.parametrize("skip_fusion", ["add", "concat"])
def test_training_step_reaches_every_weight_and_lowers_the_loss(skip_fusion):
    config = _tiny(skip_fusion=skip_fusion)
    keras.utils.set_random_seed(0)
    model = build_model(config)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 64, 48, 3)).astype("float32")
    targets = rng.uniform(0, 1, (2, 16, 12, 17)).astype("float32")
    weights = np.ones((2, 17), "float32")

    def loss_value():
        return tf.reduce_mean(keypoint_mse(targets, model(images, training=True), weights))

    with tf.GradientTape() as tape:
        loss = loss_value()
    gradients = tape.gradient(loss, model.trainable_variables)
    assert not [v.path for v, g in zip(model.trainable_variables, gradients) if g is None]
    gate_gradients = [g for v, g in zip(model.trainable_variables, gradients) if "_gate" in v.path]
    assert gate_gradients and all(float(tf.reduce_max(tf.abs(g))) > 0 for g in gate_gradients)
    squared_norm = float(tf.add_n([tf.reduce_sum(tf.square(g)) for g in gradients]))
    keras.optimizers.SGD(learning_rate=0.01 * float(loss) / squared_norm).apply_gradients(
        zip(gradients, model.trainable_variables))
    assert float(loss_value()) < float(loss)


def test_ungated_default_is_unchanged():
    """Without the new keys the builder gives Newell's network (no gate, the same layer names)."""
    config = build_config({"model": {"name": "hourglass", "num_stacks": 1, "num_features": 16, "depth": 2},
                           "data": {"input_size": [64, 48]}}, name="plain")
    names = {layer.name for layer in build_model(config).layers}
    assert not any(name.endswith("_gate") or name.endswith("_concat") for name in names)
    assert {"stack1_hourglass_level2_up1_res1_add", "stack1_hourglass_level2_add"} <= names


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = build_model(_tiny())
    model.get_layer("stem_res1_gate").set_weights([np.full((1, 1, 128, 1), 0.25, "float32")])
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = np.random.default_rng(2).uniform(0, 255, (1, 64, 48, 3)).astype("float32")
    for a, b in zip(model(images, training=False), reloaded(images, training=False)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reloaded.get_layer("stem_res1_gate").get_weights()[0], 0.25)


# (config, trainable parameters, multiply-adds) of the shipped gated configs (regression guard; docs/models.md)
SHIPPED = [("configs/coco/hourglass4_gated_256x192.yaml", 9_907_156, 9.2517e9),
           ("configs/mpii/hourglass4_gated_256x256.yaml", 9_906_144, 12.3315e9)]


@pytest.mark.parametrize("path,params,macs", SHIPPED)
def test_shipped_configs_sizes(path, params, macs):
    config = load_config(os.path.join(ROOT, path))
    assert config["model"]["gated_skip"] is True
    model = build_model(config)
    assert flops.trainable_params(model) == params
    assert abs(flops.count_macs(model) - macs) / macs < 1e-4
    assert len(model.outputs) == 4
    assert tuple(model.outputs[-1].shape[1:]) == (*config["data"]["heatmap_size"], 17 if "coco" in path else 16)


@pytest.mark.parametrize("model_config,match", [
    ({"gated_skip": "yes"}, "model.gated_skip"),
    ({"block": "hpm"}, "model.block"),
    ({"skip_fusion": "sum"}, "model.skip_fusion"),
    ({"block": "multiscale", "num_features": 18}, "divisible by 4"),
    ({"gate_init": True}, "model.gate_init"),
    ({"gate_init": float("nan")}, "model.gate_init"),
])
def test_invalid_gated_options_raise(model_config, match):
    with pytest.raises(ValueError, match=match):
        build_model(build_config({"model": {"name": "hourglass", **model_config}, "data": {"input_size": [64, 48]}}))


def test_gate_init_sets_every_gate():
    model = build_model(_tiny(gate_init=0.5, num_stacks=1))
    gates = [layer.get_weights()[0] for layer in model.layers if layer.name.endswith("_gate")]
    assert gates and all(np.all(gate == 0.5) for gate in gates)
