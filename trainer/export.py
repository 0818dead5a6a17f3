"""SavedModel export with in-graph flip test and DARK decoding (:mod:`schemas.serving`).

``<model_dir>/Format-Serving/`` gets three signatures:

* ``serving_default(examples)``: (B,) serialized person-crop records
  (:mod:`schemas.features`) -> ``keypoints_crop`` (B, K, 2) crop pixels,
  ``keypoints_image`` (B, K, 2) original-image pixels, ``scores`` (B, K), and
  the pass-through fields of :data:`schemas.serving.PASSTHROUGH`;
* ``predict_image(image, boxes)``: one encoded JPEG/PNG () string and (N, 4)
  COCO ``[x, y, w, h]`` boxes -> ``keypoints`` (N, K, 2) image pixels,
  ``scores`` (N, K), ``box_valid`` (N,) bool, ``box_status`` (N,) int32
  (box rule of ExampleGen, :func:`pose.coordinates.clip_boxes_tf`: clip to the
  image or flag ``invalid_box`` / ``box_outside_image`` -> padded window -> UDP
  crop affine -> bilinear warp -> model -> decode -> inverse affine, all in the
  graph; a box that is not valid gets keypoints 0 and scores 0, never NaN);
* ``heatmaps(images)``: (B, H_in, W_in, 3) float32 RGB 0..255 crops ->
  ``heatmaps`` (B, H_hm, W_hm, K) raw model output (no flip), plus
  ``attention`` (B, H_hm, W_hm, A) for models with attention heads
  (:func:`trainer.models.attention_model`; the network runs once for both).

With ``config["eval"]["flip_test"]`` the crops are also run mirrored; the
mirrored heatmaps are flipped back with :func:`pose.codec_tf.flip_back` (an
exact mirror under our convention, no shift) and averaged with the direct
ones before decoding. Decoding is ``codec.decode_tf`` (DARK by default).

Loaders: every signature runs under the TF2 object-graph loader
(``tf.saved_model.load``) and under the session-based loader of TF1
(``tf.compat.v1.saved_model.loader.load``), which is the restore path of
``saved_model_cli run``, TF Serving's C++ loader and Vertex AI's TensorFlow
prediction containers (docs/serving.md). For the latter the module tracks the
plain ``tf.Variable`` objects that the signatures capture, not the Keras model:
a Keras 3 variable exported through a model held by a ``tf.Module`` is saved
through a copy (``keras.src.backend.tensorflow.core.Variable.
_export_to_saved_model_graph``) that the session loader restores while the
graph reads the uninitialised original ("Could not find variable ...").
``keras.export.ExportArchive`` works around this the same way.

Precision (``config["export"]["precision"]``, :func:`serving_network`):
``float32`` runs the network as trained; ``bfloat16`` runs it under Keras'
``mixed_bfloat16`` policy (float32 variables, bfloat16 convolutions, as the
issue-17 measurements and Keras' mixed-precision guide do), keeping the layers
the builders make float32 under a mixed policy (the final heatmap convs,
attention heads) in float32, and with every BatchNormalization that follows a
convolution folded into it (:func:`fold_batchnorm`). The heatmaps are cast to float32 before flip
averaging and DARK decoding (the Taylor step divides by second derivatives of
the log-heatmap, which bfloat16's 8-bit mantissa would swamp; Zhang et al.,
CVPR 2020, Sec. 3.2). Signatures, inputs and outputs are the same. bfloat16 is
refused where this machine has no native bfloat16 (:func:`bfloat16_support`)
unless ``export.force_precision`` (:class:`UnsupportedPrecisionError`).

Plus ``<model_dir>/model.keras`` (weights and architecture, for fine-tuning).

Re-export a saved model at another precision::

    python -m trainer.export --keras-model <model_dir>/model.keras --config <yaml> \
        --out <dir>/Format-Serving [--precision float32|bfloat16] [--force-precision] [--small-run] \
        [--examples <ExampleGen dir>]

With ``export.formats`` in the config it also writes the LiteRT / ONNX artifacts beside ``--out``
(``<dir>/Format-Deploy``, :mod:`trainer.export_deploy`; ``--examples`` calibrates ``tflite_int8``).
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pose import codec_tf, coordinates
from pose.images import decode_image_tf
from pose.codec import HeatmapCodec
from schemas import features, serving
from schemas.dataset_meta import schema_for
from trainer import export_bottom_up, export_deploy
from trainer.models import attention_model, prediction
from trainer.saved_model_variables import track_captured_variables

PRECISIONS = ("float32", "bfloat16")
# Keras dtype policy of the exported network per export precision.
PRECISION_POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
# CPU flags of native bfloat16 arithmetic (x86: AVX512-BF16 dot products, AMX-BF16 tiles), as
# Linux's /proc/cpuinfo spells them; oneDNN (TF's CPU kernels) uses them for bfloat16 convolutions.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO_PATH = "/proc/cpuinfo"
# NVIDIA GPUs compute in bfloat16 from compute capability 8.0 (Ampere) on.
BFLOAT16_GPU_CAPABILITY = (8, 0)


class UnsupportedPrecisionError(ValueError):
    """``export.precision: bfloat16`` on a machine without native bfloat16, not forced."""


def export_precision(config: Mapping[str, Any]) -> Tuple[str, bool]:
    """``(precision, force)`` from ``config["export"]`` (``float32``, False when the section is absent).

    Raises:
        ValueError: an unknown precision.
    """
    section = config.get("export") or {}
    precision = section.get("precision", "float32")
    if precision not in PRECISIONS:
        raise ValueError(f"export.precision must be one of {PRECISIONS}, got {precision!r}")
    return precision, bool(section.get("force_precision", False))


def _gpu_capabilities() -> List[Tuple[str, Tuple[int, int]]]:
    """``(name, compute capability)`` of the GPUs TensorFlow sees (none on CPU-only machines)."""
    found = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        found.append((details.get("device_name", device.name), tuple(details.get("compute_capability") or (0, 0))))
    return found


def bfloat16_support() -> Tuple[bool, str]:
    """Whether this machine computes in bfloat16 natively, and why (one line).

    Native: a GPU TensorFlow sees with compute capability >= 8.0, or a CPU whose
    ``/proc/cpuinfo`` flags hold one of :data:`BFLOAT16_CPU_FLAGS`. Elsewhere
    TensorFlow emulates bfloat16 and an export in it is slower than float32.

    Returns:
        ``(supported, reason)``; a machine without ``/proc/cpuinfo`` (not Linux) is
        reported as unknown and unsupported.
    """
    for name, capability in _gpu_capabilities():
        if capability >= BFLOAT16_GPU_CAPABILITY:
            return True, f"GPU {name} (compute capability {capability[0]}.{capability[1]})"
    try:
        with open(CPUINFO_PATH, encoding="utf-8", errors="replace") as handle:
            flags = set()
            for line in handle:
                if line.startswith("flags"):
                    flags.update(line.partition(":")[2].split())
    except OSError as error:
        return False, f"cannot read {CPUINFO_PATH} to look for the CPU flags {'/'.join(BFLOAT16_CPU_FLAGS)} ({error})"
    native = [flag for flag in BFLOAT16_CPU_FLAGS if flag in flags]
    if native:
        return True, f"CPU flags {', '.join(native)}"
    return False, f"the CPU has none of the flags {', '.join(BFLOAT16_CPU_FLAGS)} ({CPUINFO_PATH}) and no GPU " \
                  f"with compute capability >= {BFLOAT16_GPU_CAPABILITY[0]}.{BFLOAT16_GPU_CAPABILITY[1]} is visible"


def check_precision(precision: str, force: bool = False) -> str:
    """Refuses ``bfloat16`` where :func:`bfloat16_support` says no, unless ``force``; returns a log line.

    Raises:
        ValueError: an unknown ``precision``.
        UnsupportedPrecisionError: ``bfloat16`` without native support and not ``force``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"export.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return "export precision float32"
    supported, reason = bfloat16_support()
    if supported:
        return f"export precision bfloat16 (native: {reason})"
    if not force:
        raise UnsupportedPrecisionError(
            f"export.precision bfloat16 refused: this machine has no native bfloat16 ({reason}); TensorFlow would "
            "emulate it, slower than float32. Export float32, or force it with export.force_precision: true "
            "(--force-precision) to build a bfloat16 model for another machine")
    return f"export precision bfloat16, forced without native support ({reason})"


