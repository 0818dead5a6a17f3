"""``model.pretrained``: ImageNet backbones (torchvision / HRNet ``.pth``, keras.applications ``.h5``) before training.

The backbone must come out of the file exactly (its features equal the
reference network's), the head stays initialised, and the report lists what
was loaded, left initialised and unused.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose.config import build_config
from schemas import jsonio
from trainer import import_weights, pretrained
from trainer.models import build_model

RELATIVE_TOLERANCE = 1e-4


def config_with(model, input_size=(128, 96)):
    return build_config({"model": model, "data": {"input_size": list(input_size)}}, name="pretrained_test")


def relative_difference(ours, expected):
    return np.abs(ours - expected).max() / np.abs(expected).max()


def features(model, layer_name, images):
    """The output of ``model``'s layer ``layer_name`` on ``images`` (inference mode)."""
    import keras

    return keras.Model(model.input, model.get_layer(layer_name).output)(images, training=False).numpy()


# ---------------------------------------------------------------------------------------------------------------
# PyTorch ImageNet checkpoints
# ---------------------------------------------------------------------------------------------------------------

def _torch_helpers():
    torch = pytest.importorskip("torch")
    import test_import_weights as helpers  # the shared input conventions (RGB, ImageNet normalisation)

    torch.set_num_threads(2)
    return torch, helpers


def test_torchvision_resnet50_backbone(tmp_path):
    """resnet50 ImageNet names (torchvision): backbone exact, fc unused, deconvolutions and final conv initialised."""
    torch, helpers = _torch_helpers()
    from torch_refs import randomize
    from torch_refs.resnet import ResNet

    images = helpers.random_images((128, 96), 1, seed=5)
    network = randomize(ResNet(50), 0, helpers.torch_input(images))
    path = str(tmp_path / "resnet50-0676ba61.pth")
    torch.save(network.state_dict(), path)
    config = config_with({"name": "simplebaseline", "depth": 50, "pretrained": path})
    run_dir = str(tmp_path / "run")
    messages = []
    model = pretrained.build_model_with_pretrained(config, run_dir, messages.append)

    with torch.no_grad():
        expected = network.features(helpers.torch_input(images)).numpy().transpose(0, 2, 3, 1)
    assert relative_difference(features(model, "conv5_block3_out", images), expected) < RELATIVE_TOLERANCE
    report = jsonio.loads(open(os.path.join(run_dir, pretrained.REPORT_FILE), encoding="utf-8").read())
    assert report["unused"] == ["fc.bias", "fc.weight"]
    head = [variable.path for layer in model.layers if layer.name.startswith(("deconv", "final_conv"))
            for variable in layer.weights]
    assert sorted(report["left_initialised"]) == sorted(head) and len(head) == 3 * 5 + 2
    assert report["counts"]["loaded"] == len(network.state_dict()) - 2 - len(report["ignored"])
    assert report["scheme"].startswith("torchvision ResNet")
    assert any("fc.bias, fc.weight" in message for message in messages)


def test_torchvision_resnet_backbone_of_the_dilated_bottom_up_model(tmp_path):
    """The bottom-up model's trunk (output stride 8: dilated stage 5) takes torchvision ResNet weights as they are."""
    torch, helpers = _torch_helpers()
    from pose.config import build_config
    from torch_refs import randomize
    from torch_refs.resnet import ResNet

    images = helpers.random_images((129, 129), 1, seed=7)
    network = randomize(ResNet(18), 0, helpers.torch_input(images))
    path = str(tmp_path / "resnet18-f37072fd.pth")
    torch.save(network.state_dict(), path)
    config = build_config({"approach": "bottom_up", "data": {"input_size": [129, 129], "heatmap_stride": 8},
                           "model": {"name": "bottom_up", "depth": 18, "output_stride": 8, "head_filters": 32,
                                     "pretrained": path}}, name="bottom_up_pretrained")
    model = pretrained.build_model_with_pretrained(config, str(tmp_path / "run"), lambda _: None)
    report = jsonio.loads(open(os.path.join(tmp_path, "run", pretrained.REPORT_FILE), encoding="utf-8").read())
    assert report["unused"] == ["fc.bias", "fc.weight"]
    assert report["left_initialised"] and all("head" in name or "upsample" in name
                                              for name in report["left_initialised"])
    # Up to output stride 8 (stages 2-3) the trunk is the classifier's own: its features equal torchvision's.
    with torch.no_grad():
        expected = network.layer2(network.layer1(network.maxpool(network.relu(network.bn1(
            network.conv1(helpers.torch_input(images)))))))
    assert relative_difference(features(model, "conv3_block2_out", images),
                               expected.numpy().transpose(0, 2, 3, 1)) < RELATIVE_TOLERANCE


