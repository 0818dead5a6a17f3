"""SavedModel export of a bottom-up (box-free) model, decoding inside the graph.

Called by :func:`trainer.export.export_serving_model` when
``config["approach"] == "bottom_up"``. ``<model_dir>/Format-Serving/`` gets
three signatures (names in :mod:`schemas.serving`, bottom-up block):

* ``predict_image(image)``: one encoded JPEG/PNG () string (decoded by
  ExampleGen's rule, :func:`pose.images.decode_image_tf`) -> ``keypoints``
  (N, K, 3) float32 (x, y ORIGINAL-image pixels, keypoint score),
  ``person_scores`` (N,) float32 best first, ``num_people`` () int32; rows
  after ``num_people`` are zeros, N = ``bottom_up.max_people``. In the graph:
  letterbox (:func:`pose.coordinates.letterbox_affine_tf`: long side to S,
  pad right/bottom, the records' geometry) -> bilinear warp -> model ->
  :func:`pose.bottom_up_decode_tf.decode` -> inverse affine.
* ``heatmaps(images)``: (B, S, S, 3) float32 RGB 0..255 letterboxed inputs ->
  ``outputs`` (B, H_out, W_out, C) raw model output (no flip), the layout of
  :mod:`schemas.bottom_up`.
* ``serving_default(examples)``: (B,) serialized bottom-up records
  (:mod:`schemas.bottom_up`) -> ``keypoints`` (B, N, K, 3) original pixels
  (through each record's ``affine``), ``person_scores`` (B, N),
  ``num_people`` (B,), ``image_id`` (B,) int64.

With ``config["eval"]["flip_test"]`` the network also runs on the mirrored
input; its output is mirrored back (``x -> W_out - 1 - x``, exact under the
project's convention) with :func:`schemas.bottom_up.flip_channels` (left/right
joints swapped, dx negated, each directed edge mapped to its mirror) and
averaged with the direct output before decoding.

Loaders: like the top-down export (:mod:`trainer.export`), the module tracks
the plain ``tf.Variable`` objects the signatures capture, so every signature
runs under the TF2 loader and under the session loader (``saved_model_cli
run``, TF Serving, Vertex AI).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import tensorflow as tf

from pose import bottom_up_decode_tf, coordinates
from pose.images import decode_image_tf
from schemas import bottom_up as bottom_up_schema
from schemas import serving
from trainer.models import prediction
from trainer.saved_model_variables import track_captured_variables


class BottomUpServingModule(tf.Module):
    """The exported bottom-up module: the Keras model plus letterbox, flip test and decoding.

    Args:
        model: keras.Model, input (B, S, S, 3) RGB 0..255, output (B, H_out,
            W_out, C) in the layout of :mod:`schemas.bottom_up` (or a list, last = prediction).
        config: loaded ``approach: bottom_up`` config.
    """

    def __init__(self, model, config: Mapping[str, Any]):
        super().__init__(name="bottom_up_serving")
        object.__setattr__(self, "_keras_model", model)   # tracked through its captured variables only
        self._settings = bottom_up_decode_tf.DecoderSettings.from_config(config)
        self._dataset = config["dataset"]
        self._size = int(config["data"]["input_size"][0])
        self._output_size = tuple(int(v) for v in config["data"]["heatmap_size"])
        self._channels = bottom_up_schema.num_channels(self._dataset)
        self._flip_test = bool(config["eval"]["flip_test"])
        inputs_spec = tf.TensorSpec([None, self._size, self._size, 3], tf.float32, name=serving.INPUT_IMAGES)
        self._model_function = tf.function(self._run_model, input_signature=[inputs_spec])
        self.heatmaps = tf.function(self._heatmaps, input_signature=[inputs_spec])
        self.predict_image = tf.function(
            self._predict_image, input_signature=[tf.TensorSpec([], tf.string, name=serving.INPUT_IMAGE)])
        self.serving_default = tf.function(
            self._serving_default, input_signature=[tf.TensorSpec([None], tf.string, name=serving.INPUT_EXAMPLES)])

    @property
    def output_size(self):
        """(H_out, W_out) of the model output (``data.heatmap_size``)."""
        return self._output_size

    @property
    def num_channels(self) -> int:
        """C of the bottom-up layout (:func:`schemas.bottom_up.num_channels`)."""
        return self._channels

    # -- building blocks ------------------------------------------------------
    def _run_model(self, images: tf.Tensor) -> tf.Tensor:
        height, width = self._output_size

        def run():
            return tf.cast(prediction(self._keras_model(images, training=False)), tf.float32)

        return tf.cond(tf.shape(images)[0] > 0, run, lambda: tf.zeros([0, height, width, self._channels]))

    def predict_outputs(self, images: tf.Tensor) -> tf.Tensor:
        """(B, S, S, 3) float32 inputs -> (B, H_out, W_out, C) outputs, flip-averaged if configured."""
        if not self._flip_test:
            return self._model_function(images)
        batch = tf.shape(images)[0]
        both = self._model_function(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
        mirrored = bottom_up_schema.flip_channels(tf.reverse(both[batch:], axis=[2]), self._dataset)
        return 0.5 * (both[:batch] + mirrored)

    def _to_original(self, people: Dict[str, tf.Tensor], affine: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Input-pixel keypoints (B, N, K, 3) -> original pixels with the inverse of (B, 2, 3) ``affine``."""
        keypoints = people["keypoints"]
        batch = tf.shape(keypoints)[0]
        joints = keypoints.shape[2]
        points = tf.reshape(keypoints[..., :2], [batch, -1, 2])
        mapped = coordinates.apply_affine_tf(points, coordinates.invert_affine_tf(affine))
        mapped = tf.reshape(mapped, [batch, -1, joints, 2])
        # Empty rows (after num_people) stay zeros rather than mapping (0, 0) through the affine.
        filled = tf.range(tf.shape(keypoints)[1])[None, :] < people["num_people"][:, None]
        mapped = tf.where(filled[..., None, None], mapped, 0.0)
        return {serving.OUTPUT_KEYPOINTS: tf.concat([mapped, keypoints[..., 2:]], axis=-1),
                serving.OUTPUT_PERSON_SCORES: people["person_scores"],
                serving.OUTPUT_NUM_PEOPLE: people["num_people"]}

    # -- signatures ------------------------------------------------------------
    def _heatmaps(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        return {serving.OUTPUT_OUTPUTS: self._model_function(images)}

    def _predict_image(self, image: tf.Tensor) -> Dict[str, tf.Tensor]:
        decoded = tf.cast(decode_image_tf(image), tf.float32)
        shape = tf.shape(decoded)
        affine = coordinates.letterbox_affine_tf(shape[0], shape[1], self._size)       # (2, 3)
        inputs = coordinates.warp_images_tf(decoded[None], affine[None], (self._size, self._size))
        people = bottom_up_decode_tf.decode(self.predict_outputs(inputs), self._settings)
        result = self._to_original(people, affine[None])
        return {name: value[0] for name, value in result.items()}

    def _serving_default(self, examples: tf.Tensor) -> Dict[str, tf.Tensor]:
        spec = bottom_up_schema.feature_spec()
        parsed = tf.io.parse_example(examples, {key: spec[key] for key in ("image/encoded", "image/id", "affine")})
        size = self._size

        def decode_one(data):
            return tf.ensure_shape(decode_image_tf(data), [size, size, 3])

        images = tf.map_fn(decode_one, parsed["image/encoded"],
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        people = bottom_up_decode_tf.decode(self.predict_outputs(tf.cast(images, tf.float32)), self._settings)
        result = self._to_original(people, tf.reshape(parsed["affine"], [-1, 2, 3]))
        result[serving.OUTPUT_IMAGE_ID] = parsed["image/id"]
        return result


def export_serving_model(model, config: Mapping[str, Any], export_dir: str) -> str:
    """Writes the bottom-up SavedModel (three signatures, see the module docstring) to ``export_dir``.

    Args:
        model: trained keras.Model (input (B, S, S, 3), output (B, H_out, W_out, C)).
        config: loaded ``approach: bottom_up`` config.
        export_dir: target directory, usually ``<model_dir>/Format-Serving``.

    Returns:
        ``export_dir``.

    Raises:
        ValueError: the model's input or output shape does not match the config.
    """
    size = int(config["data"]["input_size"][0])
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if input_shape is not None and input_shape[:2] not in ((size, size), (None, None)):
        raise ValueError(f"model input {input_shape} does not match data.input_size [{size}, {size}]")
    module = BottomUpServingModule(model, config)
    output_shape = model.output_shape[-1] if isinstance(model.output_shape, list) else model.output_shape
    output_shape = tuple(output_shape[1:])
    expected = (*module.output_size, module.num_channels)
    if len(output_shape) != 3 or any(got is not None and got != want for got, want in zip(output_shape, expected)):
        raise ValueError(f"model output {output_shape} does not match the bottom-up layout {expected} "
                         f"(data.heatmap_size and schemas.bottom_up.num_channels)")
    signatures = {
        serving.SERVING_DEFAULT: module.serving_default.get_concrete_function(),
        serving.PREDICT_IMAGE: module.predict_image.get_concrete_function(),
        serving.HEATMAPS: module.heatmaps.get_concrete_function(),
    }
    track_captured_variables(module, signatures.values())
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir
