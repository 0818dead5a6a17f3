"""One-Euro smoothing of keypoints along tracks (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple
Speed-based Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012).

Per joint, with ``rate`` the frame rate (Hz), ``x`` the new position (pixels)
and ``x_hat``, ``dx_hat`` the filter's state (the previous smoothed position
and smoothed speed)::

    alpha(f)  = 1 / (1 + rate / (2 pi f))                 smoothing factor of a first-order low-pass at f Hz
    dx        = (x - x_hat) * rate                        speed, pixels/s
    dx_hat    = alpha(d_cutoff) dx + (1 - alpha(d_cutoff)) dx_hat
    f_c       = min_cutoff + beta * |dx_hat|              cutoff, Hz: low when still (less jitter),
                                                          high when moving (less lag)
    x_hat     = alpha(f_c) x + (1 - alpha(f_c)) x_hat

The first position of a track is passed through (``x_hat = x``, ``dx_hat = 0``).
Here a joint is a 2-D point: ``|dx_hat|`` is its speed (the Euclidean norm of
the (x, y) speed), so x and y share one cutoff. Units: ``min_cutoff`` and
``d_cutoff`` in Hz, ``beta`` in Hz per (pixel/s), i.e. 1/pixel.
:class:`TrackSmoother` keeps one filter state per track id (:mod:`pose.tracking`)
and forgets a track as soon as a frame does not have it (ids are never reused).
A non-finite position, or one marked not found (``valid``), is passed through and
leaves that joint's state as it was.

Vectorised over people and joints: one update is a handful of (M, K, 2) array operations.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

DEFAULT_MIN_CUTOFF = 1.0
"""Hz: the cutoff of a still joint (Casiez et al.'s suggested starting point)."""
DEFAULT_BETA = 0.05
"""1/pixel: how fast the cutoff rises with the joint's speed (pixels/s)."""
DEFAULT_D_CUTOFF = 1.0
"""Hz: cutoff of the speed estimate (the paper's fixed value)."""


def alpha(cutoff: np.ndarray | float, rate: float) -> np.ndarray:
    """Smoothing factor of a first-order low-pass filter at ``cutoff`` Hz sampled at ``rate`` Hz, in (0, 1]."""
    return 1.0 / (1.0 + float(rate) / (2.0 * np.pi * np.asarray(cutoff, np.float64)))


def one_euro_step(x: np.ndarray, x_hat: np.ndarray, dx_hat: np.ndarray, rate: float, min_cutoff: float,
                  beta: float, d_cutoff: float = DEFAULT_D_CUTOFF) -> Tuple[np.ndarray, np.ndarray]:
    """One step of the filter for (..., 2) points: returns the new ``(x_hat, dx_hat)`` (same shape as ``x``).

    Args:
        x: (..., 2) new positions, pixels; x_hat: (..., 2) previous smoothed positions;
        dx_hat: (..., 2) previous smoothed speeds, pixels/s. rate: frames per second.
    """
    x = np.asarray(x, np.float64)
    dx = (x - x_hat) * rate
    dx_hat = alpha(d_cutoff, rate) * dx + (1.0 - alpha(d_cutoff, rate)) * dx_hat
    cutoff = min_cutoff + beta * np.linalg.norm(dx_hat, axis=-1, keepdims=True)
    weight = alpha(cutoff, rate)
    return weight * x + (1.0 - weight) * x_hat, dx_hat


class TrackSmoother:
    """One-Euro filters for the keypoints of tracked people (module docstring).

    Args:
        rate: frames per second (> 0).
        min_cutoff: Hz (> 0); beta: 1/pixel (>= 0); d_cutoff: Hz (> 0).

    Raises:
        ValueError: a parameter outside its range.
    """

    def __init__(self, rate: float, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 d_cutoff: float = DEFAULT_D_CUTOFF):
        for name, value, low in (("rate", rate, 0.0), ("min_cutoff", min_cutoff, 0.0), ("d_cutoff", d_cutoff, 0.0)):
            if not (np.isfinite(value) and float(value) > low):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not (np.isfinite(beta) and float(beta) >= 0.0):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        self.rate, self.min_cutoff, self.beta, self.d_cutoff = float(rate), float(min_cutoff), float(beta), \
            float(d_cutoff)
        self._states: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def update(self, track_ids: np.ndarray, keypoints: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Smoothed keypoints of one frame.

        Args:
            track_ids: (M,) int track ids (distinct), from :class:`pose.tracking.PoseTracker`.
            keypoints: (M, K, 2) image pixels (x, y).
            valid: optional (M, K) bool, the joints found (e.g. score >= 0.2); the others are passed
                through and leave their filter state as it was, like non-finite ones (a missed
                joint's position is noise that would otherwise pull the filter and its speed).

        Returns:
            (M, K, 2) float64 smoothed pixels; a new track's first frame is returned as given.

        Raises:
            ValueError: shapes that do not fit, or repeated ids.
        """
        track_ids = np.asarray(track_ids, np.int64).reshape(-1)
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim != 3 or keypoints.shape[2] != 2 or len(keypoints) != len(track_ids):
            raise ValueError(f"keypoints must be (M, K, 2) with M = {len(track_ids)} ids, got {keypoints.shape}")
        if len(np.unique(track_ids)) != len(track_ids):
            raise ValueError(f"track ids repeat within one frame: {track_ids.tolist()}")
        known = np.array([int(i) in self._states for i in track_ids], bool)
        x_hat = keypoints.copy()
        dx_hat = np.zeros_like(keypoints)
        if known.any():
            x_hat[known] = np.stack([self._states[int(i)][0] for i in track_ids[known]])
            dx_hat[known] = np.stack([self._states[int(i)][1] for i in track_ids[known]])
        finite = np.all(np.isfinite(keypoints), axis=-1, keepdims=True)                 # (M, K, 1)
        if valid is not None:
            valid = np.asarray(valid, bool)
            if valid.shape != keypoints.shape[:2]:
                raise ValueError(f"valid must be (M, K) = {keypoints.shape[:2]}, got {valid.shape}")
            finite = finite & valid[..., None]
        started = known[:, None, None] & np.all(np.isfinite(x_hat), axis=-1, keepdims=True)
        x_hat = np.where(started, x_hat, keypoints)           # a joint's first finite position starts its filter
        dx_hat = np.where(started, dx_hat, 0.0)
        stepped, speed = one_euro_step(keypoints, x_hat, dx_hat, self.rate, self.min_cutoff, self.beta,
                                       self.d_cutoff)
        smoothed = np.where(started & finite, stepped, keypoints)
        new_x_hat = np.where(finite, smoothed, x_hat)
        new_dx_hat = np.where(finite & started, speed, dx_hat)
        self._states = {int(i): (new_x_hat[n], new_dx_hat[n]) for n, i in enumerate(track_ids)}
        return smoothed