def _policy_name(layer) -> str:
    return layer.dtype_policy.name


def _reference_policies(config: Mapping[str, Any] | None, policy: str) -> Dict[str, str]:
    """Layer name -> dtype policy of ``config``'s model built under ``policy`` (the builders' own float32 layers)."""
    import keras

    from trainer.models import build_model

    if not config or not (config.get("model") or {}).get("name"):
        return {}
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        reference = build_model(config)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return {layer.name: _policy_name(layer) for layer in _all_layers(reference)}


def _all_layers(model) -> List[Any]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if hasattr(layer, "layers"):
            layers.extend(_all_layers(layer))
    return layers


def conv_batchnorm_pairs(model) -> Dict[str, str]:
    """``{conv layer name: BatchNormalization layer name}`` for the BNs that can be folded into their conv.

    A pair: a ``Conv2D`` / ``Conv2DTranspose`` without activation, called once, whose only
    consumer is a ``BatchNormalization`` over the channel axis, called once (top-level layers).
    """
    import keras

    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        if layer.axis not in (-1, 3) or len(layer._inbound_nodes[0].input_tensors) != 1:
            continue
        conv = layer._inbound_nodes[0].input_tensors[0]._keras_history[0]
        if type(conv) not in (keras.layers.Conv2D, keras.layers.Conv2DTranspose):
            continue
        if len(conv._inbound_nodes) != 1 or len(conv._outbound_nodes) != 1 \
                or conv.get_config().get("activation") != "linear":
            continue
        pairs[conv.name] = layer.name
    return pairs


