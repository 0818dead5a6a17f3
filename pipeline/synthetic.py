"""The embedded default dataset: deterministic COCO-format images of stick figures.

``python pipeline.py --runner=DirectRunner`` with no data argument trains on
this dataset, so the demo needs no download. Everything is drawn with OpenCV
from a seeded NumPy generator: the same ``seed`` and sizes give byte-identical
files on any machine with the same OpenCV/NumPy.

Each image (``image_size`` = (height, width), default 192x256) holds 2-3
front-facing human-like figures: a filled torso, thick limbs with joint
discs, hands (skin-coloured discs centred on the wrists), feet and a head with
eyes, nose and ears, in varied colours, scales (figure height 45-95 % of the
image), body lean, arm and leg angles, over a random background (gradient,
smooth noise, stripes, checks) with pixel noise. Figures overlap their
neighbours; random rectangles occlude some of them.
The 17 keypoints follow the COCO order of :data:`schemas.keypoints.COCO`;
the figure faces the camera, so its left side is on the image's right.

Labels follow COCO: visibility 2 where the keypoint is visible, 1 where a
later-drawn figure or an occluding rectangle covers it, 0 (with x = y = 0)
where it falls outside the image. Coordinates use the project convention
(:mod:`pose.coordinates`: pixel centre ``(col, row)`` at ``x = col, y =
row``). ``area`` is the pixel count of the figure's silhouette inside the image
(the COCO OKS normaliser; occluded parts included), ``bbox`` the silhouette's
tight box ``[x, y, w, h]`` and ``segmentation`` its outer contour polygons.

Layout written under ``out_dir`` (the DarkPose / HRNet COCO layout)::

    annotations/person_keypoints_train.json
    annotations/person_keypoints_val.json
    images/train/000000000001.jpg ...
    images/val/000000100001.jpg ...
    person_detection_results/synthetic_detections_val.json
    dataset_info.json           (generator settings, counts, file hashes)

The detector-like file lists, for every val figure, its box jittered in
position and size with a score in [0.7, 1.0], plus false positives (random
boxes with scores in [0.02, 0.45]), in the format of HRNet's
``COCO_val2017_detections_AP_H_56_person.json``.

Example::

    python -m pipeline.synthetic --out /tmp/synthetic --train-images 8 --val-images 2
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from toolkit import cli
from pipeline.fingerprint import file_sha256
from schemas.keypoints import COCO
from schemas import jsonio

GENERATOR_VERSION = 3
TRAIN_IMAGE_ID_OFFSET = 0
VAL_IMAGE_ID_OFFSET = 100_000
_SHIFT_BITS = 4                      # cv2 sub-pixel drawing: coordinates * 16
_SHIFT = float(1 << _SHIFT_BITS)

# COCO joint indices, by name, to keep the drawing code readable.
(_NOSE, _LEFT_EYE, _RIGHT_EYE, _LEFT_EAR, _RIGHT_EAR, _LEFT_SHOULDER, _RIGHT_SHOULDER,
 _LEFT_ELBOW, _RIGHT_ELBOW, _LEFT_WRIST, _RIGHT_WRIST, _LEFT_HIP, _RIGHT_HIP,
 _LEFT_KNEE, _RIGHT_KNEE, _LEFT_ANKLE, _RIGHT_ANKLE) = range(17)
NUM_JOINTS = COCO.num_joints


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Generator settings (everything that changes the output bytes).

    Attributes:
        num_train_images: images in the train split (>= 1).
        num_val_images: images in the val split (>= 1).
        seed: base seed; image ``i`` of a split uses ``(seed, split, i)``.
        image_size: (height, width) of every image, pixels.
        min_people, max_people: figures per image (inclusive range).
        occluder_prob: probability that an image gets occluding rectangles.
        false_positives_per_image: mean number of false-positive detector boxes.
        jpeg_quality: JPEG quality of the written images.
    """

    num_train_images: int = 720
    num_val_images: int = 80
    seed: int = 0
    image_size: Tuple[int, int] = (192, 256)
    min_people: int = 2
    max_people: int = 3
    occluder_prob: float = 0.35
    false_positives_per_image: float = 0.5
    jpeg_quality: int = 92

    def validate(self) -> None:
        """Raises ValueError naming the first invalid setting."""
        if int(self.num_train_images) < 1:
            raise ValueError(f"num_train_images must be >= 1, got {self.num_train_images!r}")
        if int(self.num_val_images) < 1:
            raise ValueError(f"num_val_images must be >= 1, got {self.num_val_images!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 64:
            raise ValueError(f"image_size must be (height, width) with both >= 64, got {self.image_size!r}")
        if not 1 <= int(self.min_people) <= int(self.max_people) <= 6:
            raise ValueError(
                f"min_people/max_people must satisfy 1 <= min <= max <= 6, got {self.min_people!r}/{self.max_people!r}")
        if not 0.0 <= float(self.occluder_prob) <= 1.0:
            raise ValueError(f"occluder_prob must be in [0, 1], got {self.occluder_prob!r}")
        if float(self.false_positives_per_image) < 0:
            raise ValueError(f"false_positives_per_image must be >= 0, got {self.false_positives_per_image!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality!r}")


# --------------------------------------------------------------------------
# Pose: a front-facing articulated skeleton
# --------------------------------------------------------------------------

def _rotate(vectors: np.ndarray, degrees: float) -> np.ndarray:
    """Rotates (..., 2) vectors by ``degrees`` (counter-clockwise on screen, y down)."""
    angle = np.deg2rad(degrees)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, sin], [-sin, cos]])
    return vectors @ rotation.T