def test_hrnet_imagenet_backbone(tmp_path):
    """HRNet's ImageNet classifier (hrnet_w32-36af842e.pth naming; width 8 here): its stage-4 fuse outputs for the
    lower resolutions and its classification head are unused, the pose head stays initialised."""
    torch, helpers = _torch_helpers()
    from torch_refs import randomize
    from torch_refs.pose_hrnet import PoseHighResolutionNet, imagenet_extra_tensors

    images = helpers.random_images((128, 96), 1, seed=6)
    network = randomize(PoseHighResolutionNet(8, multi_scale_output=True), 1, helpers.torch_input(images))
    state = {name: value for name, value in network.state_dict().items() if not name.startswith("final_layer.")}
    state.update(imagenet_extra_tensors(8))
    path = str(tmp_path / "hrnet_w8_imagenet.pth")
    torch.save(state, path)
    config = config_with({"name": "hrnet", "width": 8, "pretrained": path})
    model = build_model(config)
    report = pretrained.load_pretrained(model, config, log=lambda _: None)

    with torch.no_grad():
        expected = network.features(helpers.torch_input(images))[0].numpy().transpose(0, 2, 3, 1)
    assert relative_difference(features(model, "stage4_module3_fuse0_relu", images), expected) < RELATIVE_TOLERANCE
    assert report["left_initialised"] == ["final_conv/bias", "final_conv/kernel"]
    unused_modules = {name.split(".")[0] for name in report["unused"]}
    assert unused_modules == {"stage4", "incre_modules", "downsamp_modules", "final_layer", "classifier"}
    assert all(name.startswith("stage4.2.fuse_layers.") for name in report["unused"] if name.startswith("stage4"))


@pytest.mark.parametrize("damage,match", [
    ("missing", r"missing tensor layer2\.0\.downsample\.1\.running_var \[128\]"),
    ("misshaped", r"tensor layer1\.0\.conv1\.weight has shape \[64, 64, 1, 1\], the model needs \[64, 64, 3, 3\]"),
], ids=["missing", "misshaped"])
def test_a_damaged_backbone_is_an_error_and_nothing_is_loaded(tmp_path, damage, match):
    torch, _ = _torch_helpers()
    from torch_refs.resnet import ResNet

    state = ResNet(18).state_dict()
    if damage == "missing":
        del state["layer2.0.downsample.1.running_var"]
    else:
        state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = str(tmp_path / "resnet18.pth")
    torch.save(state, path)
    config = config_with({"name": "simplebaseline", "depth": 18, "deconv_filters": [16, 16, 16],
                          "pretrained": path})
    model = build_model(config)
    before = [variable.numpy().copy() for variable in model.weights]
    with pytest.raises(import_weights.WeightImportError, match=match):
        pretrained.load_pretrained(model, config, log=lambda _: None)
    assert all(np.array_equal(old, variable.numpy()) for old, variable in zip(before, model.weights))


