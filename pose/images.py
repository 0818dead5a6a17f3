"""How encoded images become pixels: one rule for ExampleGen and the serving graph.

ExampleGen decodes the source images on Beam workers with Pillow (no
TensorFlow runtime in the workers); the exported ``predict_image`` signature
decodes them in the graph with TensorFlow. The two halves below are twins:
for every supported file they give the same RGB uint8 pixels, bit for bit
(``tests/test_images.py`` checks every PNG colour type and bit depth, grey,
RGB and CMYK JPEGs, and the shared ``interop_cases/image_modes`` files), so a
model sees the same crop in training and in serving.
The person crops stored in the records (JPEG) are decoded by the TF half as
well wherever they are read: the trainer's tf.data input, ``serving_default``
and the evaluator's report.

The rule (both halves):

* Supported formats: **JPEG and PNG** only, recognised by their magic bytes
  (:func:`sniff_format`), not by the file name. Anything else (GIF, BMP,
  WebP, TIFF, JPEG XL, ...) is rejected: ExampleGen skips it as
  ``unsupported_image_format``, ``predict_image`` fails with
  ``InvalidArgument``. (TensorFlow's own ``decode_image`` would accept GIF,
  BMP and WebP, but its BMP decoder returns palette indices as grey for
  8-bit BMPs and fails on 1-bit ones; a narrow, identical set on both sides
  is safer than two decoders that disagree.)
* Output: RGB, uint8, shape (H, W, 3), raw pixel grid. EXIF orientation is
  ignored (COCO's and MPII's annotations are on the raw pixels; neither
  decoder applies it). ICC profiles and PNG gamma are ignored.
* JPEG: libjpeg-turbo's accurate integer IDCT (``JDCT_ISLOW``, TF's
  ``dct_method="INTEGER_ACCURATE"``) with fancy upsampling: Pillow's and
  OpenCV's default, and what the reference implementations (HRNet,
  DarkPose: ``cv2.imread``) trained on. TF's default (``""``, the fast
  IDCT) differs from it by up to 16 grey levels per pixel (mean 1.7 on
  ``interop_cases/image_modes/rgb.jpg``, a crop of COCO val 785). Grey
  JPEGs are replicated to three channels; CMYK JPEGs (Adobe, inverted) are
  converted to RGB by Pillow and by TF with the same result (tested).
* PNG: every colour type and bit depth. 1/2/4-bit grey is scaled to 0..255
  (libpng's expansion), palettes are expanded, alpha (and ``tRNS``) is
  dropped without compositing, grey is replicated to three channels.
  **16-bit** samples are scaled to 8 bits by keeping the high byte
  (``v >> 8`` = ``floor(v / 256)``, at most 1 level from ``v / 257``),
  which is what TensorFlow's PNG decoder returns for uint8 output. (Pillow's
  ``convert("RGB")`` of a 16-bit grey image clips every value above 255
  to white instead; that is why the Pillow half does not use it there.)
"""
from __future__ import annotations

from typing import Any

import numpy as np

JPEG_MAGIC = b"\xff\xd8\xff"
"""First bytes of every JPEG file (SOI marker + the next marker's 0xFF); ``tf.io.is_jpeg`` checks the same."""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
"""The 8-byte PNG signature (PNG spec, section 5.2)."""
SUPPORTED_FORMATS = ("jpeg", "png")
"""Formats both halves decode, as returned by :func:`sniff_format`."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow modes of single-channel images with more than 8 bits (16-bit grey PNGs open as ``I;16``)."""


def sniff_format(data: bytes) -> str | None:
    """The format of an encoded image from its magic bytes: ``"jpeg"``, ``"png"`` or None (unsupported)."""
    head = bytes(data[:8])
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head == PNG_MAGIC:
        return "png"
    return None


# --------------------------------------------------------------------------
# Pillow half (ExampleGen)
# --------------------------------------------------------------------------

def pillow_to_rgb8(image: Any) -> np.ndarray:
    """A loaded Pillow image of a supported file -> RGB uint8 (H, W, 3) by this module's rule.

    Args:
        image: ``PIL.Image.Image`` opened from a JPEG or PNG and loaded
            (modes ``1``, ``L``, ``LA``, ``P``, ``PA``, ``RGB``, ``RGBA``,
            ``CMYK``, ``I;16*``/``I``).

    Returns:
        (H, W, 3) uint8, C-contiguous.

    Raises:
        ValueError: a mode this rule does not define (e.g. ``F``).
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 16-bit grey: keep the high byte, as libpng's strip_16 (TF) does. Pillow's
        # convert("RGB") would clip to 255 instead.
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if mode in ("1", "L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr"):
        # Pillow already reduced 16-bit RGB/RGBA/LA PNGs to their high bytes while reading
        # (rawmodes "RGB;16B" etc.), the same as libpng's strip_16.
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    raise ValueError(f"image mode {mode!r} has no defined RGB conversion")


# --------------------------------------------------------------------------
# TensorFlow half (serving graph)
# --------------------------------------------------------------------------

def decode_image_tf(data):
    """TF twin of the Pillow half: one encoded JPEG/PNG () string -> (H, W, 3) uint8.

    Graph-safe (usable in ``tf.function`` and SavedModel signatures, also
    under the TF1 session loader that TF Serving uses).

    Raises:
        tf.errors.InvalidArgumentError: at run time, when the bytes are
        neither JPEG nor PNG (message says so), or the file is corrupt or
        truncated (TF's decoder message).
    """
    import tensorflow as tf

    data = tf.convert_to_tensor(data, dtype=tf.string)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(tf.strings.substr(data, 0, len(PNG_MAGIC)), PNG_MAGIC)
    check = tf.debugging.Assert(
        tf.logical_or(is_jpeg, is_png),
        ["image is neither JPEG nor PNG (the supported formats, see pose/images.py)"])
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    decoded = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))
    return tf.ensure_shape(decoded, [None, None, 3])
