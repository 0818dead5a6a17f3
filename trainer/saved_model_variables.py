"""What a serving SavedModel's checkpoint holds: exactly the variables its signatures read.

Shared by both exporters (:mod:`trainer.export` for person crops, :mod:`trainer.export_bottom_up` for whole
images), so neither imports the other's module class. Why: Keras 3 saves each variable of a model held by a
``tf.Module`` through a second, uninitialised copy; the session loader (``saved_model_cli run``, TF Serving,
Vertex AI) restores that copy while the graph reads the original. Tracking the plain ``tf.Variable`` objects
the traced signatures capture, as ``keras.export.ExportArchive`` does, makes the checkpoint and the session
loader's restore ops hold the variables the graph reads, once each (``docs/serving.md``).
"""
from __future__ import annotations

from typing import Iterable

import tensorflow as tf


def track_captured_variables(module: tf.Module, functions: Iterable) -> int:
    """Tracks on ``module``, as ``module.model_variables``, every ``tf.Variable`` that ``functions`` capture.

    Call it with the traced concrete functions of the signatures before ``tf.saved_model.save``.

    Args:
        module: the ``tf.Module`` to be saved; its Keras model must be held without automatic tracking.
        functions: iterable of concrete functions (their ``.variables``).

    Returns:
        the number of variables tracked (each once, in first-capture order).
    """
    captured = {}
    for function in functions:
        for variable in function.variables:
            captured.setdefault(id(variable), variable)
    module.model_variables = list(captured.values())
    return len(module.model_variables)
