"""Bottom-up (box-free) multi-person model: a dense-prediction ResNet and PersonLab's heads in one tensor.

The network of PersonLab (Papandreou et al., ECCV 2018, Sec. 3) as StrongPose
(ICPR 2021) extends it with a body heatmap: one pass over the whole (square,
letterboxed) image predicts, at the output stride, channels-last and in the
layout of :mod:`schemas.bottom_up` (issue 16, contract 3)::

    [heatmaps K | short offsets 2K | mid offsets 2 * 2E | body 1]

* heatmaps and body: linear outputs, trained with MSE against the unbiased
  (DARK) Gaussians of the encoder (:mod:`pose.bottom_up_codec`);
* offsets: linear (dx, dy) in OUTPUT pixels, trained with L1 inside their
  disks (:func:`trainer.losses.bottom_up_loss`).

Backbone: torchvision-layout ResNet-18/34/50/101/152 (the same blocks and
stable layer names as :mod:`trainer.models.simple_baseline`, so published
ImageNet weights port by name) made dense with **atrous (dilated)
convolution**: once the running stride reaches ``output_stride`` (8 or 16),
the following stages keep stride 1 and double the dilation of their 3x3
convolutions instead (Chen et al., DeepLab, TPAMI 2018; PersonLab trains
atrous ResNet-101/152 the same way). Why dilation rather than an
upsampling decoder: the receptive field and the ImageNet weights of every
layer stay those of the classifier (a 101-layer ResNet needs a receptive field
larger than the people it groups: mid-range offsets reach from one joint to
the next), and output pixels stay aligned with input pixels (output pixel
``j`` is computed centred on input pixel ``stride * j`` by every stride-2
layer with symmetric padding), which a transposed-convolution decoder with
"same" padding would shift by half a pixel. The cost is compute in the
dilated stages (``bench/models.py``). Output stride 8 gives issue 16's
401 x 401 -> 51 x 51 directly; 16 costs 3.3x fewer multiply-adds on
ResNet-101 (37 vs 125 GMACs at 401) and, with ``data.heatmap_stride: 8``, is
upsampled x2 (below).

Head: a 3x3 conv + BN + ReLU (``head``, ``head_filters``; 0 = none), then four
1x1 convolutions (``head_heatmaps``, ``head_short_offsets``,
``head_mid_offsets``, ``head_body``) concatenated (``outputs``). When
``data.heatmap_stride`` is finer than ``output_stride``, the resolution is
raised by a **fixed corner-aligned bilinear** x2 step per octave (a frozen 3x3
stride-2 transposed convolution with bilinear weights, cropped: n -> 2n - 1,
output pixel 2i = input pixel i), so the corner-aligned coordinate mapping of
contract 2 still holds:

* ``upsample: features`` (default): the backbone features are reduced to
  ``head_filters`` channels (1x1 conv + BN + ReLU, ``head_reduce``),
  upsampled, and the 3x3 head conv runs at the output stride. The head can
  then draw peaks as sharp as the targets' (sigma ~ 1 output pixel);
* ``upsample: outputs``: the 1x1 outputs are upsampled (cheapest; bilinear
  upsampling commutes with 1x1 convs), but a bilinear interpolation of a
  coarse map cannot hold a Gaussian narrower than its grid: on the demo data
  the heatmap loss stalled at ~65 % of its zero-output value this way.

Output size: ``ceil(S / output_stride)`` from the backbone, then
``(n - 1) * f + 1`` per upsampling factor ``f``. This equals the contract's
``(S - 1) / heatmap_stride + 1`` exactly when ``S = 1 (mod output_stride)``
(PersonLab's 401 = 8 * 50 + 1; the demo's 129 = 16 * 8 + 1); then output
coordinate = input coordinate / heatmap_stride = input * (W_out - 1) / (W_in - 1),
the project's mapping. The builder raises ``ValueError`` when
``data.heatmap_size`` is not its output size.

``config["model"]`` keys (all optional except ``name``):

=================  ========  ==================================================
key                default   meaning
=================  ========  ==================================================
depth              101       18, 34, 50, 101 or 152
backbone_stages    4         ResNet stages kept: 4, or 3 (the small demo variant
                             drops the 512-filter stage, as SimpleBaseline's)
output_stride      8         8 or 16: backbone stride, the rest dilated
head_filters       256       filters of the 3x3 head conv (0: no head conv)
upsample           features  ``features`` or ``outputs``: what the x2 steps upsample
sync_batchnorm     false     synchronise BN statistics across replicas
=================  ========  ==================================================

Published (COCO test-dev AP, COCO data only): PersonLab 0.665 single-scale,
0.687 multi-scale (Papandreou et al., abstract); StrongPose ResNet-101 0.708,
ResNet-152 0.725 (issue 16). Parameter counts and multiply-adds: ``bench/models.py``.

Example:

    config = ...  # approach: bottom_up, model: {name: bottom_up, depth: 18, backbone_stages: 3}
    model = build(config)          # input (B, S, S, 3) RGB 0..255
    outputs = model(images)        # (B, H_out, W_out, 3K + 4E + 1) float32
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import keras
import numpy as np
from keras import layers

from schemas import bottom_up as bottom_up_schema
from schemas.dataset_meta import schema_for
from trainer.models.common import batch_norm, merge_options, normalized_input
from trainer.models.simple_baseline import STAGES, conv_bn, resnet_backbone

MODEL_KEYS = {
    "name": "bottom_up",
    "depth": 101,
    "backbone_stages": 4,
    "output_stride": 8,
    "head_filters": 256,
    "upsample": "features",
    "sync_batchnorm": False,
}
UPSAMPLE_KINDS = ("features", "outputs")
OUTPUT_STRIDES = (8, 16)
HEAD_NAMES = ("heatmaps", "short_offsets", "mid_offsets", "body")

# N(0, 0.001) for the output convs (small initial outputs, like SimpleBaseline's head); the trunk is
# SimpleBaseline's ResNet builder (He fan-out, as torchvision) in its atrous form.
_HEAD_INIT_STDDEV = 0.001


def model_options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Returns ``config["model"]`` merged over :data:`MODEL_KEYS`, validated.

    Raises:
        ValueError: unknown key or invalid value (the key is named).
    """
    options = merge_options(config, MODEL_KEYS, "bottom_up")
    if options["depth"] not in STAGES:
        raise ValueError(f"model.depth must be one of {sorted(STAGES)}, got {options['depth']!r}")
    if options["backbone_stages"] not in (3, 4):
        raise ValueError(f"model.backbone_stages must be 3 or 4, got {options['backbone_stages']!r}")
    if options["output_stride"] not in OUTPUT_STRIDES:
        raise ValueError(f"model.output_stride must be one of {list(OUTPUT_STRIDES)}, "
                         f"got {options['output_stride']!r}")
    head = options["head_filters"]
    if isinstance(head, bool) or not isinstance(head, int) or head < 0:
        raise ValueError(f"model.head_filters must be an integer >= 0, got {head!r}")
    if options["upsample"] not in UPSAMPLE_KINDS:
        raise ValueError(f"model.upsample must be one of {list(UPSAMPLE_KINDS)}, got {options['upsample']!r}")
    return options


