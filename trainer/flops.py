"""Multiply-add ("GFLOPs" as the pose papers report them) counts of a built Keras model.

The DarkPose / HRNet / SimpleBaseline tables give "GFLOPs for convolution and
linear layers only", which are multiply-accumulate counts: one MAC per weight
per output position, biases, BN, activations, pooling and upsampling ignored.
This module counts the same from a *built* functional Keras model: it walks
every layer call (node) of the graph, nested models included, reads the
static input/output shapes of that call and applies:

===========================  ==================================================
layer                        multiply-adds per image
===========================  ==================================================
Conv1D/2D/3D                 prod(out spatial) * prod(kernel) * C_in/groups * C_out
Conv*Transpose               prod(out spatial) * prod(kernel) * C_in * C_out  (see below)
DepthwiseConv*               prod(out spatial) * prod(kernel) * C_in * multiplier
SeparableConv*               depthwise part + prod(out spatial) * C_in * multiplier * C_out
Dense                        prod(out shape without batch and units) * C_in * units
===========================  ==================================================

Counts are per image (the batch dimension is dropped), so they do not depend
on the batch size the model was built with. Spatial dimensions must be static.

Units: :func:`gflops` divides by 1e9. The published tables divide by
``1024**3`` (HRNet's ``get_model_summary`` prints ``flops_sum / 1024**3`` as
"GFLOPs"): ``gflops(model, binary=True)`` reproduces them to ~1.5% (HRNet-W32
at 256x192: 7.645e9 multiply-adds = 7.12 "GFLOPs", published 7.1; Hourglass-4
at 128x96: 2.883e9 = 2.69, published 2.7), while the decimal values are a
uniform 7.4% higher.

Transposed convolutions: the published tables (the HRNet/SimpleBaseline/
DarkPose ``get_model_summary``) count every conv as *kernel weights x output
positions*, which for a stride-``s`` transposed conv is ``s**2`` times the
multiply-adds it really performs (each *input* position scatters one kernel).
``transposed="output"`` (default) follows the tables, so SimpleBaseline's
figures are comparable (ResNet-50 at 128x96: 2.41e9 = 2.25 in the tables'
unit vs the published 2.3; ``"input"`` gives the physical 1.36e9); ``transposed="input"`` counts
``prod(in spatial) * prod(kernel) * C_in * C_out``. Models without transposed
convs (HRNet, Hourglass) count the same either way.

Example:

    model = trainer.models.build_model(config)
    print(f"{gflops(model):.2f} GFLOPs")        # multiply-adds / 1e9
    table = layer_macs(model)                   # {"stem1_conv": 7077888, ...}

Command line (prints the per-layer table and the total):

    python -m trainer.flops --config configs/coco/w32_256x192.yaml
"""
from __future__ import annotations

import math
import sys
from typing import Dict, Sequence

import keras
from keras import layers

from toolkit import cli


def _spatial(shape: Sequence, layer_name: str) -> Sequence[int]:
    """Static spatial dims of a channels-last shape (batch, *spatial, channels)."""
    dims = tuple(shape[1:-1])
    if any(d is None for d in dims):
        raise ValueError(f"layer {layer_name!r}: spatial shape {tuple(shape)} is not static; build the model "
                         "with a fixed input size before counting multiply-adds")
    return dims


TRANSPOSED_CONVENTIONS = ("output", "input")
BINARY_GIGA = 1024 ** 3


def _check_convention(transposed: str) -> None:
    if transposed not in TRANSPOSED_CONVENTIONS:
        raise ValueError(f"transposed must be one of {TRANSPOSED_CONVENTIONS}, got {transposed!r}")


