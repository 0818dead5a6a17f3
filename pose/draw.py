"""Skeleton drawing: the one place that draws poses on images (OpenCV).

Used by ``pipeline.predict`` (overlays of a model's predictions on the
original images and video frames) and ``components.preview`` (the limbs of
the record tiles). Coordinates follow :mod:`pose.coordinates`: the centre of
pixel (col, row) is at (x = col, y = row); points are drawn at sub-pixel
positions (OpenCV's fixed point, ``shift`` = :data:`SHIFT` bits), so a dot
sits on the real coordinate, not on a rounded one.

Every drawing call takes all people and joints at once: the limbs of one
colour are one ``cv2.polylines`` call over an (M, 2, 2) array of segments,
and the joints one call over zero-length segments (a zero-length segment
drawn with thickness ``2 r`` is a filled disc of radius ``r``: OpenCV caps
thick lines with round ends, the same pixels as ``cv2.circle``).

Limb colours follow the joint names of :mod:`schemas.keypoints`: limbs whose
two joints are on the person's left (``left_*`` in COCO, ``l_*`` in MPII)
get :data:`LEFT_COLOR`, on the right :data:`RIGHT_COLOR`, the others
(head, torso across) :data:`CENTRE_COLOR`, as mmpose's and HRNet's
visualisers colour left and right differently.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from schemas.keypoints import KeypointSchema

SHIFT = 4
"""Fractional bits of OpenCV's fixed-point coordinates (1/16 pixel)."""
LEFT_COLOR = (0, 160, 255)      # RGB: orange-blue pairs stay readable for red-green colour blindness
RIGHT_COLOR = (255, 128, 0)
CENTRE_COLOR = (60, 220, 60)
POINT_COLOR = (255, 255, 255)
DEFAULT_THRESHOLD = 0.2
"""Joint score below which a keypoint (and its limbs) is not drawn: the rescoring threshold of
HRNet / mmpose (``components.metrics_coco.rescore``), the level below which a joint counts as
not found."""

Color = Tuple[int, int, int]


def joint_sides(schema: KeypointSchema) -> np.ndarray:
    """Side of each joint from its name: (K,) int8, -1 left, +1 right, 0 centre.

    ``left_*`` / ``l_*`` are left and ``right_*`` / ``r_*`` right, the naming of
    :mod:`schemas.keypoints` for COCO and MPII.
    """
    sides = np.zeros(schema.num_joints, np.int8)
    for index, name in enumerate(schema.joint_names):
        if name.startswith(("left_", "l_")):
            sides[index] = -1
        elif name.startswith(("right_", "r_")):
            sides[index] = 1
    return sides


