"""Image decoding: ExampleGen (Pillow half) and serving (TF half) give the same pixels (pose/images.py).

Inputs nobody here wrote: the shared ``interop_cases/image_modes`` files (RGB,
grey, CMYK JPEGs, RGBA and palette PNGs, a 16-bit grey PNG, an EXIF-rotated
and a truncated JPEG), real COCO val JPEGs, and PNGs of every colour type
and bit depth of the PNG spec built byte by byte here (so Pillow's own
writer is not the only source).
"""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import example_gen, ingest_core
from pose import coordinates, images
from pose.config import build_config
from schemas import features, jsonio

MODES = ("rgb.jpg", "gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "exif_orient6.jpg")
GREY = ("gray.jpg", "gray16.png")


def _modes_dir(shared_data):
    return os.path.join(shared_data, "interop_cases", "image_modes")


def _read(path):
    with open(path, "rb") as handle:
        return handle.read()


_decode_tf = tf.function(images.decode_image_tf, input_signature=[tf.TensorSpec([], tf.string)])


def _both(data):
    """(ExampleGen's pixels, the serving graph's pixels) of one encoded file."""
    return ingest_core.decode_image(data, 10**8), _decode_tf(tf.constant(data)).numpy()


# --------------------------------------------------------------------------
# PNGs written by hand: every (colour type, bit depth) of the PNG spec, with and without tRNS
# --------------------------------------------------------------------------

def _chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(samples, color_type, bit_depth, palette=None, trns=None):
    """(H, W, C) integer samples -> PNG bytes (filter 0, no interlace), as the PNG spec lays them out."""
    height, width = samples.shape[:2]
    rows = []
    for row in samples.reshape(height, -1):
        if bit_depth == 16:
            raw = row.astype(">u2").tobytes()
        elif bit_depth == 8:
            raw = row.astype(np.uint8).tobytes()
        else:  # 1, 2, 4 bits per sample, packed from the high bits of each byte
            per = 8 // bit_depth
            padded = np.zeros(-(-len(row) // per) * per, np.uint16)
            padded[:len(row)] = row
            shifts = 8 - bit_depth * (np.arange(per) + 1)
            raw = (padded.reshape(-1, per) << shifts).sum(axis=1).astype(np.uint8).tobytes()
        rows.append(b"\x00" + raw)
    out = images.PNG_MAGIC + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b"")


PNG_KINDS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4), (3, 8),
             (4, 8), (4, 16), (6, 8), (6, 16)]
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


@pytest.mark.parametrize("color_type,bit_depth,with_trns",
                         [(c, b, False) for c, b in PNG_KINDS] + [(c, b, True) for c, b in PNG_KINDS if c in (0, 2, 3)])
def test_every_png_kind_decodes_identically_in_examplegen_and_serving(color_type, bit_depth, with_trns):
    rng = np.random.default_rng(color_type * 100 + bit_depth)
    samples = rng.integers(0, 1 << bit_depth, (9, 13, CHANNELS[color_type]))
    samples[0, :4, 0] = [0, (1 << bit_depth) - 1, 255 % (1 << bit_depth), 256 % (1 << bit_depth)]
    palette = rng.integers(0, 256, (1 << bit_depth, 3)) if color_type == 3 else None
    trns = None
    if with_trns:
        trns = {0: b"\x00\x01", 2: b"\x00\x01\x00\x02\x00\x03", 3: b"\x00\x80"}[color_type]
    pixels, graph = _both(_png(samples, color_type, bit_depth, palette, trns))
    assert pixels.dtype == np.uint8 and pixels.shape == (9, 13, 3)
    np.testing.assert_array_equal(pixels, graph)

    # The right values, from the spec: grey replicated, palette looked up, alpha dropped,
    # 1/2/4-bit grey scaled to 0..255, 16-bit reduced to its high byte.
    if color_type == 3:
        expected = palette[samples[..., 0]]
    elif bit_depth == 16:
        expected = samples[..., :3 if color_type in (2, 6) else 1] >> 8
    elif bit_depth < 8:
        expected = samples[..., :1] * (255 // ((1 << bit_depth) - 1))
    else:
        expected = samples[..., :3 if color_type in (2, 6) else 1]
    np.testing.assert_array_equal(pixels, np.broadcast_to(expected, pixels.shape))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 255, 256, 257, 32768, 65279, 65280, 65535]])
    pixels, graph = _both(_png(values[..., None], 0, 16))
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 0, 1, 1, 128, 254, 255, 255])
    np.testing.assert_array_equal(graph, pixels)


