"""Building blocks shared by the model builders: options, input normalisation, BN.

Each builder keeps its own ``MODEL_KEYS`` (defaults) and its own validation;
what every builder does the same way lives here, once.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import keras
from keras import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PyTorch BatchNorm defaults (momentum 0.1 there is 0.9 here).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


# Keys every builder takes: ``pretrained`` and ``pretrained_inexact`` are read by trainer.pretrained (weights),
# not by the builders (validated in pose.config).
COMMON_MODEL_KEYS = {"pretrained": None, "pretrained_inexact": False}


def merge_options(config: Mapping[str, Any], defaults: Mapping[str, Any], model_name: str) -> Dict[str, Any]:
    """``config["model"]`` merged over a builder's ``defaults``; checks the keys and ``sync_batchnorm``.

    Raises:
        ValueError: a key the builder does not know, or a non-boolean ``sync_batchnorm``.
    """
    model_config = dict(config["model"])
    defaults = {**COMMON_MODEL_KEYS, **defaults}
    unknown = sorted(set(model_config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown model keys {unknown} for {model_name}; expected a subset of {sorted(defaults)}")
    options = {**defaults, **model_config}
    if not isinstance(options.get("sync_batchnorm", False), bool):
        raise ValueError(f"model.sync_batchnorm must be true or false, got {options['sync_batchnorm']!r}")
    return options


def batch_norm(name: str, synchronized: bool) -> layers.Layer:
    """BatchNormalization with the references' epsilon/momentum; ``synchronized`` syncs across replicas."""
    kwargs = {"synchronized": True} if synchronized else {}
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name, **kwargs)


def normalized_input(input_height: int, input_width: int) -> Tuple[keras.KerasTensor, keras.KerasTensor]:
    """The model input ``image`` (B, H, W, 3) float32 RGB 0..255 and its ImageNet-normalised tensor."""
    inputs = keras.Input((input_height, input_width, 3), name="image")
    normalized = layers.Normalization(
        mean=[255.0 * m for m in IMAGENET_MEAN], variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
        name="normalize")(inputs)
    return inputs, normalized


def stride_heatmap_size(config: Mapping[str, Any], output_stride: int, model_name: str) -> Tuple[int, int]:
    """Checks ``data.heatmap_size`` = ceil(``data.input_size`` / ``output_stride``); returns the input (H, W).

    Raises:
        ValueError: the configured heatmap size is not the model's output size.
    """
    input_height, input_width = (int(v) for v in config["data"]["input_size"])
    heatmap_size = tuple(int(v) for v in config["data"]["heatmap_size"])
    expected = (-(-input_height // output_stride), -(-input_width // output_stride))
    if expected != heatmap_size:
        raise ValueError(f"data.heatmap_size {list(heatmap_size)} does not match the {model_name} output "
                         f"{list(expected)} (input {input_height}x{input_width}, output stride {output_stride}); "
                         f"use data.heatmap_stride={output_stride}")
    return input_height, input_width
