"""The heatmap codec object handed to every stage.

Build it once from an experiment config (:meth:`HeatmapCodec.from_config`)
and give the same object to ExampleGen (precomputed targets), tf.data
(re-encoding after augmentation) and export (in-graph decoding), so the three
can never disagree about sizes, sigma or the decoding method.

Public methods take and return keypoints in *crop pixel* coordinates (the
model input frame, see :mod:`pose.coordinates`); heatmaps are channels-last
``(..., H_hm, W_hm, K)``. ``encode``/``decode`` are NumPy; ``encode_tf``/
``decode_tf`` are their batched TensorFlow twins.

Example:

    codec = HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0)
    heatmaps, weights = codec.encode(keypoints, visible)   # (H, W, K), (K,)
    keypoints, scores = codec.decode(heatmaps)             # (K, 2), (K,)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Tuple

import numpy as np
import tensorflow as tf

from pose import codec_np, codec_tf
from pose import coordinates


@dataclasses.dataclass(frozen=True)
class HeatmapCodec:
    """Unbiased (DARK) heatmap encoder/decoder.

    Attributes:
        input_size: model input (crop) size (height, width), pixels.
        heatmap_size: heatmap size (height, width).
        sigma: Gaussian sigma of the targets, heatmap pixels.
        blur_kernel: odd DARK modulation kernel size.
        decoding: ``"dark"`` (default), ``"standard"`` or ``"argmax"``.
        decode_jit_compile: run :meth:`decode_tf` as one XLA computation (faster;
            a SavedModel holding it needs XLA wherever it is served, see
            :func:`pose.codec_tf.decode`).
    """

    input_size: Tuple[int, int]
    heatmap_size: Tuple[int, int]
    sigma: float
    blur_kernel: int = 11
    decoding: str = "dark"
    decode_jit_compile: bool = False

    def __post_init__(self):
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "heatmap_size", tuple(int(v) for v in self.heatmap_size))
        coordinates.crop_to_heatmap_factor(self.input_size, self.heatmap_size)  # validates sizes
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        codec_np.gaussian_kernel_1d(self.blur_kernel)  # validates the kernel size
        if self.decoding not in codec_np.DECODING_METHODS:
            raise ValueError(f"decoding must be one of {codec_np.DECODING_METHODS}, got {self.decoding!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "HeatmapCodec":
        """Builds the codec from a loaded experiment config (see :mod:`pose.config`)."""
        data, codec = config["data"], config["codec"]
        return cls(
            input_size=tuple(data["input_size"]),
            heatmap_size=tuple(data["heatmap_size"]),
            sigma=float(data["sigma"]),
            blur_kernel=int(codec["blur_kernel"]),
            decoding=str(codec["decoding"]),
            decode_jit_compile=bool(codec.get("decode_jit_compile", False)),
        )

    # -- NumPy -------------------------------------------------------------
    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Crop-pixel keypoints (..., K, 2) + visibility (..., K) -> heatmaps (..., H, W, K), weights (..., K)."""
        points = coordinates.crop_to_heatmap(keypoints, self.input_size, self.heatmap_size)
        return codec_np.encode(points, visible, self.heatmap_size, self.sigma)

    def decode(self, heatmaps: np.ndarray, method: str | None = None) -> Tuple[np.ndarray, np.ndarray]:
        """Heatmaps (..., H, W, K) -> crop-pixel keypoints (..., K, 2) float64, scores (..., K)."""
        points, scores = codec_np.decode(heatmaps, method or self.decoding, self.blur_kernel)
        return coordinates.heatmap_to_crop(points, self.input_size, self.heatmap_size), scores

    # -- TensorFlow ----------------------------------------------------------
    def encode_tf(self, keypoints: tf.Tensor, visible: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """TF twin of :meth:`encode`: (B, K, 2), (B, K) -> (B, H, W, K), (B, K) float32."""
        points = coordinates.crop_to_heatmap_tf(keypoints, self.input_size, self.heatmap_size)
        return codec_tf.encode(points, visible, self.heatmap_size, self.sigma)

    def decode_tf(self, heatmaps: tf.Tensor, method: str | None = None,
                  compute_dtype: tf.DType = tf.float64) -> Tuple[tf.Tensor, tf.Tensor]:
        """TF twin of :meth:`decode`: (B, H, W, K) -> crop-pixel (B, K, 2) float32, scores (B, K)."""
        points, scores = codec_tf.decode(heatmaps, method or self.decoding, self.blur_kernel, compute_dtype,
                                         jit_compile=self.decode_jit_compile)
        return coordinates.heatmap_to_crop_tf(points, self.input_size, self.heatmap_size), scores
