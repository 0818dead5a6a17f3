"""Track ids and optional One-Euro smoothing for the results of consecutive video frames (:mod:`pipeline.predict`).

Wires :class:`pose.tracking.PoseTracker` (greedy OKS matching between consecutive
frames, box-IoU fallback, ids never reused) and, with ``smooth``,
:class:`pose.smoothing.TrackSmoother` (One-Euro filter per track) to COCO results:
each result of a frame gets ``track_id``; smoothing replaces its ``x, y`` (the joint
scores and the pose score stay the model's). Joints scored below
:data:`pose.tracking.DEFAULT_JOINT_THRESHOLD` are neither used for OKS nor smoothed.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from pose import smoothing, tracking

TRACK_ID = "track_id"
"""Key of the track id in the results of a video."""


class VideoTracks:
    """Tracks the people of a video's frames, in order.

    Args:
        schema: the model's keypoint schema (its OKS sigmas; none: IoU matching only).
        fps: the video's frame rate (the smoother's sampling rate).
        smooth: One-Euro smoothing of the keypoints (off by default: the results stay the model's).
        min_cutoff: Hz; beta: 1/pixel (:mod:`pose.smoothing`).
    """

    def __init__(self, schema: Any, fps: float, smooth: bool = False,
                 min_cutoff: float = smoothing.DEFAULT_MIN_CUTOFF, beta: float = smoothing.DEFAULT_BETA):
        sigmas = schema.sigmas() if schema.oks_sigmas is not None else None
        self.num_joints = schema.num_joints
        self.tracker = tracking.PoseTracker(sigmas)
        self.smoother = smoothing.TrackSmoother(fps, min_cutoff, beta) if smooth else None

    def update(self, results: List[Dict[str, Any]]) -> np.ndarray:
        """Adds ``track_id`` to the results of one frame (in place; smoothed ``x, y`` with ``smooth``).

        Args:
            results: the frame's COCO results (``keypoints`` = [x, y, s] * K).

        Returns:
            (N,) int64 track ids, in the order of ``results``.
        """
        triplets = np.asarray([r["keypoints"] for r in results], np.float64).reshape(len(results), self.num_joints, 3)
        keypoints, scores = triplets[..., :2], triplets[..., 2]
        ids = self.tracker.update(keypoints, scores)
        if self.smoother is not None:
            triplets[..., :2] = self.smoother.update(ids, keypoints, scores >= tracking.DEFAULT_JOINT_THRESHOLD)
        for result, track_id, row in zip(results, ids, triplets.reshape(len(results), -1)):
            result[TRACK_ID] = int(track_id)
            if self.smoother is not None:
                result["keypoints"] = [float(v) for v in row]
        return ids
