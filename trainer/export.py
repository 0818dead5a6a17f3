"""SavedModel export with in-graph flip test and DARK decoding (:mod:`schemas.serving`).

``<model_dir>/Format-Serving/`` gets three signatures:

* ``serving_default(examples)``: (B,) serialized person-crop records
  (:mod:`schemas.features`) -> ``keypoints_crop`` (B, K, 2) crop pixels,
  ``keypoints_image`` (B, K, 2) original-image pixels, ``scores`` (B, K), and
  the pass-through fields of :data:`schemas.serving.PASSTHROUGH`;
* ``predict_image(image, boxes)``: one encoded JPEG/PNG () string and (N, 4)
  COCO ``[x, y, w, h]`` boxes -> ``keypoints`` (N, K, 2) image pixels,
  ``scores`` (N, K) (box -> padded window -> UDP crop affine -> bilinear warp
  -> model -> decode -> inverse affine, all in the graph);
* ``heatmaps(images)``: (B, H_in, W_in, 3) float32 RGB 0..255 crops ->
  ``heatmaps`` (B, H_hm, W_hm, K) raw model output (no flip).

With ``config["eval"]["flip_test"]`` the crops are also run mirrored; the
mirrored heatmaps are flipped back with :func:`pose.codec_tf.flip_back` (an
exact mirror under our convention, no shift) and averaged with the direct
ones before decoding. Decoding is ``codec.decode_tf`` (DARK by default).

Plus ``<model_dir>/model.keras`` (weights and architecture, for fine-tuning).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import numpy as np
import tensorflow as tf

from pose import codec_tf, coordinates
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
        self.model = model
        self._codec = codec
        self._input_size = tuple(int(v) for v in codec.input_size)
        self._flip_test = bool(config["eval"]["flip_test"])
        schema = get_schema(config["dataset"])
        self._num_joints = schema.num_joints
        self._flip_index = np.asarray(schema.flip_index, np.int32)
        self._padding = float(config["data"]["padding"])
        height, width = self._input_size
        self._aspect_ratio = width / height

        self.serving_default = tf.function(
            self._serving_default, input_signature=[tf.TensorSpec([None], tf.string, name=serving.INPUT_EXAMPLES)])
        self.predict_image = tf.function(
            self._predict_image, input_signature=[tf.TensorSpec([], tf.string, name="image"),
                                                  tf.TensorSpec([None, 4], tf.float32, name="boxes")])
        crops_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
        # The network is traced once, here; the three signatures call this one function.
        self._model_function = tf.function(self._run_model, input_signature=[crops_spec])
        self.heatmaps = tf.function(self._heatmaps, input_signature=[crops_spec])

    # -- building blocks ------------------------------------------------------
    def run_model(self, images: tf.Tensor) -> tf.Tensor:
        """(B, H_in, W_in, 3) -> (B, H_hm, W_hm, K) float32 prediction; an empty batch gives an empty result."""
        return self._model_function(images)

    def _run_model(self, images: tf.Tensor) -> tf.Tensor:
        height, width = self._codec.heatmap_size
        return tf.cond(tf.shape(images)[0] > 0,
                       lambda: tf.cast(prediction(self.model(images, training=False)), tf.float32),
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
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
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

    def _predict_image(self, image: tf.Tensor, boxes: tf.Tensor) -> Dict[str, tf.Tensor]:
        height, width = self._input_size
        decoded = tf.cast(tf.io.decode_image(image, channels=3, expand_animations=False), tf.float32)
        center, scale = coordinates.box_to_center_scale_tf(boxes, self._aspect_ratio, self._padding)
        matrix = coordinates.crop_affine_tf(center, scale, self._input_size)        # (N, 2, 3)
        # One warp per box (the warp op takes one transform per image); memory stays
        # at one image, whatever the number of people.
        crops = tf.map_fn(lambda m: coordinates.warp_images_tf(decoded[None], m[None], self._input_size)[0],
                          matrix, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        keypoints_crop, scores = self._codec.decode_tf(self.predict_heatmaps(crops))
        keypoints = coordinates.apply_affine_tf(keypoints_crop, coordinates.invert_affine_tf(matrix))
        return {"keypoints": keypoints, serving.OUTPUT_SCORES: scores}

    def _heatmaps(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {"heatmaps": self.run_model(images)}


def export_serving_model(model, config: Mapping[str, Any], codec: HeatmapCodec, export_dir: str) -> str:
    """Writes the SavedModel with the three signatures of :mod:`schemas.serving` to ``export_dir``.

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
    output_shape = tuple(probe.structured_outputs["heatmaps"].shape[1:])
    expected = (*codec.heatmap_size, get_schema(config["dataset"]).num_joints)
    if None not in output_shape and output_shape != expected:
        raise ValueError(f"model output {output_shape} does not match the codec heatmaps {expected}")
    signatures = {
        serving.SERVING_DEFAULT: module.serving_default.get_concrete_function(),
        serving.PREDICT_IMAGE: module.predict_image.get_concrete_function(),
        serving.HEATMAPS: probe,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


def save_keras_model(model, path: str) -> str:
    """Saves ``model`` as a ``.keras`` archive (architecture + weights) at ``path``; returns it."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    model.save(path)
    return path