def call_macs(layer: layers.Layer, input_shape: Sequence, output_shape: Sequence, transposed: str = "output") -> int:
    """Multiply-adds of one call of ``layer`` for one image (0 for uncounted layer types).

    Args:
        layer: a Keras layer.
        input_shape: the call's input shape ``(B, *spatial, C_in)`` (channels-last).
        output_shape: the call's output shape ``(B, *spatial, C_out)``.
        transposed: ``"output"`` (the papers' count) or ``"input"`` (physical
            multiply-adds) for transposed convs, see the module docstring.

    Raises:
        ValueError: a counted layer is channels-first or has non-static spatial
            dims, or ``transposed`` is unknown.
    """
    _check_convention(transposed)
    counted = (layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.Conv1DTranspose, layers.Conv2DTranspose,
               layers.Conv3DTranspose, layers.DepthwiseConv1D, layers.DepthwiseConv2D, layers.SeparableConv1D,
               layers.SeparableConv2D, layers.Dense)
    if not isinstance(layer, counted):
        return 0
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(f"layer {layer.name!r}: only channels_last is supported, got {layer.data_format!r}")
    in_channels = int(input_shape[-1])
    out_channels = int(output_shape[-1])
    if isinstance(layer, layers.Dense):
        positions = math.prod(int(d) for d in _spatial(output_shape, layer.name)) if len(output_shape) > 2 else 1
        return positions * in_channels * out_channels
    kernel = math.prod(layer.kernel_size)
    if isinstance(layer, (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)):
        # physically every input position scatters one kernel; the papers count per output position
        shape = input_shape if transposed == "input" else output_shape
        return math.prod(_spatial(shape, layer.name)) * kernel * in_channels * out_channels
    out_positions = math.prod(_spatial(output_shape, layer.name))
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return out_positions * kernel * in_channels * layer.depth_multiplier
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        depthwise_channels = in_channels * layer.depth_multiplier
        return out_positions * (kernel * depthwise_channels + depthwise_channels * out_channels)
    groups = getattr(layer, "groups", 1) or 1
    return out_positions * kernel * (in_channels // groups) * out_channels


def _first_shape(tensors) -> Sequence:
    if isinstance(tensors, (list, tuple)):
        tensors = tensors[0]
    return tuple(tensors.shape)


def layer_macs(model: keras.Model, transposed: str = "output") -> Dict[str, int]:
    """Per-layer multiply-adds for one image, summed over every call of each layer.

    Nested models are expanded (their layers appear as ``"outer/inner"``) and
    multiplied by the number of times the nested model is called.

    Args:
        model: a built functional (or Sequential) Keras model with static spatial shapes.
        transposed: counting convention for transposed convs (see :func:`call_macs`).

    Returns:
        ``{layer name: multiply-adds}`` for the counted layer types (others omitted).

    Raises:
        ValueError: ``model`` is not built, a counted layer has non-static shapes,
            or ``transposed`` is unknown.
    """
    _check_convention(transposed)
    if not model.built or not hasattr(model, "layers"):
        raise ValueError(f"model {getattr(model, 'name', model)!r} must be a built functional Keras model")
    table: Dict[str, int] = {}
    for layer in model.layers:
        nodes = [node for node in layer._inbound_nodes if node.input_tensors]  # Keras 3 graph nodes
        if isinstance(layer, keras.Model):
            calls = max(1, len(nodes))
            for name, macs in layer_macs(layer, transposed).items():
                table[f"{layer.name}/{name}"] = table.get(f"{layer.name}/{name}", 0) + calls * macs
            continue
        total = 0
        for node in nodes:
            total += call_macs(layer, _first_shape(node.input_tensors), _first_shape(node.output_tensors), transposed)
        if total:
            table[layer.name] = table.get(layer.name, 0) + total
    return table


def count_macs(model: keras.Model, transposed: str = "output") -> int:
    """Total multiply-adds of conv and dense layers for one image."""
    return sum(layer_macs(model, transposed).values())


def gflops(model: keras.Model, transposed: str = "output", binary: bool = False) -> float:
    """Multiply-adds of conv/dense layers for one image, in units of 1e9 (``binary``: of 1024**3).

    ``binary=True`` is the unit of the published pose tables (see the module docstring).
    """
    return count_macs(model, transposed) / (BINARY_GIGA if binary else 1e9)


def trainable_params(model: keras.Model) -> int:
    """Trainable parameter count (what PyTorch's ``parameters()`` counts: no BN moving statistics)."""
    return int(sum(math.prod(weight.shape) for weight in model.trainable_weights))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: per-layer table and total for the model of a config file."""
    parser = cli.ArgumentParser(prog="python -m trainer.flops", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiment config YAML")
    parser.add_argument("--top", type=int, default=20, help="print the N most expensive layers")
    parser.add_argument("--transposed", choices=TRANSPOSED_CONVENTIONS, default="output",
                        help="transposed-conv convention: output (the papers' tables) or input (physical)")
    args = parser.parse_args(argv)

    from pose.config import load_config  # deferred: keeps `import trainer.flops` light
    from trainer.models import build_model

    config = load_config(args.config)
    model = build_model(config)
    table = layer_macs(model, args.transposed)
    for name, macs in sorted(table.items(), key=lambda item: -item[1])[:args.top]:
        print(f"{name:60s} {macs / 1e6:10.1f} M")
    total = sum(table.values())
    print(f"{config['name']}: input {config['data']['input_size']}, params {trainable_params(model) / 1e6:.2f} M "
          f"(trainable), multiply-adds of conv/dense layers {total / 1e9:.3f} G = {total / BINARY_GIGA:.2f} "
          f"\"GFLOPs\" in the papers' unit (1024**3)")


if __name__ == "__main__":
    sys.exit(cli.run(main, prog="python -m trainer.flops"))