def fold_batchnorm(conv, batchnorm) -> List[np.ndarray]:
    """``[kernel, bias]`` of ``conv`` followed by ``batchnorm`` in inference mode, as one conv.

    ``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta`` is the conv with its output
    channels scaled by ``s = gamma / sqrt(var + eps)`` and bias ``(b - mean) * s + beta``
    (BN at inference, Ioffe & Szegedy, ICML 2015, Alg. 2). Keras kernels: Conv2D
    (kh, kw, in, out), Conv2DTranspose (kh, kw, out, in). Computed in float64.
    """
    import keras

    def value(variable, default):
        return np.asarray(variable, np.float64) if variable is not None else default

    channels = int(np.asarray(batchnorm.moving_mean).shape[0])
    scale = value(batchnorm.gamma, np.ones(channels)) / np.sqrt(
        np.asarray(batchnorm.moving_variance, np.float64) + batchnorm.epsilon)
    kernel = np.asarray(conv.kernel, np.float64)
    if isinstance(conv, keras.layers.Conv2DTranspose):
        kernel = kernel * scale[:, None]
    else:
        kernel = kernel * scale
    bias = value(conv.bias if conv.use_bias else None, np.zeros(channels))
    bias = (bias - np.asarray(batchnorm.moving_mean, np.float64)) * scale + value(batchnorm.beta, np.zeros(channels))
    return [kernel.astype(np.float32), bias.astype(np.float32)]


def _folded_batchnorm_layer():
    import keras

    class FoldedBatchNorm(keras.layers.Layer):
        """Identity in place of a BatchNormalization folded into the conv before it (serving only)."""

        def call(self, inputs, training=None, mask=None):
            return inputs

    return FoldedBatchNorm


