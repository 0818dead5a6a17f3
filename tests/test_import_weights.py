"""PyTorch pose checkpoints imported into our Keras models: the same heatmaps as the PyTorch network.

Each PyTorch reference in ``tests/torch_refs/`` (published module names) is
randomly initialised, BN running statistics included, saved as a ``.pth``,
imported and run on the same random images as our model: heatmaps agree within
1e-4 of the largest heatmap value (float32, max abs difference / max abs value)
at an even and an odd input size, in the Keras model and the exported
SavedModel (TF2 loader, and once ``saved_model_cli``, the session loader), and
the DARK keypoints decoded from both agree within 1e-3 px.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pose.codec import HeatmapCodec  # noqa: E402
from pose.config import build_config, load_config  # noqa: E402
from torch_refs import randomize  # noqa: E402
from torch_refs.pose_hrnet import PoseHighResolutionNet  # noqa: E402
from torch_refs.pose_resnet import PoseResNet  # noqa: E402
from torch_refs.resnet import ResNet  # noqa: E402
from trainer import import_weights  # noqa: E402
from trainer.models import build_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
HEATMAP_TOLERANCE = 1e-4   # max |ours - torch| / max |torch|
KEYPOINT_TOLERANCE = 1e-3  # crop pixels

torch.set_num_threads(2)


def toy_config(model, input_size):
    """A config for ``model`` at ``input_size`` (odd sizes too: set past the loader's divisibility rule)."""
    config = build_config({"model": model, "data": {"input_size": [128, 96]}}, name="import_test")
    config["data"]["input_size"] = list(input_size)
    config["data"]["heatmap_size"] = [-(-input_size[0] // 4), -(-input_size[1] // 4)]
    return config


def random_images(input_size, count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, *input_size, 3)).astype(np.float32)


def torch_input(images, bgr=False):
    """RGB 0..255 NHWC -> what the PyTorch recipes feed: (x / 255 - mean) / std, NCHW (BGR: channels reversed)."""
    if bgr:
        images = images[..., ::-1]
    normalised = ((images / 255.0 - MEAN) / STD).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)))


def torch_heatmaps(network, images, bgr=False):
    with torch.no_grad():
        return network(torch_input(images, bgr)).numpy().transpose(0, 2, 3, 1)


def save_checkpoint(state, path, prefix=""):
    torch.save({prefix + name: value for name, value in state.items()}, path)
    return str(path)


def assert_same_heatmaps(ours, expected, codec):
    """Heatmaps within :data:`HEATMAP_TOLERANCE` of the largest value, the same argmax for every joint, and
    DARK keypoints within :data:`KEYPOINT_TOLERANCE` px.

    A random network's heatmaps are no pose heatmaps: their maxima are often saddles or ridges where DARK's
    Hessian is near-singular and its Taylor step jumps pixels away, amplifying any difference (1e-5 relative
    gives up to 0.1 px there, for any two implementations). So the keypoints are decoded from both outputs
    plus the same pose-like signal: the codec's unbiased Gaussian targets at random keypoints, scaled to twice
    the largest heatmap value. The difference between the two stays exactly the import's; the peaks are in
    the regime DARK is built for, as a trained network's are.
    """
    assert ours.shape == expected.shape
    scale = np.abs(expected).max()
    relative = np.abs(ours - expected).max() / scale
    assert relative < HEATMAP_TOLERANCE, relative
    np.testing.assert_array_equal(codec.decode(ours, "argmax")[0], codec.decode(expected, "argmax")[0])
    batch, joints = expected.shape[0], expected.shape[-1]
    rng = np.random.default_rng(99)
    height, width = codec.input_size
    keypoints = rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height], (batch, joints, 2))
    targets, _ = codec.encode(keypoints, np.ones((batch, joints)))
    signal = 2.0 * scale * targets.astype(np.float32)
    ours_points, _ = codec.decode(ours + signal)
    expected_points, _ = codec.decode(expected + signal)
    assert np.abs(ours_points - expected_points).max() < KEYPOINT_TOLERANCE


TOY_MODELS = {
    "simplebaseline_r18": ({"name": "simplebaseline", "depth": 18, "deconv_filters": [32, 32, 32]},
                           lambda: PoseResNet(18, deconv_filters=(32, 32, 32))),
    "simplebaseline_r50_narrow_head": ({"name": "simplebaseline", "depth": 50, "deconv_filters": [16, 16, 16]},
                                       lambda: PoseResNet(50, deconv_filters=(16, 16, 16))),
    "hrnet_w8": ({"name": "hrnet", "width": 8}, lambda: PoseHighResolutionNet(8)),
}