def bilinear_upsampling_kernel(channels: int) -> np.ndarray:
    """Weights (3, 3, C, C) of a x2 transposed conv that is corner-aligned bilinear upsampling per channel.

    With stride 2, "valid" padding and a 1-pixel crop on every side it maps
    n -> 2n - 1 samples with output ``2i`` = input ``i`` and output ``2i + 1`` =
    the mean of inputs ``i`` and ``i + 1`` (bilinear interpolation at half
    steps; the FCN bilinear filter of Long et al., CVPR 2015, at factor 2).
    """
    taps = np.array([0.5, 1.0, 0.5], np.float32)
    kernel = np.zeros((3, 3, channels, channels), np.float32)
    kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(taps, taps)[:, :, None]
    return kernel


def aligned_upsample(x, name: str):
    """Fixed corner-aligned bilinear x2: (B, h, w, C) -> (B, 2h - 1, 2w - 1, C) float32 (see
    :func:`bilinear_upsampling_kernel`). The layer holds frozen weights so the model needs no custom layer."""
    channels = int(x.shape[-1])
    deconv = layers.Conv2DTranspose(
        channels, 3, strides=2, padding="valid", use_bias=False, trainable=False, dtype="float32",
        kernel_initializer=keras.initializers.Constant(bilinear_upsampling_kernel(channels)), name=name + "_deconv")
    x = deconv(x)
    return layers.Cropping2D(1, name=name + "_crop", dtype="float32")(x)


