"""Keypoint schemas by name: the bundled dataset metas (COCO, MPII, CrowdPose, AP-10K, OneHand10K).

The joint layout of a dataset is owned by its dataset meta file
(:mod:`schemas.dataset_meta`; the bundled ones are ``schemas/metas/*.yaml``).
This module keeps the names the code has always used: :class:`KeypointSchema`,
``COCO``, ``MPII``, ``SCHEMAS`` and :func:`get_schema`. A config with its own
meta file goes through :func:`schemas.dataset_meta.schema_for` instead.

Joint indices are 0-based and follow the dataset's own order:

* ``coco``: the 17 COCO person keypoints, in the order of
  ``person_keypoints_*.json`` (``categories[0]["keypoints"]``).
* ``mpii``: the 16 MPII joints in the order of HRNet's ``annot/*.json`` and
  ``gt_valid.mat`` (0 r_ankle ... 15 l_wrist).
"""
from __future__ import annotations

from typing import Dict

from schemas.dataset_meta import BUNDLED, DatasetMetaError, KeypointSchema, bundled

__all__ = ["KeypointSchema", "DatasetMetaError", "COCO", "MPII", "SCHEMAS", "get_schema"]

COCO: KeypointSchema = bundled("coco")
MPII: KeypointSchema = bundled("mpii")

SCHEMAS: Dict[str, KeypointSchema] = {name: bundled(name) for name in BUNDLED}
"""Every bundled schema by name (``coco``, ``mpii``, ``crowdpose``, ``ap10k``, ``onehand10k``)."""


def get_schema(name: str) -> KeypointSchema:
    """Returns the bundled schema ``name`` (one of :data:`SCHEMAS`).

    Raises:
        ValueError: for an unknown dataset name.
    """
    try:
        return SCHEMAS[name]
    except KeyError:
        raise ValueError(f"unknown keypoint schema {name!r}; expected one of {sorted(SCHEMAS)}") from None
