"""HRNet for pose (Sun et al., CVPR 2019, "pose_hrnet"): parallel multi-resolution branches.

The architecture of the DarkPose HRNet results (``w32_*`` / ``w48_*`` configs):

* stem: two ``3x3`` stride-2 convs (64 filters) + BN + ReLU (output stride 4);
* stage 1: four bottleneck blocks (64 -> 256 channels);
* stages 2, 3, 4: 1, 4 and 3 *modules*. Each module runs 4 basic blocks on
  every branch (widths ``C, 2C, 4C, 8C``; branch ``b`` has stride ``4 * 2**b``)
  and then fuses them: output branch ``i`` sums all branches ``j``, where
  higher-resolution inputs (``j < i``) go through ``i - j`` stride-2 ``3x3``
  convs and lower-resolution inputs (``j > i``) through a ``1x1`` conv + BN and
  nearest upsampling by ``2**(j - i)``. A transition before each stage adds the
  new, lower-resolution branch with a stride-2 ``3x3`` conv. The last module
  of stage 4 only outputs the highest-resolution branch;
* head: a ``1x1`` conv (with bias) from that branch to ``K`` heatmaps.

Parameter counts at 17 joints (tested): W32 28.54M, W48 63.60M trainable, as the
DarkPose README lists them (28.5M, 63.6M). Multiply-adds at 128x96: 1.911e9 (W32),
3.923e9 (W48); W32 at 256x192: 7.645e9 -- in the README's unit of 1024**3: 1.78,
3.65 and 7.12 "GFLOPs" against the published 1.8, 3.6 and 7.1 (see :mod:`trainer.flops`).

Input sizes whose branch resolutions are not exact multiples (e.g. a 64x48
crop gives a 2x2 lowest branch from a 4x3 one) still work: stride-2 convs pad
one zero on each side as the published code does (``n -> ceil(n / 2)``) and
upsampled tensors are cropped to the static shape of the branch they join, so
nothing is hard-coded to one input size (the published code needs sizes where
the branches halve exactly; there both agree).

The layers match the published ``pose_hrnet`` one to one (its padding, no conv
biases except the head's, BN eps 1e-5, nearest upsampling after the fuse
``1x1`` conv + BN), so its checkpoints import exactly: see
:mod:`trainer.import_weights` (name table ``HRNET_RULES``).

Keras 3 layers only; every layer has a stable name
(``stage3_module2_branch1_block4_conv1``, ``stage3_module2_fuse0_from2_conv``...).

``config["model"]`` keys (all optional except ``name``):

=================  ========  ===================================================
key                default   meaning
=================  ========  ===================================================
width              32        ``C``, the width of the highest-resolution branch
                             (32 and 48 are the published models)
sync_batchnorm     false     synchronise BN statistics across replicas
=================  ========  ===================================================

Example:

    config = pose.config.build_config({"model": {"name": "hrnet", "width": 32},
                                       "data": {"input_size": [128, 96]}})
    model = build(config)            # input (B, 128, 96, 3) RGB 0..255
    heatmaps = model(images)         # (B, 32, 24, 17)
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import keras
from keras import layers

from schemas.dataset_meta import schema_for
from trainer.models.common import batch_norm, merge_options, normalized_input, stride_heatmap_size

# ImageNet statistics of RGB images in 0..1 (the published weights' pre-training).

MODEL_KEYS = {
    "name": "hrnet",
    "width": 32,
    "sync_batchnorm": False,
}

STEM_FILTERS = 64
STAGE1_BLOCKS = 4
BOTTLENECK_EXPANSION = 4
BLOCKS_PER_BRANCH = 4
# stage number -> number of modules (stages 2..4 have 2, 3 and 4 branches).
STAGE_MODULES = {2: 1, 3: 4, 4: 3}
OUTPUT_STRIDE = 4

# The reference initialises every conv with N(0, 0.001).
_KERNEL_INIT_STDDEV = 0.001


def model_options(config: Mapping[str, Any]) -> Dict[str, Any]:
    """Returns ``config["model"]`` merged over :data:`MODEL_KEYS`, validated.

    Raises:
        ValueError: unknown key or invalid value (the key is named).
    """
    options = merge_options(config, MODEL_KEYS, "hrnet")
    width = options["width"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"model.width must be a positive integer (32 or 48 published), got {width!r}")
    return options


def _kernel_initializer():
    return keras.initializers.RandomNormal(stddev=_KERNEL_INIT_STDDEV)


def conv_bn(x, filters: int, kernel_size: int, strides: int, name: str, synchronized: bool, relu: bool = True):
    """Conv (no bias) + BN (+ ReLU). (B, H, W, C) -> (B, ceil(H/s), ceil(W/s), filters).

    Padding is PyTorch's symmetric ``kernel_size // 2`` zeros, as the published
    code (``nn.Conv2d(..., padding=1)``): for a stride-2 ``3x3`` conv Keras'
    "same" would pad (0, 1) on even sizes and sample the input one pixel off.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = layers.ZeroPadding2D(kernel_size // 2, name=name + "_pad")(x)
        padding = "valid"
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=False,
                      kernel_initializer=_kernel_initializer(), name=name + "_conv")(x)
    x = batch_norm(name + "_bn", synchronized)(x)
    if relu:
        x = layers.Activation("relu", name=name + "_relu")(x)
    return x