# ---------------------------------------------------------------------------------------------------------------
# Keras weight files (keras.applications naming); no PyTorch needed
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """A keras.applications ResNet50 (no top) with random weights and BN statistics, saved in both formats."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    reference = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(128, 96, 3))
    rng = np.random.default_rng(7)
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, size), rng.normal(0, 0.2, size), rng.normal(0, 0.5, size),
                               rng.uniform(0.5, 2.0, size)])
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.2, layer.bias.shape))
    directory = tmp_path_factory.mktemp("keras_resnet50")
    keras3_path = str(directory / "resnet50_notop.weights.h5")
    reference.save_weights(keras3_path)
    legacy_path = str(directory / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    with h5py.File(legacy_path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
    return reference, {"keras3": keras3_path, "legacy": legacy_path}


@pytest.mark.parametrize("file_format", ["keras3", "legacy"])
def test_keras_applications_resnet50_weights(keras_resnet50, file_format):
    """Biases, BN eps and the Caffe input convention folded in: stage 2 (no strides, so v1 = v1.5) gives
    keras.applications' features on Caffe-preprocessed images, away from the border (loaded with
    model.pretrained_inexact: true, since the later stages cannot be exact)."""
    import keras

    reference, paths = keras_resnet50
    config = config_with({"name": "simplebaseline", "depth": 50, "pretrained": paths[file_format],
                          "pretrained_inexact": True})
    model = build_model(config)
    report = pretrained.load_pretrained(model, config, log=lambda _: None)
    images = np.random.default_rng(8).uniform(0, 255, (1, 128, 96, 3)).astype(np.float32)
    caffe = keras.applications.resnet.preprocess_input(images.copy())
    expected = keras.Model(reference.input, reference.get_layer("conv2_block3_out").output)(caffe).numpy()
    ours = features(model, "conv2_block3_out", images)
    margin = 6  # the first conv's zero padding differs between the two input conventions
    interior = (slice(None), slice(margin, -margin), slice(margin, -margin))
    assert relative_difference(ours[interior], expected[interior]) < RELATIVE_TOLERANCE
    assert report["format"] == "keras" and report["unused"] == []
    assert len(report["left_initialised"]) == 3 * 5 + 2
    assert any("v1" in note for note in report["notes"])


@pytest.mark.parametrize("file_format", ["keras3", "legacy"])
def test_inexact_keras_weights_are_refused_unless_asked_for(keras_resnet50, file_format):
    """Issue 22: keras.applications' ResNet is v1 (stride on conv3/4/5_block1's 1x1 conv): a load that cannot be
    exact is refused, naming the blocks and the key that allows it, and nothing is assigned."""
    _, paths = keras_resnet50
    config = config_with({"name": "simplebaseline", "depth": 50, "pretrained": paths[file_format]})
    model = build_model(config)
    before = [variable.numpy().copy() for variable in model.weights]
    with pytest.raises(pretrained.InexactWeightsError,
                       match=r"cannot load exactly.*conv3_block1, conv4_block1, conv5_block1.*"
                             r"model\.pretrained_inexact: true"):
        pretrained.load_pretrained(model, config, log=lambda _: None)
    assert isinstance(pretrained.InexactWeightsError("x"), import_weights.WeightImportError)
    assert all(np.array_equal(old, variable.numpy()) for old, variable in zip(before, model.weights))


def test_inexact_keras_load_reports_the_measured_difference(keras_resnet50, tmp_path):
    """With model.pretrained_inexact: true the report (run/pretrained_report.json) gives each stage's relative
    difference from keras.applications' ResNet50 with the same weights on the fixed input: small at stage 2
    (the input folding's border only), large from conv3_block1 on; recomputed here independently."""
    import keras

    reference, paths = keras_resnet50
    config = config_with({"name": "simplebaseline", "depth": 50, "pretrained": paths["legacy"],
                          "pretrained_inexact": True})
    run_dir = str(tmp_path / "run")
    messages = []
    model = pretrained.build_model_with_pretrained(config, run_dir, messages.append)
    report = jsonio.loads(open(os.path.join(run_dir, pretrained.REPORT_FILE), encoding="utf-8").read())
    inexact = report["inexact"]
    assert inexact["blocks"] == ["conv3_block1", "conv4_block1", "conv5_block1"]
    stages = inexact["stages"]
    assert list(stages) == ["conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"]
    image = np.random.default_rng(pretrained.MEASURE_SEED).uniform(0, 255, (1, 128, 96, 3)).astype(np.float32)
    caffe = keras.applications.resnet.preprocess_input(image.copy())
    for name, measured in stages.items():
        expected = keras.Model(reference.input, reference.get_layer(name).output)(caffe).numpy()
        ours = features(model, name, image)
        np.testing.assert_allclose(measured["relative_l2"],
                                   np.linalg.norm(ours - expected) / np.linalg.norm(expected), rtol=1e-3)
        np.testing.assert_allclose(measured["relative_max"], relative_difference(ours, expected), rtol=1e-3)
    assert stages["conv2_block3_out"]["relative_l2"] < 0.01
    assert all(stages[name]["relative_l2"] > 0.05 for name in list(stages)[1:]), stages
    assert "seed" in inexact["input"] and "relative_l2" in inexact["metric"]
    assert report["notes"][0].startswith("INEXACT") and "conv3_block4_out" in report["notes"][0]
    assert any(message.startswith("model.pretrained: INEXACT") for message in messages)


def test_trainer_cli_exits_2_on_inexact_weights(keras_resnet50, tmp_path, capsys):
    """python -m trainer.task with Keras ResNet weights and no model.pretrained_inexact: one line, exit 2."""
    import yaml

    from toolkit import cli
    from records_util import synthetic_records, write_split
    from trainer import task

    _, paths = keras_resnet50
    config_path = tmp_path / "keras.yaml"
    config_path.write_text(yaml.safe_dump({
        "model": {"name": "simplebaseline", "depth": 50, "backbone_stages": 3, "deconv_filters": [8, 8],
                  "pretrained": paths["legacy"]},
        "data": {"input_size": [64, 48]}, "train": {"batch_size": 2}}))
    config = build_config(yaml.safe_load(config_path.read_text()))
    write_split(synthetic_records(config, HeatmapCodec.from_config(config), 4), str(tmp_path / "examples"), "train", 1)
    status = cli.run(lambda: task.main(["--examples", str(tmp_path / "examples"), "--config", str(config_path),
                                        "--model-dir", str(tmp_path / "model"), "--max-steps", "1"]),
                     prog="python -m trainer.task")
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert error[-1].startswith("python -m trainer.task: error: InexactWeightsError: model.pretrained")
    assert "model.pretrained_inexact: true" in error[-1] and "conv3_block1, conv4_block1" in error[-1]
    assert not (tmp_path / "model" / "Format-Serving").exists()


# ---------------------------------------------------------------------------------------------------------------
# Config and training hook
# ---------------------------------------------------------------------------------------------------------------

def test_inexact_key_is_validated():
    with pytest.raises(ValueError, match="model.pretrained_inexact must be true or false"):
        build_config({"model": {"name": "hrnet", "pretrained_inexact": "yes"}})
    config = config_with({"name": "hrnet", "width": 8, "pretrained_inexact": True})
    assert build_model(config).count_params() > 0


def test_config_key_is_validated_and_accepted_by_every_builder():
    with pytest.raises(ValueError, match="model.pretrained"):
        build_config({"model": {"name": "hrnet", "pretrained": 5}})
    config = config_with({"name": "simplebaseline", "depth": 18, "deconv_filters": [8, 8, 8],
                          "pretrained": "gs://bucket/resnet18.pth"})
    assert build_model(config).count_params() > 0
    with pytest.raises(ValueError, match="unknown file type"):
        pretrained.load_pretrained(build_model(config), config, "weights.npz", log=lambda _: None)


def test_resumed_run_does_not_load_pretrained(tmp_path):
    """A run with a checkpoint restores it; the pretrained file is not read (here it does not even exist)."""
    from trainer.train_loop import CHECKPOINT_SUBDIR

    run_dir = tmp_path / "run"
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(3)), str(run_dir / CHECKPOINT_SUBDIR), 1).save()
    config = config_with({"name": "simplebaseline", "depth": 18, "deconv_filters": [8, 8, 8],
                          "pretrained": str(tmp_path / "absent.pth")})
    messages = []
    pretrained.build_model_with_pretrained(config, str(run_dir), messages.append)
    assert messages and "resumes from its checkpoint" in messages[0]
    assert not (run_dir / pretrained.REPORT_FILE).exists()