# --------------------------------------------------------------------------
# JPEGs: grey, RGB and CMYK, every chroma subsampling, baseline and progressive; real COCO files
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def coco_crop(shared_data):
    path = os.path.join(shared_data, "coco_val2017_mmpose4", "images", "000000000785.jpg")
    return np.asarray(Image.open(path).convert("RGB"))[100:220, 200:300]


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_kinds_decode_identically(coco_crop, mode, subsampling, progressive):
    buffer = io.BytesIO()
    Image.fromarray(coco_crop).convert(mode).save(buffer, "JPEG", quality=90, subsampling=subsampling,
                                                  progressive=progressive)
    pixels, graph = _both(buffer.getvalue())
    np.testing.assert_array_equal(pixels, graph)
    if mode == "RGB":  # and the same file through OpenCV (the reference repos' cv2.imread)
        import cv2

        bgr = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(pixels, bgr[..., ::-1])


def test_real_coco_jpegs_decode_identically_and_tf_default_idct_would_not(shared_data):
    folder = os.path.join(shared_data, "coco_val2017_mmpose4", "images")
    for name in sorted(os.listdir(folder)):
        data = _read(os.path.join(folder, name))
        pixels, graph = _both(data)
        np.testing.assert_array_equal(pixels, graph, err_msg=name)
    # Why the graph asks for the accurate IDCT: TF's default (fast) one is a different image.
    fast = tf.io.decode_jpeg(data, channels=3).numpy()
    assert np.abs(fast.astype(int) - pixels).max() > 4


# --------------------------------------------------------------------------
# The shared image_modes cases
# --------------------------------------------------------------------------

def _person_box(shared_data):
    with open(os.path.join(_modes_dir(shared_data), "annotations.json"), encoding="utf-8") as handle:
        annotations = json.load(handle)
    boxes = {a["image_id"]: a["bbox"] for a in annotations["annotations"]}
    assert len(set(map(tuple, boxes.values()))) == 1  # one person, the same box in every encoding
    return np.asarray(next(iter(boxes.values())), np.float64)[None]


def test_image_modes_give_the_same_crop_in_examplegen_and_serving(shared_data):
    """The tie: ExampleGen's decode + OpenCV warp vs the graph's decode + ImageProjectiveTransform warp."""
    size = (256, 192)
    center, scale = coordinates.box_to_center_scale(_person_box(shared_data), size[1] / size[0], 1.25)
    matrix = coordinates.crop_affine(center, scale, size)
    crops = {}
    for name in MODES:
        data = _read(os.path.join(_modes_dir(shared_data), "images", name))
        pixels, graph = _both(data)
        np.testing.assert_array_equal(pixels, graph, err_msg=name)        # decoders: bit-identical
        ours = coordinates.warp_image(pixels, matrix[0], size).astype(np.float64)
        served = coordinates.warp_images_tf(graph[None], matrix.astype(np.float32), size)[0].numpy()
        difference = np.abs(ours - served)
        # The warps differ only by OpenCV's 1/32-pixel fixed-point bilinear weights.
        assert difference.mean() < 0.3 and difference.max() <= 4.0, (name, difference.mean(), difference.max())
        crops[name] = ours
    # Every encoding gives the RGB JPEG's crop (grey ones: its luminance), within about a grey level.
    luminance = crops["rgb.jpg"] @ np.array([0.299, 0.587, 0.114])
    for name, crop in crops.items():
        if name in GREY:
            difference = crop[..., 0] - luminance
            np.testing.assert_array_equal(crop[..., 0], crop[..., 2])
        else:
            difference = crop - crops["rgb.jpg"]
        assert abs(difference.mean()) < 1.0 and np.abs(difference).mean() < 2.0, (
            name, difference.mean(), np.abs(difference).mean())
    # The 16-bit PNG is the grey image times 257: not clipped to white any more.
    assert np.abs(crops["gray16.png"] - crops["gray.jpg"]).mean() < 1.0
    # EXIF orientation is ignored by both halves (COCO's raw-pixel convention).
    np.testing.assert_array_equal(crops["exif_orient6.jpg"], crops["rgb.jpg"])


