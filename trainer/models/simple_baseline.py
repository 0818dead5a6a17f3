"""SimpleBaseline (Xiao et al., ECCV 2018): a ResNet backbone and three deconvolutions.

The architecture the DarkPose ResNet results use:

* ResNet-18/34 (basic blocks) or ResNet-50/101/152 (bottleneck blocks,
  torchvision "v1.5" layout: the stride sits on the 3x3 convolution), output
  stride 32, without the classifier;
* three ``4x4`` stride-2 transposed convolutions (no bias) + BN + ReLU, 256
  filters each by default (output stride 4);
* a ``1x1`` convolution to ``K`` heatmaps.

Parameter counts at 17 joints (tested): R50 34.0M, R101 53.0M, R152 68.6M, as
the DarkPose README lists them.

Keras 3 layers only, so the same code runs on any Keras backend (the optional
``sync_batchnorm`` is a TensorFlow-backend feature of ``BatchNormalization``).
Every layer has a stable name following ``keras.applications.resnet``
(``conv2_block1_1_conv`` ...), so porting published weights is a name lookup.

``config["model"]`` keys (all optional except ``name``):

=================  ================  ===========================================
key                default           meaning
=================  ================  ===========================================
depth              50                18, 34, 50, 101 or 152
backbone_stages    4                 ResNet stages kept: 4 (stride 32) or 3 (stride 16,
                                     the small CPU variant drops the 512-filter stage)
deconv_filters     [256, 256, 256]   filters of each deconvolution (1 to 4 layers)
deconv_kernel      4                 2, 3 or 4
final_kernel       1                 1 or 3
sync_batchnorm     false             synchronise BN statistics across replicas
=================  ================  ===========================================

Example:

    config = pose.config.build_config({"model": {"name": "simplebaseline", "depth": 18}})
    model = build(config)            # input (B, 256, 192, 3) RGB 0..255
    heatmaps = model(images)         # (B, 64, 48, 17)
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import keras
from keras import layers

from schemas.keypoints import get_schema
from trainer.models.common import batch_norm, merge_options, normalized_input

# ImageNet statistics of RGB images in 0..1 (the backbones' pre-training).

# depth -> (block kind, blocks per stage)
STAGES: Dict[int, tuple] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_FILTERS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4

MODEL_KEYS = {
    "name": "simplebaseline",
    "depth": 50,
    "backbone_stages": 4,
    "deconv_filters": [256, 256, 256],
    "deconv_kernel": 4,
    "final_kernel": 1,
    "sync_batchnorm": False,
}

# Initialisation of the references: He (fan-out) for the backbone convolutions,
# N(0, 0.001) for the deconvolutions and the final layer (small initial heatmaps).
_HEAD_INIT_STDDEV = 0.001


def model_options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Returns ``config["model"]`` merged over :data:`MODEL_KEYS`, validated.

    Raises:
        ValueError: unknown key or invalid value (the key is named).
    """
    options = merge_options(config, MODEL_KEYS, "simplebaseline")
    if options["depth"] not in STAGES:
        raise ValueError(f"model.depth must be one of {sorted(STAGES)}, got {options['depth']!r}")
    filters = options["deconv_filters"]
    if (not isinstance(filters, (list, tuple)) or not 1 <= len(filters) <= 4
            or not all(isinstance(f, int) and f > 0 for f in filters)):
        raise ValueError(f"model.deconv_filters must be a list of 1 to 4 positive integers, got {filters!r}")
    if options["backbone_stages"] not in (3, 4):
        raise ValueError(f"model.backbone_stages must be 3 or 4, got {options['backbone_stages']!r}")
    if options["deconv_kernel"] not in (2, 3, 4):
        raise ValueError(f"model.deconv_kernel must be 2, 3 or 4, got {options['deconv_kernel']!r}")
    if options["final_kernel"] not in (1, 3):
        raise ValueError(f"model.final_kernel must be 1 or 3, got {options['final_kernel']!r}")
    return options


def _conv_bn(x, filters: int, kernel_size: int, strides: int, name: str, synchronized: bool, relu: bool = True):
    """Conv (PyTorch-style symmetric padding, no bias) + BN (+ ReLU). (B, H, W, C) -> (B, H/s, W/s, filters)."""
    padding = kernel_size // 2
    if padding and strides > 1:
        x = layers.ZeroPadding2D(padding, name=name + "_pad")(x)
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="valid", use_bias=False,
                          kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
                          name=name + "_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                          kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
                          name=name + "_conv")(x)
    x = batch_norm(name + "_bn", synchronized)(x)
    if relu:
        x = layers.Activation("relu", name=name + "_relu")(x)
    return x


