"""bfloat16 export (issue 17): config, native-support refusal, the serving network, accuracy parity.

The parity test trains the demo model (configs/demo.yaml) briefly on the embedded
dataset (pipeline.synthetic; its val split is the demo's: 80 images, 201 people),
exports it at float32 and bfloat16, and scores both on the val split's GT-box
crops with COCO AP. On a machine without native bfloat16 the bfloat16 export is
forced (the numbers are the same, only slower).
"""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import metrics_coco
from pose.codec import HeatmapCodec
from pose.config import build_config, load_config
from records_util import coco_person_records, write_split
from schemas import serving
from trainer import export
from trainer.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"model": {"name": "simplebaseline", "depth": 18, "backbone_stages": 3, "deconv_filters": [32, 32]},
         "data": {"input_size": [64, 48]}}


@pytest.fixture
def no_native_bfloat16(monkeypatch, tmp_path):
    """Fakes a CPU without bfloat16 flags (an AVX-512 machine without AVX512-BF16) and no GPU."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n")
    monkeypatch.setattr(export, "CPUINFO_PATH", str(cpuinfo))
    monkeypatch.setattr(export, "_gpu_capabilities", lambda: [])
    return cpuinfo


# -- config -------------------------------------------------------------------------------------

def test_config_export_section():
    assert build_config({})["export"] == {"precision": "float32", "force_precision": False, "formats": [],
                                          "onnx_opset": 17, "calibration_crops": 128}
    assert build_config({"export": {"precision": "bfloat16"}})["export"]["precision"] == "bfloat16"
    with pytest.raises(ValueError, match="export.precision must be one of"):
        build_config({"export": {"precision": "float16"}})
    with pytest.raises(ValueError, match="export.force_precision must be true or false"):
        build_config({"export": {"force_precision": "yes"}})
    with pytest.raises(ValueError, match="unknown config key 'export.dtype'"):
        build_config({"export": {"dtype": "bfloat16"}})


# -- native support and refusal -----------------------------------------------------------------

@pytest.mark.parametrize("flags,expected", [
    ("fpu avx512f avx512_bf16", True),       # AMD Zen 4, Intel Cooper Lake
    ("fpu avx512f amx_bf16 amx_tile", True),  # Intel Sapphire Rapids
    ("fpu avx2 avx512f avx512_vnni", False),
])
def test_bfloat16_support_reads_cpu_flags(monkeypatch, tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(export, "CPUINFO_PATH", str(cpuinfo))
    monkeypatch.setattr(export, "_gpu_capabilities", lambda: [])
    supported, reason = export.bfloat16_support()
    assert supported is expected
    assert ("CPU flags" in reason) if expected else ("none of the flags avx512_bf16, amx_bf16" in reason)


def test_bfloat16_support_gpu_and_unreadable_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "CPUINFO_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(export, "_gpu_capabilities", lambda: [("NVIDIA T4", (7, 5))])
    supported, reason = export.bfloat16_support()
    assert not supported and "cannot read" in reason
    monkeypatch.setattr(export, "_gpu_capabilities", lambda: [("NVIDIA A100", (8, 0))])
    assert export.bfloat16_support() == (True, "GPU NVIDIA A100 (compute capability 8.0)")


def test_bfloat16_refused_without_native_support_unless_forced(no_native_bfloat16, tmp_path):
    assert export.check_precision("float32") == "export precision float32"
    with pytest.raises(export.UnsupportedPrecisionError, match="no native bfloat16.*force_precision: true"):
        export.check_precision("bfloat16")
    assert "forced without native support" in export.check_precision("bfloat16", force=True)
    # export_serving_model refuses before writing anything
    config = build_config({**SMALL, "export": {"precision": "bfloat16"}})
    export_dir = tmp_path / "refused"
    with pytest.raises(export.UnsupportedPrecisionError):
        export.export_serving_model(build_model(config), config, HeatmapCodec.from_config(config), str(export_dir))
    assert not export_dir.exists()


def test_export_cli_refusal_exit_2(no_native_bfloat16, tmp_path, capsys):
    config_path = tmp_path / "small.yaml"
    config_path.write_text("model: {name: simplebaseline, depth: 18, backbone_stages: 3}\n"
                           "data: {input_size: [64, 48]}\n")
    status = export.main(["--keras-model", str(tmp_path / "model.keras"), "--config", str(config_path),
                          "--out", str(tmp_path / "out"), "--precision", "bfloat16"])
    assert status == 2
    error = capsys.readouterr().err
    assert "export.precision bfloat16 refused" in error and "--force-precision" in error
    assert not (tmp_path / "out").exists()


# -- the serving network ------------------------------------------------------------------------

def _random_batchnorm_statistics(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.1, channels),
                               rng.normal(0, 0.1, channels), rng.uniform(0.5, 2.0, channels)])


def test_serving_network_policies_weights_and_folding():
    config = build_config(SMALL)
    keras.utils.set_random_seed(1)
    model = build_model(config)
    _random_batchnorm_statistics(model)
    assert export.serving_network(model, config, "float32") is model
    network = export.serving_network(model, config, "bfloat16")
    pairs = export.conv_batchnorm_pairs(model)
    batchnorms = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert sorted(pairs.values()) == sorted(batchnorms)      # every BN of the ResNet/deconv model follows a conv
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in network.layers)
    policies = {layer.name: layer.dtype_policy.name for layer in network.layers if layer.name != "image"}
    assert policies.pop("final_conv") == "float32"      # the builder's float32 output layer
    assert set(policies.values()) == {"mixed_bfloat16"}
    assert all(variable.dtype == "float32" for variable in network.weights)
    np.testing.assert_array_equal(network.get_layer("final_conv").get_weights()[0],
                                  model.get_layer("final_conv").get_weights()[0])
    crops = np.random.default_rng(0).uniform(0, 255, (2, 64, 48, 3)).astype(np.float32)
    expected, got = np.asarray(model(crops, training=False)), np.asarray(network(crops, training=False))
    assert got.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: a few 2^-8 of relative error after ~20 layers
    assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
    with pytest.raises(ValueError, match="precision must be one of"):
        export.serving_network(model, config, "float16")


@pytest.mark.parametrize("layer_class,use_bias", [(keras.layers.Conv2D, False), (keras.layers.Conv2D, True),
                                                  (keras.layers.Conv2DTranspose, False)])
def test_fold_batchnorm_matches_conv_then_batchnorm(layer_class, use_bias):
    """The folded conv against the conv + BN it replaces, in float32 (no bfloat16 involved)."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((9, 7, 5))
    conv = layer_class(6, 3, strides=2 if layer_class is keras.layers.Conv2DTranspose else 1, padding="same",
                       use_bias=use_bias, bias_initializer="random_normal", name="conv")
    batchnorm = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")
    model = keras.Model(inputs, keras.layers.ReLU()(batchnorm(conv(inputs))))
    _random_batchnorm_statistics(model, seed=3)
    assert export.conv_batchnorm_pairs(model) == {"conv": "bn"}
    kernel, bias = export.fold_batchnorm(conv, batchnorm)
    folded = layer_class(6, 3, strides=conv.strides, padding="same", use_bias=True)
    x = np.random.default_rng(4).normal(size=(2, 9, 7, 5)).astype(np.float32)
    folded.build(x.shape)
    folded.set_weights([kernel, bias])
    expected = np.asarray(batchnorm(conv(x), training=False))
    np.testing.assert_allclose(np.asarray(folded(x)), expected, atol=1e-5, rtol=1e-5)


