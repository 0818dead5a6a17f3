"""The coordinate convention of the whole project, and its affine helpers.

Convention (unbiased, pixel-centre aligned, as DarkPose's released code and
UDP, Huang et al. CVPR 2020):

* A point ``(x, y)`` is continuous; the centre of pixel ``(col, row)`` is at
  ``x = col, y = row``. An image of width W spans ``[-0.5, W - 0.5]`` and its
  pixel centres span ``[0, W - 1]``. COCO/our records use this frame.
  (MPII's MATLAB annotations are 1-based and are converted once, in
  ``components/example_gen`` through :data:`MATLAB_TO_ZERO_BASED`.)
* A person box is described by a ``center`` (x, y) and a ``scale`` (w, h) in
  image pixels: the size of the window that the crop covers. ``scale`` has the
  aspect ratio of the model input and already includes the 1.25 padding.
* The crop affine maps ``center`` to ``((W_in - 1) / 2, (H_in - 1) / 2)`` and
  a window of width ``scale_w`` onto ``W_in - 1`` pixel steps, so the first
  and last pixel centres of the window map onto the first and last pixel
  centres of the crop (UDP). Rotation (degrees, counter-clockwise in the
  image as seen on screen) is about the centre.
* Heatmap coordinates are crop coordinates times ``(W_hm - 1) / (W_in - 1)``
  (and the same for height): heatmap pixel centres land on crop pixel
  centres at both ends.

* Bottom-up (whole image, :mod:`schemas.bottom_up`): the image goes into the
  square ``S x S`` input by :func:`letterbox_affine` (aspect ratio kept, long
  side's pixel centres ``0 .. L-1`` onto ``0 .. S-1``, top-left aligned, zero
  padding right/bottom); input -> output is the same corner-aligned scaling as
  crop -> heatmap (:func:`crop_to_heatmap` / :func:`heatmap_to_crop` and their
  TF twins, with the input and output sizes), i.e. ``x_out = x_in * (W_out -
  1) / (W_in - 1)``.

Consequences (tested): mirroring a crop is ``x -> W_in - 1 - x`` and mirroring
its heatmap is ``x -> W_hm - 1 - x``, with no 1-pixel shift; image -> crop ->
image round trips are exact up to float error.

Sizes are given as ``(height, width)`` tuples everywhere (as the config names
``256x192`` read); points as ``(x, y)``.

The module has a NumPy half (Beam, tests) and a TensorFlow half (tf.data
augmentation, serving graph). They are twins; tests tie them together.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

PADDING = 1.25
"""Box padding factor of the reference systems."""

MATLAB_TO_ZERO_BASED = -1.0
"""Offset added to MATLAB 1-based pixel coordinates (MPII) to get our frame."""

BOX_VALID, BOX_INVALID, BOX_OUTSIDE_IMAGE = 0, 1, 2
BOX_STATUS = ("valid", "invalid_box", "box_outside_image")
"""Names of the box status codes of :func:`clip_boxes` / :func:`clip_boxes_tf` (index = code).