@pytest.fixture(scope="module")
def toy_checkpoints(tmp_path_factory):
    """name -> (model config, network, .pth path): randomised references (BN statistics at 128x96)."""
    directory = tmp_path_factory.mktemp("toy_checkpoints")
    out = {}
    for seed, (name, (model, make)) in enumerate(TOY_MODELS.items()):
        torch.manual_seed(seed)
        network = randomize(make(), seed, torch_input(random_images((128, 96), 2, seed=seed + 10)))
        out[name] = (model, network, save_checkpoint(network.state_dict(), directory / f"{name}.pth"))
    return out


@pytest.mark.parametrize("input_size", [(128, 96), (127, 95)], ids=["even", "odd"])
@pytest.mark.parametrize("name", sorted(TOY_MODELS))
def test_imported_keras_model_matches_pytorch(toy_checkpoints, name, input_size):
    """Heatmaps and DARK keypoints of the imported model = the PyTorch network's (RGB input, as mmpose/HRNet)."""
    model, network, path = toy_checkpoints[name]
    config = toy_config(model, input_size)
    keras_model, report = import_weights.convert_checkpoint(path, config, input_order="rgb", log=lambda _: None)
    images = random_images(input_size, seed=1)
    ours = keras_model(images, training=False).numpy()
    assert_same_heatmaps(ours, torch_heatmaps(network, images), HeatmapCodec.from_config(config))
    assert report["unused"] == [] and report["left_initialised"] == []
    assert report["counts"]["loaded"] == sum(1 for key in network.state_dict() if "num_batches" not in key)


def test_bgr_trained_resnet_is_converted_exactly(toy_checkpoints):
    """The original pose_resnet naming defaults to BGR (SimpleBaseline / DarkPose res configs: COLOR_RGB false):
    our model fed RGB reproduces the network fed BGR, borders included."""
    model, network, path = toy_checkpoints["simplebaseline_r18"]
    config = toy_config(model, (128, 96))
    keras_model, report = import_weights.convert_checkpoint(path, config, log=lambda _: None)
    assert report["input_order"] == "bgr"
    images = random_images((128, 96), seed=2)
    assert_same_heatmaps(keras_model(images, training=False).numpy(), torch_heatmaps(network, images, bgr=True),
                         HeatmapCodec.from_config(config))


PREFIXES = {  # naming -> (backbone prefix, head prefix, note the report gives)
    "dataparallel": ("module.", "module.", "DataParallel"),
    "mmpose0": ("backbone.", "keypoint_head.", "mmpose 0.x"),
    "mmpose1": ("backbone.", "head.", "mmpose 1.x"),
    "dataparallel_mmpose0": ("module.backbone.", "module.keypoint_head.", "mmpose 0.x"),
}


def renamed(state, naming):
    backbone_prefix, head_prefix, _ = PREFIXES[naming]
    return {(head_prefix if key.startswith(("deconv_layers.", "final_layer.")) else backbone_prefix) + key: value
            for key, value in state.items()}


@pytest.mark.parametrize("naming", sorted(PREFIXES))
@pytest.mark.parametrize("name", ["simplebaseline_r18", "hrnet_w8"])
def test_mmpose_and_dataparallel_names_are_detected(toy_checkpoints, name, naming):
    """mmpose's backbone./keypoint_head./head. and DataParallel's module. prefixes give back the original names."""
    state = {key: value.numpy() for key, value in toy_checkpoints[name][1].state_dict().items()}
    scheme, tensors, notes = import_weights.detect_scheme(renamed(state, naming))
    assert scheme == (import_weights.POSE_HRNET if name.startswith("hrnet") else import_weights.POSE_RESNET)
    assert sorted(tensors) == sorted(state)
    assert any(PREFIXES[naming][2] in note for note in notes), notes


@pytest.mark.parametrize("naming", ["mmpose0", "dataparallel_mmpose0"])
def test_mmpose_checkpoint_imports_exactly(toy_checkpoints, tmp_path, naming):
    """End to end through the renaming (HRNet's mmpose names are the same renaming, checked above)."""
    model, network, _ = toy_checkpoints["simplebaseline_r18"]
    path = save_checkpoint(renamed(network.state_dict(), naming), tmp_path / "mmpose.pth")
    config = toy_config(model, (128, 96))
    messages = []
    keras_model, report = import_weights.convert_checkpoint(path, config, log=messages.append)
    assert report["input_order"] == "rgb"  # mmpose trains on RGB
    assert PREFIXES[naming][2] in messages[0]
    images = random_images((128, 96), seed=3)
    assert_same_heatmaps(keras_model(images, training=False).numpy(), torch_heatmaps(network, images),
                         HeatmapCodec.from_config(config))


