"""Strict JSON: every JSON file and JSON line the product writes goes through here.

Python's ``json`` writes ``NaN``, ``Infinity`` and ``-Infinity`` for
non-finite floats by default; those tokens are not JSON (RFC 8259, section 6)
and strict parsers (``jq``, JavaScript's ``JSON.parse``, Go, BigQuery) reject
the whole file. The writers here never emit them:

* :func:`to_strict` turns a value into plain JSON types: NumPy scalars and
  arrays become Python numbers and lists, tuples become lists, and a
  non-finite float becomes ``None`` (``null``; metrics, summaries) or, with
  ``nonfinite="string"``, the string ``"NaN"`` / ``"Infinity"`` /
  ``"-Infinity"`` (dead letters, where the user must still see what the bad
  input held, e.g. a NaN box).
* :func:`dumps` / :func:`write` serialise with ``allow_nan=False`` after
  :func:`to_strict`, so anything that still slipped through (a ``default``
  hook returning NaN) raises ``ValueError`` instead of writing a bad file.
* :func:`loads` is the strict reader used by the tests (and anyone who
  wants to check a file): it rejects the three tokens like ``jq`` does.

pycocotools' ``-1`` ("no ground truth in this area range") is a finite number
and is written as it is.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional

NONFINITE_NULL = "null"
NONFINITE_STRING = "string"
_NONFINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _float(value: float, nonfinite: str) -> Any:
    if math.isfinite(value):
        return value
    if nonfinite == NONFINITE_STRING:
        return _NONFINITE_NAMES[repr(float(value))]
    return None


def to_strict(value: Any, nonfinite: str = NONFINITE_NULL, default: Optional[Callable[[Any], Any]] = None) -> Any:
    """A copy of ``value`` made of JSON types only, with no non-finite float.

    Args:
        value: dicts, lists, tuples, str, int, float, bool, None, NumPy
            scalars/arrays; anything else goes through ``default``.
        nonfinite: ``"null"`` (NaN/inf -> None) or ``"string"`` (-> ``"NaN"``,
            ``"Infinity"``, ``"-Infinity"``).
        default: called on objects of other types (like ``json.dumps``'s
            ``default``); its result is converted in turn.

    Raises:
        TypeError: an object of another type and no ``default``.
        ValueError: ``nonfinite`` is neither of the two choices.
    """
    if nonfinite not in (NONFINITE_NULL, NONFINITE_STRING):
        raise ValueError(f"nonfinite must be 'null' or 'string', got {nonfinite!r}")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _float(value, nonfinite)
    if isinstance(value, dict):
        return {key if isinstance(key, str) else _key(key): to_strict(item, nonfinite, default)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_strict(item, nonfinite, default) for item in value]
    numpy = _numpy()
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            return to_strict(value.tolist(), nonfinite, default)
        if isinstance(value, numpy.generic):
            return to_strict(value.item(), nonfinite, default)
    if default is not None:
        return to_strict(default(value), nonfinite, None)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def _key(key: Any) -> Any:
    """A dict key for ``json.dumps``: str, int, bool and None as they are (``json`` writes and sorts them
    itself, so ``sort_keys`` orders int keys numerically as before), NumPy scalars unwrapped, a finite
    float as it is and a non-finite one as ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"``."""
    numpy = _numpy()
    if numpy is not None and isinstance(key, numpy.generic):
        key = key.item()
    if isinstance(key, float) and not math.isfinite(key):
        return _NONFINITE_NAMES[repr(key)]
    return key


def _numpy():
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is a dependency
        return None
    return numpy


def dumps(value: Any, *, nonfinite: str = NONFINITE_NULL, default: Optional[Callable[[Any], Any]] = None,
          **kwargs: Any) -> str:
    """``json.dumps`` of :func:`to_strict` ``(value)`` with ``allow_nan=False``.

    ``kwargs`` go to ``json.dumps`` (``indent``, ``sort_keys``, ``separators``).

    Raises:
        TypeError / ValueError: as :func:`to_strict`.
    """
    return json.dumps(to_strict(value, nonfinite, default), allow_nan=False, **kwargs)


def write(path: str, value: Any, *, nonfinite: str = NONFINITE_NULL,
          default: Optional[Callable[[Any], Any]] = None, newline: bool = True, **kwargs: Any) -> None:
    """Writes ``value`` as strict JSON to ``path`` (local or ``gs://``, through ``tf.io.gfile`` for the latter).

    The text is built before the file is opened, so a value that cannot be
    written leaves no partial file. ``kwargs`` go to ``json.dumps``.
    """
    text = dumps(value, nonfinite=nonfinite, default=default, **kwargs) + ("\n" if newline else "")
    if "://" in path:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "w") as handle:
            handle.write(text)
    else:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def loads(text: str | bytes) -> Any:
    """Strict ``json.loads``: ``NaN``, ``Infinity`` and ``-Infinity`` raise ValueError (as in ``jq``)."""
    return json.loads(text, parse_constant=_reject_constant)