def test_serving_network_float32_copy_of_a_mixed_precision_model():
    """A model built under a mixed training policy is exported float32 when asked."""
    config = build_config(SMALL)
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model(config)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    network = export.serving_network(model, config, "float32")
    assert {layer.dtype_policy.name for layer in network.layers} == {"float32"}


# -- accuracy parity on the embedded demo val split (slow) ---------------------------------------

# Steps of the brief demo training: enough for a model whose heatmaps have real peaks
# (AP ~0.25 here; the full demo run reaches 0.83), small enough for the test budget.
PARITY_STEPS = 150


def _graph_dtypes(export_dir):
    """(dtypes of Conv2D ops, dtypes of variables) in the SavedModel's graph and functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as handle:
        proto.ParseFromString(handle.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
    conv = {tf.dtypes.as_dtype(node.attr["T"].type).name for node in nodes if node.op in ("Conv2D", "_FusedConv2D")}
    variables = {tf.dtypes.as_dtype(node.attr["dtype"].type).name for node in nodes if node.op == "VarHandleOp"}
    return conv, variables


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    from pipeline.synthetic import SyntheticSpec, generate_dataset
    from trainer import task

    directory = tmp_path_factory.mktemp("precision")
    info = generate_dataset(str(directory / "data"), SyntheticSpec(num_train_images=200))
    config = load_config(os.path.join(ROOT, "configs", "demo.yaml"),
                         overrides={"train": {"learning_rate": 0.003},
                                    "export": {"formats": []}})   # the demo's LiteRT / ONNX exports: not timed here
    codec = HeatmapCodec.from_config(config)
    paths = info["paths"]
    train = coco_person_records(paths["train_annotations"], paths["train_images"], config, codec)
    val = coco_person_records(paths["val_annotations"], paths["val_images"], config, codec)
    write_split(train, str(directory / "examples"), "train")
    keras.utils.set_random_seed(0)
    task.train_and_export(str(directory / "examples"), config, str(directory / "model"), max_steps=PARITY_STEPS,
                          log=lambda message: None)
    supported, _ = export.bfloat16_support()
    export_dirs = {"float32": str(directory / "model" / serving.SAVED_MODEL_DIR)}
    bf16_config = dict(config, export={"precision": "bfloat16", "force_precision": not supported})
    export_dirs["bfloat16"] = export.export_keras_model(
        str(directory / "model" / serving.KERAS_FILE), bf16_config, str(directory / "bf16"), log=lambda m: None)
    from schemas import features
    examples = tf.constant([features.build_example(record).SerializeToString() for record in val])
    outputs, stats = {}, {}
    for precision, export_dir in export_dirs.items():
        signature = tf.saved_model.load(export_dir).signatures[serving.SERVING_DEFAULT]
        result = {name: value.numpy() for name, value in signature(examples=examples).items()}
        persons = [{"image_id": int(image_id), "keypoints": keypoints, "keypoint_scores": scores,
                    "box_score": float(box_score), "area": float(scale[0] * scale[1])}
                   for image_id, keypoints, scores, box_score, scale in zip(
                       result["image_id"], result["keypoints_image"], result["scores"], result["bbox_score"],
                       result["scale"])]
        stats[precision], _, _ = metrics_coco.evaluate_persons(persons, gt=paths["val_annotations"])
        outputs[precision] = result
    return dict(export_dirs=export_dirs, outputs=outputs, stats=stats, val=val, directory=directory,
                config=config, image=os.path.join(paths["val_images"], "000000100001.jpg"))


@pytest.mark.slow  # ~60-90 s on 2 cores: 150 training steps, two exports, 2 x 201 crops, saved_model_cli
def test_bfloat16_export_ap_parity_on_demo_val(parity, record_property):
    float32, bfloat16 = parity["stats"]["float32"]["AP"], parity["stats"]["bfloat16"]["AP"]
    keypoints = {precision: parity["outputs"][precision]["keypoints_image"] for precision in parity["outputs"]}
    distance = np.linalg.norm(keypoints["bfloat16"] - keypoints["float32"], axis=-1)      # (201, 17) image px
    median = float(np.median(distance))
    record_property("ap_float32", float32)
    record_property("ap_bfloat16", bfloat16)
    record_property("median_keypoint_difference_px", median)
    print(f"\nAP float32 {float32:.4f}, bfloat16 {bfloat16:.4f}; keypoint difference bfloat16 - float32 over "
          f"{distance.size} keypoints: median {median:.3f} px, 90th percentile {np.percentile(distance, 90):.3f} px "
          f"(images 192x256)")
    assert len(parity["val"]) == 201
    assert float32 > 0.15, "the briefly trained demo model should find people; otherwise the parity is vacuous"
    assert abs(bfloat16 - float32) <= 0.005
    assert median < 0.25   # measured 0.02 px here (0.1 px for the fully trained demo model)
    assert parity["outputs"]["bfloat16"]["scores"].dtype == np.float32


@pytest.mark.slow
def test_bfloat16_savedmodel_graph_and_session_loader(parity):
    """bfloat16 convolutions over float32 variables; the same signatures; saved_model_cli (session loader) runs it."""
    conv32, variables32 = _graph_dtypes(parity["export_dirs"]["float32"])
    conv16, variables16 = _graph_dtypes(parity["export_dirs"]["bfloat16"])
    assert conv32 == {"float32"} and variables32 == {"float32"}
    assert "bfloat16" in conv16 and variables16 == {"float32"}
    loaded = {precision: tf.saved_model.load(path) for precision, path in parity["export_dirs"].items()}
    for name in (serving.SERVING_DEFAULT, serving.PREDICT_IMAGE, serving.HEATMAPS):
        specs = [loaded[p].signatures[name].structured_outputs for p in export.PRECISIONS]
        assert {k: (v.dtype, v.shape.as_list()) for k, v in specs[0].items()} == \
            {k: (v.dtype, v.shape.as_list()) for k, v in specs[1].items()}, name
    directory = parity["directory"]
    with open(parity["image"], "rb") as handle:
        np.save(str(directory / "image.npy"), np.array(handle.read()))
    boxes = np.array([[20.0, 10.0, 90.0, 170.0], [0.0, 0.0, 0.0, 10.0]], np.float32)   # a person-sized box, a bad one
    np.save(str(directory / "boxes.npy"), boxes)
    command = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    out_dir = str(directory / "cli")
    result = subprocess.run([command, "run", "--dir", parity["export_dirs"]["bfloat16"], "--tag_set", "serve",
                             "--signature_def", serving.PREDICT_IMAGE, "--inputs",
                             f"image={directory / 'image.npy'};boxes={directory / 'boxes.npy'}",
                             "--outdir", out_dir, "--overwrite"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(parity["image"], "rb") as handle:
        expected = loaded["bfloat16"].signatures[serving.PREDICT_IMAGE](image=tf.constant(handle.read()),
                                                                        boxes=tf.constant(boxes))
    for name in ("keypoints", "scores", "box_valid", "box_status"):
        got = np.load(os.path.join(out_dir, f"{name}.npy"))
        np.testing.assert_allclose(got, expected[name].numpy(), atol=1e-4, err_msg=name)
    assert np.load(os.path.join(out_dir, "keypoints.npy")).dtype == np.float32


def test_export_cli_rejects_a_mistyped_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        export.main(["--keras-model", "m.keras", "--config", "c.yaml", "--out", str(tmp_path / "out"),
                     "--precison", "bfloat16"])
    assert raised.value.code == 2
    assert "--precison (did you mean --precision?)" in capsys.readouterr().err