def test_transposed_convolution_alignment_and_no_flip():
    """ConvTranspose2d(k=4, s=2, p=1) and Keras Conv2DTranspose(4, 2, "same"): the same output, unflipped kernel,
    at even and odd input sizes (the spatial alignment, not only the shape)."""
    import keras

    rng = np.random.default_rng(4)
    weight = rng.normal(size=(3, 5, 4, 4)).astype(np.float32)          # (in, out, kh, kw)
    deconv = torch.nn.ConvTranspose2d(3, 5, 4, 2, 1, 0, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.from_numpy(weight))
    for size in ((6, 4), (7, 5)):
        x = rng.normal(size=(1, *size, 3)).astype(np.float32)
        layer = keras.layers.Conv2DTranspose(5, 4, strides=2, padding="same", use_bias=False)
        layer.build((None, *size, 3))
        layer.kernel.assign(np.transpose(weight, (2, 3, 1, 0)))
        with torch.no_grad():
            expected = deconv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5)


def test_odd_deconv_kernel_is_refused(toy_checkpoints, tmp_path):
    """Kernel 3 (padding 1, output_padding 1 in PyTorch) is offset by a pixel in Keras: refused, not imported."""
    network = PoseResNet(18, deconv_filters=(8,), deconv_kernel=3)
    path = save_checkpoint(network.state_dict(), tmp_path / "k3.pth")
    config = toy_config({"name": "simplebaseline", "depth": 18, "deconv_filters": [8], "deconv_kernel": 3},
                        (64, 64))
    config["data"]["heatmap_size"] = [4, 4]
    with pytest.raises(import_weights.WeightImportError, match="deconv1_conv.*output_padding"):
        import_weights.convert_checkpoint(path, config, log=lambda _: None)


