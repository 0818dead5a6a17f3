"""Model builders, picked by name from ``config["model"]["name"]``.

Contract for every builder ``build(config) -> keras.Model``:

* input: ``(B, H_in, W_in, 3)`` float32 RGB in 0..255 (the model normalises
  internally, so serving and tf.data feed raw pixels);
* output: heatmaps ``(B, H_hm, W_hm, K)`` channels-last, or, for models with
  intermediate supervision (stacked hourglass), a list of such tensors whose
  last element is the prediction;
* Keras 3 layers only (no backend-specific ops), stable layer names.

Each builder validates its own ``config["model"]`` keys with ``ValueError``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Mapping

# name -> "module:function"; imported lazily so one broken/heavy model does not
# slow down or break the others.
BUILDERS: Dict[str, str] = {
    "simplebaseline": "trainer.models.simple_baseline:build",
    "hrnet": "trainer.models.hrnet:build",
    "hourglass": "trainer.models.hourglass:build",
}


def get_builder(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """Returns the builder function for ``name``. Raises ValueError for unknown names."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model.name {name!r}; expected one of {sorted(BUILDERS)}")
    module_name, function_name = BUILDERS[name].split(":")
    return getattr(importlib.import_module(module_name), function_name)


def prediction(outputs):
    """The prediction of a model's output: the tensor itself, or the last of a list (intermediate supervision)."""
    return outputs[-1] if isinstance(outputs, (list, tuple)) else outputs


def build_model(config: Mapping[str, Any]):
    """Builds the model named by ``config["model"]["name"]``."""
    return get_builder(config["model"]["name"])(config)
