"""Deployment exports: LiteRT (TFLite) float32 / float16 / int8 and ONNX, with flip test and DARK inside.

Each artifact is one file that takes a batch of person crops and returns, like the SavedModel
(:mod:`trainer.export`, :mod:`schemas.serving`), the decoded keypoints and their scores, plus the
heatmaps they were decoded from. Contract of every artifact (:data:`schemas.serving.DEPLOY_OUTPUTS`):

* input ``images`` (B, H_in, W_in, 3) RGB crops, 0..255 (the crop rule of ExampleGen,
  :mod:`pose.coordinates`): float32 for ``tflite_fp32``, ``tflite_fp16`` and ``onnx``; uint8 for
  ``tflite_int8`` (LiteRT's convention for full-integer models; its quantization parameters, scale 1
  and zero point 0 when calibration saw the full 0..255 range, are in the artifact and in
  ``deploy.json``);
* outputs ``keypoints_crop`` (B, K, 2) float32 crop pixels (x, y), ``scores`` (B, K) float32 heatmap
  maxima, ``heatmaps`` (B, H_hm, W_hm, K) float32: the maps that were decoded, i.e. flip-averaged when
  ``eval.flip_test`` is on (the SavedModel's ``heatmaps`` signature returns the raw, unflipped maps).
  Image pixels: :func:`pose.coordinates.crop_to_image` with the crop's ``center`` / ``scale``.

The graph is a Keras functional model (the trained network called once, or twice for the flip test,
then :class:`DarkDecodeLayer`) converted with ``tf.lite.TFLiteConverter.from_keras_model`` and
``tf2onnx.convert.from_function``. Only built-in ops: the LiteRT converter runs with
``TFLITE_BUILTINS`` (``+ TFLITE_BUILTINS_INT8`` for int8), never ``SELECT_TF_OPS``, and every written
model is checked (:func:`check_tflite_ops`, :func:`check_onnx_ops`): a Flex or custom op, or an ONNX
node outside the default domain, raises :class:`DeployExportError`.

DARK in the graph (:class:`DarkDecodeLayer`, float32; Zhang et al., CVPR 2020, Sec. 3.2):
:func:`pose.codec_portable.decode`, the codec's converter-friendly twin (``standard`` and ``argmax`` too), then
heatmap -> crop pixels. ``tests/test_export_deploy.py`` holds the float32 artifacts to the SavedModel's
keypoints within 0.05 crop pixels.

int8: the network is full-integer (weights and activations int8, input uint8, calibrated on crops of
the train Examples, :func:`calibration_crops`); the flip averaging and DARK decode run in float32
inside the same model (their ops are kept out of quantization by name, see :func:`convert_tflite`,
because DARK takes logs of ratios of heatmap values that 8-bit activations would reduce to a few
levels). Where the converter cannot keep them float (it quantizes some of them anyway) the export
fails with :class:`DeployExportError` naming the ops: never a silent difference.

Layout (:data:`schemas.serving.DEPLOY_DIR` beside ``Format-Serving``)::

    <model_dir>/Format-Deploy/<format>/model.tflite | model.onnx
    <model_dir>/Format-Deploy/<format>/deploy.json   (format, runtime, precision, input/output spec, decode)

Config: ``export.formats`` (list of :data:`schemas.serving.DEPLOY_FORMATS`, default empty: nothing
more is written), ``export.onnx_opset`` (default 17), ``export.calibration_crops`` (int8, default 128).

Re-export: ``python -m trainer.export_deploy --keras-model <model.keras> --config <yaml>
--examples <ExampleGen dir> --out <dir>/Format-Deploy [--formats tflite_fp32,onnx] [--small-run]``.
"""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from typing import Any, Callable, Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from pose.codec import HeatmapCodec
from pose import codec_portable
from pose.coordinates import crop_to_heatmap_factor
from pose.images import decode_image_tf
from schemas import examples as examples_layout
from schemas import features, jsonio, serving
from schemas.dataset_meta import schema_for
from trainer import records
from trainer.models import prediction