def output_size(input_size: int, output_stride: int, heatmap_stride: int) -> int:
    """The model's output side for an input side ``input_size`` (module docstring):
    ``(ceil(S / output_stride) - 1) * output_stride / heatmap_stride + 1``."""
    backbone = -(-int(input_size) // int(output_stride))
    return (backbone - 1) * (int(output_stride) // int(heatmap_stride)) + 1


def build(config: Mapping[str, Any]) -> keras.Model:
    """Builds the bottom-up model from an experiment config (see module docstring).

    Args:
        config: loaded config with ``approach: bottom_up``; uses ``model``, ``dataset``,
            ``data.input_size`` (square S x S), ``data.heatmap_stride`` and ``data.heatmap_size``.

    Returns:
        ``keras.Model`` named ``bottom_up_res{depth}_os{output_stride}``: input ``image``
        (B, S, S, 3) float32 RGB 0..255; output (B, H_out, W_out, C) float32,
        C = :func:`schemas.bottom_up.num_channels` (3K + 4E + 1), channels-last in that layout.

    Raises:
        ValueError: invalid ``model`` keys, a non-square input, a ``data.heatmap_stride`` that is not
            ``output_stride`` / 1, 2 or 4, or a ``data.heatmap_size`` that is not the model's output size.
    """
    options = model_options(config)
    input_height, input_width = (int(v) for v in config["data"]["input_size"])
    if input_height != input_width:
        raise ValueError(f"data.input_size must be square [S, S] for the bottom-up model, got "
                         f"{[input_height, input_width]}")
    output_stride = options["output_stride"]
    backbone_stride = min(output_stride, 2 ** (options["backbone_stages"] + 1))
    heatmap_stride = int(config["data"]["heatmap_stride"])
    if heatmap_stride not in (backbone_stride, backbone_stride // 2, backbone_stride // 4):
        raise ValueError(f"data.heatmap_stride must be the backbone stride {backbone_stride} or a half or quarter "
                         f"of it (corner-aligned x2 upsampling), got {heatmap_stride}")
    expected = output_size(input_height, backbone_stride, heatmap_stride)
    heatmap_size = [int(v) for v in config["data"]["heatmap_size"]]
    if heatmap_size != [expected, expected]:
        raise ValueError(
            f"data.heatmap_size {heatmap_size} does not match the bottom-up model output {[expected, expected]} "
            f"(input {input_height}, backbone stride {backbone_stride}, heatmap stride {heatmap_stride}); "
            f"use an input size S with S % {backbone_stride} == 1, "
            f"e.g. {backbone_stride * (input_height // backbone_stride) + 1}")
    num_joints = schema_for(config).num_joints
    num_directed_edges = bottom_up_schema.num_edges(config["dataset"])
    synchronized = options["sync_batchnorm"]

    inputs, x = normalized_input(input_height, input_width)
    x = resnet_backbone(x, options["depth"], options["backbone_stages"], synchronized, output_stride=output_stride)
    octaves = {1: 0, 2: 1, 4: 2}[backbone_stride // heatmap_stride]
    upsample_features = octaves > 0 and options["upsample"] == "features"
    if upsample_features and not options["head_filters"]:
        raise ValueError("model.upsample: features needs model.head_filters > 0 (the features are reduced to "
                         "head_filters channels before the upsampling); use upsample: outputs")
    if upsample_features:
        x = conv_bn(x, options["head_filters"], 1, 1, "head_reduce", synchronized)
        for index in range(octaves):
            x = aligned_upsample(x, f"upsample{index + 1}")
    if options["head_filters"]:
        x = conv_bn(x, options["head_filters"], 3, 1, "head", synchronized)
    widths = (num_joints, 2 * num_joints, 2 * num_directed_edges, 1)   # schemas.bottom_up layout
    outputs = [layers.Conv2D(width, 1, name=f"head_{name}", dtype="float32",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=_HEAD_INIT_STDDEV))(x)
               for name, width in zip(HEAD_NAMES, widths)]
    x = layers.Concatenate(axis=-1, name="outputs", dtype="float32")(outputs)
    if not upsample_features:
        for index in range(octaves):
            x = aligned_upsample(x, f"upsample{index + 1}")
    return keras.Model(inputs, x, name=f"bottom_up_res{options['depth']}_os{output_stride}")