def _direction(degrees_from_down: float, outward: float) -> np.ndarray:
    """Unit vector at ``degrees_from_down`` from straight down, towards ``outward`` (+1 right, -1 left)."""
    angle = np.deg2rad(degrees_from_down)
    return np.array([outward * np.sin(angle), np.cos(angle)])


def sample_pose(rng: np.random.Generator, height: float) -> Dict[str, Any]:
    """Samples one figure's skeleton, relative to its pelvis at (0, 0).

    Args:
        rng: the figure's random generator.
        height: figure height in pixels (head top to ankles is about ``0.95 * height``).

    Returns:
        A dict with ``keypoints`` (17, 2) float64 COCO-order points (x, y) in
        pixels relative to the pelvis, ``head_center`` (2,), ``head_axes``
        (2,) ellipse half axes, ``head_angle`` degrees, ``neck`` (2,) and the
        drawing widths ``limb_width``, ``leg_width``.
    """
    keypoints = np.zeros((NUM_JOINTS, 2))
    lean = float(np.clip(rng.normal(0.0, 8.0), -20.0, 20.0))
    shoulder_half = height * rng.uniform(0.10, 0.13)
    hip_half = height * rng.uniform(0.06, 0.08)
    torso = height * rng.uniform(0.28, 0.32)
    neck = np.array([0.0, -torso])
    keypoints[_LEFT_SHOULDER] = neck + [shoulder_half, 0.02 * height]
    keypoints[_RIGHT_SHOULDER] = neck + [-shoulder_half, 0.02 * height]
    keypoints[_LEFT_HIP] = [hip_half, 0.0]
    keypoints[_RIGHT_HIP] = [-hip_half, 0.0]

    upper_arm, forearm = height * rng.uniform(0.15, 0.18), height * rng.uniform(0.13, 0.16)
    thigh, shin = height * rng.uniform(0.22, 0.25), height * rng.uniform(0.21, 0.24)
    for shoulder, elbow, wrist, outward in ((_LEFT_SHOULDER, _LEFT_ELBOW, _LEFT_WRIST, 1.0),
                                            (_RIGHT_SHOULDER, _RIGHT_ELBOW, _RIGHT_WRIST, -1.0)):
        upper_angle = rng.uniform(10.0, 130.0)
        fore_angle = upper_angle + rng.uniform(-60.0, 45.0)
        keypoints[elbow] = keypoints[shoulder] + upper_arm * _direction(upper_angle, outward)
        keypoints[wrist] = keypoints[elbow] + forearm * _direction(fore_angle, outward)
    for hip, knee, ankle, outward in ((_LEFT_HIP, _LEFT_KNEE, _LEFT_ANKLE, 1.0),
                                      (_RIGHT_HIP, _RIGHT_KNEE, _RIGHT_ANKLE, -1.0)):
        thigh_angle = rng.uniform(-5.0, 40.0)
        shin_angle = thigh_angle - rng.uniform(-10.0, 50.0)
        keypoints[knee] = keypoints[hip] + thigh * _direction(thigh_angle, outward)
        keypoints[ankle] = keypoints[knee] + shin * _direction(shin_angle, outward)

    head_tilt = float(np.clip(rng.normal(0.0, 10.0), -25.0, 25.0))
    head_axes = np.array([0.08, 0.095]) * height * rng.uniform(0.95, 1.1)
    head_center = neck + _rotate(np.array([0.0, -0.1 * height]), head_tilt)
    yaw = rng.uniform(-0.25, 0.25)   # the face turns a little left/right
    face = np.array([
        [yaw * 0.45, 0.3],            # nose
        [0.4 + yaw * 0.45, -0.12],    # left eye (image right)
        [-0.4 + yaw * 0.45, -0.12],   # right eye
        [0.98 + yaw * 0.1, 0.02],     # left ear
        [-0.98 + yaw * 0.1, 0.02],    # right ear
    ]) * head_axes
    keypoints[_NOSE:_RIGHT_EAR + 1] = head_center + _rotate(face, head_tilt)

    # Lean the whole body about the pelvis.
    keypoints = _rotate(keypoints, lean)
    return {
        "keypoints": keypoints,
        "head_center": _rotate(head_center, lean),
        "head_axes": head_axes,
        "head_angle": -(head_tilt + lean),
        "neck": _rotate(neck, lean),
        "limb_width": height * rng.uniform(0.075, 0.09),
        "leg_width": height * rng.uniform(0.09, 0.11),
    }