def test_mismatches_name_the_tensor(toy_checkpoints, tmp_path):
    model, network, _ = toy_checkpoints["simplebaseline_r18"]
    config = toy_config(model, (128, 96))
    wrong_architecture = {**network.state_dict(), "layer5.0.conv1.weight": torch.zeros(3)}
    path = save_checkpoint(wrong_architecture, tmp_path / "extra.pth")
    with pytest.raises(import_weights.WeightImportError, match=r"1 tensors fit no weight.*layer5\.0\.conv1\.weight"):
        import_weights.convert_checkpoint(path, config, log=lambda _: None)
    path = save_checkpoint(toy_checkpoints["hrnet_w8"][1].state_dict(), tmp_path / "hrnet.pth")
    with pytest.raises(import_weights.WeightImportError, match="config builds model.name 'simplebaseline'"):
        import_weights.convert_checkpoint(path, toy_config({"name": "simplebaseline", "depth": 18}, (128, 96)),
                                          log=lambda _: None)
    imagenet = ResNet(18)
    path = save_checkpoint(imagenet.state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(import_weights.WeightImportError, match="ImageNet backbone.*model.pretrained"):
        import_weights.convert_checkpoint(path, toy_config({"name": "simplebaseline", "depth": 18}, (128, 96)),
                                          log=lambda _: None)
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(import_weights.WeightImportError, match="junk.pth: not a readable PyTorch checkpoint"):
        import_weights.read_torch_checkpoint(str(path))


@pytest.mark.parametrize("model,make", [
    ({"name": "simplebaseline", "depth": 101}, lambda: PoseResNet(101)),
    ({"name": "simplebaseline", "depth": 152}, lambda: PoseResNet(152)),
    ({"name": "hrnet", "width": 48}, lambda: PoseHighResolutionNet(48)),
], ids=["r101", "r152", "w48"])
def test_name_tables_cover_the_published_networks(model, make):
    """Every tensor of the published R101 / R152 / W48 state dicts has exactly one Keras weight, shapes included
    (names and shapes only; the full-size R50 / W32 run numerically below)."""
    state = {key: value.numpy() for key, value in make().state_dict().items()}
    config = toy_config(model, (256, 192))
    plan = import_weights.plan_assignments(build_model(config), model["name"], state, "reference")
    assert plan["unused"] == [] and plan["left_initialised"] == []
    assert len(plan["loaded"]) == len({entry["tensor"] for entry in plan["loaded"]})
    assert len(plan["loaded"]) + len(plan["ignored"]) == len(state)


# ---------------------------------------------------------------------------------------------------------------
# Full size: the released HRNet-W32 256x192 and SimpleBaseline-R50 256x192 checkpoints' names and shapes
# ---------------------------------------------------------------------------------------------------------------

FULL_SIZE = {
    "w32": ("configs/coco/w32_256x192.yaml", lambda: PoseHighResolutionNet(32), "rgb"),
    "r50": ("configs/coco/res50_256x192.yaml", lambda: PoseResNet(50), "bgr"),
}


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """name -> (config, network, .pth path, images, torch heatmaps): a randomised full-size reference."""
    directory = tmp_path_factory.mktemp("full_size")
    out = {}
    for seed, (name, (config_path, make, order)) in enumerate(FULL_SIZE.items()):
        config = load_config(os.path.join(ROOT, config_path))
        torch.manual_seed(seed)
        images = random_images((256, 192), 1, seed=seed + 20)
        network = randomize(make(), seed, torch_input(images, order == "bgr"))
        path = save_checkpoint(network.state_dict(), directory / f"{name}_256x192.pth", prefix="module.")
        out[name] = (config, network, path, images, torch_heatmaps(network, images, order == "bgr"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_import_keras_and_saved_model(full_size, tmp_path, name):
    """The released checkpoints' names and shapes (generated from the references, DataParallel prefix): the
    CLI's conversion gives the PyTorch heatmaps in the Keras model and in the exported SavedModel (TF2 loader)."""
    import tensorflow as tf

    from schemas import serving

    config, _, path, images, expected = full_size[name]
    codec = HeatmapCodec.from_config(config)
    model, report = import_weights.convert_checkpoint(path, config, log=lambda _: None)
    assert report["unused"] == [] and report["input_order"] == FULL_SIZE[name][2]
    assert_same_heatmaps(model(images, training=False).numpy(), expected, codec)
    model_dir = tmp_path / "model"
    import_weights.write_model_dir(model, config, str(model_dir), report, log=lambda _: None)
    assert sorted(os.listdir(model_dir)) == sorted([serving.SAVED_MODEL_DIR, serving.KERAS_FILE,
                                                    import_weights.REPORT_FILE])
    loaded = tf.saved_model.load(str(model_dir / serving.SAVED_MODEL_DIR))
    result = loaded.signatures[serving.HEATMAPS](**{serving.INPUT_IMAGES: tf.constant(images)})
    assert_same_heatmaps(result[serving.OUTPUT_HEATMAPS].numpy(), expected, codec)
    if name == "r50":  # the session loader (saved_model_cli run, TF Serving), once
        np.save(tmp_path / "images.npy", images)
        command = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        command = command if os.path.exists(command) else shutil.which("saved_model_cli")
        out_dir = tmp_path / "cli"
        run = subprocess.run([command, "run", "--dir", str(model_dir / serving.SAVED_MODEL_DIR), "--tag_set", "serve",
                              "--signature_def", serving.HEATMAPS, "--inputs",
                              f"{serving.INPUT_IMAGES}={tmp_path / 'images.npy'}", "--outdir", str(out_dir),
                              "--overwrite"], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert run.returncode == 0, run.stderr[-3000:]
        assert_same_heatmaps(np.load(out_dir / f"{serving.OUTPUT_HEATMAPS}.npy"), expected, codec)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_cli_rejects_a_damaged_w32_checkpoint(full_size, tmp_path, capsys, damage):
    """The released W32 names with one tensor removed or mis-shaped: exit 2, one line naming it, nothing written."""
    config, network, _, _, _ = full_size["w32"]
    state = dict(network.state_dict())
    victim = "stage3.2.fuse_layers.2.0.1.0.weight"
    if damage == "missing":
        del state[victim]
    else:
        state[victim] = torch.zeros(128, 64, 3, 1)
    path = save_checkpoint(state, tmp_path / "damaged.pth")
    model_dir = tmp_path / "model"
    status = import_weights.main(["--checkpoint", path, "--config", os.path.join(ROOT, FULL_SIZE["w32"][0]),
                                  "--model-dir", str(model_dir)])
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and victim in error[0], error
    assert ("missing tensor" if damage == "missing" else "has shape [128, 64, 3, 1]") in error[0]
    assert not model_dir.exists()
