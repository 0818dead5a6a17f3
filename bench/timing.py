"""What the benches share: timing calls in turn, and the model they time.

Imports nothing heavy at module level (``bench/deploy.py`` keeps TensorFlow out of its parent process).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Dict, Mapping


def interleaved_median_seconds(functions: Mapping[str, Callable[[], Any]], runs: int) -> Dict[str, float]:
    """``{name: median seconds}`` of calls made in turn (a, b, c, a, b, c, ...), after one warm-up call each.

    Taking turns gives every function the same share of a machine shared with other work.
    """
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load_or_build_model(config: Mapping[str, Any], keras_path: str | None = None):
    """The config's Keras model: loaded from ``keras_path`` (a trained ``model.keras``), else built with random
    weights after ``keras.utils.set_random_seed(0)`` (speed does not depend on the weights)."""
    import keras

    from trainer.models import build_model, get_builder

    keras.utils.set_random_seed(0)
    if keras_path:
        get_builder(config["model"]["name"])   # registers the builder's custom layers
        return keras.models.load_model(keras_path)
    return build_model(config)
