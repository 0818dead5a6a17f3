"""Skeletons coloured by track id, for annotated videos (:mod:`pose.tracking` ids).

Each track gets its own hue (golden-ratio steps around the colour wheel, so
consecutive ids differ strongly, :func:`track_colors`); the person's left
limbs are drawn in a darker shade of it, so left and right stay readable, and
its id is written above its highest drawn joint. Joints and thresholds as in
:func:`pose.draw.draw_poses` (which colours by body side instead); the drawing
primitives are :mod:`pose.draw`'s (sub-pixel, one OpenCV call per colour).
"""
from __future__ import annotations

import numpy as np

from pose import draw
from schemas.keypoints import KeypointSchema

GOLDEN = 0.6180339887498949
LEFT_SHADE = 0.6
"""Brightness factor of the left limbs of a track's colour."""


def track_colors(track_ids: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB colours of (N,) integer track ids: hue ``frac(id * 0.618...)``, saturation 0.8, value 1."""
    import cv2

    ids = np.asarray(track_ids, np.int64).reshape(-1)
    hue = np.mod(ids * GOLDEN, 1.0) * 180.0                                  # OpenCV hue: 0..180
    hsv = np.stack([np.round(hue) % 180, np.full(ids.shape, 204), np.full(ids.shape, 255)], axis=-1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0].reshape(-1, 3)


def draw_tracked_poses(image: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, track_ids: np.ndarray,
                       schema: KeypointSchema, threshold: float = draw.DEFAULT_THRESHOLD,
                       thickness: int | None = None, labels: bool = True) -> np.ndarray:
    """Draws N skeletons, each in its track's colour, on a copy of an RGB image.

    Args:
        image: (H, W, 3) uint8 RGB.
        keypoints: (N, K, 2) float image pixels (x, y); scores: (N, K) joint scores.
        track_ids: (N,) int track ids.
        schema: the model's keypoint schema (K joints, skeleton, names).
        threshold: joints scored below it (or non-finite) are not drawn, nor their limbs.
        thickness: limb thickness in pixels; default :func:`pose.draw.line_width` of the image.
        labels: write each track id above its person.

    Returns:
        (H, W, 3) uint8 RGB, a new array.

    Raises:
        ValueError: ``image`` is not (H, W, 3), or the shapes do not fit K = ``schema.num_joints`` and N ids.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64)
    track_ids = np.asarray(track_ids, np.int64).reshape(-1)
    num_joints = schema.num_joints
    if (keypoints.ndim != 3 or keypoints.shape[1:] != (num_joints, 2) or scores.shape != keypoints.shape[:2]
            or track_ids.shape != keypoints.shape[:1]):
        raise ValueError(f"keypoints {keypoints.shape}, scores {scores.shape} and track ids {track_ids.shape} "
                         f"do not fit schema {schema.name!r}: expected (N, {num_joints}, 2), (N, {num_joints}), (N,)")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    thickness = thickness or draw.line_width(*canvas.shape[:2])
    visible = (scores >= threshold) & np.all(np.isfinite(keypoints), axis=-1)
    sides = draw.joint_sides(schema)
    pairs = np.asarray(schema.skeleton, np.int64)
    left = (sides[pairs[:, 0]] == -1) & (sides[pairs[:, 1]] == -1)
    colors = track_colors(track_ids).astype(np.float64)
    for person in range(len(keypoints)):            # one colour per person: one call per shade
        for limbs, shade in ((~left, 1.0), (left, LEFT_SHADE)):
            segments = draw.limb_segments(keypoints[person:person + 1], visible[person:person + 1], pairs, limbs)
            draw.draw_segments(canvas, segments, tuple(int(c) for c in colors[person] * shade), thickness)
    points = keypoints[visible]
    draw.draw_points(canvas, points, (40, 40, 40), thickness + 1.5)
    draw.draw_points(canvas, points, draw.POINT_COLOR, thickness + 0.5)
    if labels:
        scale = 0.4 * thickness
        for person in np.flatnonzero(visible.any(axis=1)):
            seen = keypoints[person][visible[person]]
            x, y = seen[np.argmin(seen[:, 1])]
            origin = (int(round(x)), int(round(y - 4 * thickness)))
            text = str(int(track_ids[person]))
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (20, 20, 20), thickness + 2,
                        cv2.LINE_AA)
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale,
                        tuple(int(c) for c in colors[person]), thickness, cv2.LINE_AA)
    return canvas