def test_training_starts_from_the_pretrained_backbone(tmp_path):
    """train_loop.train with the Trainer's model_fn (trainer.task): the backbone comes from the file (stage 4 of a
    3-stage backbone unused), the report lands in the run directory, and two steps move the weights only a little."""
    torch, _ = _torch_helpers()
    from torch_refs.resnet import ResNet
    from trainer import train_loop

    network = ResNet(18)
    path = str(tmp_path / "resnet18-f37072fd.pth")
    torch.save(network.state_dict(), path)
    config = build_config({"model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3,
                                     "deconv_filters": [16, 16], "pretrained": path},
                           "data": {"input_size": [64, 48]},
                           "train": {"batch_size": 2, "log_every_steps": 1, "checkpoint_every_steps": 2}},
                          name="pretrained_train_test")
    rng = np.random.default_rng(9)
    images = rng.uniform(0, 255, (4, 64, 48, 3)).astype("float32")
    heatmaps = rng.uniform(0, 1, (4, 16, 12, 17)).astype("float32")

    def dataset_fn(context):
        dataset = tf.data.Dataset.from_tensor_slices(
            ({"image": images}, {"heatmaps": heatmaps, "target_weight": np.ones((4, 17), "float32")}))
        return dataset.batch(context.get_per_replica_batch_size(2), drop_remainder=True).repeat()

    run_dir = str(tmp_path / "run")
    model, result = train_loop.train(config, lambda: pretrained.build_model_with_pretrained(config, run_dir,
                                                                                            lambda _: None),
                                     dataset_fn, run_dir, 2, 2, log=lambda _: None)
    assert result.final_step == 2
    report = jsonio.loads(open(os.path.join(run_dir, pretrained.REPORT_FILE), encoding="utf-8").read())
    assert {name.split(".")[0] for name in report["unused"]} == {"layer4", "fc"}
    kernel = network.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(model.get_layer("conv1_conv").kernel.numpy(), kernel, atol=5e-3)


