"""pose/codec_portable.py (the decoder inside the LiteRT / ONNX artifacts) against pose/codec_np.py."""
import numpy as np
import pytest
import tensorflow as tf

from pose import codec_np, codec_portable


def _maps(seed=0, batch=3, size=(16, 12), joints=5, sigma=2.0):
    """Unbiased Gaussians at sub-pixel positions (some near the border), a flat map and an all-zero map."""
    rng = np.random.default_rng(seed)
    height, width = size
    keypoints = np.stack([rng.uniform(-0.5, width - 0.5, (batch, joints)),
                          rng.uniform(-0.5, height - 0.5, (batch, joints))], axis=-1)
    keypoints[0, 0] = [0.3, 0.2]                      # Taylor step refused near the border
    maps = np.stack([codec_np.encode(points, np.ones(joints), size, sigma)[0] for points in keypoints])
    maps = maps * rng.uniform(0.3, 1.0, (batch, 1, 1, joints))
    maps[1, ..., 1] = 0.25                            # flat: ties go to the smallest x, then y
    maps[2, ..., 2] = 0.0
    return maps.astype(np.float32)


@pytest.mark.parametrize("method,blur_kernel", [("dark", 3), ("dark", 11), ("standard", 3), ("argmax", 3)])
def test_portable_decode_equals_the_numpy_codec(method, blur_kernel):
    maps = _maps()
    want, want_scores = codec_np.decode(maps, method, blur_kernel)
    got, scores = codec_portable.decode(tf.constant(maps), method, blur_kernel)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)   # float32 vs float64 (measured: 1.4e-6 heatmap px)
    np.testing.assert_allclose(scores.numpy(), want_scores, atol=1e-6)


def test_portable_decode_drops_non_finite_maps_and_refuses_unknown_methods():
    maps = _maps()
    maps[0, 3, 4, 0] = np.nan
    maps[0, ..., 1] = np.inf
    got, scores = codec_portable.decode(tf.constant(maps))
    assert np.all(np.isfinite(got.numpy())) and np.all(np.isfinite(scores.numpy()))
    np.testing.assert_array_equal(scores.numpy()[0, 1], 0.0)
    with pytest.raises(ValueError, match="unknown decoding method"):
        codec_portable.decode(tf.constant(maps), "soft-argmax")
