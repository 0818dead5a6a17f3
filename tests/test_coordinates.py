"""The coordinate convention: affine round trips, flip without shift, NumPy/TF twins."""
import os

import numpy as np
import pytest
import tensorflow as tf

from pose import codec_np
from pose import coordinates as C

RNG = np.random.default_rng(7)


def _random_windows(count):
    center = RNG.uniform(50, 600, size=(count, 2))
    scale = RNG.uniform(40, 400, size=(count, 2))
    rotation = RNG.uniform(-45, 45, size=(count,))
    return center, scale, rotation


def test_box_to_center_scale_fixes_aspect_and_pads():
    boxes = np.array([[10.0, 20.0, 30.0, 100.0], [0.0, 0.0, 120.0, 40.0]])
    center, scale = C.box_to_center_scale(boxes, aspect_ratio=192 / 256)
    np.testing.assert_allclose(center, [[25.0, 70.0], [60.0, 20.0]])
    # Tall box: height kept, width grown to 0.75 * height; wide box: width kept.
    np.testing.assert_allclose(scale, [[75.0 * 1.25, 100.0 * 1.25], [120.0 * 1.25, 160.0 * 1.25]])
    center_tf, scale_tf = C.box_to_center_scale_tf(tf.constant(boxes, tf.float32), 192 / 256)
    np.testing.assert_allclose(center_tf.numpy(), center, rtol=1e-6)
    np.testing.assert_allclose(scale_tf.numpy(), scale, rtol=1e-6)


def test_box_to_center_scale_rejects_bad_aspect():
    with pytest.raises(ValueError, match="aspect_ratio"):
        C.box_to_center_scale(np.zeros((1, 4)), aspect_ratio=0.0)