# Name prefix of the ops that must stay float32 in the int8 model (flip averaging + decoding).
FLOAT_SCOPE = "deploy_float"


class DeployExportError(RuntimeError):
    """A deployment artifact could not be built as specified (a non-built-in op, a quantized decode op)."""


def deploy_formats(config: Mapping[str, Any]) -> List[str]:
    """``config["export"]["formats"]`` as a list (empty when absent).

    Raises:
        ValueError: not a list, or an unknown or repeated format.
    """
    formats = (config.get("export") or {}).get("formats") or []
    if not isinstance(formats, (list, tuple)):
        raise ValueError(f"export.formats must be a list of {serving.DEPLOY_FORMATS}, got {formats!r}")
    for name in formats:
        if name not in serving.DEPLOY_FORMATS:
            raise ValueError(f"export.formats: unknown format {name!r}; choose from {serving.DEPLOY_FORMATS}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"export.formats lists a format twice: {list(formats)}")
    return list(formats)


# ---------------------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------------------
def _layers():
    import keras

    class FlipImagesLayer(keras.layers.Layer):
        """(B, H, W, 3) crops -> the same crops mirrored left-right."""

        def call(self, images):
            return images[:, :, ::-1, :]

    class FlipAverageLayer(keras.layers.Layer):
        """``[direct, mirrored]`` (B, H, W, K) heatmaps -> 0.5 (direct + mirrored flipped back, joints swapped).

        The flip-back of :func:`pose.codec_tf.flip_back` (an exact mirror under the UDP convention).
        """

        def __init__(self, flip_index: Sequence[int], **kwargs):
            super().__init__(**kwargs)
            self.flip_index = [int(v) for v in flip_index]

        def get_config(self):
            return {**super().get_config(), "flip_index": self.flip_index}

        def call(self, inputs):
            direct, mirrored = inputs
            with tf.name_scope(FLOAT_SCOPE):
                back = tf.gather(tf.reverse(tf.cast(mirrored, tf.float32), axis=[2]),
                                 tf.constant(self.flip_index, tf.int32), axis=3)
                return 0.5 * (tf.cast(direct, tf.float32) + back)

    class DarkDecodeLayer(keras.layers.Layer):
        """(B, H_hm, W_hm, K) heatmaps -> ``(keypoints (B, K, 2) crop pixels, scores (B, K))``, float32.

        Built-in ops only: :func:`pose.codec_portable.decode`, then heatmap -> crop pixels.
        """

        def __init__(self, input_size, heatmap_size, method="dark", blur_kernel=11, **kwargs):
            super().__init__(**kwargs)
            self.input_size = [int(v) for v in input_size]
            self.heatmap_size = [int(v) for v in heatmap_size]
            self.method = str(method)
            self.blur_kernel = int(blur_kernel)

        def get_config(self):
            return {**super().get_config(), "input_size": self.input_size, "heatmap_size": self.heatmap_size,
                    "method": self.method, "blur_kernel": self.blur_kernel}

        def call(self, heatmaps):
            with tf.name_scope(FLOAT_SCOPE):
                keypoints, scores = codec_portable.decode(tf.cast(heatmaps, tf.float32), self.method,
                                                          self.blur_kernel)
                factor = tf.constant(crop_to_heatmap_factor(self.input_size, self.heatmap_size), tf.float32)
                return keypoints / factor, scores

    return FlipImagesLayer, FlipAverageLayer, DarkDecodeLayer


def deploy_keras_model(model, config: Mapping[str, Any], codec: HeatmapCodec):
    """The Keras functional model every artifact is converted from.

    Args:
        model: trained keras.Model (input (B, H_in, W_in, 3) RGB 0..255, output heatmaps or a list,
            last = prediction), float32.
        config: loaded experiment config (``dataset``, ``eval.flip_test``).
        codec: the experiment's codec (sizes, decoding method, blur kernel).

    Returns:
        keras.Model ``images`` -> ``{"heatmaps", "keypoints_crop", "scores"}`` (see the module docstring).
    """
    import keras

    flip_images, flip_average, dark_decode = _layers()
    height, width = codec.input_size
    images = keras.Input((height, width, 3), dtype="float32", name=serving.INPUT_IMAGES)
    heatmaps = prediction(model(images, training=False))
    if bool(config["eval"]["flip_test"]):
        mirrored = prediction(model(flip_images(name="flip_images")(images), training=False))
        heatmaps = flip_average(schema_for(config).flip_index, name="flip_average")([heatmaps, mirrored])
    keypoints, scores = dark_decode(codec.input_size, codec.heatmap_size, codec.decoding, codec.blur_kernel,
                                    name="dark_decode")(heatmaps)
    outputs = {serving.OUTPUT_HEATMAPS: keras.layers.Identity(name=serving.OUTPUT_HEATMAPS)(heatmaps),
               serving.OUTPUT_KEYPOINTS_CROP: keras.layers.Identity(name=serving.OUTPUT_KEYPOINTS_CROP)(keypoints),
               serving.OUTPUT_SCORES: keras.layers.Identity(name=serving.OUTPUT_SCORES)(scores)}
    return keras.Model(images, outputs, name="pose_deploy")


# ---------------------------------------------------------------------------------------------------------
# Calibration data
# ---------------------------------------------------------------------------------------------------------
def calibration_crops(train_files: str | Sequence[str], config: Mapping[str, Any], count: int) -> np.ndarray:
    """The first ``count`` crops of the train Examples, (N, H_in, W_in, 3) float32 RGB 0..255.

    Args:
        train_files: ``Split-train`` shards, a directory or glob (:func:`trainer.records.list_files`).
        config: loaded experiment config (``dataset`` for the record spec).
        count: crops wanted (fewer when the split holds fewer).

    Raises:
        ValueError: no file matches, or the files hold no record.
    """
    files = records.list_files(train_files)
    num_joints = schema_for(config).num_joints
    dataset = tf.data.TFRecordDataset(files, compression_type=records.compression_type(files)).take(int(count))
    crops = []
    for batch in dataset.batch(64):
        parsed = features.parse_records(batch, num_joints)
        crops.extend(decode_image_tf(encoded).numpy() for encoded in parsed["image/encoded"])
    if not crops:
        raise ValueError(f"no train records to calibrate int8 on in {files[0]} ...")
    return np.stack(crops).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Conversion and op checks
# ---------------------------------------------------------------------------------------------------------
def _op_details(model_bytes: bytes):
    """``[(op name, [input dtypes], [output dtypes], first output tensor name)]`` of a LiteRT model."""
    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    ops = []
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        def dtype(index):
            return np.dtype(interpreter._get_tensor_details(index, 0)["dtype"]).name if index >= 0 else None
        name = interpreter._get_tensor_details(op["outputs"][0], 0)["name"] if len(op["outputs"]) else ""
        ops.append((op["op_name"], [dtype(i) for i in op["inputs"]], [dtype(i) for i in op["outputs"]], name))
    return ops


def check_tflite_ops(model_bytes: bytes, label: str) -> List[str]:
    """Raises :class:`DeployExportError` on a Flex (TF select) or custom op; returns the sorted op names."""
    names = sorted({op[0] for op in _op_details(model_bytes)})
    foreign = [name for name in names if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE")]
    if foreign:
        raise DeployExportError(f"{label}: the model needs non-built-in ops {foreign}; the standard LiteRT build "
                                "cannot run it")
    return names


# LiteRT int8 kernels that move values without requantizing them: their output must carry the input's
# scale and zero point (the kernels copy the 8-bit codes). The quantizer gave REVERSE_V2 its own output
# range (measured on the demo model: a mirrored crop read back 83 grey levels darker on average, AP -0.057).
SAME_SCALE_OPS = ("REVERSE_V2", "STRIDED_SLICE", "SLICE", "GATHER", "GATHER_ND", "RESHAPE", "TRANSPOSE",
                  "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "TILE",
                  "BROADCAST_TO", "SPLIT", "SPLIT_V")


def check_same_scale_ops(model_bytes: bytes, label: str) -> None:
    """Raises :class:`DeployExportError` when an 8-bit :data:`SAME_SCALE_OPS` op rescales its data.

    Such an op copies 8-bit codes; an output scale or zero point different from its data input's makes
    every value it passes on wrong, with no error from the interpreter.
    """
    interpreter = tf.lite.Interpreter(model_content=model_bytes)
    wrong = []
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] not in SAME_SCALE_OPS or not len(op["inputs"]) or not len(op["outputs"]):
            continue
        data = interpreter._get_tensor_details(op["inputs"][0], 0)  # pylint: disable=protected-access
        if np.dtype(data["dtype"]).name not in ("int8", "uint8"):
            continue
        for index in op["outputs"]:
            out = interpreter._get_tensor_details(index, 0)  # pylint: disable=protected-access
            if tuple(out["quantization"]) != tuple(data["quantization"]):
                wrong.append(f"{op['op_name']} {out['name'].split(';')[0]}: input scale/zero point "
                             f"{tuple(data['quantization'])}, output {tuple(out['quantization'])}")
    if wrong:
        raise DeployExportError(f"{label}: the quantizer rescaled ops that copy 8-bit values: {wrong}")


def _float_scope_nodes(calibrated: bytes) -> List[str]:
    """Output tensor names of the float-scope ops and of the model outputs in a calibrated LiteRT model."""
    interpreter = tf.lite.Interpreter(model_content=calibrated)
    names = {name for *_, name in _op_details(calibrated) if FLOAT_SCOPE in name}
    names.update(detail["name"] for detail in interpreter.get_output_details())
    return sorted(names)


def convert_tflite(deploy_model, precision: str, calibration: np.ndarray | None = None) -> bytes:
    """LiteRT flatbuffer of ``deploy_model`` at ``precision`` (``float32``, ``float16``, ``int8``).

    ``float16``: float16 weights (``Optimize.DEFAULT`` + ``supported_types=[float16]``), float32
    activations. ``int8``: calibrated on ``calibration`` (N, H, W, 3) crops, int8 weights and activations
    for the network, uint8 input, float32 outputs; the ops of :data:`FLOAT_SCOPE` (flip averaging, decoding)
    and the outputs are denylisted from quantization (``convert.mlir_quantize(denylisted_nodes=...)``, what
    ``tf.lite.experimental.QuantizationDebugger``'s selective quantization calls), then the float input is
    turned into uint8 (``modify_model_io_type``, what ``inference_input_type=tf.uint8`` does).

    Raises:
        DeployExportError: a non-built-in op, or (int8) a decode op that came out quantized.
        ValueError: an unknown precision, or int8 without calibration crops.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(deploy_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # never SELECT_TF_OPS (Flex)
    if precision == "float32":
        model_bytes = converter.convert()
    elif precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        model_bytes = converter.convert()
    elif precision == "int8":
        from tensorflow.lite.python import convert as lite_convert
        from tensorflow.lite.python import util as lite_util

        if calibration is None or not len(calibration):
            raise ValueError("int8 export needs calibration crops")
        crops = np.asarray(calibration, np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([crops[i:i + 1]] for i in range(len(crops)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter._experimental_calibrate_only = True  # pylint: disable=protected-access
        calibrated = converter.convert()
        quantized = lite_convert.mlir_quantize(calibrated, fully_quantize=False,
                                               denylisted_nodes=_float_scope_nodes(calibrated))
        model_bytes = lite_util.modify_model_io_type(quantized, tf.uint8, tf.float32)
        quantized_decode = sorted({op for op, inputs, outputs, name in _op_details(model_bytes)
                                   if FLOAT_SCOPE in name and op not in ("QUANTIZE", "DEQUANTIZE")
                                   and {"int8", "uint8"} & set(inputs + outputs)})
        if quantized_decode:
            raise DeployExportError(f"tflite_int8: the converter quantized decode ops {quantized_decode}; DARK "
                                    "cannot run on 8-bit values (export heatmaps and decode with pose.codec_np)")
        check_same_scale_ops(model_bytes, "tflite_int8")
    else:
        raise ValueError(f"precision must be float32, float16 or int8, got {precision!r}")
    check_tflite_ops(model_bytes, f"tflite {precision}")
    return model_bytes


def _rename_onnx_tensors(proto, names: Mapping[str, str]) -> None:
    """Renames tensors (graph inputs / outputs and every node reference) of an ONNX ``proto`` in place."""
    for node in proto.graph.node:
        for index, name in enumerate(node.input):
            if name in names:
                node.input[index] = names[name]
        for index, name in enumerate(node.output):
            if name in names:
                node.output[index] = names[name]
    for value in list(proto.graph.input) + list(proto.graph.output):
        if value.name in names:
            value.name = names[value.name]


def convert_onnx(deploy_model, opset: int) -> bytes:
    """ONNX model of ``deploy_model`` (frozen, ``tf2onnx.convert.from_graph_def``, dynamic batch) at ``opset``.

    Raises:
        DeployExportError: a node outside ONNX's default domain (a custom or contrib op).
    """
    import tf2onnx

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    height, width = (int(v) for v in deploy_model.input_shape[1:3])
    spec = tf.TensorSpec([None, height, width, 3], tf.float32, name=serving.INPUT_IMAGES)
    function = tf.function(lambda images: deploy_model(images, training=False))
    # Frozen first: variables *and* captured constant tensors (Keras 3's Normalization keeps its mean and
    # variance as captured tensors, which tf2onnx.convert.from_function would leave as model inputs).
    concrete = function.get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    outputs = {name: tensor.name for name, tensor in concrete.structured_outputs.items()}
    input_name = frozen.inputs[0].name
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=[input_name],
                                              output_names=sorted(outputs.values()), opset=int(opset))
    _rename_onnx_tensors(proto, {input_name: serving.INPUT_IMAGES,
                                 **{tensor: name for name, tensor in outputs.items()}})
    if len(proto.graph.input) != 1:
        raise DeployExportError(f"onnx: inputs {[i.name for i in proto.graph.input]}, expected only "
                                f"{serving.INPUT_IMAGES!r} (an unfrozen capture)")
    foreign = sorted({f"{node.domain}:{node.op_type}" for node in proto.graph.node
                      if node.domain not in ("", "ai.onnx")})
    if foreign:
        raise DeployExportError(f"onnx: the model needs ops outside ONNX's default domain {foreign}")
    outputs = sorted(output.name for output in proto.graph.output)
    if outputs != sorted(serving.DEPLOY_OUTPUTS):
        raise DeployExportError(f"onnx: outputs {outputs}, expected {sorted(serving.DEPLOY_OUTPUTS)}")
    return proto.SerializeToString()


# ---------------------------------------------------------------------------------------------------------
# Writing the artifacts
# ---------------------------------------------------------------------------------------------------------
def artifact_spec(name: str, config: Mapping[str, Any], codec: HeatmapCodec, opset: int | None = None,
                  input_quantization=None) -> Dict[str, Any]:
    """The ``deploy.json`` of one artifact: format, runtime, precision, file, input and output specs, decode."""
    runtime, precision, file_name = serving.DEPLOY_FORMAT_INFO[name]
    height, width = codec.input_size
    hm_h, hm_w = codec.heatmap_size
    joints = schema_for(config).num_joints
    spec: Dict[str, Any] = {
        "format": name, "runtime": runtime, "precision": precision, "file": file_name,
        "input": {"name": serving.INPUT_IMAGES, "shape": [None, height, width, 3],
                  "dtype": "uint8" if precision == "int8" else "float32",
                  "meaning": "RGB person crops, 0..255 (ExampleGen's crop rule)"},
        "outputs": [
            {"name": serving.OUTPUT_KEYPOINTS_CROP, "shape": [None, joints, 2], "dtype": "float32",
             "meaning": "keypoints (x, y), crop pixels; image = pose.coordinates.crop_to_image(center, scale)"},
            {"name": serving.OUTPUT_SCORES, "shape": [None, joints], "dtype": "float32",
             "meaning": "heatmap maxima"},
            {"name": serving.OUTPUT_HEATMAPS, "shape": [None, hm_h, hm_w, joints], "dtype": "float32",
             "meaning": "the decoded heatmaps (flip-averaged when flip_test)"},
        ],
        "decode": {"in_graph": True, "method": codec.decoding, "blur_kernel": codec.blur_kernel,
                   "compute_dtype": "float32"},
        "flip_test": bool(config["eval"]["flip_test"]),
        "dataset": config["dataset"],
        "dataset_meta": schema_for(config).to_meta(),
        # The crop rule of ExampleGen and of the SavedModel's predict_image (pipeline.predict_deploy uses it).
        "padding": float(config["data"]["padding"]),
        "clip_boxes": config["dataset"] != "mpii",
        "input_size": [height, width],
        "heatmap_size": [hm_h, hm_w],
    }
    if opset is not None:
        spec["opset"] = int(opset)
    if input_quantization is not None:
        spec["input"]["quantization"] = {"scale": float(input_quantization[0]),
                                         "zero_point": int(input_quantization[1])}
    return spec


def _input_quantization(model_bytes: bytes):
    detail = tf.lite.Interpreter(model_content=model_bytes).get_input_details()[0]
    return detail["quantization"]


@contextlib.contextmanager
def _converter_chatter_off():
    """Keeps the converters' chatter out of the default output (``DARKPOSE_DEBUG=1`` shows it).

    Keras' export prints every endpoint and captured tensor to stdout, the LiteRT converter and tf2onnx
    warn about TF1 APIs they call themselves (``convert_variables_to_constants``, ``tf.lite.Interpreter``,
    quantization statistics); none of it concerns the artifact, whose problems raise
    :class:`DeployExportError` or a converter error.
    """
    from toolkit import quiet

    if quiet.debug_enabled():
        yield
        return
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_deploy_artifacts(model, config: Mapping[str, Any], codec: HeatmapCodec, deploy_dir: str,
                            train_files: str | Sequence[str] | None = None,
                            formats: Sequence[str] | None = None, log: Callable[[str], None] = print,
                            calibration: np.ndarray | None = None) -> Dict[str, str]:
    """Writes one folder per format under ``deploy_dir`` (``<format>/<file>`` + ``deploy.json``).

    Args:
        model: trained keras.Model, float32 (see :func:`deploy_keras_model`).
        config: loaded experiment config; ``export.formats`` unless ``formats`` is given.
        codec: the experiment's codec.
        deploy_dir: usually ``<model_dir>/Format-Deploy`` (local or ``gs://``).
        train_files: train Examples (int8 calibration; ``export.calibration_crops`` crops).
        formats: overrides ``export.formats``.
        calibration: (N, H, W, 3) crops instead of reading ``train_files``.

    Returns:
        ``{format: artifact path}``.

    Raises:
        ValueError: an unknown format; int8 without calibration data; a bottom-up config.
        DeployExportError: see :func:`convert_tflite`, :func:`convert_onnx`.
    """
    formats = deploy_formats(config) if formats is None else list(formats)
    if not formats:
        return {}
    if config.get("approach", "top_down") != "top_down":
        raise ValueError("export.formats: deployment artifacts are built for top_down models only")
    section = config.get("export") or {}
    opset = int(section.get("onnx_opset", 17))
    deploy_model = deploy_keras_model(model, config, codec)
    written = {}
    for name in formats:
        runtime, precision, file_name = serving.DEPLOY_FORMAT_INFO[name]
        quantization = None
        if runtime == "onnxruntime":
            with _converter_chatter_off():
                data = convert_onnx(deploy_model, opset)
        else:
            crops = None
            if precision == "int8":
                crops = calibration
                if crops is None:
                    if train_files is None:
                        raise ValueError("tflite_int8 needs the train Examples to calibrate on")
                    crops = calibration_crops(train_files, config, int(section.get("calibration_crops", 128)))
            with _converter_chatter_off():
                data = convert_tflite(deploy_model, precision, crops)
                if precision == "int8":
                    quantization = _input_quantization(data)
        folder = f"{deploy_dir.rstrip('/')}/{name}"
        tf.io.gfile.makedirs(folder)
        path = f"{folder}/{file_name}"
        with tf.io.gfile.GFile(path, "wb") as handle:
            handle.write(data)
        spec = artifact_spec(name, config, codec, opset if runtime == "onnxruntime" else None, quantization)
        jsonio.write(f"{folder}/{serving.DEPLOY_SPEC_FILE}", spec)
        log(f"exported {name} ({len(data) / 1e6:.2f} MB) to {path}")
        written[name] = path
    return written


def export_keras_model(keras_path: str, config: Mapping[str, Any], deploy_dir: str, train_files=None,
                       formats: Sequence[str] | None = None, log=print) -> Dict[str, str]:
    """Loads ``model.keras`` and writes its deployment artifacts (:func:`export_deploy_artifacts`).

    Raises:
        FileNotFoundError: ``keras_path`` does not exist.
    """
    import keras

    from trainer.models import get_builder

    if not tf.io.gfile.exists(keras_path):
        raise FileNotFoundError(f"Keras model not found: {keras_path}")
    get_builder(config["model"]["name"])  # registers the builder's custom layers
    model = keras.models.load_model(keras_path)
    return export_deploy_artifacts(model, config, HeatmapCodec.from_config(config), deploy_dir, train_files,
                                   formats, log)


def main(argv: Sequence[str] | None = None) -> int:
    from pose.config import load_config
    from toolkit import cli

    parser = cli.ArgumentParser(prog="python -m trainer.export_deploy",
                                description="Write LiteRT / ONNX deployment artifacts of a model.keras.")
    parser.add_argument("--keras-model", required=True, help="model.keras (local or gs://)")
    parser.add_argument("--config", required=True, help="the experiment YAML the model was built from")
    parser.add_argument("--out", required=True, help="artifact folder, e.g. <model_dir>/Format-Deploy")
    parser.add_argument("--examples", default=None, help="ExampleGen output (its Split-train calibrates int8)")
    parser.add_argument("--formats", default=None,
                        help=f"comma-separated subset of {','.join(serving.DEPLOY_FORMATS)} "
                             "(default: the config's export.formats)")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    args = parser.parse_args(argv)
    overrides = None
    if args.formats is not None:
        overrides = {"export": {"formats": [name for name in args.formats.split(",") if name]}}
    config = load_config(args.config, small_run=args.small_run, overrides=overrides)
    formats = deploy_formats(config)
    if not formats:
        print("python -m trainer.export_deploy: error: no formats: set export.formats in "
              f"{args.config} or pass --formats", file=sys.stderr, flush=True)
        return 2
    train = examples_layout.split_dir(args.examples, "train") if args.examples else None
    export_keras_model(args.keras_model, config, args.out, train, formats, lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    from toolkit import cli as _cli

    sys.exit(_cli.run(main, prog="python -m trainer.export_deploy"))
