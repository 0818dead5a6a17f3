"""DARK codec: round-trip accuracy, NumPy/TF twins, edge cases, the codec object."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from pose import codec_np, codec_tf
from pose.codec import HeatmapCodec
from schemas.keypoints import COCO

GEOMETRIES = [((64, 48), 2.0, 11), ((32, 24), 1.0, 3)]


def _clean(heatmap_size, sigma, count=128, seed=0):
    rng = np.random.default_rng(seed)
    height, width = heatmap_size
    keypoints = rng.uniform([3.0, 3.0], [width - 4.0, height - 4.0], size=(count, 17, 2))
    heatmaps, weights = codec_np.encode(keypoints, np.ones((count, 17)), heatmap_size, sigma)
    return keypoints, heatmaps, weights


@pytest.mark.parametrize("heatmap_size,sigma,kernel", GEOMETRIES)
def test_clean_round_trip_errors(heatmap_size, sigma, kernel):
    keypoints, heatmaps, _ = _clean(heatmap_size, sigma)
    errors = {}
    for method in codec_np.DECODING_METHODS:
        decoded, _ = codec_np.decode(heatmaps, method, kernel)
        errors[method] = np.linalg.norm(decoded - keypoints, axis=-1).mean()
    assert errors["dark"] < 0.01
    assert 0.33 < errors["argmax"] < 0.43          # uniform sub-pixel offsets: ~0.38 px
    assert 0.15 < errors["standard"] < 0.23        # quarter-pixel shift: ~0.19 px
    decoded_tf, _ = codec_tf.decode(tf.constant(heatmaps), "dark", kernel)
    assert np.linalg.norm(decoded_tf.numpy() - keypoints, axis=-1).mean() < 0.01


def _noisy(heatmaps, seed=1):
    rng = np.random.default_rng(seed)
    return (heatmaps + rng.normal(0.0, 0.05, heatmaps.shape)).astype(np.float32)


def _random(shape, seed=2):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


@pytest.mark.parametrize("heatmap_size,sigma,kernel", GEOMETRIES)
@pytest.mark.parametrize("kind", ["clean", "noisy", "random"])
@pytest.mark.parametrize("method", codec_np.DECODING_METHODS)
def test_numpy_and_tf_decoders_agree(heatmap_size, sigma, kernel, kind, method):
    _, heatmaps, _ = _clean(heatmap_size, sigma, count=64)
    if kind == "noisy":
        heatmaps = _noisy(heatmaps)
    elif kind == "random":
        heatmaps = _random(heatmaps.shape)
    decoded_np, scores_np = codec_np.decode(heatmaps, method, kernel)
    decoded_tf, scores_tf = codec_tf.decode(tf.constant(heatmaps), method, kernel)
    np.testing.assert_allclose(scores_tf.numpy(), scores_np, atol=1e-6)
    difference = np.abs(decoded_tf.numpy() - decoded_np)
    # On pure noise the Taylor step can be hundreds of pixels (non-concave maxima, as in
    # the reference); there float32 output rounding (|x| * 6e-8) is the only difference.
    tolerance = 1e-4 + 1.2e-7 * np.abs(decoded_np)
    assert (difference <= tolerance).all(), difference.max()
    near = np.abs(decoded_np - codec_np.decode(heatmaps, "argmax")[0]).max(-1) <= 1.0
    assert difference[near].max() < 1e-4


def test_tf_decoder_in_tf_function_with_dynamic_batch():
    keypoints, heatmaps, _ = _clean((64, 48), 2.0, count=5)
    decode = tf.function(lambda h: codec_tf.decode(h, "dark", 11),
                         input_signature=[tf.TensorSpec([None, None, None, None], tf.float32)])
    for batch in (1, 5):
        decoded, scores = decode(tf.constant(heatmaps[:batch]))
        assert decoded.shape == (batch, 17, 2) and scores.shape == (batch, 17)
        assert np.linalg.norm(decoded.numpy() - keypoints[:batch], axis=-1).mean() < 0.01


def test_float32_compute_dtype_is_close():
    keypoints, heatmaps, _ = _clean((64, 48), 2.0, count=16)
    decoded, _ = codec_tf.decode(tf.constant(heatmaps), "dark", 11, compute_dtype=tf.float32)
    assert np.linalg.norm(decoded.numpy() - keypoints, axis=-1).mean() < 0.01


@pytest.mark.parametrize("decoder", ["numpy", "tf", "tf-xla"])
def test_flat_nan_and_border_maps_are_defined(decoder):
    maps = np.zeros((4, 16, 12, 3), np.float32)
    maps[1] = np.nan
    maps[2, :, :, 0] = np.inf
    maps[3, 0, 0, 0] = 1.0  # peak in the corner: no Taylor step possible
    maps[3, 1, 5, 1] = 1.0  # one row from the top edge
    maps[3, 8, 6, 2] = 1.0  # interior single spike
    if decoder == "numpy":
        decoded, scores = codec_np.decode(maps, "dark", 3)
    else:
        decoded, scores = (t.numpy() for t in codec_tf.decode(tf.constant(maps), "dark", 3,
                                                              jit_compile=decoder == "tf-xla"))
    assert np.isfinite(decoded).all() and np.isfinite(scores).all()
    np.testing.assert_array_equal(decoded[0], 0.0)
    np.testing.assert_array_equal(scores[0], 0.0)
    np.testing.assert_array_equal(decoded[1], 0.0)
    np.testing.assert_array_equal(decoded[3, 0], [0.0, 0.0])
    np.testing.assert_array_equal(decoded[3, 1], [5.0, 1.0])
    np.testing.assert_allclose(decoded[3, 2], [6.0, 8.0], atol=1e-6)  # symmetric spike: zero gradient
    np.testing.assert_array_equal(scores[3], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("method", codec_np.DECODING_METHODS)
@pytest.mark.parametrize("kind", ["clean", "noisy", "random"])
def test_xla_decoder_matches_the_graph_decoder(method, kind):
    _, heatmaps, _ = _clean((64, 48), 2.0, count=8)
    if kind == "noisy":
        heatmaps = _noisy(heatmaps)
    elif kind == "random":
        heatmaps = _random(heatmaps.shape)
    decode = tf.function(lambda h: codec_tf.decode(h, method, 11, jit_compile=True),
                         input_signature=[tf.TensorSpec([None, 64, 48, 17], tf.float32)])
    for batch in (8, 3):  # a new batch size compiles once more
        xla = [t.numpy() for t in decode(tf.constant(heatmaps[:batch]))]
        graph = [t.numpy() for t in codec_tf.decode(tf.constant(heatmaps[:batch]), method, 11)]
        np.testing.assert_allclose(xla[1], graph[1], atol=0)
        np.testing.assert_allclose(xla[0], graph[0], atol=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_scattered_nan_never_wins_and_twins_agree(jit_compile):
    _, heatmaps, _ = _clean((64, 48), 2.0, count=6)
    heatmaps = _noisy(heatmaps)
    rng = np.random.default_rng(7)
    flat = heatmaps.reshape(-1)
    flat[rng.choice(flat.size, 40, replace=False)] = np.nan
    peak = np.unravel_index(np.argmax(np.nan_to_num(heatmaps[2, :, :, 5], nan=-1.0)), (64, 48))
    heatmaps[2, peak[0] + 1, peak[1], 5] = np.nan        # a NaN next to a peak: no sub-pixel step
    decoded_np, scores_np = codec_np.decode(heatmaps, "dark", 11)
    decoded_tf, scores_tf = (t.numpy() for t in codec_tf.decode(tf.constant(heatmaps), "dark", 11,
                                                              jit_compile=jit_compile))
    assert np.isfinite(decoded_tf).all() and np.isfinite(scores_tf).all()
    np.testing.assert_allclose(scores_tf, scores_np, atol=1e-6)
    np.testing.assert_allclose(decoded_tf, decoded_np, atol=1e-4)
    np.testing.assert_array_equal(decoded_tf[2, 5], [peak[1], peak[0]])


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("row_offset", [-9, 9])
def test_a_lone_nan_in_the_peak_column_neither_wins_nor_hides_the_peak(jit_compile, row_offset):
    # XLA's CPU max may skip a NaN or restart after it; the decoder must not
    # rely on either (the NaN test reads column sums there).
    points, heatmaps, _ = _clean((64, 48), 2.0, count=2)
    px, py = np.round(points[1, 4]).astype(int)
    heatmaps[1, np.clip(py + row_offset, 0, 63), px, 4] = np.nan
    decoded_np, scores_np = codec_np.decode(heatmaps, "dark", 11)
    decoded_tf, scores_tf = (t.numpy() for t in codec_tf.decode(tf.constant(heatmaps), "dark", 11,
                                                              jit_compile=jit_compile))
    np.testing.assert_allclose(scores_tf, scores_np, atol=1e-6)
    np.testing.assert_allclose(decoded_tf, decoded_np, atol=1e-4)
    np.testing.assert_allclose(decoded_tf[1, 4], points[1, 4], atol=0.01)


@pytest.mark.parametrize("decoder", ["numpy", "tf", "tf-xla"])
def test_ties_go_to_the_smallest_x_then_the_smallest_y(decoder):
    maps = np.zeros((1, 8, 8, 2), np.float32)
    maps[0, 1, 5, 0] = maps[0, 3, 2, 0] = 1.0      # equal peaks at (x=5, y=1) and (x=2, y=3)
    maps[0, 6, 4, 1] = maps[0, 2, 4, 1] = 1.0      # same column: the upper one
    if decoder == "numpy":
        decoded, _ = codec_np.decode(maps, "argmax")
    else:
        decoded, _ = (t.numpy() for t in codec_tf.decode(tf.constant(maps), "argmax",
                                                        jit_compile=decoder == "tf-xla"))
    np.testing.assert_array_equal(decoded[0], [[2, 3], [4, 2]])


def test_encode_weights_and_twins():
    heatmap_size, sigma = (64, 48), 2.0
    keypoints = np.array([[[10.3, 20.7], [-7.0, 5.0], [-5.0, 5.0], [47.0 + 6.5, 10.0], [30.0, 40.0],
                           [np.nan, 3.0]]])
    visible = np.array([[2, 2, 1, 2, 0, 2]])
    heatmaps, weights = codec_np.encode(keypoints, visible, heatmap_size, sigma)
    # -7 + 6 < 0: 3-sigma box wholly left of the map; -5 + 6 >= 0 touches it.
    np.testing.assert_array_equal(weights, [[1, 0, 1, 0, 0, 0]])
    assert heatmaps.shape == (1, 64, 48, 6)
    np.testing.assert_array_equal(heatmaps[0, :, :, [1, 3, 4, 5]], 0.0)
    row, col = np.unravel_index(np.argmax(heatmaps[0, :, :, 0]), (64, 48))
    assert (col, row) == (10, 21)
    expected = np.exp(-((10 - 10.3) ** 2 + (21 - 20.7) ** 2) / 8.0)
    np.testing.assert_allclose(heatmaps[0, 21, 10, 0], expected, rtol=1e-6)
    heatmaps_tf, weights_tf = codec_tf.encode(tf.constant(keypoints, tf.float32), tf.constant(visible),
                                              heatmap_size, sigma)
    np.testing.assert_array_equal(weights_tf.numpy(), weights)
    np.testing.assert_allclose(heatmaps_tf.numpy(), heatmaps, atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5, 11, 17])
def test_blur_matches_opencv_on_zero_padded_maps(kernel):
    maps = np.random.default_rng(3).uniform(0, 1, (4, 32, 24))
    radius = kernel // 2
    reference = np.stack([
        cv2.GaussianBlur(np.pad(m, radius), (kernel, kernel), 0)[radius:-radius, radius:-radius] for m in maps])
    np.testing.assert_allclose(codec_np.blur(maps, kernel), reference, atol=1e-12)


def test_flip_back_is_an_exact_mirror_with_joint_swap():
    keypoints = np.random.default_rng(4).uniform([5, 5], [40, 58], size=(3, 17, 2))
    visible = np.ones((3, 17))
    heatmaps, _ = codec_np.encode(keypoints, visible, (64, 48), 2.0)
    mirrored = keypoints.copy()
    mirrored[..., 0] = 47.0 - mirrored[..., 0]
    flipped, _ = codec_np.encode(mirrored[:, COCO.flip_index], visible, (64, 48), 2.0)
    restored = codec_tf.flip_back(tf.constant(flipped), COCO.flip_index).numpy()
    np.testing.assert_allclose(restored, heatmaps, atol=1e-6)


def test_codec_object_round_trips_crop_pixels():
    codec = HeatmapCodec(input_size=(256, 192), heatmap_size=(64, 48), sigma=2.0)
    keypoints = np.random.default_rng(5).uniform([15, 15], [175, 240], size=(8, 17, 2))
    heatmaps, weights = codec.encode(keypoints, np.ones((8, 17)))
    assert heatmaps.shape == (8, 64, 48, 17) and weights.shape == (8, 17)
    decoded, _ = codec.decode(heatmaps)
    # One heatmap pixel is ~4 crop pixels.
    assert np.linalg.norm(decoded - keypoints, axis=-1).mean() < 0.04
    decoded_tf, _ = codec.decode_tf(tf.constant(heatmaps))
    np.testing.assert_allclose(decoded_tf.numpy(), decoded, atol=1e-3)
    heatmaps_tf, _ = codec.encode_tf(tf.constant(keypoints, tf.float32), tf.ones((8, 17)))
    np.testing.assert_allclose(heatmaps_tf.numpy(), heatmaps, atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    ({"blur_kernel": 4}, "blur_kernel"),
    ({"decoding": "soft-argmax"}, "decoding"),
    ({"sigma": 0.0}, "sigma"),
    ({"heatmap_size": (64,)}, "heatmap_size"),
])
def test_codec_validates_arguments(kwargs, match):
    arguments = {"input_size": (256, 192), "heatmap_size": (64, 48), "sigma": 2.0}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HeatmapCodec(**arguments)


def test_decode_rejects_unknown_method_and_bad_shape():
    with pytest.raises(ValueError, match="method"):
        codec_np.decode(np.zeros((8, 8, 1)), "mean")
    with pytest.raises(ValueError, match="method"):
        codec_tf.decode(tf.zeros((1, 8, 8, 1)), "mean")
    with pytest.raises(ValueError, match="method"):
        codec_tf.decode(tf.zeros((1, 8, 8, 1)), "mean", jit_compile=True)
    with pytest.raises(ValueError):
        codec_tf.compiled_decoder("dark", blur_kernel=4)
    with pytest.raises(ValueError, match="heatmaps"):
        codec_np.decode(np.zeros((8, 8)))