def basic_block(x, filters: int, strides: int, name: str, synchronized: bool = False):
    """ResNet basic block: two 3x3 convs. (B, H, W, C) -> (B, H/s, W/s, filters)."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, strides, name + "_0", synchronized, relu=False)
    x = _conv_bn(x, filters, 3, strides, name + "_1", synchronized)
    x = _conv_bn(x, filters, 3, 1, name + "_2", synchronized, relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def bottleneck_block(x, filters: int, strides: int, name: str, synchronized: bool = False):
    """ResNet bottleneck (v1.5, stride on the 3x3). (B, H, W, C) -> (B, H/s, W/s, 4 * filters)."""
    out_filters = filters * BOTTLENECK_EXPANSION
    shortcut = x
    if strides != 1 or x.shape[-1] != out_filters:
        shortcut = _conv_bn(x, out_filters, 1, strides, name + "_0", synchronized, relu=False)
    x = _conv_bn(x, filters, 1, 1, name + "_1", synchronized)
    x = _conv_bn(x, filters, 3, strides, name + "_2", synchronized)
    x = _conv_bn(x, out_filters, 1, 1, name + "_3", synchronized, relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def resnet_backbone(x, depth: int, num_stages: int = 4, synchronized: bool = False):
    """ResNet-``depth`` feature extractor. (B, H, W, 3) normalised -> (B, H/s, W/s, C), s = 2**(num_stages + 1)."""
    kind, blocks_per_stage = STAGES[depth]
    blocks_per_stage = blocks_per_stage[:num_stages]
    block = basic_block if kind == "basic" else bottleneck_block
    x = _conv_bn(x, 64, 7, 2, "conv1", synchronized)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (filters, num_blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage)):
        for index in range(num_blocks):
            strides = 2 if stage > 0 and index == 0 else 1
            x = block(x, filters, strides, f"conv{stage + 2}_block{index + 1}", synchronized)
    return x


def deconv_head(x, deconv_filters: Sequence[int], kernel_size: int, num_joints: int,
                final_kernel: int, synchronized: bool = False):
    """Deconvolution head. (B, h, w, C) -> (B, h * 2**n, w * 2**n, num_joints) float32 heatmaps."""
    for index, filters in enumerate(deconv_filters):
        name = f"deconv{index + 1}"
        x = layers.Conv2DTranspose(filters, kernel_size, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=keras.initializers.RandomNormal(stddev=_HEAD_INIT_STDDEV),
                                   name=name + "_conv")(x)
        x = batch_norm(name + "_bn", synchronized)(x)
        x = layers.Activation("relu", name=name + "_relu")(x)
    # float32 output even under a mixed-precision policy (stable loss and decoding).
    return layers.Conv2D(num_joints, final_kernel, padding="same", name="final_conv", dtype="float32",
                         kernel_initializer=keras.initializers.RandomNormal(stddev=_HEAD_INIT_STDDEV))(x)


def build(config: Mapping[str, Any]) -> keras.Model:
    """Builds SimpleBaseline from an experiment config (see module docstring).

    Args:
        config: loaded config; uses ``model``, ``dataset`` and ``data.input_size``/``data.heatmap_size``.

    Returns:
        ``keras.Model``: input ``(B, H_in, W_in, 3)`` float32 RGB 0..255, output
        ``(B, H_hm, W_hm, K)`` float32 heatmaps, channels-last.

    Raises:
        ValueError: invalid ``model`` keys, or the deconvolutions cannot reach ``data.heatmap_size``.
    """
    options = model_options(config)
    input_height, input_width = (int(v) for v in config["data"]["input_size"])
    heatmap_size = tuple(int(v) for v in config["data"]["heatmap_size"])
    num_deconv = len(options["deconv_filters"])
    backbone_stride = 2 ** (options["backbone_stages"] + 1)
    # Every stride-2 layer maps n -> ceil(n / 2); each deconvolution doubles.
    expected = (-(-input_height // backbone_stride) * 2 ** num_deconv,
                -(-input_width // backbone_stride) * 2 ** num_deconv)
    if expected != heatmap_size:
        raise ValueError(
            f"data.heatmap_size {list(heatmap_size)} does not match the model output {list(expected)} "
            f"(input {input_height}x{input_width}, backbone stride {backbone_stride}, {num_deconv} deconvolutions); "
            f"use an input size divisible by {backbone_stride} and "
            f"data.heatmap_stride={max(1, backbone_stride // 2 ** num_deconv)}")
    num_joints = get_schema(config["dataset"]).num_joints
    synchronized = options["sync_batchnorm"]

    inputs, x = normalized_input(input_height, input_width)
    x = resnet_backbone(x, options["depth"], options["backbone_stages"], synchronized)
    outputs = deconv_head(x, options["deconv_filters"], options["deconv_kernel"], num_joints,
                          options["final_kernel"], synchronized)
    return keras.Model(inputs, outputs, name=f"simplebaseline_res{options['depth']}")