def limb_segments(keypoints: np.ndarray, visible: np.ndarray, skeleton: Sequence[Tuple[int, int]],
                  limbs: np.ndarray | None = None) -> np.ndarray:
    """The drawable limbs of all people: (M, 2, 2) float64 segments (x, y), vectorised.

    Args:
        keypoints: (N, K, 2) image pixels (x, y).
        visible: (N, K) bool, joints to draw; a limb is drawn when both its joints are.
        skeleton: (L,) pairs of joint indices.
        limbs: optional (L,) bool mask selecting limbs of the skeleton (e.g. one colour).

    Returns:
        (M, 2, 2) segments, M <= N * L, in person-major order.
    """
    keypoints = np.asarray(keypoints, np.float64).reshape(-1, np.shape(keypoints)[-2], 2)
    visible = np.asarray(visible, bool).reshape(keypoints.shape[:2])
    pairs = np.asarray(skeleton, np.int64).reshape(-1, 2)
    if limbs is not None:
        pairs = pairs[np.asarray(limbs, bool)]
    segments = keypoints[:, pairs]                                   # (N, L, 2, 2)
    keep = visible[:, pairs[:, 0]] & visible[:, pairs[:, 1]]          # (N, L)
    return segments[keep]


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> OpenCV fixed point int32 (shift = :data:`SHIFT`)."""
    return np.round(np.asarray(points, np.float64) * (1 << SHIFT)).astype(np.int32)


def draw_segments(canvas: np.ndarray, segments: np.ndarray, color: Color, thickness: int) -> np.ndarray:
    """Draws (M, 2, 2) segments on ``canvas`` in place (one ``cv2.polylines`` call, anti-aliased).

    Args:
        canvas: (H, W, 3) uint8, C-contiguous; colours are in the canvas's own channel order.
        segments: (M, 2, 2) pixel coordinates (x, y); non-finite segments are skipped.
        color: 3 channel values 0..255; thickness: pixels (>= 1).

    Returns:
        ``canvas``.
    """
    import cv2

    segments = np.asarray(segments, np.float64).reshape(-1, 2, 2)
    segments = segments[np.all(np.isfinite(segments), axis=(1, 2))]
    if len(segments):
        cv2.polylines(canvas, list(_fixed(segments)), False, tuple(int(c) for c in color), int(thickness),
                      cv2.LINE_AA, shift=SHIFT)
    return canvas


def draw_limbs(canvas: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
               skeleton: Sequence[Tuple[int, int]], color: Color, thickness: int = 1) -> np.ndarray:
    """Draws the limbs of N people whose two joints are ``visible``, in one colour, in place.

    Args:
        canvas: (H, W, 3) uint8 (any channel order; ``color`` is in it).
        keypoints: (N, K, 2) pixels (x, y); visible: (N, K) bool.
        skeleton: joint index pairs (``KeypointSchema.skeleton``).

    Returns:
        ``canvas``.
    """
    return draw_segments(canvas, limb_segments(keypoints, visible, skeleton), color, thickness)


def draw_points(canvas: np.ndarray, points: np.ndarray, color: Color, radius: float) -> np.ndarray:
    """Draws filled anti-aliased discs of ``radius`` pixels at (M, 2) points, in place (one call)."""
    points = np.asarray(points, np.float64).reshape(-1, 2)
    segments = np.repeat(points[:, None, :], 2, axis=1)                   # zero-length: a disc each
    return draw_segments(canvas, segments, color, max(1, int(round(2 * radius))))


def line_width(height: int, width: int) -> int:
    """Limb thickness in pixels for an image: 1 px up to 320 px on the long side, then +1 per 320 px."""
    return max(1, int(round(max(height, width) / 320.0)))


def draw_poses(image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, schema: KeypointSchema,
               threshold: float = DEFAULT_THRESHOLD, thickness: int | None = None) -> np.ndarray:
    """Draws N skeletons on a copy of an RGB image.

    Joints with ``score < threshold`` (or non-finite coordinates) are not drawn,
    nor are limbs touching them. Limbs are coloured by side (module docstring),
    joints are white discs with a dark rim.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (N, K, 2) float, image pixels (x, y) (``predict_image``'s ``keypoints``).
        scores: (N, K) float joint scores (heatmap maxima).
        schema: the model's keypoint schema (K joints, skeleton, names).
        threshold: joint score threshold.
        thickness: limb thickness in pixels; default :func:`line_width` of the image.

    Returns:
        (H, W, 3) uint8 RGB, a new array.

    Raises:
        ValueError: ``image`` is not (H, W, 3), or keypoints/scores do not have K = ``schema.num_joints``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    num_joints = schema.num_joints
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64)
    if (keypoints.ndim != 3 or keypoints.shape[1:] != (num_joints, 2) or scores.shape != keypoints.shape[:2]):
        raise ValueError(f"keypoints {keypoints.shape} and scores {scores.shape} do not fit schema "
                         f"{schema.name!r}: expected (N, {num_joints}, 2) and (N, {num_joints})")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    thickness = thickness or line_width(*canvas.shape[:2])
    visible = (scores >= threshold) & np.all(np.isfinite(keypoints), axis=-1)
    sides = joint_sides(schema)
    pairs = np.asarray(schema.skeleton, np.int64)
    limb_side = np.where(sides[pairs[:, 0]] == sides[pairs[:, 1]], sides[pairs[:, 0]], 0)
    for side, color in ((-1, LEFT_COLOR), (1, RIGHT_COLOR), (0, CENTRE_COLOR)):
        draw_segments(canvas, limb_segments(keypoints, visible, pairs, limb_side == side), color, thickness)
    points = keypoints[visible]
    draw_points(canvas, points, (40, 40, 40), thickness + 1.5)
    draw_points(canvas, points, POINT_COLOR, thickness + 0.5)
    return canvas
