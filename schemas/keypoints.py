"""Keypoint schemas: joint names, flip pairs, OKS sigmas, skeleton, PCKh groups.

This module is the only place that knows the joint layout of a dataset. Every
other module (ExampleGen, augmentation, flip test, evaluation, drawing) asks
for a :class:`KeypointSchema` with :func:`get_schema` and uses its arrays.

Joint indices are 0-based and follow the dataset's own order:

* ``coco``: the 17 COCO person keypoints, in the order of
  ``person_keypoints_*.json`` (``categories[0]["keypoints"]``).
* ``mpii``: the 16 MPII joints in the order of HRNet's ``annot/*.json`` and
  ``gt_valid.mat`` (0 r_ankle ... 15 l_wrist).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class KeypointSchema:
    """Joint layout of one dataset.

    Attributes:
        name: dataset key, ``"coco"`` or ``"mpii"``.
        joint_names: K joint names in dataset order.
        flip_pairs: (left, right) index pairs swapped by a horizontal flip.
        skeleton: (a, b) index pairs drawn as limbs.
        upper_body: joint indices of the upper body (half-body augmentation).
        oks_sigmas: per-joint COCO OKS sigmas, shape (K,), or None.
        pckh_groups: PCKh report groups name -> joint indices, or empty.
        head_size_factor: MPII head size = factor * head-box diagonal.
        pckh_masked: joints excluded from HRNet's PCKh "Mean".
    """

    name: str
    joint_names: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    skeleton: Tuple[Tuple[int, int], ...]
    upper_body: Tuple[int, ...]
    oks_sigmas: Tuple[float, ...] | None = None
    pckh_groups: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    head_size_factor: float | None = None
    pckh_masked: Tuple[int, ...] = ()

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation (K,) int32: joint j of a flipped image is joint flip_index[j]."""
        index = np.arange(self.num_joints, dtype=np.int32)
        for left, right in self.flip_pairs:
            index[left], index[right] = right, left
        return index

    @property
    def lower_body(self) -> Tuple[int, ...]:
        upper = set(self.upper_body)
        return tuple(j for j in range(self.num_joints) if j not in upper)

    @property
    def upper_body_mask(self) -> np.ndarray:
        """Boolean (K,) mask of upper-body joints."""
        mask = np.zeros(self.num_joints, dtype=bool)
        mask[list(self.upper_body)] = True
        return mask

    def sigmas(self) -> np.ndarray:
        """OKS sigmas as float64 (K,). Raises ValueError for datasets without them."""
        if self.oks_sigmas is None:
            raise ValueError(f"schema {self.name!r} has no OKS sigmas")
        return np.asarray(self.oks_sigmas, dtype=np.float64)


COCO = KeypointSchema(
    name="coco",
    joint_names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12),
        (5, 6), (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2),
        (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    upper_body=tuple(range(11)),
    oks_sigmas=(
        0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
        0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    ),
)

MPII = KeypointSchema(
    name="mpii",
    joint_names=(
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
    ),
    upper_body=(7, 8, 9, 10, 11, 12, 13, 14, 15),
    pckh_groups=(
        ("Head", (9,)),
        ("Shoulder", (12, 13)),
        ("Elbow", (11, 14)),
        ("Wrist", (10, 15)),
        ("Hip", (2, 3)),
        ("Knee", (1, 4)),
        ("Ankle", (0, 5)),
    ),
    head_size_factor=0.6,
    pckh_masked=(6, 7),
)

SCHEMAS: Dict[str, KeypointSchema] = {schema.name: schema for schema in (COCO, MPII)}


def get_schema(name: str) -> KeypointSchema:
    """Returns the schema for ``name`` (``"coco"`` or ``"mpii"``).

    Raises:
        ValueError: for an unknown dataset name.
    """
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown keypoint schema {name!r}; expected one of {sorted(SCHEMAS)}") from None
