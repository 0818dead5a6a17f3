"""Bottom-up (box-free) decoding: model output -> people, batched TensorFlow ops.

Turns the bottom-up output tensor ``(B, H_out, W_out, C)`` (channels-last, the
layout of :mod:`schemas.bottom_up`: K heatmaps, 2K short-range offsets, 2 x 2E
mid-range offsets, 1 body map; offsets in OUTPUT pixels) into up to N people
per image, in INPUT pixels of the ``S x S`` letterboxed model input. Only
tensor ops: it runs inside ``tf.function`` and a SavedModel (both loaders),
for any batch size, with no Python loop over batch, people or joints; the
sequential parts are ``tf.while_loop``s over grouping steps.

Algorithm (PersonLab, Papandreou et al. ECCV 2018, Sec. 3.1 and 3.3; the
heatmaps are DARK's unbiased Gaussians, Zhang et al. CVPR 2020):

1. **Peaks.** Local maxima of every keypoint heatmap: a pixel that equals
   the maximum of its ``nms_kernel x nms_kernel`` window (max-pool NMS) and
   is at least ``peak_threshold``; the P highest per joint are kept
   (P = ``max_candidates``, at least N = ``max_people``: the candidate cap is
   not the person cap, since people beyond the N best still need their own
   peaks to be grouped whole, else their skeletons take a neighbour's
   joints). Each is refined to sub-pixel with the DARK Taylor step
   (:func:`pose.codec_tf.refine_peaks`, the top-down decoder's maths), then,
   with ``hough_refine``, replaced by the heatmap-weighted mean of the votes
   ``q + S_k(q)`` of its 3x3 neighbourhood q (the short-range offsets point
   from each pixel to the keypoint: PersonLab Sec. 3.1's Hough voting,
   restricted to the peak's neighbourhood).
2. **Skeletons.** Every peak seeds one candidate skeleton, all at once: for
   each directed edge ``a -> b`` the joint b is predicted from joint a at
   ``q + M_ab(q)`` (q: the pixel nearest joint a; mid-range offsets are
   vectors from pixel centres), refined once with the short-range offset of
   joint b where that is non-zero (PersonLab Sec. 3.2's short-range
   refinement), and snapped to the peak of joint b nearest its pixel when
   that peak is within the keypoint NMS radius r (a prediction within r of a
   peak is that peak). Joints are reached round by round along the edges (a
   ``tf.while_loop`` of at most the graph's diameter + 1 rounds, stopping
   when nothing changes); a joint reached by a snapped prediction is
   *confirmed* and fixed, one reached by an unsnapped prediction is
   *tentative* (score = the heatmap at it) and may be replaced later by a
   confirmed one. Works for any directed edge list (the tree of
   :data:`schemas.bottom_up.BOTTOM_UP_EDGES` or a richer graph).
3. **Greedy grouping with keypoint-level NMS** (PersonLab Sec. 3.3): the
   highest-scoring unused peak becomes a person with its skeleton; a joint of
   it that lies within r of the same joint of an already accepted person is
   dropped (score 0: two people never share a keypoint); every peak within r
   of a joint the person kept is used up. The person score is the mean of
   its K keypoint scores (PersonLab Sec. 3.3); people scoring below
   ``min_person_score`` are dropped. A ``tf.while_loop`` whose steps each
   settle up to :data:`GROUPING_BLOCK` seeds at once, exactly as the
   one-seed-per-step loop would (see :func:`group_people`): a crowd of
   separate people takes a few steps, so the cost grows slowly with the
   number of people (``bench/people.py``).
4. **Fragments** (our addition; StrongPose's body heatmap): where a joint is
   missing from a person's graph, the joints beyond it can come out as a
   separate low-scoring person; :func:`attach_fragments` re-attaches them to
   the person whose centre they move towards its body peak. Then the N best
   whole people by person score are returned, best first (grouping happened
   over all P candidates per joint, so a crowd of more than N people gives
   its N best people, each whole).

Settings (``config["bottom_up"]``, defaults and sources in
:data:`pose.config.BOTTOM_UP_DEFAULTS` and docs/bottom_up.md):
``max_people`` N, ``max_candidates`` P, ``peak_threshold``, ``nms_kernel`` (output pixels),
``hough_refine``, ``min_person_score``, ``keypoint_nms_radius`` r (INPUT
pixels; PersonLab's r = 10 pixels, converted here to output pixels with the
project's input -> output factor ``(W_out - 1) / (W_in - 1)``, contract 2 of
:mod:`pose.coordinates`), and ``codec.blur_kernel`` (the DARK modulation).
The body channel is used only by step 4.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pose import codec_tf, coordinates
from pose.config import default_max_candidates
from schemas import bottom_up as bottom_up_schema
from schemas.keypoints import get_schema

_NEGATIVE = -1e9
"""Score of a slot that holds nothing (below any real score, finite so that arithmetic stays finite)."""


@dataclasses.dataclass(frozen=True)
class DecoderSettings:
    """Everything the decoder needs, read once from a config (:meth:`from_config`).

    Attributes:
        dataset: keypoint schema name (``coco`` / ``mpii``).
        input_size: S, the square model input, pixels.
        output_size: (H_out, W_out) of the model output.
        max_people: N, people returned per image.
        max_candidates: P, peaks kept per joint (grouping candidates), >= N;
            None = :func:`pose.config.default_max_candidates` of N.
        peak_threshold: heatmap peaks below are ignored.
        nms_kernel: odd max-pool window of the peak NMS, output pixels.
        hough_refine: refine peaks with the short-range offsets.
        min_person_score: people whose mean keypoint score is below are dropped.
        keypoint_nms_radius: r, INPUT pixels.
        blur_kernel: odd DARK modulation kernel.
        edges: directed edges ((a, b), ...); default the dataset's bottom-up edges.
    """

    dataset: str
    input_size: int
    output_size: Tuple[int, int]
    max_people: int = 30
    max_candidates: int | None = None
    peak_threshold: float = 0.1
    nms_kernel: int = 3
    hough_refine: bool = True
    min_person_score: float = 0.05
    keypoint_nms_radius: float = 10.0
    blur_kernel: int = 3
    edges: Tuple[Tuple[int, int], ...] | None = None

    def __post_init__(self):
        if self.edges is None:
            object.__setattr__(self, "edges", tuple(bottom_up_schema.BOTTOM_UP_EDGES[self.dataset]))
        object.__setattr__(self, "output_size", tuple(int(v) for v in self.output_size))
        if int(self.input_size) < 2 or min(self.output_size) < 2:
            raise ValueError(f"input_size {self.input_size} and output_size {self.output_size} must be >= 2")
        if int(self.max_people) < 1:
            raise ValueError(f"max_people must be >= 1, got {self.max_people}")
        if self.max_candidates is None:
            object.__setattr__(self, "max_candidates", default_max_candidates(int(self.max_people)))
        if int(self.max_candidates) < int(self.max_people):
            raise ValueError(f"max_candidates ({self.max_candidates}) must be >= max_people ({self.max_people})")
        if int(self.nms_kernel) < 1 or int(self.nms_kernel) % 2 == 0:
            raise ValueError(f"nms_kernel must be a positive odd integer, got {self.nms_kernel}")
        if float(self.keypoint_nms_radius) < 0:
            raise ValueError(f"keypoint_nms_radius must be >= 0, got {self.keypoint_nms_radius}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DecoderSettings":
        """Settings of a loaded ``approach: bottom_up`` config (:func:`pose.config.load_config`)."""
        section = config["bottom_up"]
        return cls(dataset=config["dataset"], input_size=int(config["data"]["input_size"][0]),
                   output_size=tuple(config["data"]["heatmap_size"]), max_people=int(section["max_people"]),
                   max_candidates=section.get("max_candidates"),
                   peak_threshold=float(section["peak_threshold"]), nms_kernel=int(section["nms_kernel"]),
                   hough_refine=bool(section["hough_refine"]), min_person_score=float(section["min_person_score"]),
                   keypoint_nms_radius=float(section["keypoint_nms_radius"]),
                   blur_kernel=int(config["codec"]["blur_kernel"]))

    @property
    def num_joints(self) -> int:
        """K of the dataset's keypoint schema."""
        return get_schema(self.dataset).num_joints

    @property
    def input_to_output(self) -> np.ndarray:
        """(2,) factors (x, y) from input to output pixels (:func:`pose.coordinates.crop_to_heatmap_factor`)."""
        return coordinates.crop_to_heatmap_factor((self.input_size, self.input_size), self.output_size)

    @property
    def radius_output(self) -> float:
        """r in output pixels (the x factor; the input is square and so is the factor up to rounding of sizes)."""
        return float(self.keypoint_nms_radius) * float(self.input_to_output[0])


