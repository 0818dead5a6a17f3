"""The ``ModelBlessing``-style artifact: a ``BLESSED`` / ``NOT_BLESSED`` marker plus ``blessing.json``.

Layout of a blessing directory (written by :func:`write_blessing`, read by
:func:`read_blessing`, the Pusher and the gate)::

    <blessing_dir>/BLESSED        (or NOT_BLESSED; empty marker files, TFX names)
    <blessing_dir>/blessing.json  {"blessed", "metrics", "baseline_metrics", "thresholds",
                                   "checks", "reasons", "baseline", "candidate", ...}

``blessing.json`` is written first and the marker last (each through a
temporary name and a rename), so a marker always has its JSON beside it.
:func:`threshold_checks` is the plain-Python twin of TFMA's threshold
validation, used to explain the verdict row by row; the verdict itself comes
from TFMA's ``ValidationResult`` (and the tests check that both agree).
"""
from __future__ import annotations

import json
import math
import os
import uuid
from typing import Any, Dict, Iterable, List, Mapping

import tensorflow as tf

from schemas import jsonio

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"
BLESSING_JSON = "blessing.json"


class BlessingError(ValueError):
    """The blessing directory is missing, ambiguous or corrupt."""


def _atomic_write(path: str, text: str) -> None:
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def threshold_checks(metrics: Mapping[str, float], thresholds: Mapping[str, Mapping[str, float]],
                     baseline_metrics: Mapping[str, float] | None,
                     lower_is_better: Iterable[str] = ()) -> List[Dict[str, Any]]:
    """One row per configured bound: ``{"metric", "kind", "bound", "value", "passed", "skipped"}``.

    ``kind`` is ``lower_bound``, ``upper_bound`` or ``max_drop``; for ``max_drop``
    the value is ``candidate - baseline`` and the bound ``-max_drop`` (must be
    >= it), or, for a metric in ``lower_is_better`` (``EPE``), ``+max_drop``
    (must be <= it). Change checks are ``skipped`` (and pass) without baseline
    metrics. A metric that is missing or NaN fails.
    """
    lower_is_better = set(lower_is_better)
    rows: List[Dict[str, Any]] = []
    for metric, bounds in thresholds.items():
        value = metrics.get(metric)
        finite = value is not None and not math.isnan(float(value))
        for kind, bound in bounds.items():
            row: Dict[str, Any] = {"metric": metric, "kind": kind, "bound": float(bound), "skipped": False}
            if kind == "lower_bound":
                row.update(value=value, passed=finite and float(value) >= bound)
            elif kind == "upper_bound":
                row.update(value=value, passed=finite and float(value) <= bound)
            elif kind == "max_drop":
                rise = metric in lower_is_better
                row["bound"] = float(bound) if rise else -float(bound)
                if rise:
                    row["lower_is_better"] = True
                if baseline_metrics is None:
                    row.update(value=None, passed=True, skipped=True)
                else:
                    base = baseline_metrics.get(metric)
                    ok = finite and base is not None and not math.isnan(float(base))
                    change = float(value) - float(base) if ok else None
                    row.update(value=change, passed=ok and (change <= float(bound) if rise else change >= -float(bound)))
            else:
                raise ValueError(f"unknown threshold kind {kind!r} for {metric}")
            rows.append(row)
    return rows


def clear_blessing(blessing_dir: str) -> None:
    """Removes markers and ``blessing.json`` (a re-run must never leave an old verdict behind)."""
    for name in (BLESSED, NOT_BLESSED, BLESSING_JSON):
        path = os.path.join(blessing_dir, name)
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


def write_blessing(blessing_dir: str, blessing: Mapping[str, Any]) -> Dict[str, Any]:
    """Writes ``blessing.json`` then the marker; removes a stale opposite marker first.

    Args:
        blessing_dir: output directory (local or ``gs://``).
        blessing: dict with at least ``blessed`` (bool); written as JSON.

    Returns:
        the written dict.
    """
    if "blessed" not in blessing or not isinstance(blessing["blessed"], bool):
        raise ValueError(f"blessing must carry a bool 'blessed', got {blessing.get('blessed')!r}")
    tf.io.gfile.makedirs(blessing_dir)
    clear_blessing(blessing_dir)
    record = dict(blessing)
    _atomic_write(os.path.join(blessing_dir, BLESSING_JSON), jsonio.dumps(record, indent=2, sort_keys=True, default=float))
    _atomic_write(os.path.join(blessing_dir, BLESSED if record["blessed"] else NOT_BLESSED), "")
    return record


def read_blessing(blessing_dir: str) -> Dict[str, Any]:
    """Reads and cross-checks a blessing directory.

    Returns:
        the ``blessing.json`` dict.

    Raises:
        BlessingError: directory or JSON missing, both or no markers, unreadable
            JSON, or a marker that disagrees with the JSON's ``blessed``.
    """
    if not tf.io.gfile.isdir(blessing_dir):
        raise BlessingError(f"blessing directory {blessing_dir} does not exist")
    blessed = tf.io.gfile.exists(os.path.join(blessing_dir, BLESSED))
    not_blessed = tf.io.gfile.exists(os.path.join(blessing_dir, NOT_BLESSED))
    if blessed and not_blessed:
        raise BlessingError(f"{blessing_dir} holds both {BLESSED} and {NOT_BLESSED}")
    if not blessed and not not_blessed:
        raise BlessingError(f"{blessing_dir} holds no {BLESSED}/{NOT_BLESSED} marker")
    path = os.path.join(blessing_dir, BLESSING_JSON)
    if not tf.io.gfile.exists(path):
        raise BlessingError(f"{path} is missing")
    try:
        with tf.io.gfile.GFile(path, "r") as handle:
            record = json.loads(handle.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise BlessingError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(record, dict) or record.get("blessed") is not blessed:
        raise BlessingError(f"{path} says blessed={record.get('blessed') if isinstance(record, dict) else None!r} "
                            f"but the marker says {BLESSED if blessed else NOT_BLESSED}")
    return record
