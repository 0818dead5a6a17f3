"""Dataset meta files: the one owner of a keypoint layout (joints, flips, skeleton, sigmas).

A *dataset meta* is a small YAML or JSON mapping that describes the keypoints of
a COCO-format dataset; every stage (ExampleGen, Trainer, export, Evaluator,
gate, score, predict) reads the layout from it through a :class:`KeypointSchema`.
COCO, MPII, CrowdPose, AP-10K and OneHand10K ship as bundled metas
(``schemas/metas/<name>.yaml``, :func:`bundled`); any other set is one file
(:func:`load_meta`). Keys (docs/custom_keypoints.md explains each):

=================  ========  ==============================================================
key                required  meaning
=================  ========  ==============================================================
``dataset_name``   yes       name of the layout (letters, digits, ``_ . -``)
``joint_names``    yes       K unique names, in the order of the annotations' ``keypoints``
``flip_pairs``     yes       (left, right) pairs, 0-based indices or joint names; ``[]``
                             is valid (the flip index is then the identity)
``skeleton``       no        (a, b) limb pairs, 0-based indices or names (drawing only)
``sigmas``         no        K OKS sigmas, or ``[]`` / absent: no OKS (no AP) for this set
``joint_weights``  no        K loss weights >= 0 (default 1 each)
``upper_body``     no        joint indices/names of the upper body; half-body
                             augmentation is off without it
``category_ids``   no        COCO categories read (default: every category whose
                             ``keypoints`` list has K names)
``metric``         no        ``oks`` (default with sigmas) or ``pck`` (default without);
                             ``pckh`` only with a ``pckh`` section (MPII)
``pckh``           no        MPII's PCKh extras: ``groups`` {name: [joints]},
                             ``head_size_factor``, ``masked`` joints
=================  ========  ==============================================================

Validation happens once, at load: every problem raises :class:`DatasetMetaError`
(a ``ValueError``) with one line naming the file, the field and the values.
:func:`check_annotations` checks a COCO annotation dict against a meta (keypoint
count of the categories read, and the order of their keypoint names).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

METAS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metas")
"""Folder of the bundled meta files (package data)."""

BUNDLED = ("coco", "mpii", "crowdpose", "ap10k", "onehand10k")
"""Names of the bundled metas (``schemas/metas/<name>.yaml``)."""

METRICS = ("oks", "pck", "pckh")
"""Metric families a meta can name: COCO OKS AP/AR, PCK/AUC/EPE of the box, MPII PCKh."""

_KNOWN_KEYS = ("dataset_name", "joint_names", "flip_pairs", "skeleton", "sigmas", "joint_weights",
               "upper_body", "category_ids", "metric", "pckh")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


class DatasetMetaError(ValueError):
    """A malformed dataset meta, or one that does not match an annotation file (one line)."""


@dataclasses.dataclass(frozen=True)
class KeypointSchema:
    """Joint layout of one dataset, as read from its meta file.

    Attributes:
        name: ``dataset_name`` of the meta (``"coco"``, ``"mpii"``, ``"ap10k"``, ...).
        joint_names: K joint names in annotation order.
        flip_pairs: (left, right) index pairs swapped by a horizontal flip (may be empty).
        skeleton: (a, b) index pairs drawn as limbs.
        upper_body: joint indices of the upper body (half-body augmentation); empty: no half-body.
        oks_sigmas: per-joint OKS sigmas, shape (K,), or None (no OKS for this set).
        pckh_groups: PCKh report groups name -> joint indices, or empty.
        head_size_factor: MPII head size = factor * head-box diagonal.
        pckh_masked: joints excluded from HRNet's PCKh "Mean".
        joint_weights: per-joint loss weights (K,), or None (1 each).
        category_ids: COCO category ids read, or None (every category with K keypoint names).
        metric: ``"oks"``, ``"pck"`` or ``"pckh"``.
    """

    name: str
    joint_names: Tuple[str, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    skeleton: Tuple[Tuple[int, int], ...]
    upper_body: Tuple[int, ...] = ()
    oks_sigmas: Tuple[float, ...] | None = None
    pckh_groups: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    head_size_factor: float | None = None
    pckh_masked: Tuple[int, ...] = ()
    joint_weights: Tuple[float, ...] | None = None
    category_ids: Tuple[int, ...] | None = None
    metric: str = "oks"

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation (K,) int32: joint j of a flipped image is joint flip_index[j] (identity without pairs)."""
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
        """Boolean (K,) mask of upper-body joints (all False without ``upper_body``)."""
        mask = np.zeros(self.num_joints, dtype=bool)
        mask[list(self.upper_body)] = True
        return mask

    @property
    def has_half_body(self) -> bool:
        """Whether half-body augmentation is possible (the meta names an upper body)."""
        return bool(self.upper_body) and len(self.upper_body) < self.num_joints

    @property
    def has_sigmas(self) -> bool:
        return self.oks_sigmas is not None

    def sigmas(self) -> np.ndarray:
        """OKS sigmas as float64 (K,).

        Raises:
            ValueError: the meta has no sigmas (OKS AP cannot be computed for this set).
        """
        if self.oks_sigmas is None:
            raise ValueError(f"schema {self.name!r} has no OKS sigmas: OKS AP/AR cannot be computed for it "
                             "(its metric is PCK/AUC/EPE)")
        return np.asarray(self.oks_sigmas, dtype=np.float64)

    def weights(self) -> np.ndarray:
        """Loss weights as float32 (K,), 1 where the meta gives none."""
        if self.joint_weights is None:
            return np.ones(self.num_joints, np.float32)
        return np.asarray(self.joint_weights, np.float32)

    def to_meta(self) -> Dict[str, Any]:
        """The meta as a plain dict (index pairs), loadable again by :func:`from_mapping`."""
        meta: Dict[str, Any] = {
            "dataset_name": self.name,
            "joint_names": list(self.joint_names),
            "flip_pairs": [list(pair) for pair in self.flip_pairs],
            "skeleton": [list(pair) for pair in self.skeleton],
            "sigmas": list(self.oks_sigmas or ()),
            "metric": self.metric,
        }
        if self.joint_weights is not None:
            meta["joint_weights"] = list(self.joint_weights)
        if self.upper_body:
            meta["upper_body"] = list(self.upper_body)
        if self.category_ids is not None:
            meta["category_ids"] = list(self.category_ids)
        if self.pckh_groups:
            meta["pckh"] = {"groups": {name: list(joints) for name, joints in self.pckh_groups},
                            "head_size_factor": self.head_size_factor, "masked": list(self.pckh_masked)}
        return meta

    @property
    def hash(self) -> str:
        """sha256 (hex) of the canonical meta (sorted-key JSON of :meth:`to_meta`): equal layouts, equal hash."""
        from schemas import jsonio

        text = jsonio.dumps(self.to_meta(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------

def _fail(source: str, field: str, message: str) -> DatasetMetaError:
    return DatasetMetaError(f"{source}: dataset meta field {field!r}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def _joint(value: Any, names: Sequence[str], source: str, field: str) -> int:
    """A joint reference (0-based index or joint name) as an index in range."""
    if isinstance(value, str):
        if value not in names:
            raise _fail(source, field, f"{value!r} is not one of the joint_names")
        return names.index(value)
    if not _is_int(value) or not 0 <= int(value) < len(names):
        raise _fail(source, field, f"joint {value!r} is not an index in [0, {len(names) - 1}] "
                                   f"({len(names)} joints) nor a joint name")
    return int(value)


def _pairs(data: Mapping[str, Any], key: str, names: Sequence[str], source: str) -> Tuple[Tuple[int, int], ...]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise _fail(source, key, f"must be a list of [a, b] pairs, got {value!r}")
    pairs = []
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise _fail(source, key, f"entry {entry!r} is not a pair [a, b]")
        a, b = (_joint(item, names, source, key) for item in entry)
        if a == b:
            raise _fail(source, key, f"pair {list(entry)!r} joins joint {a} to itself")
        pairs.append((a, b))
    return tuple(pairs)


def _numbers(data: Mapping[str, Any], key: str, count: int, source: str, positive: bool) -> Tuple[float, ...] | None:
    value = data.get(key)
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise _fail(source, key, f"must be a list of finite numbers, got {value!r}")
    if len(value) != count:
        raise _fail(source, key, f"has {len(value)} values but joint_names has {count} joints")
    bad = [v for v in value if (float(v) <= 0 if positive else float(v) < 0)]
    if bad:
        raise _fail(source, key, f"values must be {'> 0' if positive else '>= 0'}, got {bad!r}")
    return tuple(float(v) for v in value)


def from_mapping(data: Any, source: str = "dataset meta") -> KeypointSchema:
    """Validates a loaded meta mapping and returns its :class:`KeypointSchema`.

    Args:
        data: the parsed YAML/JSON object.
        source: file name used in messages.

    Raises:
        DatasetMetaError: one line naming ``source``, the field and the values: not a mapping,
            an unknown key, a missing/invalid ``dataset_name`` or ``joint_names``, duplicate
            names, flip pairs out of range or not an involution (a joint in two pairs),
            skeleton indices out of range, a sigma / joint weight count other than K,
            non-positive sigmas, negative weights, an unknown ``metric`` or ``oks`` without sigmas.
    """
    if not isinstance(data, Mapping):
        raise DatasetMetaError(f"{source}: a dataset meta must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in _KNOWN_KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (known: {', '.join(_KNOWN_KEYS)})")
    name = data.get("dataset_name")
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise _fail(source, "dataset_name", f"must be a name of letters, digits, '_', '.', '-', got {name!r}")
    names = data.get("joint_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
        raise _fail(source, "joint_names", f"must be a non-empty list of non-empty strings, got {names!r}")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise _fail(source, "joint_names", f"names must be unique, repeated: {duplicates!r}")
    names = tuple(names)
    count = len(names)
    if "flip_pairs" not in data:
        raise _fail(source, "flip_pairs", "is required ([] when a mirrored object keeps its joint order)")
    flip_pairs = _pairs(data, "flip_pairs", names, source)
    seen: Dict[int, Tuple[int, int]] = {}
    for pair in flip_pairs:
        for joint in pair:
            if joint in seen:
                raise _fail(source, "flip_pairs", f"joint {joint} ({names[joint]!r}) is in two pairs "
                                                  f"{list(seen[joint])} and {list(pair)}: not an involution")
            seen[joint] = pair
    skeleton = _pairs(data, "skeleton", names, source)
    sigmas = _numbers(data, "sigmas", count, source, positive=True)
    weights = _numbers(data, "joint_weights", count, source, positive=False)
    upper = data.get("upper_body")
    upper_body: Tuple[int, ...] = ()
    if upper is not None:
        if not isinstance(upper, (list, tuple)):
            raise _fail(source, "upper_body", f"must be a list of joints, got {upper!r}")
        upper_body = tuple(sorted({_joint(j, names, source, "upper_body") for j in upper}))
        if len(upper_body) != len(upper):
            raise _fail(source, "upper_body", f"repeats a joint: {list(upper)!r}")
    category_ids = data.get("category_ids")
    if category_ids is not None:
        if (not isinstance(category_ids, (list, tuple)) or not category_ids
                or not all(_is_int(c) for c in category_ids) or len(set(category_ids)) != len(category_ids)):
            raise _fail(source, "category_ids", f"must be a non-empty list of unique integers, got {category_ids!r}")
        category_ids = tuple(int(c) for c in category_ids)
    pckh = data.get("pckh")
    groups: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    head_size_factor = None
    masked: Tuple[int, ...] = ()
    if pckh is not None:
        if not isinstance(pckh, Mapping) or not isinstance(pckh.get("groups"), Mapping) \
                or not _is_number(pckh.get("head_size_factor")):
            raise _fail(source, "pckh", f"must map groups ({{name: [joints]}}), head_size_factor and masked, "
                                        f"got {pckh!r}")
        groups = tuple((str(group), tuple(_joint(j, names, source, "pckh") for j in joints))
                       for group, joints in pckh["groups"].items())
        head_size_factor = float(pckh["head_size_factor"])
        masked = tuple(_joint(j, names, source, "pckh") for j in pckh.get("masked") or ())
    metric = data.get("metric")
    if metric is None:
        metric = "pckh" if pckh is not None else ("oks" if sigmas is not None else "pck")
    if metric not in METRICS:
        raise _fail(source, "metric", f"must be 'oks' or 'pck', got {metric!r}")
    if metric == "oks" and sigmas is None:
        raise _fail(source, "metric", f"'oks' needs sigmas ({count} of them); this meta has none: use 'pck'")
    if metric == "pckh" and pckh is None:
        raise _fail(source, "metric", "'pckh' needs a pckh section (groups, head_size_factor)")
    return KeypointSchema(name=name, joint_names=names, flip_pairs=flip_pairs, skeleton=skeleton,
                          upper_body=upper_body, oks_sigmas=sigmas, pckh_groups=groups,
                          head_size_factor=head_size_factor, pckh_masked=masked, joint_weights=weights,
                          category_ids=category_ids, metric=metric)


def _read_text(path: str) -> str:
    if "://" in path:
        import tensorflow as tf  # only for gs:// metas

        with tf.io.gfile.GFile(path, "r") as handle:
            return handle.read()
    with open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def parse_text(text: str, source: str) -> Any:
    """Parses meta text: JSON (strict) when ``source`` ends in ``.json``, YAML otherwise.

    Raises:
        DatasetMetaError: the text is not valid JSON / YAML (naming ``source``).
    """
    if source.lower().endswith(".json"):
        try:
            return json.loads(text, parse_constant=lambda token: (_ for _ in ()).throw(ValueError(token)))
        except ValueError as error:
            raise DatasetMetaError(f"{source}: not a valid JSON dataset meta: {error}") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise DatasetMetaError(f"{source}: not a valid YAML dataset meta: {problem}") from None


def load_meta(path: str) -> KeypointSchema:
    """Reads and validates a meta file (YAML, or JSON for ``*.json``; local or ``gs://``).

    Raises:
        DatasetMetaError: unreadable file, bad syntax or any problem :func:`from_mapping` names.
    """
    try:
        text = _read_text(path)
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetMetaError(f"{path}: cannot read the dataset meta: {error}") from None
    except Exception as error:  # noqa: BLE001 -- tf.errors for gs:// paths
        raise DatasetMetaError(f"{path}: cannot read the dataset meta: {type(error).__name__}: {error}") from None
    return from_mapping(parse_text(text, path), source=path)


@functools.lru_cache(maxsize=None)
def bundled(name: str) -> KeypointSchema:
    """The bundled meta ``schemas/metas/<name>.yaml`` (one of :data:`BUNDLED`).

    Raises:
        ValueError: an unknown name.
    """
    if name not in BUNDLED:
        raise ValueError(f"unknown keypoint schema {name!r}; expected one of {sorted(BUNDLED)} "
                         "or a dataset meta file (--dataset-meta / dataset_meta:)")
    return load_meta(os.path.join(METAS_DIR, f"{name}.yaml"))


def schema_for(config: Mapping[str, Any]) -> KeypointSchema:
    """The keypoint schema of an experiment config: its ``dataset_meta`` (file or inline mapping), else
    the bundled ``dataset``.

    This is the one function every stage uses to turn a config into a joint layout.

    Raises:
        DatasetMetaError / ValueError: a malformed meta file, or an unknown bundled name.
    """
    path = config.get("dataset_meta") if isinstance(config, Mapping) else None
    if isinstance(path, Mapping):
        return from_mapping(path, source="config dataset_meta")
    if path:
        return _load_cached(str(path))
    return bundled(config["dataset"])


@functools.lru_cache(maxsize=32)
def _load_cached(path: str) -> KeypointSchema:
    return load_meta(path)


def as_schema(value: "KeypointSchema | str") -> KeypointSchema:
    """``value`` itself when it is a :class:`KeypointSchema`, else the bundled meta of that name.

    Lets stage functions take either a schema (any meta) or a bundled name (``"coco"``, ``"mpii"``).

    Raises:
        ValueError: an unknown bundled name.
    """
    return value if isinstance(value, KeypointSchema) else bundled(str(value))


def resolve(dataset: str | None = None, meta_path: str | None = None) -> KeypointSchema:
    """A CLI's schema: ``--dataset-meta`` file when given, else the bundled ``--dataset`` (default coco)."""
    if meta_path:
        return _load_cached(str(meta_path))
    return bundled(dataset or "coco")


# --------------------------------------------------------------------------
# The meta inside a SavedModel
# --------------------------------------------------------------------------

SERVING_META_FILE = "assets.extra/dataset_meta.json"
"""Where an exported SavedModel carries its meta (TF Serving's ``assets.extra``; not loaded by TF)."""


def write_serving_meta(schema: KeypointSchema, export_dir: str) -> str:
    """Writes ``schema`` as strict JSON to ``<export_dir>/assets.extra/dataset_meta.json``; returns the path."""
    import tensorflow as tf

    from schemas import jsonio

    path = f"{export_dir.rstrip('/')}/{SERVING_META_FILE}"
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    jsonio.write(path, dict(schema.to_meta(), hash=schema.hash), indent=1)
    return path


def read_serving_meta(export_dir: str) -> KeypointSchema | None:
    """The meta an exported SavedModel carries, or None for an export made before dataset metas.

    Raises:
        DatasetMetaError: the file exists but is malformed.
    """
    import tensorflow as tf

    path = f"{export_dir.rstrip('/')}/{SERVING_META_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    data = parse_text(_read_text(path), path)
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key != "hash"}
    return from_mapping(data, source=path)


# --------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------

def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def selected_categories(schema: KeypointSchema, dataset: Mapping[str, Any], source: str) -> List[int]:
    """The category ids of a COCO dict that ``schema`` reads, checked against the meta.

    ``category_ids`` of the meta when given (each must exist and list K keypoint names
    where it lists any), else every category whose ``keypoints`` list has K names.

    Raises:
        DatasetMetaError: a named category is missing or has another keypoint count, no
            category matches K, or a category lists the meta's joint names in another order
            (naming both counts / orders).
    """
    categories = {c.get("id"): c for c in dataset.get("categories") or [] if isinstance(c, Mapping)}
    count = schema.num_joints
    if schema.category_ids is not None:
        missing = [c for c in schema.category_ids if c not in categories]
        if missing:
            raise DatasetMetaError(f"{source}: categories {missing} named by the dataset meta {schema.name!r} "
                                   f"(category_ids) are not in the file (it has {sorted(categories)[:20]})")
        chosen = list(schema.category_ids)
    else:
        chosen = [cid for cid, c in categories.items() if len(c.get("keypoints") or []) == count]
        if not chosen:
            counts = sorted({len(c.get("keypoints") or []) for c in categories.values()})
            raise DatasetMetaError(f"{source}: no category has {count} keypoints as the dataset meta "
                                   f"{schema.name!r} ({count} joint_names); the file's categories have {counts}")
    for cid in chosen:
        names = categories[cid].get("keypoints") or []
        if names and len(names) != count:
            raise DatasetMetaError(f"{source}: category {cid} ({categories[cid].get('name')!r}) has {len(names)} "
                                   f"keypoint names but the dataset meta {schema.name!r} has {count} joint_names")
        if names:
            ours = [_normal(n) for n in schema.joint_names]
            theirs = [_normal(n) for n in names]
            if ours != theirs and sorted(ours) == sorted(theirs):
                raise DatasetMetaError(f"{source}: category {cid} lists the joints in another order than the "
                                       f"dataset meta {schema.name!r}: {list(names)} vs {list(schema.joint_names)}")
    return sorted(chosen)


def check_annotations(schema: KeypointSchema, dataset: Mapping[str, Any], source: str) -> List[int]:
    """Checks a COCO annotation dict against ``schema`` before any work; returns the categories read.

    Besides :func:`selected_categories`, the annotations of the categories read must carry
    ``3 * K`` keypoint values: when none does and some carry another length, the file is
    for another layout. (Single mismatching annotations are the caller's: ExampleGen
    counts them as dead letters.)

    Raises:
        DatasetMetaError: naming the file, the meta and both joint counts.
    """
    chosen = set(selected_categories(schema, dataset, source))
    count = schema.num_joints
    lengths: Dict[int, int] = {}
    for annotation in dataset.get("annotations") or []:
        if isinstance(annotation, Mapping) and annotation.get("category_id") in chosen:
            keypoints = annotation.get("keypoints")
            if isinstance(keypoints, (list, tuple)) and keypoints:
                lengths[len(keypoints)] = lengths.get(len(keypoints), 0) + 1
    if lengths and 3 * count not in lengths:
        found = max(lengths, key=lengths.get)
        raise DatasetMetaError(f"{source}: annotations have {found} keypoint values ({found / 3:g} joints) but the "
                               f"dataset meta {schema.name!r} has {count} joints ({3 * count} values)")
    return sorted(chosen)


def describe(schema: KeypointSchema) -> str:
    """One line for logs: name, K, pairs, sigmas, metric."""
    return (f"{schema.name}: {schema.num_joints} joints, {len(schema.flip_pairs)} flip pairs, "
            f"{'sigmas' if schema.has_sigmas else 'no sigmas'}, metric {schema.metric}")


def pairs_as_lists(pairs: Iterable[Tuple[int, int]]) -> List[List[int]]:
    return [[int(a), int(b)] for a, b in pairs]