def test_truncated_jpeg_is_rejected_by_both(shared_data):
    data = _read(os.path.join(_modes_dir(shared_data), "images", "truncated.jpg"))
    with pytest.raises(ingest_core.ImageError) as error:
        ingest_core.decode_image(data, 10**8)
    assert error.value.reason == ingest_core.SKIP_CORRUPT_IMAGE
    with pytest.raises(tf.errors.InvalidArgumentError):
        _decode_tf(tf.constant(data))


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_are_rejected_by_both(coco_crop, image_format):
    buffer = io.BytesIO()
    Image.fromarray(coco_crop).save(buffer, image_format)
    data = buffer.getvalue()
    with pytest.raises(ingest_core.ImageError) as error:
        ingest_core.decode_image(data, 10**8)
    assert error.value.reason == ingest_core.SKIP_UNSUPPORTED_FORMAT
    assert str(error.value).startswith(f"{image_format} image; supported formats: JPEG, PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match="neither JPEG nor PNG"):
        _decode_tf(tf.constant(data))
    for data in (b"", b"\xff\xd8", b"not an image" * 50):   # not images at all: corrupt
        with pytest.raises(ingest_core.ImageError) as error:
            ingest_core.decode_image(data, 10**8)
        assert error.value.reason == ingest_core.SKIP_CORRUPT_IMAGE
        with pytest.raises(tf.errors.InvalidArgumentError):
            _decode_tf(tf.constant(data))


def test_predict_image_graph_decodes_like_examplegen(shared_data):
    """The serving module's own graph: a file and a lossless PNG of ExampleGen's pixels give the same outputs."""
    import keras

    from pose.codec import HeatmapCodec
    from trainer import export

    config = build_config({"data": {"input_size": [64, 48]}, "eval": {"flip_test": False}}, name="images_test")
    codec = HeatmapCodec.from_config(config)
    inputs = keras.Input((64, 48, 3))
    pooled = keras.layers.AveragePooling2D(4)(inputs / 255.0)
    heatmaps = keras.layers.Conv2D(17, 1, kernel_initializer=keras.initializers.RandomUniform(-1, 1, seed=1))(pooled)
    module = export.PoseServingModule(keras.Model(inputs, heatmaps), config, codec)
    boxes = tf.constant(_person_box(shared_data), tf.float32)

    def run(data):
        outputs = module.predict_image(tf.constant(data), boxes)
        return np.concatenate([outputs["keypoints"].numpy().ravel(), outputs["scores"].numpy().ravel()])

    for name in ("rgb.jpg", "cmyk.jpg", "gray16.png"):
        data = _read(os.path.join(_modes_dir(shared_data), "images", name))
        buffer = io.BytesIO()
        Image.fromarray(ingest_core.decode_image(data, 10**8)).save(buffer, "PNG")
        np.testing.assert_array_equal(run(data), run(buffer.getvalue()), err_msg=name)
    buffer = io.BytesIO()
    Image.new("RGB", (130, 190)).save(buffer, "GIF")
    with pytest.raises(tf.errors.InvalidArgumentError, match="neither JPEG nor PNG"):
        run(buffer.getvalue())


def test_example_gen_on_image_modes(shared_data, tmp_path):
    """ExampleGen end to end on the shared cases: 7 records, the truncated JPEG a counted corrupt_image skip."""
    folder = _modes_dir(shared_data)
    config = example_gen.default_config("coco", {"data": {"input_size": [64, 48], "heatmap_size": [16, 12],
                                                          "sigma": 1.0, "image_format": "png"}})
    out = str(tmp_path / "out")
    manifest = example_gen.run_example_gen(
        "coco", out, config, train_annotations=os.path.join(folder, "annotations.json"),
        train_images=os.path.join(folder, "images"))
    assert manifest["splits"] == {"train": 7}
    assert manifest["skipped"] == {"corrupt_image": 1}
    with open(os.path.join(out, example_gen.DEAD_LETTER), encoding="utf-8") as handle:
        letters = [jsonio.loads(line) for line in handle]
    assert [(letter["reason"], letter["file_name"]) for letter in letters] == [("corrupt_image", "truncated.jpg")]
    crops = {}
    dataset = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(out, "Split-train", "*.gz")), "GZIP")
    for serialized in dataset:
        parsed = features.parse_records(serialized[None], 17)
        crops[int(parsed["image/id"][0])] = tf.io.decode_png(parsed["image/encoded"][0]).numpy().astype(float)
    # image ids follow annotations.json: 1 rgb, 2 gray, 3 cmyk, 4 rgba, 5 palette, 6 gray16, 7 exif
    for image_id in (3, 4, 5, 7):
        assert abs((crops[image_id] - crops[1]).mean()) < 1.0, image_id
    assert np.abs(crops[6] - crops[2]).mean() < 1.0           # 16-bit grey: scaled, not 94 % white
    assert (crops[6] >= 254).mean() < 0.2