``invalid_box``: a non-finite coordinate, or width or height <= 0.
``box_outside_image``: a valid box with zero area after clipping to the image.
The names are ExampleGen's skip reasons; the codes are the ``box_status``
output of the serving signature ``predict_image`` (:mod:`schemas.serving`).
"""

Size = Tuple[int, int]


def _check_size(size: Sequence[int], name: str) -> Tuple[int, int]:
    if len(size) != 2 or min(int(size[0]), int(size[1])) < 2:
        raise ValueError(f"{name} must be (height, width) with both >= 2, got {size!r}")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------
# NumPy half
# --------------------------------------------------------------------------

def box_to_center_scale(boxes: np.ndarray, aspect_ratio: float, padding: float = PADDING):
    """Converts COCO ``[x, y, w, h]`` boxes to crop windows.

    The box is grown to the model's aspect ratio (``width / height`` of the
    input) around its centre, then multiplied by ``padding``.

    Args:
        boxes: float array (..., 4), ``[x, y, w, h]`` in image pixels.
        aspect_ratio: input width / input height, e.g. 192 / 256.
        padding: multiplicative padding, 1.25 in the references.

    Returns:
        ``(center, scale)``, each float64 (..., 2): window centre (x, y) and
        window size (w, h) in image pixels.
    """
    if aspect_ratio <= 0:
        raise ValueError(f"aspect_ratio must be > 0, got {aspect_ratio}")
    boxes = np.asarray(boxes, dtype=np.float64)
    x, y, w, h = np.moveaxis(boxes, -1, 0)
    center = np.stack([x + 0.5 * w, y + 0.5 * h], axis=-1)
    wider = w > aspect_ratio * h
    w_fixed = np.where(wider, w, h * aspect_ratio)
    h_fixed = np.where(wider, w / aspect_ratio, h)
    scale = np.stack([w_fixed, h_fixed], axis=-1) * padding
    return center, scale


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """The box rule of ExampleGen and serving: clips COCO ``[x, y, w, h]`` boxes to an image.

    A box is ``invalid_box`` when any coordinate is non-finite or ``w <= 0``
    or ``h <= 0`` (never widened); otherwise its corners ``(x, y)`` and
    ``(x + w, y + h)`` are clipped to the pixel-centre extent
    ``[0, W - 1] x [0, H - 1]`` (mmpose's sanitising of COCO boxes, in our
    pixel-centre frame), and it is ``box_outside_image`` when the clipped box
    has zero width or height. :func:`clip_boxes_tf` is the TF twin (the graph of
    ``predict_image``); a test ties them.

    Args:
        boxes: (N, 4) ``[x, y, w, h]`` in image pixels (anything ``np.asarray`` takes).
        width, height: image size in pixels.

    Returns:
        ``(clipped, status)``: float64 (N, 4) clipped ``[x, y, w, h]``, all
        zeros where the box is not valid; int32 (N,) codes :data:`BOX_VALID`,
        :data:`BOX_INVALID`, :data:`BOX_OUTSIDE_IMAGE` (names in :data:`BOX_STATUS`).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.all(np.isfinite(boxes), axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    positive = finite & (safe[:, 2] > 0) & (safe[:, 3] > 0)
    x1 = np.clip(safe[:, 0], 0, width - 1)
    y1 = np.clip(safe[:, 1], 0, height - 1)
    x2 = np.clip(safe[:, 0] + safe[:, 2], 0, width - 1)
    y2 = np.clip(safe[:, 1] + safe[:, 3], 0, height - 1)
    inside = (x2 > x1) & (y2 > y1)
    status = np.where(positive, np.where(inside, BOX_VALID, BOX_OUTSIDE_IMAGE), BOX_INVALID).astype(np.int32)
    clipped = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    return np.where((status == BOX_VALID)[:, None], clipped, 0.0), status


def crop_affine(center: np.ndarray, scale: np.ndarray, output_size: Sequence[int],
                rotation: np.ndarray | float = 0.0) -> np.ndarray:
    """Affine matrices mapping image points into the crop (our convention).

    Args:
        center: (..., 2) window centres (x, y), image pixels.
        scale: (..., 2) window sizes (w, h), image pixels.
        output_size: crop size (height, width).
        rotation: (...) or scalar, degrees counter-clockwise.

    Returns:
        float64 (..., 2, 3) matrices ``M`` with ``crop = M @ [x, y, 1]``.
    """
    out_h, out_w = _check_size(output_size, "output_size")
    center = np.asarray(center, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    theta = np.deg2rad(np.asarray(rotation, dtype=np.float64))
    theta = np.broadcast_to(theta, center.shape[:-1])
    sx = (out_w - 1.0) / scale[..., 0]
    sy = (out_h - 1.0) / scale[..., 1]
    cos, sin = np.cos(theta), np.sin(theta)
    # Counter-clockwise on screen with y pointing down: x' = cos x + sin y, y' = -sin x + cos y.
    a00, a01 = sx * cos, sx * sin
    a10, a11 = -sy * sin, sy * cos
    cx, cy = center[..., 0], center[..., 1]
    t0 = (out_w - 1.0) / 2.0 - (a00 * cx + a01 * cy)
    t1 = (out_h - 1.0) / 2.0 - (a10 * cx + a11 * cy)
    row0 = np.stack([a00, a01, t0], axis=-1)
    row1 = np.stack([a10, a11, t1], axis=-1)
    return np.stack([row0, row1], axis=-2)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverts (..., 2, 3) affine matrices. Returns (..., 2, 3) float64."""
    matrix = np.asarray(matrix, dtype=np.float64)
    linear = matrix[..., :2]
    inverse_linear = np.linalg.inv(linear)
    translation = -np.einsum("...ij,...j->...i", inverse_linear, matrix[..., 2])
    return np.concatenate([inverse_linear, translation[..., None]], axis=-1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Applies (..., 2, 3) matrices to points (..., K, 2). Returns float64 (..., K, 2)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.einsum("...ij,...kj->...ki", matrix[..., :2], points) + matrix[..., None, :, 2]


def crop_to_heatmap_factor(input_size: Sequence[int], heatmap_size: Sequence[int]) -> np.ndarray:
    """(2,) float64 factors (x, y) that take crop coordinates to heatmap coordinates."""
    in_h, in_w = _check_size(input_size, "input_size")
    hm_h, hm_w = _check_size(heatmap_size, "heatmap_size")
    return np.array([(hm_w - 1.0) / (in_w - 1.0), (hm_h - 1.0) / (in_h - 1.0)])


def crop_to_heatmap(points: np.ndarray, input_size, heatmap_size) -> np.ndarray:
    """Crop pixel coordinates (..., 2) -> heatmap coordinates (..., 2)."""
    return np.asarray(points, dtype=np.float64) * crop_to_heatmap_factor(input_size, heatmap_size)


def heatmap_to_crop(points: np.ndarray, input_size, heatmap_size) -> np.ndarray:
    """Heatmap coordinates (..., 2) -> crop pixel coordinates (..., 2)."""
    return np.asarray(points, dtype=np.float64) / crop_to_heatmap_factor(input_size, heatmap_size)


def crop_to_image(points: np.ndarray, center: np.ndarray, scale: np.ndarray,
                  input_size, rotation=0.0) -> np.ndarray:
    """Maps crop points (N, K, 2) back to image pixels with the inverse crop affine."""
    matrix = invert_affine(crop_affine(center, scale, input_size, rotation))
    return apply_affine(points, matrix)


def heatmap_to_image(points: np.ndarray, center: np.ndarray, scale: np.ndarray,
                     input_size, heatmap_size, rotation=0.0) -> np.ndarray:
    """Maps heatmap coordinates (N, K, 2) to original-image pixels (N, K, 2)."""
    crop_points = heatmap_to_crop(points, input_size, heatmap_size)
    return crop_to_image(crop_points, center, scale, input_size, rotation)


def letterbox_affine(height, width, size: int) -> np.ndarray:
    """The image -> bottom-up input affine: keep the aspect ratio, pad right/bottom.

    The long side ``L = max(height, width)`` is scaled so that its pixel
    centres ``0 .. L-1`` land on ``0 .. size-1`` (the project's corner-aligned
    convention, :func:`crop_affine` of the window ``L - 1`` wide centred at
    ``((L-1)/2, (L-1)/2)``): ``x_in = x * (size - 1) / (L - 1)``, the same for y,
    no rotation, no offset; the rest of the square is zero padding.

    Args:
        height, width: original image size(s) in pixels, scalars or arrays (...,).
        size: square input side S, pixels.

    Returns:
        float64 (..., 2, 3) matrices, ``input = M @ [x, y, 1]``.

    Raises:
        ValueError: ``size`` < 2 or an image side < 1, or both sides 1.
    """
    if int(size) < 2:
        raise ValueError(f"size must be >= 2, got {size!r}")
    height = np.asarray(height, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    longest = np.maximum(height, width)
    if np.any(np.minimum(height, width) < 1) or np.any(longest < 2):
        raise ValueError(f"image size must be >= 1 x 1 with a side >= 2, got {height!r} x {width!r}")
    half = (longest - 1.0) / 2.0
    return crop_affine(np.stack([half, half], axis=-1), np.stack([longest - 1.0, longest - 1.0], axis=-1),
                       (int(size), int(size)))


def flip_points(points: np.ndarray, width: int) -> np.ndarray:
    """Mirrors (..., 2) points horizontally in a frame ``width`` pixels wide: x -> width-1-x."""
    points = np.array(points, dtype=np.float64, copy=True)
    points[..., 0] = (width - 1.0) - points[..., 0]
    return points


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: Sequence[int]) -> np.ndarray:
    """Warps one image (H, W, C) uint8 into a crop (out_h, out_w, C) with bilinear sampling.

    OpenCV samples at integer pixel centres, which is this module's convention.
    Outside the image is filled with zeros.
    """
    import cv2  # Imported lazily: only the Beam side and tests warp in NumPy.

    out_h, out_w = _check_size(output_size, "output_size")
    return cv2.warpAffine(
        image, np.asarray(matrix, dtype=np.float64), (out_w, out_h),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


# --------------------------------------------------------------------------
# TensorFlow half (tensor ops only; batched; usable in tf.function/SavedModel)
# --------------------------------------------------------------------------

def box_to_center_scale_tf(boxes: tf.Tensor, aspect_ratio: float, padding: float = PADDING):
    """TF twin of :func:`box_to_center_scale`. boxes (..., 4) -> center, scale (..., 2)."""
    boxes = tf.convert_to_tensor(boxes, dtype=tf.float32)
    x, y, w, h = tf.unstack(boxes, axis=-1)
    center = tf.stack([x + 0.5 * w, y + 0.5 * h], axis=-1)
    wider = w > aspect_ratio * h
    w_fixed = tf.where(wider, w, h * aspect_ratio)
    h_fixed = tf.where(wider, w / aspect_ratio, h)
    return center, tf.stack([w_fixed, h_fixed], axis=-1) * padding


def clip_boxes_tf(boxes: tf.Tensor, width, height) -> Tuple[tf.Tensor, tf.Tensor]:
    """TF twin of :func:`clip_boxes` (float32): boxes (N, 4), scalar image width/height
    (any numeric dtype, may be tensors) -> clipped (N, 4) float32, status (N,) int32."""
    boxes = tf.reshape(tf.convert_to_tensor(boxes, dtype=tf.float32), [-1, 4])
    max_x = tf.cast(width, tf.float32) - 1.0
    max_y = tf.cast(height, tf.float32) - 1.0
    finite = tf.reduce_all(tf.math.is_finite(boxes), axis=1)
    safe = tf.where(finite[:, None], boxes, tf.zeros_like(boxes))
    x, y, w, h = tf.unstack(safe, axis=1)
    positive = finite & (w > 0) & (h > 0)
    x1 = tf.clip_by_value(x, 0.0, max_x)
    y1 = tf.clip_by_value(y, 0.0, max_y)
    x2 = tf.clip_by_value(x + w, 0.0, max_x)
    y2 = tf.clip_by_value(y + h, 0.0, max_y)
    inside = (x2 > x1) & (y2 > y1)
    status = tf.where(positive, tf.where(inside, BOX_VALID, BOX_OUTSIDE_IMAGE), BOX_INVALID)
    clipped = tf.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    return tf.where(tf.equal(status, BOX_VALID)[:, None], clipped, tf.zeros_like(clipped)), tf.cast(status, tf.int32)


def crop_affine_tf(center: tf.Tensor, scale: tf.Tensor, output_size: Sequence[int],
                   rotation: tf.Tensor | float = 0.0) -> tf.Tensor:
    """TF twin of :func:`crop_affine`: (B, 2), (B, 2), (B,) -> (B, 2, 3) float32."""
    out_h, out_w = _check_size(output_size, "output_size")
    center = tf.convert_to_tensor(center, dtype=tf.float32)
    scale = tf.convert_to_tensor(scale, dtype=tf.float32)
    theta = tf.convert_to_tensor(rotation, dtype=tf.float32) * (np.pi / 180.0)
    theta = tf.broadcast_to(theta, tf.shape(center)[:-1])
    sx = (out_w - 1.0) / scale[..., 0]
    sy = (out_h - 1.0) / scale[..., 1]
    cos, sin = tf.cos(theta), tf.sin(theta)
    a00, a01 = sx * cos, sx * sin
    a10, a11 = -sy * sin, sy * cos
    cx, cy = center[..., 0], center[..., 1]
    t0 = (out_w - 1.0) / 2.0 - (a00 * cx + a01 * cy)
    t1 = (out_h - 1.0) / 2.0 - (a10 * cx + a11 * cy)
    row0 = tf.stack([a00, a01, t0], axis=-1)
    row1 = tf.stack([a10, a11, t1], axis=-1)
    return tf.stack([row0, row1], axis=-2)


def letterbox_affine_tf(height, width, size: int) -> tf.Tensor:
    """TF twin of :func:`letterbox_affine`: heights, widths (...,) any numeric dtype -> (..., 2, 3) float32.

    No validation inside the graph: an image with both sides 1 gives non-finite values.
    """
    longest = tf.maximum(tf.cast(height, tf.float32), tf.cast(width, tf.float32))
    half = (longest - 1.0) / 2.0
    return crop_affine_tf(tf.stack([half, half], axis=-1), tf.stack([longest - 1.0, longest - 1.0], axis=-1),
                          (int(size), int(size)))


def invert_affine_tf(matrix: tf.Tensor) -> tf.Tensor:
    """TF twin of :func:`invert_affine` for (..., 2, 3) matrices (closed-form 2x2 inverse)."""
    matrix = tf.convert_to_tensor(matrix, dtype=tf.float32)
    a, b, tx = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
    c, d, ty = matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    itx = -(ia * tx + ib * ty)
    ity = -(ic * tx + id_ * ty)
    row0 = tf.stack([ia, ib, itx], axis=-1)
    row1 = tf.stack([ic, id_, ity], axis=-1)
    return tf.stack([row0, row1], axis=-2)


def apply_affine_tf(points: tf.Tensor, matrix: tf.Tensor) -> tf.Tensor:
    """TF twin of :func:`apply_affine`: points (B, K, 2), matrix (B, 2, 3) -> (B, K, 2)."""
    points = tf.convert_to_tensor(points, dtype=tf.float32)
    matrix = tf.convert_to_tensor(matrix, dtype=tf.float32)
    return tf.einsum("...ij,...kj->...ki", matrix[..., :2], points) + matrix[..., None, :, 2]


def heatmap_to_crop_tf(points: tf.Tensor, input_size, heatmap_size) -> tf.Tensor:
    """TF twin of :func:`heatmap_to_crop`."""
    factor = tf.constant(crop_to_heatmap_factor(input_size, heatmap_size), dtype=tf.float32)
    return tf.convert_to_tensor(points, dtype=tf.float32) / factor


def crop_to_heatmap_tf(points: tf.Tensor, input_size, heatmap_size) -> tf.Tensor:
    """TF twin of :func:`crop_to_heatmap`."""
    factor = tf.constant(crop_to_heatmap_factor(input_size, heatmap_size), dtype=tf.float32)
    return tf.convert_to_tensor(points, dtype=tf.float32) * factor


def crop_to_image_tf(points: tf.Tensor, center: tf.Tensor, scale: tf.Tensor,
                     input_size, rotation=0.0) -> tf.Tensor:
    """TF twin of :func:`crop_to_image`: (B, K, 2) crop -> (B, K, 2) image pixels."""
    matrix = invert_affine_tf(crop_affine_tf(center, scale, input_size, rotation))
    return apply_affine_tf(points, matrix)


def heatmap_to_image_tf(points: tf.Tensor, center: tf.Tensor, scale: tf.Tensor,
                        input_size, heatmap_size, rotation=0.0) -> tf.Tensor:
    """TF twin of :func:`heatmap_to_image`."""
    return crop_to_image_tf(heatmap_to_crop_tf(points, input_size, heatmap_size),
                            center, scale, input_size, rotation)


def warp_images_tf(images: tf.Tensor, matrix: tf.Tensor, output_size: Sequence[int]) -> tf.Tensor:
    """Warps a batch of images with per-image crop affines, bilinear, zero fill.

    TF twin of :func:`warp_image`. ``ImageProjectiveTransformV3`` samples at
    integer pixel centres like OpenCV, so both halves agree.

    Args:
        images: (B, H, W, C) any numeric dtype.
        matrix: (B, 2, 3) image -> crop affines.
        output_size: (out_h, out_w).

    Returns:
        (B, out_h, out_w, C) float32.
    """
    out_h, out_w = _check_size(output_size, "output_size")
    images = tf.cast(images, tf.float32)
    # The op wants the output -> input mapping, flattened to 8 projective parameters.
    inverse = invert_affine_tf(matrix)
    batch = tf.shape(inverse)[0]
    params = tf.concat([tf.reshape(inverse, [batch, 6]), tf.zeros([batch, 2], tf.float32)], axis=-1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=params, output_shape=tf.constant([out_h, out_w], tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    )