def test_centre_maps_to_crop_centre_and_window_to_pixel_range():
    center, scale = np.array([[100.0, 200.0]]), np.array([[96.0, 128.0]])
    matrix = C.crop_affine(center, scale, (256, 192))
    corners = np.array([[[100.0, 200.0], [100.0 - 48.0, 200.0 - 64.0], [100.0 + 48.0, 200.0 + 64.0]]])
    mapped = C.apply_affine(corners, matrix)[0]
    np.testing.assert_allclose(mapped[0], [(192 - 1) / 2, (256 - 1) / 2], atol=1e-9)
    np.testing.assert_allclose(mapped[1], [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(mapped[2], [191.0, 255.0], atol=1e-9)


def test_forward_then_inverse_affine_returns_the_image_point():
    center, scale, rotation = _random_windows(64)
    points = RNG.uniform(0, 800, size=(64, 17, 2))
    crop = C.apply_affine(points, C.crop_affine(center, scale, (256, 192), rotation))
    back = C.crop_to_image(crop, center, scale, (256, 192), rotation)
    assert np.abs(back - points).max() < 1e-4
    heatmap = C.crop_to_heatmap(crop, (256, 192), (64, 48))
    back_from_heatmap = C.heatmap_to_image(heatmap, center, scale, (256, 192), (64, 48), rotation)
    assert np.abs(back_from_heatmap - points).max() < 1e-4


def test_tf_affine_twins_match_numpy():
    center, scale, rotation = _random_windows(32)
    points = RNG.uniform(0, 800, size=(32, 17, 2))
    matrix = C.crop_affine(center, scale, (256, 192), rotation)
    matrix_tf = C.crop_affine_tf(center.astype(np.float32), scale.astype(np.float32), (256, 192),
                                 rotation.astype(np.float32))
    np.testing.assert_allclose(matrix_tf.numpy(), matrix, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(C.invert_affine_tf(matrix_tf).numpy(), C.invert_affine(matrix), rtol=1e-4, atol=1e-2)
    crop_tf = C.apply_affine_tf(points.astype(np.float32), matrix_tf)
    back_tf = C.crop_to_image_tf(crop_tf, center.astype(np.float32), scale.astype(np.float32), (256, 192),
                                 rotation.astype(np.float32))
    # float32 at ~800 px: a few thousandths of a pixel.
    assert np.abs(back_tf.numpy() - points).max() < 5e-3
    heatmap_tf = C.crop_to_heatmap_tf(crop_tf, (256, 192), (64, 48))
    np.testing.assert_allclose(C.heatmap_to_crop_tf(heatmap_tf, (256, 192), (64, 48)).numpy(), crop_tf.numpy(),
                               atol=1e-3)


def test_flipped_heatmap_decodes_back_without_shift():
    """Mirror a crop, decode its heatmap, mirror back as W_hm-1-x: the original point, no 1-px shift."""
    input_size, heatmap_size, sigma = (256, 192), (64, 48), 2.0
    points_crop = RNG.uniform([20, 20], [170, 235], size=(50, 17, 2))
    visible = np.ones((50, 17))
    flipped_crop = C.flip_points(points_crop, input_size[1])
    heatmaps, _ = codec_np.encode(C.crop_to_heatmap(flipped_crop, input_size, heatmap_size), visible,
                                  heatmap_size, sigma)
    decoded, _ = codec_np.decode(heatmaps, "dark", 11)
    mirrored_back = C.flip_points(decoded, heatmap_size[1])
    original_heatmap = C.crop_to_heatmap(points_crop, input_size, heatmap_size)
    error = np.linalg.norm(mirrored_back - original_heatmap, axis=-1)
    assert error.mean() < 0.01
    # And the heatmap of the flipped point is exactly the mirrored heatmap of the original point.
    original_heatmaps, _ = codec_np.encode(original_heatmap, visible, heatmap_size, sigma)
    np.testing.assert_allclose(heatmaps, original_heatmaps[:, :, ::-1, :], atol=1e-6)


def _sample_image(shared_data):
    import cv2

    path = os.path.join(shared_data, "coco_val2017_mmpose4", "images", "000000196141.jpg")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return image


def test_flipped_crop_equals_crop_of_mirrored_sampling(shared_data):
    """fliplr(crop) == warp with (x -> W_in-1-x) composed after the crop affine: sampling is pixel-centred."""
    image = _sample_image(shared_data)
    center, scale = np.array([300.0, 200.0]), np.array([150.0, 200.0])
    matrix = C.crop_affine(center, scale, (256, 192))
    mirror = np.array([[-1.0, 0.0, 191.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    flipped_matrix = (mirror @ np.vstack([matrix, [0, 0, 1]]))[:2]
    crop = C.warp_image(image, matrix, (256, 192))
    flipped = C.warp_image(image, flipped_matrix, (256, 192))
    np.testing.assert_array_equal(flipped, crop[:, ::-1])


def test_tf_warp_matches_opencv_warp(shared_data):
    image = _sample_image(shared_data)
    center = np.array([[300.0, 200.0], [200.0, 250.0]])
    scale = np.array([[150.0, 200.0], [90.0, 120.0]])
    rotation = np.array([0.0, 30.0])
    matrices = C.crop_affine(center, scale, (256, 192), rotation)
    crops_tf = C.warp_images_tf(tf.constant(np.stack([image, image])), tf.constant(matrices, tf.float32),
                                (256, 192)).numpy()
    for index in range(2):
        crop_cv = C.warp_image(image, matrices[index], (256, 192)).astype(np.float32)
        difference = np.abs(crops_tf[index] - crop_cv)
        # OpenCV interpolates with 5-bit fixed-point weights; TF in float.
        assert difference.mean() < 0.6, difference.mean()
        assert np.percentile(difference, 99.9) < 6.0


def test_sizes_are_validated():
    with pytest.raises(ValueError, match="output_size"):
        C.crop_affine(np.zeros((1, 2)), np.ones((1, 2)), (1, 192))
    with pytest.raises(ValueError, match="heatmap_size"):
        C.crop_to_heatmap_factor((256, 192), (64,))


def test_box_rule_numpy_and_tf_twins_agree():
    """ExampleGen's box rule (NumPy) and the serving graph's (TF): same clipped boxes, same status codes."""
    width, height = 640, 425
    nan, inf = float("nan"), float("inf")
    boxes = np.array([
        [277.1, 45.7, 225.1, 333.6],      # inside
        [-10.0, -10.0, 50.0, 40.0],       # partly outside: clipped at the top-left
        [600.0, 400.0, 100.0, 100.0],     # partly outside: clipped at the bottom-right
        [300.0, 100.0, 0.3, 0.3],         # tiny but valid
        [300.0, 100.0, 0.0, 120.0],       # zero width
        [300.0, 100.0, 50.0, -10.0],      # negative height
        [300.0, 100.0, 0.0, 0.0],         # zero area
        [nan, 100.0, 50.0, 80.0],         # NaN
        [0.0, 0.0, inf, 10.0],            # infinite
        [700.0, 100.0, 50.0, 80.0],       # right of the image
        [-80.0, 100.0, 80.0, 80.0],       # touches the left border only at x = 0: zero width after clipping
        [639.0, 0.0, 5.0, 5.0],           # starts on the last pixel centre: zero width after clipping
        [0.0, 0.0, 640.0, 425.0],         # the whole image
    ], np.float32)
    clipped, status = C.clip_boxes(boxes, width, height)
    assert status.dtype == np.int32
    assert [C.BOX_STATUS[code] for code in status] == (
        ["valid"] * 4 + ["invalid_box"] * 5 + ["box_outside_image"] * 3 + ["valid"])
    np.testing.assert_allclose(clipped[1], [0, 0, 40, 30])
    np.testing.assert_allclose(clipped[2], [600, 400, 39, 24])
    np.testing.assert_allclose(clipped[12], [0, 0, 639, 424])
    assert np.all(clipped[status != C.BOX_VALID] == 0) and np.all(np.isfinite(clipped))
    clipped_tf, status_tf = C.clip_boxes_tf(tf.constant(boxes), tf.constant(width), tf.constant(height))
    assert status_tf.dtype == tf.int32
    np.testing.assert_array_equal(status_tf.numpy(), status)
    np.testing.assert_allclose(clipped_tf.numpy(), clipped, atol=1e-4)
    empty_clipped, empty_status = C.clip_boxes_tf(tf.zeros([0, 4]), width, height)
    assert empty_clipped.shape == (0, 4) and empty_status.shape == (0,)