def test_weights_read_from_gs(tmp_path):
    """model.pretrained and trainer.import_weights read gs:// paths (GCS emulator, as tests/test_gcs.py)."""
    torch, helpers = _torch_helpers()
    from tests.gcs_emulator import EmulatorUnavailable, emulated_gcs
    from torch_refs.pose_resnet import PoseResNet
    from torch_refs.resnet import ResNet

    try:
        context = emulated_gcs("darkpose-weights")
        context.__enter__()
    except EmulatorUnavailable as error:
        pytest.skip(f"GCS emulator not available: {error}")
    try:
        from google.cloud import storage

        bucket = storage.Client(project="darkpose-test").bucket("darkpose-weights")
        backbone, pose = ResNet(18), PoseResNet(18, deconv_filters=(8, 8, 8))
        for name, network in (("resnet18.pth", backbone), ("pose_resnet_18.pth", pose)):
            torch.save(network.state_dict(), str(tmp_path / name))
            bucket.blob(f"weights/{name}").upload_from_filename(str(tmp_path / name))
        model_config = {"name": "simplebaseline", "depth": 18, "deconv_filters": [8, 8, 8]}
        config = config_with({**model_config, "pretrained": "gs://darkpose-weights/weights/resnet18.pth"})
        report = pretrained.load_pretrained(build_model(config), config, log=lambda _: None)
        assert report["unused"] == ["fc.bias", "fc.weight"]
        model, report = import_weights.convert_checkpoint("gs://darkpose-weights/weights/pose_resnet_18.pth",
                                                          config_with(model_config), log=lambda _: None)
        assert report["unused"] == [] and report["checkpoint"].startswith("gs://")
        images = helpers.random_images((128, 96), 1, seed=11)
        helpers.assert_same_heatmaps(model(images, training=False).numpy(),
                                     helpers.torch_heatmaps(pose.eval(), images, bgr=True),
                                     HeatmapCodec.from_config(config_with(model_config)))
        with pytest.raises(FileNotFoundError, match="gs://darkpose-weights/weights/absent.pth"):
            import_weights.read_torch_checkpoint("gs://darkpose-weights/weights/absent.pth")
    finally:
        context.__exit__(None, None, None)