# --------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------

def _fixed(point: Sequence[float]) -> Tuple[int, int]:
    return int(round(point[0] * _SHIFT)), int(round(point[1] * _SHIFT))


def _random_colour(rng: np.random.Generator, saturation=(120, 255), value=(90, 255)) -> Tuple[int, int, int]:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*saturation), rng.integers(*value)]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


_SKIN_TONES = ((189, 224, 255), (150, 195, 240), (110, 160, 215), (80, 120, 175), (50, 80, 120))


def _shade(colour: Sequence[int], factor: float) -> Tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in colour)


def draw_figure(canvas: np.ndarray, mask: np.ndarray, pose: Dict[str, Any], origin: np.ndarray,
                rng: np.random.Generator) -> None:
    """Draws one figure onto ``canvas`` (H, W, 3) uint8 BGR and its silhouette onto ``mask`` (H, W) uint8.

    ``pose`` comes from :func:`sample_pose`; ``origin`` (2,) is the pelvis
    position in image pixels.
    """
    points = pose["keypoints"] + origin
    shirt, pants = _random_colour(rng), _random_colour(rng)
    skin = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
    limb, leg = max(2, int(round(pose["limb_width"]))), max(2, int(round(pose["leg_width"])))
    neck = pose["neck"] + origin
    head_center, head_axes = pose["head_center"] + origin, pose["head_axes"]

    def line(a, b, colour, width):
        for target, value in ((canvas, colour), (mask, 255)):
            cv2.line(target, _fixed(a), _fixed(b), value, width, cv2.LINE_AA if target is canvas else cv2.LINE_8,
                     _SHIFT_BITS)

    def disc(center, radius, colour):
        for target, value in ((canvas, colour), (mask, 255)):
            cv2.circle(target, _fixed(center), int(round(radius * _SHIFT)), value, -1,
                       cv2.LINE_AA if target is canvas else cv2.LINE_8, _SHIFT_BITS)

    # Legs (behind the torso), then torso, arms, head.
    for hip, knee, ankle in ((_LEFT_HIP, _LEFT_KNEE, _LEFT_ANKLE), (_RIGHT_HIP, _RIGHT_KNEE, _RIGHT_ANKLE)):
        line(points[hip], points[knee], pants, leg)
        line(points[knee], points[ankle], pants, leg)
        disc(points[knee], leg * 0.55, _shade(pants, 0.6))
        foot_direction = 1.0 if ankle == _LEFT_ANKLE else -1.0
        line(points[ankle], points[ankle] + [foot_direction * leg * 0.9, leg * 0.35], (40, 40, 40), leg)
    torso = np.stack([points[_LEFT_SHOULDER], points[_LEFT_HIP] + [leg * 0.3, 0],
                      points[_RIGHT_HIP] - [leg * 0.3, 0], points[_RIGHT_SHOULDER]])
    torso_fixed = np.round(torso * _SHIFT).astype(np.int32)
    cv2.fillPoly(canvas, [torso_fixed], shirt, cv2.LINE_AA, _SHIFT_BITS)
    cv2.fillPoly(mask, [torso_fixed], 255, cv2.LINE_8, _SHIFT_BITS)
    line(neck, (neck + head_center) / 2, skin, limb)
    for shoulder, elbow, wrist in ((_LEFT_SHOULDER, _LEFT_ELBOW, _LEFT_WRIST),
                                   (_RIGHT_SHOULDER, _RIGHT_ELBOW, _RIGHT_WRIST)):
        disc(points[shoulder], limb * 0.6, _shade(shirt, 0.75))
        line(points[shoulder], points[elbow], shirt, limb)
        line(points[elbow], points[wrist], _shade(shirt, 0.85), limb)
        disc(points[elbow], limb * 0.55, _shade(shirt, 0.55))
        disc(points[wrist], limb * 0.75, skin)   # the hand, centred on the wrist
    axes = (int(round(head_axes[0] * _SHIFT)), int(round(head_axes[1] * _SHIFT)))
    for target, value, line_type in ((canvas, skin, cv2.LINE_AA), (mask, 255, cv2.LINE_8)):
        cv2.ellipse(target, _fixed(head_center), axes, pose["head_angle"], 0, 360, value, -1, line_type, _SHIFT_BITS)
    hair = _random_colour(rng, saturation=(0, 120), value=(20, 120))
    for ear in (_LEFT_EAR, _RIGHT_EAR):
        disc(points[ear], head_axes[0] * 0.28, _shade(skin, 0.7))
    eye_radius = max(0.8, head_axes[0] * 0.18)
    for eye in (_LEFT_EYE, _RIGHT_EYE):
        cv2.circle(canvas, _fixed(points[eye]), int(round(eye_radius * _SHIFT)), hair, -1, cv2.LINE_AA, _SHIFT_BITS)
    cv2.circle(canvas, _fixed(points[_NOSE]), int(round(eye_radius * 0.9 * _SHIFT)), (40, 40, 170), -1,
               cv2.LINE_AA, _SHIFT_BITS)