# --------------------------------------------------------------------------
# Small pure pieces
# --------------------------------------------------------------------------

def _gather_pixels(field: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, channels: tf.Tensor) -> tf.Tensor:
    """Values of ``field`` (B, H, W, C[, 2]) at integer (rows, cols, channels), each (B, ...) int32.

    Returns (B, ...) or (B, ..., 2) for a vector field. Indices must be inside the map.
    """
    shape = tf.shape(field)
    height, width, count = shape[1], shape[2], shape[3]
    batch_index = tf.reshape(tf.range(shape[0]), tf.concat([[-1], tf.ones_like(tf.shape(rows)[1:])], axis=0))
    index = ((batch_index * height + rows) * width + cols) * count + channels
    if field.shape.rank == 5:
        return tf.gather(tf.reshape(field, [-1, 2]), index)
    return tf.gather(tf.reshape(field, [-1]), index)


def _nearest_pixel(points: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(…, 2) points -> (rows, cols) int32 of the nearest pixel centre inside the map."""
    safe = tf.where(tf.math.is_finite(points), points, tf.zeros_like(points))
    cols = tf.clip_by_value(tf.cast(tf.round(safe[..., 0]), tf.int32), 0, width - 1)
    rows = tf.clip_by_value(tf.cast(tf.round(safe[..., 1]), tf.int32), 0, height - 1)
    return rows, cols


def find_peaks(heatmaps: tf.Tensor, short: tf.Tensor, settings: DecoderSettings) -> Dict[str, tf.Tensor]:
    """Step 1: local maxima per joint, DARK-refined, optionally Hough-refined.

    Args:
        heatmaps: (B, H, W, K) float32.
        short: (B, H, W, K, 2) short-range offsets, output pixels, or None (no Hough step).
        settings: decoder settings.

    Returns:
        dict: ``positions`` (B, K, P, 2) float32 (x, y) output pixels,
        ``scores`` (B, K, P) float32, ``valid`` (B, K, P) bool, with
        P = ``max_candidates`` peaks per joint, best first.
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    shape = tf.shape(heatmaps)
    batch, height, width, joints = shape[0], shape[1], shape[2], shape[3]
    peaks_per_joint = int(settings.max_candidates)
    pooled = tf.nn.max_pool2d(heatmaps, settings.nms_kernel, strides=1, padding="SAME")
    is_peak = tf.equal(heatmaps, pooled) & (heatmaps >= settings.peak_threshold)
    masked = tf.where(is_peak, heatmaps, tf.fill(tf.shape(heatmaps), tf.constant(_NEGATIVE, tf.float32)))
    by_joint = tf.reshape(tf.transpose(masked, [0, 3, 1, 2]), [batch, joints, height * width])
    count = tf.minimum(peaks_per_joint, height * width)
    values, index = tf.math.top_k(by_joint, k=count, sorted=True)                 # (B, K, P)
    pad = peaks_per_joint - count
    values = tf.pad(values, [[0, 0], [0, 0], [0, pad]], constant_values=_NEGATIVE)
    index = tf.pad(index, [[0, 0], [0, 0], [0, pad]])
    valid = values >= settings.peak_threshold
    px, py = index % width, index // width
    channels = tf.broadcast_to(tf.range(joints)[None, :, None], tf.shape(index))
    flat = lambda tensor: tf.reshape(tensor, [batch, -1])                          # noqa: E731
    positions, _ = codec_tf.refine_peaks(heatmaps, flat(px), flat(py), flat(channels), settings.blur_kernel)
    positions = tf.reshape(positions, [batch, joints, peaks_per_joint, 2])
    if settings.hough_refine and short is not None:
        positions = _hough_refine(heatmaps, short, px, py, channels, positions)
    return {"positions": tf.where(valid[..., None], positions, tf.zeros_like(positions)),
            "scores": tf.where(valid, values, tf.zeros_like(values)), "valid": valid}


def _hough_refine(heatmaps: tf.Tensor, short: tf.Tensor, px: tf.Tensor, py: tf.Tensor, channels: tf.Tensor,
                  fallback: tf.Tensor) -> tf.Tensor:
    """Heatmap-weighted mean of the votes ``q + S_k(q)`` over the 3x3 pixels q around each peak (B, K, P, 2).

    PersonLab Sec. 3.1 (Hough voting of the short-range offsets, weighted by
    the heatmap), restricted to the peak's neighbourhood; a peak whose
    neighbourhood has no weight (all zero) keeps ``fallback``.
    """
    shape = tf.shape(heatmaps)
    height, width = shape[1], shape[2]
    step = tf.constant([-1, 0, 1], tf.int32)
    rows = tf.clip_by_value(py[..., None, None] + step[:, None], 0, height - 1)   # (B, K, P, 3, 1)
    cols = tf.clip_by_value(px[..., None, None] + step[None, :], 0, width - 1)    # (B, K, P, 1, 3)
    full = tf.broadcast_dynamic_shape(tf.shape(rows), tf.shape(cols))
    rows, cols = tf.broadcast_to(rows, full), tf.broadcast_to(cols, full)
    joint = tf.broadcast_to(channels[..., None, None], tf.shape(rows))
    weights = tf.maximum(_gather_pixels(heatmaps, rows, cols, joint), 0.0)        # (B, K, P, 3, 3)
    votes = tf.stack([tf.cast(cols, tf.float32), tf.cast(rows, tf.float32)], axis=-1) + _gather_pixels(
        short, rows, cols, joint)
    total = tf.reduce_sum(weights, axis=[-2, -1])
    mean = tf.reduce_sum(votes * weights[..., None], axis=[-3, -2]) / tf.where(total > 0, total, 1.0)[..., None]
    return tf.where((total > 0)[..., None], mean, fallback)


def _same_shapes(new: Sequence[tf.Tensor], old: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, ...]:
    """Loop variables with the static shapes they entered a ``tf.while_loop`` with (extra trailing items pass)."""
    result = []
    for index, tensor in enumerate(new):
        if index < len(old):
            tensor = tf.ensure_shape(tensor, old[index].shape)
        result.append(tensor)
    return tuple(result)


def _graph_rounds(edges: Sequence[Tuple[int, int]], joints: int) -> int:
    """Rounds that reach every joint from any seed: the edge graph's diameter (at least 1)."""
    neighbours = {j: set() for j in range(joints)}
    for a, b in edges:
        neighbours[a].add(b)
    longest = 1
    for start in range(joints):  # static graph setup, not a per-joint graph op
        seen, frontier, depth = {start}, {start}, 0
        while frontier:
            frontier = {n for j in frontier for n in neighbours[j]} - seen
            seen |= frontier
            depth += 1 if frontier else 0
        longest = max(longest, depth)
    return longest


def _nearest_peak_map(peaks: Mapping[str, tf.Tensor], height: tf.Tensor, width: tf.Tensor,
                      radius: float) -> tf.Tensor:
    """(B, H, W, K) int32: per pixel and joint, the index p of the nearest valid peak of that joint
    within ``radius + 1`` output pixels of the pixel centre, else -1 (the snapping lookup of
    :func:`build_skeletons`: a prediction within r of a peak rounds to a pixel within r + 1/sqrt(2))."""
    xs = tf.cast(tf.range(width), tf.float32)
    ys = tf.cast(tf.range(height), tf.float32)
    positions = peaks["positions"][:, None, None]                                          # (B, 1, 1, K, P, 2)
    distance = (tf.square(xs[None, None, :, None, None] - positions[..., 0])
                + tf.square(ys[None, :, None, None, None] - positions[..., 1]))           # (B, H, W, K, P)
    distance = tf.where(peaks["valid"][:, None, None], distance, np.inf)
    nearest = tf.argmin(distance, axis=-1, output_type=tf.int32)
    return tf.where(tf.reduce_min(distance, axis=-1) <= (radius + 1.0) ** 2, nearest, -1)


def build_skeletons(peaks: Mapping[str, tf.Tensor], heatmaps: tf.Tensor, short: tf.Tensor, mid: tf.Tensor,
                    settings: DecoderSettings) -> Dict[str, tf.Tensor]:
    """Step 2: the skeleton grown from every peak (B, M = K * P seeds), all at once.

    Returns:
        dict: ``positions`` (B, M, K, 2) output pixels, ``scores`` (B, M, K),
        ``status`` (B, M, K) int32 (0 not reached, 1 tentative, 2 confirmed).
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    shape = tf.shape(heatmaps)
    batch, height, width = shape[0], shape[1], shape[2]
    joints = settings.num_joints
    per_joint = int(settings.max_candidates)
    seeds = joints * per_joint
    edges = np.asarray(settings.edges, np.int32)
    source, target = tf.constant(edges[:, 0]), tf.constant(edges[:, 1])
    num_edges = len(edges)
    radius_squared = settings.radius_output ** 2

    positions = tf.reshape(peaks["positions"], [batch, seeds, 2])
    scores = tf.reshape(peaks["scores"], [batch, seeds])
    seed_joint = np.repeat(np.arange(joints), per_joint)
    own = tf.constant(np.eye(joints, dtype=bool)[seed_joint])                       # (M, K)
    skeleton_positions = tf.where(own[None, :, :, None], positions[:, :, None, :], 0.0)
    skeleton_scores = tf.where(own[None], scores[:, :, None], 0.0)
    skeleton_status = tf.where(own[None] & tf.reshape(peaks["valid"], [batch, seeds])[:, :, None], 2, 0)
    nearest_peak = _nearest_peak_map(peaks, height, width, settings.radius_output)     # (B, H, W, K)
    edge_index = tf.broadcast_to(tf.range(num_edges), [batch, seeds, num_edges])
    target_joint = tf.broadcast_to(target, [batch, seeds, num_edges])

    def one_round(skeleton_positions, skeleton_scores, skeleton_status):
        parent_positions = tf.gather(skeleton_positions, source, axis=2)              # (B, M, 2E, 2)
        parent_status = tf.gather(skeleton_status, source, axis=2)                    # (B, M, 2E)
        rows, cols = _nearest_pixel(parent_positions, height, width)
        pixel = tf.stack([tf.cast(cols, tf.float32), tf.cast(rows, tf.float32)], axis=-1)
        predicted = pixel + _gather_pixels(mid, rows, cols, edge_index)
        rows, cols = _nearest_pixel(predicted, height, width)
        refine = _gather_pixels(short, rows, cols, target_joint)
        pixel = tf.stack([tf.cast(cols, tf.float32), tf.cast(rows, tf.float32)], axis=-1)
        has_refine = tf.reduce_any(tf.not_equal(refine, 0.0), axis=-1, keepdims=True)
        predicted = tf.where(has_refine, pixel + refine, predicted)
        # Snap to the peak of the target joint nearest the prediction's pixel, if within r of the prediction.
        rows, cols = _nearest_pixel(predicted, height, width)
        nearest = _gather_pixels(nearest_peak, rows, cols, target_joint)                # (B, M, 2E)
        snap_index = (tf.range(batch)[:, None, None] * joints + target_joint) * per_joint + tf.maximum(nearest, 0)
        snap_positions = tf.gather(tf.reshape(peaks["positions"], [-1, 2]), snap_index)  # (B, M, 2E, 2)
        snap_scores = tf.gather(tf.reshape(peaks["scores"], [-1]), snap_index)
        snapped = (nearest >= 0) & (tf.reduce_sum(tf.square(snap_positions - predicted), axis=-1) <= radius_squared)
        local_scores = _gather_pixels(heatmaps, rows, cols, target_joint)
        proposal_positions = tf.where(snapped[..., None], snap_positions, predicted)
        proposal_scores = tf.where(snapped, snap_scores, tf.maximum(local_scores, 0.0))
        proposal_status = tf.where(parent_status > 0, tf.where(snapped, 2, 1), 0)
        # Per child joint, the best proposal: confirmed before tentative, then the higher score.
        key = tf.where(proposal_status > 0,
                       tf.cast(proposal_status, tf.float32) * 4.0 + tf.clip_by_value(proposal_scores, 0.0, 1.0),
                       -1.0)
        best_key = tf.transpose(tf.math.unsorted_segment_max(tf.transpose(key, [2, 0, 1]), target, joints),
                                [1, 2, 0])                                              # (B, M, K)
        is_best = tf.equal(key, tf.gather(best_key, target, axis=2))                    # (B, M, 2E)
        best = tf.transpose(tf.math.unsorted_segment_max(
            tf.transpose(tf.where(is_best, edge_index, -1), [2, 0, 1]), target, joints), [1, 2, 0])
        best = tf.maximum(best, 0)                                                      # (B, M, K) edge per joint
        best_status = tf.gather(proposal_status, best, batch_dims=2)
        better = best_status > skeleton_status
        skeleton_positions = tf.where(better[..., None], tf.gather(proposal_positions, best, batch_dims=2),
                                      skeleton_positions)
        skeleton_scores = tf.where(better, tf.gather(proposal_scores, best, batch_dims=2), skeleton_scores)
        skeleton_status = tf.where(better, best_status, skeleton_status)
        return skeleton_positions, skeleton_scores, skeleton_status, tf.reduce_any(better)

    rounds = _graph_rounds(settings.edges, joints) + 1   # + 1: a tentative joint may be confirmed from a child

    def body(step, positions_, scores_, status_, _changed):
        return (step + 1, *_same_shapes(one_round(positions_, scores_, status_), (positions_, scores_, status_)))

    _, skeleton_positions, skeleton_scores, skeleton_status, _ = tf.while_loop(
        lambda step, *state: (step < rounds) & state[-1], body,
        (tf.constant(0), skeleton_positions, skeleton_scores, skeleton_status, tf.constant(True)))
    return {"positions": skeleton_positions, "scores": skeleton_scores, "status": skeleton_status}


GROUPING_BLOCK = 16
"""Seeds examined per grouping step (:func:`group_people`); any value gives the same people."""


def group_people(peaks: Mapping[str, tf.Tensor], skeletons: Mapping[str, tf.Tensor], settings: DecoderSettings,
                 body_peaks: Mapping[str, tf.Tensor] | None = None, block: int = GROUPING_BLOCK
                 ) -> Dict[str, tf.Tensor]:
    """Step 3 and 4: greedy acceptance with keypoint-level NMS, fragments re-attached, then the N best people.

    The greedy order is sequential (PersonLab Sec. 3.3: the best unused seed next), but most of its
    decisions do not depend on each other: each ``tf.while_loop`` step takes the ``block`` best unused seeds
    and settles, in score order, the longest run of them whose outcome the earlier ones in the run cannot
    change except by using them up. A seed is *used up* by an earlier accepted seed of the run when it
    lies within r of that person's kept joint (it is skipped, as the one-by-one loop would skip it); the
    run ends at the first seed whose skeleton has a joint within r of the same joint of an earlier accepted
    person of the run (keypoint NMS would change it: it is taken first in the next step). Who uses up whom
    is a triangular system, solved by fixed-point rounds; the run also ends where two rounds still
    disagree. The people, their order and their scores are those of the one-seed-per-step loop
    (``block=1``; ``tests/test_bottom_up_decode.py`` compares the two), in a few steps for a crowd of
    separate people instead of one step per person.

    Args:
        peaks: :func:`find_peaks` of the keypoint heatmaps.
        skeletons: :func:`build_skeletons`.
        settings: decoder settings.
        body_peaks: :func:`find_peaks` of the body map (positions (B, 1, P, 2),
            valid (B, 1, P)), or None to skip :func:`attach_fragments`.
        block: seeds examined per step (>= 1).

    Returns:
        dict: ``keypoints`` (B, N, K, 3) (x, y output pixels, score),
        ``person_scores`` (B, N), ``num_people`` (B,) int32.
    """
    batch = tf.shape(peaks["scores"])[0]
    joints = settings.num_joints
    per_joint = int(settings.max_candidates)
    seeds = joints * per_joint
    width = min(int(block), seeds)
    radius_squared = settings.radius_output ** 2
    seed_positions = tf.reshape(peaks["positions"], [batch, seeds, 2])
    seed_scores = tf.reshape(peaks["scores"], [batch, seeds])
    seed_valid = tf.reshape(peaks["valid"], [batch, seeds])
    seed_joint = tf.constant(np.repeat(np.arange(joints), per_joint).astype(np.int32))
    earlier = tf.constant(np.arange(width)[:, None] < np.arange(width)[None, :])        # (T, T): [i, j] i < j
    batch_index = tf.tile(tf.range(batch)[:, None], [1, width])                          # (B, T)

    def body(used, people_positions, people_scores, people_confirmed, person_scores, count):
        available = seed_valid & ~used
        best, seed = tf.math.top_k(tf.where(available, seed_scores, _NEGATIVE), k=width)   # (B, T), ties: lower first
        live = best > _NEGATIVE / 2
        positions = tf.gather(skeletons["positions"], seed, batch_dims=1)              # (B, T, K, 2)
        scores = tf.gather(skeletons["scores"], seed, batch_dims=1)
        status = tf.gather(skeletons["status"], seed, batch_dims=1)
        # Keypoint-level NMS against the people accepted in earlier steps (their kept joints have score > 0);
        # only the first C = max(count) slots can hold one.
        active = tf.reduce_max(count)
        taken = tf.range(active)[None, :] < count[:, None]                              # (B, C)
        holder = taken[..., None] & (people_scores[:, :active] > 0)                     # (B, C, K)
        distance = tf.reduce_sum(tf.square(people_positions[:, None, :active] - positions[:, :, None]), axis=-1)
        conflict = tf.reduce_any(holder[:, None] & (distance <= radius_squared), axis=2)   # (B, T, K)
        kept = (status > 0) & ~conflict & live[..., None]
        scores = tf.where(kept, tf.maximum(scores, 0.0), 0.0)
        holds = scores > 0
        confirmed = kept & (status == 2)
        person = tf.reduce_mean(scores, axis=-1)                                        # (B, T)
        accept = live & (person >= settings.min_person_score)
        # Within the block: i uses up j (j's seed within r of i's kept joint of j's type), i collides with j
        # (a joint of j within r of the same kept joint of i); both only for an accepted i before j.
        seed_type = tf.gather(seed_joint, seed)                                         # (B, T)
        seed_at = tf.gather(seed_positions, seed, batch_dims=1)                         # (B, T, 2)
        joint_of_type = tf.gather(positions, seed_type, axis=2, batch_dims=1)           # (B, T_i, T_j, 2)
        holds_type = tf.gather(holds, seed_type, axis=2, batch_dims=1)                  # (B, T_i, T_j)
        uses = (earlier[None] & accept[:, :, None] & holds_type
                & (tf.reduce_sum(tf.square(joint_of_type - seed_at[:, None]), axis=-1) <= radius_squared))
        pair = tf.reduce_sum(tf.square(positions[:, :, None] - positions[:, None]), axis=-1)   # (B, T_i, T_j, K)
        collides = earlier[None] & accept[:, :, None] & tf.reduce_any(
            holds[:, :, None] & (status[:, None] > 0) & (pair <= radius_squared), axis=-1)

        def skipped_after(skipped):
            return tf.reduce_any(uses & ~skipped[:, :, None], axis=1)                  # (B, T_j)

        skipped = tf.zeros_like(live)
        for _ in range(3):
            skipped = skipped_after(skipped)
        settled = tf.equal(skipped, skipped_after(skipped))
        changed = ~skipped & tf.reduce_any(collides & ~skipped[:, :, None], axis=1)
        stop = ~live | ~settled | changed
        run = tf.equal(tf.cumsum(tf.cast(stop, tf.int32), axis=1), 0)                  # (B, T) the settled run
        takes = run & ~skipped
        accepted = takes & accept
        slot = tf.where(accepted, count[:, None] + tf.cumsum(tf.cast(accepted, tf.int32), axis=1, exclusive=True),
                        seeds)                                                           # slot M: discarded
        index = tf.stack([batch_index, slot], axis=-1)
        people_positions = tf.tensor_scatter_nd_update(people_positions, index, positions)
        people_scores = tf.tensor_scatter_nd_update(people_scores, index, scores)
        people_confirmed = tf.tensor_scatter_nd_update(people_confirmed, index, confirmed)
        person_scores = tf.tensor_scatter_nd_update(person_scores, index, person)
        count = count + tf.reduce_sum(tf.cast(accepted, tf.int32), axis=1)
        # Peaks within r of a joint an accepted person kept are used up; the run's seeds always are.
        by_joint = tf.reshape(seed_positions, [batch, 1, joints, per_joint, 2])         # seeds are joint-major
        near = tf.reduce_sum(tf.square(by_joint - positions[:, :, :, None]), axis=-1) <= radius_squared
        near = near & holds[..., None] & accepted[:, :, None, None]                     # (B, T, K, P)
        used = used | tf.reshape(tf.reduce_any(near, axis=1), [batch, seeds]) | tf.reduce_any(
            tf.one_hot(seed, seeds, on_value=True, off_value=False) & run[..., None], axis=1)
        return _same_shapes((used, people_positions, people_scores, people_confirmed, person_scores, count), state)

    slots = seeds + 1
    state = (tf.zeros([batch, seeds], tf.bool), tf.zeros([batch, slots, joints, 2]), tf.zeros([batch, slots, joints]),
             tf.zeros([batch, slots, joints], tf.bool), tf.fill([batch, slots], tf.constant(_NEGATIVE, tf.float32)),
             tf.zeros([batch], tf.int32))
    _, people_positions, people_scores, people_confirmed, person_scores, _ = tf.while_loop(
        lambda used, *_: tf.reduce_any(seed_valid & ~used), body, state, maximum_iterations=seeds)
    # Slot M took the block's unaccepted seeds; slots never filled keep their _NEGATIVE person score.
    people_positions, people_scores = people_positions[:, :seeds], people_scores[:, :seeds]
    people_confirmed, person_scores = people_confirmed[:, :seeds], person_scores[:, :seeds]
    if body_peaks is not None:
        # The best 2P accepted people (fragments score low but must be among them to be re-attached).
        candidates = min(seeds, 2 * per_joint)
        person_scores, best = tf.math.top_k(person_scores, k=candidates, sorted=True)
        people_positions = tf.gather(people_positions, best, batch_dims=1)
        people_scores = tf.gather(people_scores, best, batch_dims=1)
        people_confirmed = tf.gather(people_confirmed, best, batch_dims=1)
        people_positions, people_scores, merged = attach_fragments(
            people_positions, people_scores, people_confirmed, person_scores > _NEGATIVE / 2,
            body_peaks["positions"][:, 0], body_peaks["valid"][:, 0], settings.radius_output)
        person_scores = tf.where(merged | (person_scores <= _NEGATIVE / 2), _NEGATIVE,
                                 tf.reduce_mean(people_scores, axis=-1))
    best_scores, best = tf.math.top_k(person_scores, k=int(settings.max_people), sorted=True)   # (B, N)
    valid = best_scores > _NEGATIVE / 2
    keypoints = tf.concat([tf.gather(people_positions, best, batch_dims=1),
                           tf.gather(people_scores, best, batch_dims=1)[..., None]], axis=-1)
    return {"keypoints": tf.where(valid[..., None, None], keypoints, 0.0),
            "person_scores": tf.where(valid, best_scores, 0.0),
            "num_people": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)}


def _centres(confirmed: tf.Tensor, positions: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Mean (..., 2) of the confirmed joints (..., K) of (..., K, 2) positions, and whether there is any."""
    count = tf.reduce_sum(tf.cast(confirmed, tf.float32), axis=-1)
    total = tf.reduce_sum(tf.where(confirmed[..., None], positions, 0.0), axis=-2)
    return total / tf.maximum(count, 1.0)[..., None], count > 0


def attach_fragments(positions: tf.Tensor, scores: tf.Tensor, confirmed: tf.Tensor, valid: tf.Tensor,
                     body_positions: tf.Tensor, body_valid: tf.Tensor, radius: float
                     ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Re-attaches fragments to the person they belong to, using the body (person-centre) map.

    A tree breaks where a person's joint is missing (unlabelled, occluded):
    the joints beyond it then come out as a separate, low-scoring "person"
    (a fragment), and the host person gets guesses there. The body map has
    one peak per person at the mean of its labelled joints (StrongPose's body
    heatmap; :mod:`pose.bottom_up_codec`). Each person keeps the body peak
    nearest to the centre of its confirmed joints. In score order, a person F
    is attached to an earlier person H when F is not a person of its own (its
    centre is not within r of a body peak that no earlier person has), F's
    confirmed joints are all joints H has not confirmed, and adding them
    moves H's centre closer to H's body peak; among such H, the one whose
    new centre is closest. F's joints then replace H's guesses. One
    ``tf.while_loop`` step per possible fragment (a person with confirmed joints and no body peak of its
    own; at most 2P, P = ``max_candidates``).

    Args:
        positions: (B, T, K, 2) output pixels, people in decreasing score order.
        scores: (B, T, K) keypoint scores.
        confirmed: (B, T, K) bool, joints snapped to a heatmap peak.
        valid: (B, T) bool, slots that hold a person.
        body_positions: (B, Q, 2) body peaks, output pixels; body_valid (B, Q) bool.
        radius: r, output pixels.

    Returns:
        ``(positions, scores, merged (B, T) bool)``: people with their
        fragments attached, and the fragments that were (to be dropped).
    """
    people = positions.shape[1]
    centre, has_centre = _centres(confirmed, positions)                                   # (B, T, 2)
    distance = tf.norm(centre[:, :, None] - body_positions[:, None], axis=-1)             # (B, T, Q)
    distance = tf.where(body_valid[:, None], distance, np.inf)
    nearest = tf.argmin(distance, axis=-1, output_type=tf.int32)                          # (B, T)
    own_peak = tf.gather(body_positions, nearest, batch_dims=1)
    has_peak = has_centre & tf.reduce_any(body_valid, axis=1)[:, None]
    # A person of its own: its centre is within r of a body peak that no earlier person has as its own.
    earlier = np.arange(people)[None, :] < np.arange(people)[:, None]                     # (T, T): [f, h] h < f
    claimed = tf.reduce_any(tf.equal(nearest[:, :, None], nearest[:, None, :]) & earlier[None]
                            & (valid & has_peak)[:, None, :], axis=-1)
    alone = (tf.reduce_min(distance, axis=-1) <= radius) & ~claimed

    # Whether person f is a fragment is known before the loop: its confirmed joints change only when it hosts
    # a fragment, and hosts come before the fragment (earlier steps, lower indices); it is merged only at its
    # own step. So only those people need a step (none in a crowd where everyone has a body peak).
    is_fragment = valid & ~alone & tf.reduce_any(confirmed, axis=-1)                      # (B, T)
    order = tf.reshape(tf.where(tf.reduce_any(is_fragment, axis=0) & (tf.range(people) > 0)), [-1])
    order = tf.cast(order, tf.int32)

    def step(position, positions, scores, confirmed, merged):
        index = order[position]
        fragment_confirmed = confirmed[:, index]                                           # (B, K)
        fragment = is_fragment[:, index]
        union_confirmed = confirmed | fragment_confirmed[:, None]
        union_positions = tf.where(fragment_confirmed[:, None, :, None], positions[:, index][:, None], positions)
        union_centre, _ = _centres(union_confirmed, union_positions)
        host_centre, _ = _centres(confirmed, positions)
        before = tf.norm(host_centre - own_peak, axis=-1)
        after = tf.norm(union_centre - own_peak, axis=-1)                                  # (B, T)
        disjoint = ~tf.reduce_any(confirmed & fragment_confirmed[:, None], axis=-1)
        host = (tf.range(people)[None] < index) & valid & ~merged & has_peak & disjoint & (after < before)
        best = tf.argmin(tf.where(host, after, np.inf), axis=1, output_type=tf.int32)     # (B,)
        attach = fragment & tf.reduce_any(host, axis=1)
        target = tf.one_hot(best, people, on_value=True, off_value=False) & attach[:, None]            # (B, T)
        replace = target[..., None] & fragment_confirmed[:, None]                           # (B, T, K)
        positions = tf.where(replace[..., None], positions[:, index][:, None], positions)
        scores = tf.where(replace, scores[:, index][:, None], scores)
        confirmed = confirmed | replace
        merged = merged | (tf.one_hot(index, people, on_value=True, off_value=False)[None] & attach[:, None])
        return position + 1, positions, scores, confirmed, merged

    _, positions, scores, _, merged = tf.while_loop(
        lambda position, *_: position < tf.size(order), step,
        (tf.constant(0), positions, scores, confirmed, tf.zeros_like(valid)))
    return positions, scores, merged


def decode_parts(heatmaps: tf.Tensor, short: tf.Tensor, mid: tf.Tensor, body: tf.Tensor | None,
                 settings: DecoderSettings) -> Dict[str, tf.Tensor]:
    """Decodes split outputs: heatmaps (B, H, W, K), short (B, H, W, K, 2), mid (B, H, W, 2E, 2),
    body (B, H, W, 1) or None (no fragment re-attachment).

    Returns the dict of :func:`decode`.
    """
    heatmaps = tf.convert_to_tensor(heatmaps, tf.float32)
    short = tf.convert_to_tensor(short, tf.float32)
    mid = tf.convert_to_tensor(mid, tf.float32)
    peaks = find_peaks(heatmaps, short, settings)
    skeletons = build_skeletons(peaks, heatmaps, short, mid, settings)
    body_peaks = None if body is None else find_peaks(body, None, settings)
    people = group_people(peaks, skeletons, settings, body_peaks)
    factor = tf.constant(settings.input_to_output, tf.float32)
    positions = people["keypoints"][..., :2] / factor                                  # output -> input pixels
    people["keypoints"] = tf.concat([positions, people["keypoints"][..., 2:]], axis=-1)
    return people


def decode(outputs: tf.Tensor, config_or_settings: Mapping[str, Any] | DecoderSettings) -> Dict[str, tf.Tensor]:
    """Batched bottom-up decoding of model outputs (or targets) into people.

    Args:
        outputs: (B, H_out, W_out, C) float, channels-last, the layout of
            :mod:`schemas.bottom_up` (C = :func:`schemas.bottom_up.num_channels`).
        config_or_settings: a loaded ``approach: bottom_up`` config or :class:`DecoderSettings`.

    Returns:
        dict: ``keypoints`` (B, N, K, 3) float32, (x, y) in INPUT pixels of the
        S x S model input and the keypoint score (heatmap value; 0 for a joint
        dropped by the keypoint NMS); ``person_scores`` (B, N) float32, mean
        keypoint score, best first; ``num_people`` (B,) int32. Rows after
        ``num_people`` are zeros. N = ``bottom_up.max_people``.

    Raises:
        ValueError: C does not match the dataset's layout.

    Example:

        people = decode(model(images), config)   # images (B, S, S, 3)
    """
    settings = (config_or_settings if isinstance(config_or_settings, DecoderSettings)
                else DecoderSettings.from_config(config_or_settings))
    parts = bottom_up_schema.split_channels(tf.convert_to_tensor(outputs, tf.float32), settings.dataset)
    return decode_parts(parts["heatmaps"], parts["short"], parts["mid"], parts["body"], settings)
