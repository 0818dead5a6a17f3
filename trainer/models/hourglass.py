"""Stacked Hourglass (Newell et al., ECCV 2016) as DarkPose trains it ("hourglass" models).

The variant is the one of DarkPose's ``lib/models/hourglass.py`` (itself the
bearpaw/pytorch-pose re-implementation of Newell's Torch model), with
``NUM_FEATURES: 256, NUM_BLOCKS: 1`` and 4 or 8 stacks:

* residual module: the pre-activation bottleneck ``BN-ReLU-1x1(F/2)``,
  ``BN-ReLU-3x3(F/2)``, ``BN-ReLU-1x1(F)`` (convs with bias) plus the input, or a
  ``1x1`` conv (with bias) of it when the channel count changes;
* stem: ``7x7`` stride-2 conv (64, bias) + BN + ReLU, residual 64 -> 128,
  ``2x2`` max-pool, residual 128 -> 256, residual 256 -> 256 (output stride 4);
* hourglass (depth 4): ``out = up1(x) + upsample(low3(hourglass_{n-1}(low1(pool(x)))))``
  with one residual module in each of ``up1``, ``low1``, ``low3`` at every
  level and one more at the bottom (13 per hourglass), all 256 features;
* after each hourglass: a residual module, ``1x1`` conv + BN + ReLU, and a
  ``1x1`` conv to ``K`` heatmaps. Every stack but the last feeds
  ``x + conv1x1(features) + conv1x1(heatmaps)`` to the next one.

Every stack's heatmaps are outputs (intermediate supervision: the trainer sums
the loss over the list); the last element is the prediction.

Parameter counts at 17 joints (tested, trainable, like PyTorch's count):
4 stacks 13.02M, 8 stacks 25.60M, against the 13.0M / 25.1M the DarkPose
README lists (0.2% / 2.0% off; the README figure for 8 stacks is the less
exact of the two: its per-stack increment of 3.03M is below the 3.14M this
architecture has per stack). Multiply-adds at 128x96: 2.883e9 / 5.276e9, i.e.
2.69 / 4.91 "GFLOPs" in the README's unit of 1024**3, against the published
2.7 / 4.9 (see :mod:`trainer.flops`).

Unlike the reference, which hard-codes the innermost upsample to ``[4, 3]`` (so
it only fits one input size), pooling here rounds up ("same" padding) and each
upsampled tensor is cropped to the static shape of the skip branch it is added
to. For even sizes this is exactly the reference's pool/upsample; odd sizes
(e.g. the 4x3 innermost level at 128x96 input) keep their last row/column
instead of failing, so every input size divisible by 4 works.

Soft-gated skip connections (Bulat, Kossaifi, Tzimiropoulos, Pantic, "Toward
fast and accurate human pose estimation via soft-gated skip connections",
FG 2020, arXiv 2002.11098), three independent keys that the configs
``*hourglass4_gated_*`` set together:

* ``gated_skip: true`` (the paper's Fig. 1): every residual block's identity
  path (or its 1x1 projection when the channel count changes) is multiplied by
  a learnable per-channel gate alpha in R^F before the addition,
  ``x_{l+1} = alpha (.) x_l + F(x_l)`` (:func:`skip_gate`); in every block of
  the network (stem, hourglasses, post-hourglass blocks);
* ``block: multiscale`` (Fig. 1): the block the paper gates, the hierarchical,
  parallel and multi-scale block (Bulat & Tzimiropoulos, ICCV 2017) of three
  chained pre-activation ``3x3`` convs with F/2, F/4, F/4 channels whose
  outputs are concatenated, instead of Newell's bottleneck;
* ``skip_fusion: concat`` (the HourGlass/U-Net hybrid, the paper's second contribution): the
  hourglass's skip branches carry their input without a residual block, and
  are concatenated with the upsampled lower branch and fused by a block
  (2F -> F), instead of ``res(x) + upsample(...)``.

Followed: the gate's form and place (per channel, on the identity path of
every block), the gated block's layout, the concatenating U-Net style skip
fusion, intermediate supervision on every stack. Not followed or not verified
against the paper's text (only its abstract, Fig. 1's caption and secondary
summaries were readable here): alpha's initial value (``gate_init``, default 1,
so that an untrained gated block is exactly the ungated one); the exact fusion
block after the concatenation (here one gated block with a 1x1 projection on
its identity path); the width (the configs use F = 144 with 4 stacks, the
setting of a public re-implementation); the paper's training recipe (the
configs use DarkPose's). The stem and the inter-stack remapping stay Newell's.
The paper claims about 3x fewer parameters and FLOPs than the original
8-stack HourGlass at equal accuracy; this 4-stack F = 144 network has 9.91M
parameters / 12.33 GMACs at 256x256 against 25.59M / 28.09 GMACs for the
8-stack hourglass here (2.6x / 2.3x; see ``bench/models.py``).

``config["model"]`` keys (all optional except ``name``):

=================  ==========  =================================================
key                default     meaning
=================  ==========  =================================================
num_stacks         4           stacked hourglasses (4 and 8 published)
num_blocks         1           residual modules per hourglass position
num_features       256         feature channels F (even; divisible by 4 with
                               ``block: multiscale``)
depth              4           poolings inside each hourglass
gated_skip         false       learnable per-channel gate on every identity path
gate_init          1.0         initial value of every gate
block              bottleneck  ``bottleneck`` (Newell) or ``multiscale`` (Bulat)
skip_fusion        add         ``add`` (Newell) or ``concat`` (Bulat's U-Net hybrid)
sync_batchnorm     false       synchronise BN statistics across replicas
=================  ==========  =================================================

Example:

    config = pose.config.build_config({"model": {"name": "hourglass", "num_stacks": 4},
                                       "data": {"input_size": [128, 96]}})
    model = build(config)            # input (B, 128, 96, 3) RGB 0..255
    outputs = model(images)          # list of 4 tensors (B, 32, 24, 17); outputs[-1] is the prediction
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping

import keras
from keras import layers

from schemas.dataset_meta import schema_for
from trainer.models.common import batch_norm, merge_options, normalized_input, stride_heatmap_size

# ImageNet statistics of RGB images in 0..1 (same input normalisation as the other models).

MODEL_KEYS = {
    "name": "hourglass",
    "num_stacks": 4,
    "num_blocks": 1,
    "num_features": 256,
    "depth": 4,
    "gated_skip": False,
    "block": "bottleneck",
    "skip_fusion": "add",
    "gate_init": 1.0,
    "sync_batchnorm": False,
}
BLOCKS = ("bottleneck", "multiscale")
SKIP_FUSIONS = ("add", "concat")

STEM_FILTERS = 64
OUTPUT_STRIDE = 4



def _conv(filters: int, kernel_size: int, name: str, **kwargs) -> layers.Conv2D:
    """Conv with bias and PyTorch's default initialisation (the reference never re-initialises).

    PyTorch's ``kaiming_uniform_(a=sqrt(5))`` is U(+-1/sqrt(fan_in)), i.e. variance
    ``1 / (3 fan_in)``; Keras' default Glorot init is ~3-6x larger for these convs
    and starts training with a ~4x larger loss (measured on real crops at 128x96).
    """
    return layers.Conv2D(filters, kernel_size, padding="same", name=name,
                         kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                         **kwargs)


def model_options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Returns ``config["model"]`` merged over :data:`MODEL_KEYS`, validated.

    Raises:
        ValueError: unknown key or invalid value (the key is named).
    """
    options = merge_options(config, MODEL_KEYS, "hourglass")
    for key in ("num_stacks", "num_blocks", "depth"):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    features = options["num_features"]
    if isinstance(features, bool) or not isinstance(features, int) or features < 2 or features % 2:
        raise ValueError(f"model.num_features must be an even integer >= 2, got {features!r}")
    if not isinstance(options["gated_skip"], bool):
        raise ValueError(f"model.gated_skip must be true or false, got {options['gated_skip']!r}")
    if options["block"] not in BLOCKS:
        raise ValueError(f"model.block must be one of {list(BLOCKS)}, got {options['block']!r}")
    if options["block"] == "multiscale" and features % 4:
        raise ValueError(f"model.num_features must be divisible by 4 with model.block: multiscale "
                         f"(branches of F/2, F/4, F/4 channels), got {features!r}")
    if options["skip_fusion"] not in SKIP_FUSIONS:
        raise ValueError(f"model.skip_fusion must be one of {list(SKIP_FUSIONS)}, got {options['skip_fusion']!r}")
    gate_init = options["gate_init"]
    if isinstance(gate_init, bool) or not isinstance(gate_init, (int, float)) or not math.isfinite(gate_init):
        raise ValueError(f"model.gate_init must be a finite number, got {gate_init!r}")
    return options


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """How every residual block of one network is built (from ``config["model"]``).

    Attributes:
        block: ``"bottleneck"`` (Newell's pre-activation bottleneck) or
            ``"multiscale"`` (Bulat et al.'s hierarchical, parallel and multi-scale block).
        gated_skip: scale the identity path by a learnable per-channel gate
            alpha (Bulat et al. 2020, Fig. 1).
        gate_init: initial value of every alpha.
        synchronized: synchronise BN statistics across replicas.
    """

    block: str = "bottleneck"
    gated_skip: bool = False
    gate_init: float = 1.0
    synchronized: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "BlockOptions":
        return cls(block=options["block"], gated_skip=options["gated_skip"],
                   gate_init=float(options["gate_init"]), synchronized=options["sync_batchnorm"])


