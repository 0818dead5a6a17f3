"""Model builders, picked by name from ``config["model"]["name"]``.

Contract for every builder ``build(config) -> keras.Model``:

* input: ``(B, H_in, W_in, 3)`` float32 RGB in 0..255 (the model normalises
  internally, so serving and tf.data feed raw pixels);
* output: heatmaps ``(B, H_hm, W_hm, K)`` channels-last, or, for models with
  intermediate supervision (stacked hourglass), a list of such tensors whose
  last element is the prediction; for ``approach: bottom_up`` (``bottom_up``
  builder) one tensor ``(B, H_out, W_out, C)`` in the channel layout of
  :mod:`schemas.bottom_up` (heatmaps, short and mid offsets, body);
* Keras 3 layers only (no backend-specific ops), stable layer names;
* optional attention maps (SimpleBaseline's ``model.attention``) are not an
  output but the layer named :data:`ATTENTION_LAYER`, (B, H_hm, W_hm, A)
  float32 in [0, 1] (A = 1 holistic, K part-wise): training and losses see the
  heatmaps only, and :func:`attention_model` gives a model sharing the same
  layers that returns ``[prediction, attention maps]`` (export, previews).

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
    "bottom_up": "trainer.models.bottom_up:build",   # approach: bottom_up (issue 16)
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


ATTENTION_LAYER = "attention"


def attention_model(model):
    """``keras.Model`` image -> ``[prediction heatmaps, attention maps]`` sharing ``model``'s layers, or None.

    None when ``model`` has no layer named :data:`ATTENTION_LAYER`. Works on a
    freshly built model, a checkpoint-restored one and one reloaded from
    ``model.keras`` (the layer is found by its stable name). One call computes
    both (the maps are an intermediate of the heatmaps).

    Returns:
        None, or a model with outputs (B, H_hm, W_hm, K) and (B, H_hm, W_hm, A).
    """
    import keras  # lazily, like the builders

    if ATTENTION_LAYER not in {layer.name for layer in model.layers}:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [prediction(model.outputs), model.get_layer(ATTENTION_LAYER).output],
                       name=model.name + "_with_attention")


def build_model(config: Mapping[str, Any]):
    """Builds the model named by ``config["model"]["name"]``."""
    return get_builder(config["model"]["name"])(config)