def basic_block(x, filters: int, name: str, synchronized: bool = False):
    """Two 3x3 conv-BN with an identity shortcut. (B, H, W, filters) -> (B, H, W, filters)."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, 1, name + "_shortcut", synchronized, relu=False)
    x = conv_bn(x, filters, 3, 1, name + "_conv1", synchronized)
    x = conv_bn(x, filters, 3, 1, name + "_conv2", synchronized, relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def bottleneck_block(x, filters: int, name: str, synchronized: bool = False):
    """1x1 -> 3x3 -> 1x1 (x4) bottleneck. (B, H, W, C) -> (B, H, W, 4 * filters)."""
    out_filters = filters * BOTTLENECK_EXPANSION
    shortcut = x
    if x.shape[-1] != out_filters:
        shortcut = conv_bn(x, out_filters, 1, 1, name + "_shortcut", synchronized, relu=False)
    x = conv_bn(x, filters, 1, 1, name + "_conv1", synchronized)
    x = conv_bn(x, filters, 3, 1, name + "_conv2", synchronized)
    x = conv_bn(x, out_filters, 1, 1, name + "_conv3", synchronized, relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def upsample_to(x, reference, factor: int, name: str):
    """Nearest upsampling by ``factor``, cropped to ``reference``'s static (H, W).

    (B, h, w, C) -> (B, H_ref, W_ref, C). Needed only when a branch was rounded
    up by a stride-2 conv (odd sizes); otherwise the crop is skipped.

    Raises:
        ValueError: the upsampled tensor is smaller than ``reference``.
    """
    x = layers.UpSampling2D(factor, interpolation="nearest", name=name + "_upsample")(x)
    height, width = x.shape[1], x.shape[2]
    target_height, target_width = reference.shape[1], reference.shape[2]
    if height < target_height or width < target_width:
        raise ValueError(f"{name}: upsampled size {(height, width)} is smaller than {(target_height, target_width)}")
    if (height, width) != (target_height, target_width):
        x = layers.Cropping2D(((0, height - target_height), (0, width - target_width)), name=name + "_crop")(x)
    return x


def transition(branches: List, widths: List[int], name: str, synchronized: bool) -> List:
    """Adapts the branch list to ``len(widths)`` branches.

    Existing branches whose width differs get a 3x3 conv-BN-ReLU; the new
    (last) branch is a stride-2 3x3 conv-BN-ReLU of the previous last branch.
    """
    outputs = []
    for index, width in enumerate(widths):
        if index < len(branches):
            branch = branches[index]
            if branch.shape[-1] != width:
                branch = conv_bn(branch, width, 3, 1, f"{name}_branch{index}", synchronized)
            outputs.append(branch)
        else:
            outputs.append(conv_bn(branches[-1], width, 3, 2, f"{name}_branch{index}", synchronized))
    return outputs


def fuse(branches: List, widths: List[int], num_outputs: int, name: str, synchronized: bool) -> List:
    """Multi-resolution fusion: output ``i`` = ReLU(sum_j resample_{j->i}(branch_j)).

    Args:
        branches: tensors ``(B, H/2**j, W/2**j, widths[j])`` (relative to branch 0).
        widths: channel count of every branch.
        num_outputs: how many outputs (highest resolution first) to build.

    Returns:
        ``num_outputs`` tensors, output ``i`` shaped like ``branches[i]``.
    """
    if len(branches) == 1:
        return list(branches)
    outputs = []
    for i in range(num_outputs):
        terms = []
        for j, branch in enumerate(branches):
            prefix = f"{name}_fuse{i}_from{j}"
            if j == i:
                terms.append(branch)
            elif j > i:
                y = conv_bn(branch, widths[i], 1, 1, prefix, synchronized, relu=False)
                terms.append(upsample_to(y, branches[i], 2 ** (j - i), prefix))
            else:
                y = branch
                for step in range(i - j):
                    last = step == i - j - 1
                    y = conv_bn(y, widths[i] if last else widths[j], 3, 2, f"{prefix}_down{step}",
                                synchronized, relu=not last)
                terms.append(y)
        total = layers.Add(name=f"{name}_fuse{i}_add")(terms)
        outputs.append(layers.Activation("relu", name=f"{name}_fuse{i}_relu")(total))
    return outputs


def hrnet_module(branches: List, widths: List[int], multi_scale_output: bool, name: str, synchronized: bool) -> List:
    """One high-resolution module: basic blocks on every branch, then fusion."""
    processed = []
    for index, (branch, width) in enumerate(zip(branches, widths)):
        for block in range(BLOCKS_PER_BRANCH):
            branch = basic_block(branch, width, f"{name}_branch{index}_block{block + 1}", synchronized)
        processed.append(branch)
    num_outputs = len(branches) if multi_scale_output else 1
    return fuse(processed, widths, num_outputs, name, synchronized)


def hrnet_backbone(x, width: int, synchronized: bool = False):
    """HRNet feature extractor. (B, H, W, 3) normalised -> (B, H/4, W/4, width)."""
    x = conv_bn(x, STEM_FILTERS, 3, 2, "stem1", synchronized)
    x = conv_bn(x, STEM_FILTERS, 3, 2, "stem2", synchronized)
    for block in range(STAGE1_BLOCKS):
        x = bottleneck_block(x, STEM_FILTERS, f"stage1_block{block + 1}", synchronized)
    branches = [x]
    for stage, num_modules in STAGE_MODULES.items():
        widths = [width * 2 ** index for index in range(stage)]
        branches = transition(branches, widths, f"transition{stage - 1}", synchronized)
        for module in range(num_modules):
            # Only the very last module of the network reduces to the highest-resolution branch.
            multi_scale_output = not (stage == max(STAGE_MODULES) and module == num_modules - 1)
            branches = hrnet_module(branches, widths, multi_scale_output, f"stage{stage}_module{module + 1}",
                                    synchronized)
    return branches[0]


def build(config: Mapping[str, Any]) -> keras.Model:
    """Builds HRNet-W``width`` from an experiment config (see module docstring).

    Args:
        config: loaded config; uses ``model``, ``dataset`` and ``data.input_size``/``data.heatmap_size``.

    Returns:
        ``keras.Model``: input ``(B, H_in, W_in, 3)`` float32 RGB 0..255, output
        ``(B, H_in/4, W_in/4, K)`` float32 heatmaps, channels-last.

    Raises:
        ValueError: invalid ``model`` keys, or ``data.heatmap_size`` is not ``data.input_size / 4``.
    """
    options = model_options(config)
    input_height, input_width = stride_heatmap_size(config, OUTPUT_STRIDE, "hrnet")
    num_joints = schema_for(config).num_joints
    synchronized = options["sync_batchnorm"]

    inputs, x = normalized_input(input_height, input_width)
    x = hrnet_backbone(x, options["width"], synchronized)
    # float32 output even under a mixed-precision policy (stable loss and decoding).
    outputs = layers.Conv2D(num_joints, 1, padding="same", kernel_initializer=_kernel_initializer(),
                            name="final_conv", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"hrnet_w{options['width']}")