def _as_block_options(block_options) -> BlockOptions:
    """``BlockOptions`` from a ``BlockOptions`` or the legacy ``synchronized`` boolean."""
    if isinstance(block_options, BlockOptions):
        return block_options
    return BlockOptions(synchronized=bool(block_options))


def skip_gate(x, gate_init: float, name: str):
    """Soft gate on an identity path: ``alpha * x`` with one learnable alpha per channel.

    Bulat et al., FG 2020, Fig. 1: ``x_{l+1} = alpha (.) x_l + F(x_l, W_l)``,
    alpha in R^C. Implemented as a bias-free 1x1 depthwise convolution (a plain
    Keras layer: ``model.keras`` reloads without custom objects; its weight, of
    shape (1, 1, C, 1), *is* alpha). With alpha = 1 the output equals ``x`` bit for bit.
    (B, H, W, C) -> (B, H, W, C).
    """
    return layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer=keras.initializers.Constant(gate_init),
                                  name=name)(x)


def residual(x, filters: int, name: str, block_options=False):
    """Pre-activation residual module. (B, H, W, C) -> (B, H, W, filters).

    ``block: bottleneck`` (Newell et al. 2016): ``BN-ReLU-conv1x1(filters/2)``,
    ``BN-ReLU-conv3x3(filters/2)``, ``BN-ReLU-conv1x1(filters)``.

    ``block: multiscale`` (the hierarchical, parallel and multi-scale block that
    Bulat et al. 2020 use, Fig. 1; from Bulat & Tzimiropoulos, ICCV 2017):
    three chained ``BN-ReLU-conv3x3`` of ``filters/2``, ``filters/4`` and
    ``filters/4`` channels whose outputs are concatenated (``filters``
    channels; receptive fields 3, 5 and 7).

    The branch is added to ``x`` (or to a ``1x1`` conv of ``x`` when
    ``C != filters``); with ``gated_skip`` that identity path is first scaled
    per channel by :func:`skip_gate`. No activation after the addition.

    Args:
        block_options: a :class:`BlockOptions`, or a boolean (``synchronized``,
            Newell's ungated bottleneck; the former signature).
    """
    options = _as_block_options(block_options)
    synchronized = options.synchronized
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = _conv(filters, 1, name + "_shortcut_conv")(x)
    if options.gated_skip:
        shortcut = skip_gate(shortcut, options.gate_init, name + "_gate")
    y = x
    if options.block == "bottleneck":
        for index, (width, kernel) in enumerate(((filters // 2, 1), (filters // 2, 3), (filters, 1))):
            y = batch_norm(f"{name}_bn{index + 1}", synchronized)(y)
            y = layers.Activation("relu", name=f"{name}_relu{index + 1}")(y)
            y = _conv(width, kernel, f"{name}_conv{index + 1}")(y)
    else:
        branches = []
        for index, width in enumerate((filters // 2, filters // 4, filters // 4)):
            y = batch_norm(f"{name}_bn{index + 1}", synchronized)(y)
            y = layers.Activation("relu", name=f"{name}_relu{index + 1}")(y)
            y = _conv(width, 3, f"{name}_conv{index + 1}")(y)
            branches.append(y)
        y = layers.Concatenate(name=name + "_concat")(branches)
    return layers.Add(name=name + "_add")([shortcut, y])


def residual_sequence(x, filters: int, num_blocks: int, name: str, block_options=False):
    """``num_blocks`` residual modules. (B, H, W, C) -> (B, H, W, filters)."""
    for block in range(num_blocks):
        x = residual(x, filters, f"{name}_res{block + 1}", block_options)
    return x


def upsample_to(x, reference, name: str):
    """Nearest 2x upsampling, cropped to ``reference``'s static (H, W). (B, h, w, C) -> (B, H_ref, W_ref, C)."""
    x = layers.UpSampling2D(2, interpolation="nearest", name=name + "_upsample")(x)
    height, width = x.shape[1], x.shape[2]
    target_height, target_width = reference.shape[1], reference.shape[2]
    if height < target_height or width < target_width:
        raise ValueError(f"{name}: upsampled size {(height, width)} is smaller than {(target_height, target_width)}")
    if (height, width) != (target_height, target_width):
        x = layers.Cropping2D(((0, height - target_height), (0, width - target_width)), name=name + "_crop")(x)
    return x


def hourglass(x, depth: int, num_blocks: int, name: str, block_options=False, skip_fusion: str = "add"):
    """One hourglass of ``depth`` poolings. (B, H, W, F) -> (B, H, W, F).

    ``skip_fusion: add`` (Newell et al.): level ``n`` (``depth`` outermost):
    ``up1 = res(x)``; ``low1 = res(pool(x))``; ``low2`` = level ``n - 1`` of
    ``low1`` (or one more ``res`` at ``n == 1``); ``low3 = res(low2)``; output
    ``up1 + upsample(low3)``.

    ``skip_fusion: concat`` (the HourGlass/U-Net hybrid of Bulat et al. 2020):
    the skip branch carries ``x`` itself (no residual module on
    it: fewer identity connections) and is fused U-Net style,
    ``res_{2F -> F}(concat(x, upsample(low3)))``; the down path is unchanged.
    """
    filters = x.shape[-1]
    level = f"{name}_level{depth}"
    if skip_fusion == "add":
        up1 = residual_sequence(x, filters, num_blocks, level + "_up1", block_options)
    else:
        up1 = x
    low1 = layers.MaxPooling2D(2, strides=2, padding="same", name=level + "_pool")(x)
    low1 = residual_sequence(low1, filters, num_blocks, level + "_low1", block_options)
    if depth > 1:
        low2 = hourglass(low1, depth - 1, num_blocks, name, block_options, skip_fusion)
    else:
        low2 = residual_sequence(low1, filters, num_blocks, level + "_low2", block_options)
    low3 = residual_sequence(low2, filters, num_blocks, level + "_low3", block_options)
    up2 = upsample_to(low3, up1, level)
    if skip_fusion == "add":
        return layers.Add(name=level + "_add")([up1, up2])
    fused = layers.Concatenate(name=level + "_concat")([up1, up2])
    return residual_sequence(fused, filters, num_blocks, level + "_fuse", block_options)


def stem(x, features: int, block_options=False):
    """7x7/2 conv, residual, max-pool, two residuals. (B, H, W, 3) -> (B, H/4, W/4, features)."""
    synchronized = _as_block_options(block_options).synchronized
    x = _conv(STEM_FILTERS, 7, "stem_conv", strides=2)(x)
    x = batch_norm("stem_bn", synchronized)(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    x = residual(x, 2 * STEM_FILTERS, "stem_res1", block_options)
    x = layers.MaxPooling2D(2, strides=2, padding="same", name="stem_pool")(x)
    x = residual(x, features, "stem_res2", block_options)
    return residual(x, features, "stem_res3", block_options)


def build(config: Mapping[str, Any]) -> keras.Model:
    """Builds the stacked hourglass from an experiment config (see module docstring).

    Args:
        config: loaded config; uses ``model``, ``dataset`` and ``data.input_size``/``data.heatmap_size``.

    Returns:
        ``keras.Model``: input ``(B, H_in, W_in, 3)`` float32 RGB 0..255; outputs a
        list of ``num_stacks`` float32 heatmap tensors ``(B, H_in/4, W_in/4, K)``
        (channels-last), one per stack; the last is the prediction.

    Raises:
        ValueError: invalid ``model`` keys, or ``data.heatmap_size`` is not ``data.input_size / 4``.
    """
    options = model_options(config)
    input_height, input_width = stride_heatmap_size(config, OUTPUT_STRIDE, "hourglass")
    num_joints = schema_for(config).num_joints
    synchronized = options["sync_batchnorm"]
    block_options = BlockOptions.from_options(options)
    features = options["num_features"]
    num_stacks = options["num_stacks"]

    inputs, x = normalized_input(input_height, input_width)
    x = stem(x, features, block_options)
    outputs = []
    for stack in range(num_stacks):
        name = f"stack{stack + 1}"
        y = hourglass(x, options["depth"], options["num_blocks"], name + "_hourglass", block_options,
                      options["skip_fusion"])
        y = residual_sequence(y, features, options["num_blocks"], name + "_post", block_options)
        y = _conv(features, 1, name + "_features_conv")(y)
        y = batch_norm(name + "_features_bn", synchronized)(y)
        y = layers.Activation("relu", name=name + "_features_relu")(y)
        # float32 heatmaps even under a mixed-precision policy (stable loss and decoding).
        heatmaps = _conv(num_joints, 1, name + "_heatmaps", dtype="float32")(y)
        outputs.append(heatmaps)
        if stack < num_stacks - 1:
            remap_features = _conv(features, 1, name + "_remap_features")(y)
            remap_heatmaps = _conv(features, 1, name + "_remap_heatmaps")(heatmaps)
            x = layers.Add(name=name + "_merge")([x, remap_features, remap_heatmaps])
    suffix = "_gated" if options["gated_skip"] else ""
    return keras.Model(inputs, outputs, name=f"hourglass{num_stacks}{suffix}")