def serving_network(model, config: Mapping[str, Any] | None, precision: str):
    """The network the SavedModel runs: ``model`` itself, or a copy under ``precision``'s dtype policy.

    ``float32``: ``model`` when all its layers compute in float32 (the usual case), else a float32 copy
    (a model built under a mixed-precision training policy). ``bfloat16``: a copy under Keras'
    ``mixed_bfloat16`` policy (float32 variables cast to bfloat16 at use, bfloat16 activations), in which
    the layers that ``config``'s builder makes float32 under a mixed policy (final heatmap convs,
    attention heads; found by their stable names) and, for models not built from ``config``, the layers
    that produce the model's outputs, stay float32; and every BatchNormalization that directly follows
    a convolution (:func:`conv_batchnorm_pairs`) is folded into it (:func:`fold_batchnorm`): under a
    mixed policy Keras runs BN in float32 with casts around it, which costs a quarter of HRNet-W32's
    bfloat16 forward on CPU. The copy holds ``model``'s weights (assigned by layer name; folded
    convs get the folded kernel and bias).

    Args:
        model: keras.Model (see :class:`PoseServingModule`), inference mode.
        config: loaded experiment config, or None.
        precision: ``float32`` or ``bfloat16``.

    Returns:
        a keras.Model with the same inputs, outputs and layer names.

    Raises:
        ValueError: an unknown ``precision``.
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    policy = PRECISION_POLICY[precision]
    if precision == "float32" and all(_policy_name(layer) == "float32" for layer in _all_layers(model)):
        return model
    reference = _reference_policies(config, policy) if precision == "bfloat16" else {}
    output_layers = {tensor._keras_history[0].name for tensor in model.outputs}
    pairs = conv_batchnorm_pairs(model) if precision == "bfloat16" else {}
    folded = set(pairs.values())
    folded_layer = _folded_batchnorm_layer()

    def layer_policy(layer) -> str:
        if precision == "float32":
            return "float32"
        if layer.name in reference:
            return reference[layer.name]
        return "float32" if layer.name in output_layers else policy

    def clone(layer):
        if layer.name in folded:
            return folded_layer(name=layer.name, dtype=layer_policy(layer))
        layer_config = layer.get_config()
        layer_config["dtype"] = layer_policy(layer)
        if layer.name in pairs:
            layer_config["use_bias"] = True
        return layer.__class__.from_config(layer_config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name in pairs:
            copy.get_layer(layer.name).set_weights(fold_batchnorm(layer, model.get_layer(pairs[layer.name])))
        elif layer.name not in folded and layer.weights:
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


class PoseServingModule(tf.Module):
    """The exported module: the Keras model plus the pre/post-processing graph.

    Args:
        model: keras.Model, input (B, H_in, W_in, 3) RGB 0..255, output heatmaps
            (B, H_hm, W_hm, K) or a list of them (last = prediction).
        config: loaded experiment config (``dataset``, ``data``, ``eval.flip_test``).
        codec: the experiment's :class:`pose.codec.HeatmapCodec`.
    """

    def __init__(self, model, config: Mapping[str, Any], codec: HeatmapCodec):
        super().__init__(name="pose_serving")
        # Held without automatic tracking: the SavedModel tracks the variables the
        # signatures capture (trainer.saved_model_variables), not the Keras objects.
        object.__setattr__(self, "_keras_model", model)
        # image -> [heatmaps, attention maps] sharing the model's layers, or None (no attention heads).
        object.__setattr__(self, "_attention_model", attention_model(model))
        self._codec = codec
        self._input_size = tuple(int(v) for v in codec.input_size)
        self._flip_test = bool(config["eval"]["flip_test"])
        schema = schema_for(config)
        self._num_joints = schema.num_joints
        self._flip_index = np.asarray(schema.flip_index, np.int32)
        self._padding = float(config["data"]["padding"])
        # ExampleGen clips COCO boxes to the image but uses MPII windows as given (as the references do).
        self._clip_boxes = config["dataset"] != "mpii"
        height, width = self._input_size
        self._aspect_ratio = width / height

        self.serving_default = tf.function(
            self._serving_default, input_signature=[tf.TensorSpec([None], tf.string, name=serving.INPUT_EXAMPLES)])
        self.predict_image = tf.function(
            self._predict_image, input_signature=[tf.TensorSpec([], tf.string, name=serving.INPUT_IMAGE),
                                                  tf.TensorSpec([None, 4], tf.float32, name=serving.INPUT_BOXES)])
        crops_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name=serving.INPUT_IMAGES)
        # The network is traced once, here; the three signatures call this one function.
        self._model_function = tf.function(self._run_model, input_signature=[crops_spec])
        self.heatmaps = tf.function(self._heatmaps, input_signature=[crops_spec])

    @property
    def model(self):
        """The Keras model (not part of the SavedModel's object graph; see the module docstring)."""
        return self._keras_model

    # -- building blocks ------------------------------------------------------
    @property
    def has_attention(self) -> bool:
        """Whether the model has attention heads (the ``heatmaps`` signature then also returns ``attention``)."""
        return self._attention_model is not None

    def run_model(self, images: tf.Tensor) -> tf.Tensor:
        """(B, H_in, W_in, 3) -> (B, H_hm, W_hm, K) float32 prediction; an empty batch gives an empty result."""
        return self._model_function(images)[serving.OUTPUT_HEATMAPS]

    def _run_model(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """``{"heatmaps": (B, H_hm, W_hm, K)}`` plus ``"attention"`` (B, H_hm, W_hm, A) when the model has it."""
        height, width = self._codec.heatmap_size

        def run():
            if self._attention_model is None:
                return {serving.OUTPUT_HEATMAPS: tf.cast(prediction(self._keras_model(images, training=False)),
                                                         tf.float32)}
            heatmaps, attention = self._attention_model(images, training=False)
            return {serving.OUTPUT_HEATMAPS: tf.cast(heatmaps, tf.float32),
                    serving.OUTPUT_ATTENTION: tf.cast(attention, tf.float32)}

        def empty():
            result = {serving.OUTPUT_HEATMAPS: tf.zeros([0, height, width, self._num_joints], tf.float32)}
            if self._attention_model is not None:
                channels = int(self._attention_model.outputs[1].shape[-1])
                result[serving.OUTPUT_ATTENTION] = tf.zeros([0, height, width, channels], tf.float32)
            return result

        return tf.cond(tf.shape(images)[0] > 0, run, empty)

    def predict_heatmaps(self, images: tf.Tensor) -> tf.Tensor:
        """(B, H_in, W_in, 3) float32 crops -> (B, H_hm, W_hm, K) heatmaps, flip-averaged if configured."""
        if not self._flip_test:
            return self.run_model(images)
        batch = tf.shape(images)[0]
        both = self.run_model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
        direct, mirrored = both[:batch], both[batch:]
        return 0.5 * (direct + codec_tf.flip_back(mirrored, self._flip_index))

    def _decode_crops(self, parsed: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Parsed records -> (B, H_in, W_in, 3) float32 crops; errors on a crop of the wrong size."""
        height, width = self._input_size
        sizes = tf.stack([parsed["crop/height"], parsed["crop/width"]], axis=-1)
        check = tf.debugging.assert_equal(
            sizes, tf.broadcast_to(tf.constant([height, width], tf.int64), tf.shape(sizes)),
            message=f"record crop size differs from the model input size {height}x{width}; "
                    f"rebuild the examples with this model's config")
        with tf.control_dependencies([check]):
            encoded = tf.identity(parsed["image/encoded"])

        def decode_one(data):
            image = decode_image_tf(data)
            return tf.ensure_shape(image, [height, width, 3])

        images = tf.map_fn(decode_one, encoded, fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8))
        return tf.cast(images, tf.float32)

    # -- signatures ------------------------------------------------------------
    def _serving_default(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        parsed = features.parse_records(examples, self._num_joints)
        images = self._decode_crops(parsed)
        keypoints_crop, scores = self._codec.decode_tf(self.predict_heatmaps(images))
        keypoints_image = coordinates.crop_to_image_tf(
            keypoints_crop, parsed["bbox/center"], parsed["bbox/scale"], self._input_size)
        outputs = {
            serving.OUTPUT_KEYPOINTS_CROP: keypoints_crop,
            serving.OUTPUT_KEYPOINTS_IMAGE: keypoints_image,
            serving.OUTPUT_SCORES: scores,
        }
        for name, key in serving.PASSTHROUGH.items():
            outputs[name] = parsed[key]
        return outputs

    def _decode_image(self, image: tf.Tensor) -> tf.Tensor:
        """Encoded JPEG/PNG () string -> (H, W, 3) float32 RGB 0..255, by ExampleGen's rule
        (:func:`pose.images.decode_image_tf`: same pixels as the records' source decode; other
        formats fail with InvalidArgument)."""
        return tf.cast(decode_image_tf(image), tf.float32)

    def _predict_image(self, image: tf.Tensor, boxes: tf.Tensor) -> Dict[str, tf.Tensor]:
        height, width = self._input_size
        decoded = self._decode_image(image)
        shape = tf.shape(decoded)
        # ExampleGen's box rule (one owner: pose.coordinates): clip to the image or flag the box.
        clipped, status = coordinates.clip_boxes_tf(boxes, shape[1], shape[0])
        valid = tf.equal(status, coordinates.BOX_VALID)
        kept = tf.where(valid)                                                     # (M, 1) int64
        windows = clipped if self._clip_boxes else boxes
        center, scale = coordinates.box_to_center_scale_tf(tf.gather_nd(windows, kept), self._aspect_ratio,
                                                           self._padding)
        matrix = coordinates.crop_affine_tf(center, scale, self._input_size)        # (M, 2, 3)
        # One warp per box (the warp op takes one transform per image); memory stays
        # at one image, whatever the number of people.
        crops = tf.map_fn(lambda m: coordinates.warp_images_tf(decoded[None], m[None], self._input_size)[0],
                          matrix, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        keypoints_crop, scores = self._codec.decode_tf(self.predict_heatmaps(crops))
        keypoints = coordinates.apply_affine_tf(keypoints_crop, coordinates.invert_affine_tf(matrix))
        # Boxes that are not valid: keypoints 0 and scores 0 (zeros of scatter_nd).
        count = tf.shape(boxes, out_type=tf.int64)[0]
        return {
            serving.OUTPUT_KEYPOINTS: tf.scatter_nd(kept, keypoints, [count, self._num_joints, 2]),
            serving.OUTPUT_SCORES: tf.scatter_nd(kept, scores, [count, self._num_joints]),
            serving.OUTPUT_BOX_VALID: valid,
            serving.OUTPUT_BOX_STATUS: status,
        }

    def _heatmaps(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        # heatmaps, and attention for models with attention heads (schemas.serving)
        return dict(self._model_function(images))


def export_serving_model(model, config: Mapping[str, Any], codec: HeatmapCodec, export_dir: str) -> str:
    """Writes the SavedModel with the three signatures of :mod:`schemas.serving` to ``export_dir``.

    The SavedModel runs under both the TF2 loader and the session loader
    (``saved_model_cli run``, TF Serving, Vertex AI); see the module docstring.

    Args:
        model: trained keras.Model (see :class:`PoseServingModule`); build it
            outside any multi-replica strategy scope.
        config: loaded experiment config.
        codec: the experiment's :class:`pose.codec.HeatmapCodec`.
        export_dir: target directory, usually ``<model_dir>/Format-Serving``.

    Returns:
        ``export_dir``.

    Raises:
        ValueError: the model's input/output shapes do not match the codec sizes.
        UnsupportedPrecisionError: ``export.precision: bfloat16`` on a machine without native
            bfloat16, not forced (:func:`check_precision`).
    """
    precision, force = export_precision(config)
    check_precision(precision, force)
    model = serving_network(model, config, precision)
    if config.get("approach") == "bottom_up":  # whole images, people decoded in the graph (issue 16)
        return export_bottom_up.export_serving_model(model, config, export_dir)
    height, width = codec.input_size
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is not None and input_shape[:2] != (height, width) and input_shape[:2] != (None, None):
        raise ValueError(f"model input {input_shape} does not match the codec input size {codec.input_size}")
    module = PoseServingModule(model, config, codec)
    probe = module.heatmaps.get_concrete_function()
    output_shape = tuple(probe.structured_outputs[serving.OUTPUT_HEATMAPS].shape[1:])
    expected = (*codec.heatmap_size, schema_for(config).num_joints)
    if None not in output_shape and output_shape != expected:
        raise ValueError(f"model output {output_shape} does not match the codec heatmaps {expected}")
    signatures = {
        serving.SERVING_DEFAULT: module.serving_default.get_concrete_function(),
        serving.PREDICT_IMAGE: module.predict_image.get_concrete_function(),
        serving.HEATMAPS: probe,
    }
    track_captured_variables(module, signatures.values())
    tf.saved_model.save(module, export_dir, signatures=signatures)
    from schemas import dataset_meta

    dataset_meta.write_serving_meta(schema_for(config), export_dir)  # names, flip index, skeleton travel along
    return export_dir


def save_keras_model(model, path: str) -> str:
    """Saves ``model`` as a ``.keras`` archive (architecture + weights) at ``path``; returns it."""
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)  # local or gs:// (Keras saves remote paths through tf.io.gfile)
    model.save(path)
    return path


def export_keras_model(keras_path: str, config: Mapping[str, Any], export_dir: str,
                       log=print, train_files=None) -> str:
    """Re-exports a saved ``model.keras`` as a SavedModel at ``config["export"]``'s precision.

    With ``config["export"]["formats"]`` also writes those LiteRT / ONNX artifacts to
    ``<parent of export_dir>/Format-Deploy`` (:mod:`trainer.export_deploy`; ``tflite_int8`` is
    calibrated on ``train_files``, the train Examples).

    Args:
        keras_path: ``<model_dir>/model.keras`` (local or ``gs://``), written by the Trainer or
            ``trainer.import_weights``.
        config: the experiment config the model was built from.
        export_dir: target directory (must not exist).

    Returns:
        ``export_dir``.

    Raises:
        FileNotFoundError: ``keras_path`` does not exist.
        FileExistsError: ``export_dir`` exists.
        UnsupportedPrecisionError: see :func:`check_precision` (raised before the model is loaded).
    """
    import keras

    from trainer.models import get_builder

    precision, force = export_precision(config)
    log(check_precision(precision, force))
    if not tf.io.gfile.exists(keras_path):
        raise FileNotFoundError(f"Keras model not found: {keras_path}")
    if "tflite_int8" in export_deploy.deploy_formats(config) and train_files is None:
        raise ValueError("export.formats lists tflite_int8: pass the train Examples to calibrate on (--examples)")
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"{export_dir} exists already: choose a new --out")
    get_builder(config["model"]["name"])  # imports the builder module, which registers its custom layers
    model = keras.models.load_model(keras_path)
    codec = HeatmapCodec.from_config(config)
    export_serving_model(model, config, codec, export_dir)
    log(f"exported {keras_path} ({precision}) to {export_dir}")
    if export_deploy.deploy_formats(config):
        deploy_dir = f"{os.path.dirname(export_dir.rstrip('/'))}/{serving.DEPLOY_DIR}"
        export_deploy.export_deploy_artifacts(model, config, codec, deploy_dir, train_files=train_files, log=log)
    return export_dir


def main(argv: Sequence[str] | None = None) -> int:
    from toolkit import cli
    from pose.config import load_config

    parser = cli.ArgumentParser(prog="python -m trainer.export",
                                description="Re-export a model.keras as a serving SavedModel (trainer/export.py).")
    parser.add_argument("--keras-model", required=True, help="model.keras (local or gs://)")
    parser.add_argument("--config", required=True, help="the experiment YAML the model was built from")
    parser.add_argument("--out", required=True, help="new SavedModel directory, e.g. <dir>/Format-Serving")
    parser.add_argument("--small-run", action="store_true", help="apply the config's small_run section")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="network precision (default: the config's export.precision)")
    parser.add_argument("--force-precision", action="store_true",
                        help="export bfloat16 even where this machine has no native bfloat16")
    parser.add_argument("--examples", default=None,
                        help="ExampleGen output whose Split-train calibrates a tflite_int8 export.formats entry")
    args = parser.parse_args(argv)
    overrides: Dict[str, Any] = {}
    if args.precision is not None:
        overrides["precision"] = args.precision
    if args.force_precision:
        overrides["force_precision"] = True
    config = load_config(args.config, small_run=args.small_run,
                         overrides={"export": overrides} if overrides else None)

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        train = None
        if args.examples:
            from schemas import examples as examples_layout

            train = examples_layout.split_dir(args.examples, "train")
        export_keras_model(args.keras_model, config, args.out, log, train_files=train)
    except UnsupportedPrecisionError as error:
        print(f"python -m trainer.export: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    from toolkit import cli as _cli

    sys.exit(_cli.run(main, prog="python -m trainer.export"))