def draw_background(rng: np.random.Generator, image_size: Tuple[int, int]) -> np.ndarray:
    """A random (H, W, 3) uint8 background: gradient, smooth noise, stripes or checks."""
    height, width = image_size
    kind = int(rng.integers(4))
    first = np.array(_random_colour(rng, saturation=(0, 200), value=(40, 230)), np.float32)
    second = np.array(_random_colour(rng, saturation=(0, 200), value=(40, 230)), np.float32)
    if kind == 0:  # linear gradient at a random angle
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (np.cos(angle) * xs / width + np.sin(angle) * ys / height)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        image = first + t[..., None] * (second - first)
    elif kind == 1:  # smooth noise
        coarse = rng.uniform(0, 1, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 1)).astype(np.float32)
        t = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image = first + np.clip(t, 0, 1)[..., None] * (second - first)
    elif kind == 2:  # stripes
        period = rng.uniform(8, 40)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin((np.cos(angle) * xs + np.sin(angle) * ys) * 2 * np.pi / period)
        image = first + t[..., None] * (second - first)
    else:  # checks / tiles
        tile = int(rng.integers(10, 40))
        ys, xs = np.mgrid[0:height, 0:width]
        t = ((ys // tile + xs // tile) % 2).astype(np.float32)
        image = first + t[..., None] * (second - first)
    return np.clip(image, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------

def render_image(rng: np.random.Generator, spec: SyntheticSpec) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Renders one image and its people.

    Returns:
        ``image`` (H, W, 3) uint8 BGR and a list of people, each a dict with
        ``keypoints`` (17, 2) float64 image pixels, ``visibility`` (17,) int
        in {0, 1, 2}, ``bbox`` [x, y, w, h], ``area`` (pixels) and
        ``segmentation`` (list of flat polygons).
    """
    height, width = spec.image_size
    canvas = draw_background(rng, spec.image_size)
    num_people = int(rng.integers(spec.min_people, spec.max_people + 1))
    slot = width / num_people
    masks, poses = [], []
    for index in range(num_people):
        figure_height = height * rng.uniform(0.45, 0.95)
        pose = sample_pose(rng, figure_height)
        # Pelvis: inside the figure's slot (neighbours overlap), vertically so
        # that most of the figure is in the frame; some figures are cut by the border.
        x = (index + 0.5 + rng.uniform(-0.25, 0.25)) * slot
        top = pose["keypoints"][:, 1].min() - pose["head_axes"][1]
        bottom = pose["keypoints"][:, 1].max()
        low, high = -top + 2.0, height - 1.0 - bottom
        y = rng.uniform(low, high) if high > low else (low + high) / 2
        if rng.uniform() < 0.1:  # cut by the bottom border
            y += figure_height * rng.uniform(0.1, 0.3)
        mask = np.zeros((height, width), np.uint8)
        draw_figure(canvas, mask, pose, np.array([x, y]), rng)
        masks.append(mask)
        poses.append(pose["keypoints"] + [x, y])

    occluder = np.zeros((height, width), np.uint8)
    if rng.uniform() < spec.occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            target = poses[int(rng.integers(num_people))]
            center = target[int(rng.integers(NUM_JOINTS))]
            size = rng.uniform(0.07, 0.18, size=2) * height
            corner0 = np.round(center - size * rng.uniform(0.2, 0.8, size=2)).astype(int)
            corner1 = np.round(corner0 + size).astype(int)
            colour = _random_colour(rng, saturation=(0, 255), value=(30, 230))
            cv2.rectangle(canvas, tuple(corner0.tolist()), tuple(corner1.tolist()), colour, -1)
            cv2.rectangle(occluder, tuple(corner0.tolist()), tuple(corner1.tolist()), 255, -1)

    noise = rng.normal(0.0, 5.0, size=canvas.shape)
    canvas = np.clip(canvas.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    people = []
    covered_later = occluder.copy()
    for index in reversed(range(num_people)):
        keypoints = poses[index]
        columns = np.round(keypoints[:, 0]).astype(int)
        rows = np.round(keypoints[:, 1]).astype(int)
        inside = (keypoints[:, 0] >= 0) & (keypoints[:, 0] <= width - 1) & \
                 (keypoints[:, 1] >= 0) & (keypoints[:, 1] <= height - 1)
        covered = np.zeros(NUM_JOINTS, bool)
        covered[inside] = covered_later[rows[inside], columns[inside]] > 0
        visibility = np.where(inside, np.where(covered, 1, 2), 0)
        labelled = np.where(inside[:, None], keypoints, 0.0)
        mask = masks[index]
        ys, xs = np.nonzero(mask)
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        segmentation = [contour.reshape(-1).astype(float).tolist() for contour in contours if len(contour) >= 3]
        people.append({
            "keypoints": labelled,
            "visibility": visibility.astype(int),
            "bbox": bbox,
            "area": float(xs.size),
            "segmentation": segmentation,
        })
        covered_later = np.maximum(covered_later, mask)
    people.reverse()
    return canvas, people


# --------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------

def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    split_code = {"train": 1, "val": 2}[split]
    return np.random.default_rng([int(seed), split_code, int(index), GENERATOR_VERSION])


def _annotation(person: Dict[str, Any], annotation_id: int, image_id: int) -> Dict[str, Any]:
    keypoints = np.concatenate([np.round(person["keypoints"], 2), person["visibility"][:, None]], axis=1)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "num_keypoints": int(np.count_nonzero(person["visibility"])),
        "keypoints": [float(v) if i % 3 < 2 else int(v) for i, v in enumerate(keypoints.reshape(-1).tolist())],
        "bbox": [round(v, 2) for v in person["bbox"]],
        "area": person["area"],
        "segmentation": person["segmentation"],
    }


def _categories() -> List[Dict[str, Any]]:
    return [{
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(COCO.joint_names),
        "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton],   # COCO files are 1-based here
    }]


def _detections(rng: np.random.Generator, people: List[Dict[str, Any]], image_id: int,
                image_size: Tuple[int, int], false_positive_rate: float) -> List[Dict[str, Any]]:
    """Detector-like boxes for one image: jittered true boxes plus false positives."""
    height, width = image_size
    detections = []
    for person in people:
        x, y, w, h = person["bbox"]
        center = np.array([x + w / 2, y + h / 2]) + rng.normal(0.0, 0.03, size=2) * [w, h]
        size = np.array([w, h]) * np.exp(rng.normal(0.0, 0.05, size=2))
        x0, y0 = np.clip(center - size / 2, 0, [width - 1, height - 1])
        x1, y1 = np.clip(center + size / 2, 0, [width - 1, height - 1])
        detections.append({"image_id": image_id, "category_id": 1,
                           "bbox": [round(float(x0), 2), round(float(y0), 2),
                                    round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                           "score": round(float(rng.uniform(0.7, 1.0)), 4)})
    for _ in range(int(rng.poisson(false_positive_rate))):
        w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.2, 0.7) * height
        x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        detections.append({"image_id": image_id, "category_id": 1,
                           "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(w), 2), round(float(h), 2)],
                           "score": round(float(rng.uniform(0.02, 0.45)), 4)})
    return detections


def _write_json(path: str, payload: Any) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(jsonio.dumps(payload, sort_keys=True, separators=(",", ":")))
    os.replace(temporary, path)


def generate_split(out_dir: str, split: str, spec: SyntheticSpec) -> Dict[str, Any]:
    """Writes one split's images, annotations and (val) detections; returns its counts and paths."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    count = spec.num_train_images if split == "train" else spec.num_val_images
    id_offset = TRAIN_IMAGE_ID_OFFSET if split == "train" else VAL_IMAGE_ID_OFFSET
    image_dir = os.path.join(out_dir, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations, detections = [], [], []
    visibility_counts = np.zeros(3, np.int64)
    for index in range(count):
        rng = _image_rng(spec.seed, split, index)
        canvas, people = render_image(rng, spec)
        image_id = id_offset + index + 1
        file_name = f"{image_id:012d}.jpg"
        ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, int(spec.jpeg_quality)])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for synthetic image {image_id}")
        with open(os.path.join(image_dir, file_name), "wb") as handle:
            handle.write(encoded.tobytes())
        images.append({"id": image_id, "file_name": file_name, "height": spec.image_size[0],
                       "width": spec.image_size[1], "license": 0})
        for person_index, person in enumerate(people):
            annotations.append(_annotation(person, image_id * 10 + person_index, image_id))
            visibility_counts += np.bincount(person["visibility"], minlength=3)
        if split == "val":
            detections.extend(_detections(rng, people, image_id, spec.image_size, spec.false_positives_per_image))
    annotation_dir = os.path.join(out_dir, "annotations")
    os.makedirs(annotation_dir, exist_ok=True)
    annotation_file = os.path.join(annotation_dir, f"person_keypoints_{split}.json")
    _write_json(annotation_file, {
        "info": {"description": "darkpose-tf embedded synthetic stick-figure dataset",
                 "version": GENERATOR_VERSION, "seed": int(spec.seed), "split": split},
        "licenses": [{"id": 0, "name": "generated by pipeline/synthetic.py", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    })
    result = {"images": len(images), "people": len(annotations), "annotations": annotation_file,
              "image_dir": image_dir,
              "visibility": {str(v): int(c) for v, c in enumerate(visibility_counts)}}
    if split == "val":
        detection_dir = os.path.join(out_dir, "person_detection_results")
        os.makedirs(detection_dir, exist_ok=True)
        detection_file = os.path.join(detection_dir, "synthetic_detections_val.json")
        _write_json(detection_file, detections)
        result["detections"] = detection_file
        result["num_detections"] = len(detections)
    return result


def generate_dataset(out_dir: str, spec: SyntheticSpec | None = None) -> Dict[str, Any]:
    """Writes the whole dataset under ``out_dir`` (layout in the module docstring).

    If ``out_dir/dataset_info.json`` exists and was written with the same
    settings and generator version, nothing is regenerated (a second demo run
    reuses the files).

    Args:
        out_dir: output directory (created).
        spec: generator settings; defaults to :class:`SyntheticSpec`'s defaults.

    Returns:
        The ``dataset_info.json`` dict: settings, per-split counts, paths
        (``train_annotations``, ``train_images``, ``val_annotations``,
        ``val_images``, ``detections``) and a content hash of the annotation files.

    Raises:
        ValueError: invalid settings.
    """
    spec = spec or SyntheticSpec()
    spec.validate()
    info_path = os.path.join(out_dir, "dataset_info.json")
    settings = dataclasses.asdict(spec)
    settings["image_size"] = list(spec.image_size)
    if os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as handle:
            existing = json.load(handle)
        if existing.get("settings") == settings and existing.get("generator_version") == GENERATOR_VERSION \
                and all(os.path.exists(existing["paths"][key]) for key in existing["paths"]):
            existing["reused"] = True
            return existing
    os.makedirs(out_dir, exist_ok=True)
    train = generate_split(out_dir, "train", spec)
    val = generate_split(out_dir, "val", spec)
    digest = hashlib.sha256()
    for path in (train["annotations"], val["annotations"], val["detections"]):
        digest.update(file_sha256(path)[0].encode())
    info = {
        "generator_version": GENERATOR_VERSION,
        "settings": settings,
        "splits": {
            "train": {key: train[key] for key in ("images", "people", "visibility")},
            "val": {key: val[key] for key in ("images", "people", "visibility", "num_detections")},
        },
        "paths": {
            "train_annotations": os.path.abspath(train["annotations"]),
            "train_images": os.path.abspath(train["image_dir"]),
            "val_annotations": os.path.abspath(val["annotations"]),
            "val_images": os.path.abspath(val["image_dir"]),
            "detections": os.path.abspath(val["detections"]),
        },
        "content_hash": digest.hexdigest(),
    }
    _write_json(info_path, info)
    info["reused"] = False
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m pipeline.synthetic",
                                description="Write the embedded synthetic COCO-format pose dataset.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train-images", type=int, default=SyntheticSpec.num_train_images)
    parser.add_argument("--val-images", type=int, default=SyntheticSpec.num_val_images)
    parser.add_argument("--seed", type=int, default=SyntheticSpec.seed)
    args = parser.parse_args(argv)
    spec = SyntheticSpec(num_train_images=args.train_images, num_val_images=args.val_images, seed=args.seed)
    info = generate_dataset(args.out, spec)
    print(jsonio.dumps({"splits": info["splits"], "paths": info["paths"], "content_hash": info["content_hash"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m pipeline.synthetic"))
