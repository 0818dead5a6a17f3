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
  ``heatmaps`` (B, H_hm, W_hm, K) raw model output (no flip).

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

Plus ``<model_dir>/model.keras`` (weights and architecture, for fine-tuning).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import numpy as np
import tensorflow as tf

from pose import codec_tf, coordinates
from pose.images import decode_image_tf
from pose.codec import HeatmapCodec
from schemas import features, serving
from schemas.keypoints import get_schema
from trainer.models import prediction


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
        # signatures capture (track_captured_variables), not the Keras objects.
        object.__setattr__(self, "_keras_model", model)
        self._codec = codec
        self._input_size = tuple(int(v) for v in codec.input_size)
        self._flip_test = bool(config["eval"]["flip_test"])
        schema = get_schema(config["dataset"])
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

    def track_captured_variables(self, functions) -> int:
        """Tracks, as ``model_variables``, every ``tf.Variable`` that ``functions`` capture.

        Call it with the traced concrete functions of the signatures before
        saving, so that the SavedModel's checkpoint and its session-loader
        restore ops hold exactly the variables the graph reads (once each).

        Args:
            functions: iterable of concrete functions (``.variables``).

        Returns:
            the number of variables tracked.
        """
        captured = {}
        for function in functions:
            for variable in function.variables:
                captured.setdefault(id(variable), variable)
        self.model_variables = list(captured.values())
        return len(self.model_variables)

    # -- building blocks ------------------------------------------------------
    def run_model(self, images: tf.Tensor) -> tf.Tensor:
        """(B, H_in, W_in, 3) -> (B, H_hm, W_hm, K) float32 prediction; an empty batch gives an empty result."""
        return self._model_function(images)

    def _run_model(self, images: tf.Tensor) -> tf.Tensor:
        height, width = self._codec.heatmap_size
        return tf.cond(tf.shape(images)[0] > 0,
                       lambda: tf.cast(prediction(self._keras_model(images, training=False)), tf.float32),
                       lambda: tf.zeros([0, height, width, self._num_joints], tf.float32))

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
        return {serving.OUTPUT_HEATMAPS: self.run_model(images)}


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
    """
    height, width = codec.input_size
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is not None and input_shape[:2] != (height, width) and input_shape[:2] != (None, None):
        raise ValueError(f"model input {input_shape} does not match the codec input size {codec.input_size}")
    module = PoseServingModule(model, config, codec)
    probe = module.heatmaps.get_concrete_function()
    output_shape = tuple(probe.structured_outputs[serving.OUTPUT_HEATMAPS].shape[1:])
    expected = (*codec.heatmap_size, get_schema(config["dataset"]).num_joints)
    if None not in output_shape and output_shape != expected:
        raise ValueError(f"model output {output_shape} does not match the codec heatmaps {expected}")
    signatures = {
        serving.SERVING_DEFAULT: module.serving_default.get_concrete_function(),
        serving.PREDICT_IMAGE: module.predict_image.get_concrete_function(),
        serving.HEATMAPS: probe,
    }
    module.track_captured_variables(signatures.values())
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


def save_keras_model(model, path: str) -> str:
    """Saves ``model`` as a ``.keras`` archive (architecture + weights) at ``path``; returns it."""
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)  # local or gs:// (Keras saves remote paths through tf.io.gfile)
    model.save(path)
    return path
