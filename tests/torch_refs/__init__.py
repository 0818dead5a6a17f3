"""PyTorch reference networks for the weight-import tests (imported only by tests; need torch).

Written for these tests from the published architectures, with the published
module and parameter names, so their ``state_dict()`` has the names and shapes
of the released checkpoints:

* :mod:`.resnet`: torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ``layer1.0.downsample.0``, ``fc``; v1.5, the stride on the 3x3 conv).
* :mod:`.pose_resnet`: SimpleBaseline's ``pose_resnet`` (Xiao et al., ECCV
  2018; Microsoft human-pose-estimation.pytorch, DarkPose): the ResNet plus
  ``deconv_layers`` and ``final_layer``.
* :mod:`.pose_hrnet`: HRNet's ``pose_hrnet`` (Sun et al., CVPR 2019;
  deep-high-resolution-net.pytorch, DarkPose), and its ImageNet classification
  variant's extra tensors (HRNet-Image-Classification).

:func:`randomize` gives every parameter and BatchNorm running statistic random
values, so a conversion that mixes up ``running_mean`` / ``running_var`` /
``weight`` / ``bias`` cannot pass.
"""
import torch
from torch import nn


@torch.no_grad()
def randomize(module: nn.Module, seed: int, calibration_input: torch.Tensor) -> nn.Module:
    """Random weights and BN statistics, scaled so activations stay O(1) through the depth.

    The BN running statistics are first set to the batch statistics of
    ``calibration_input`` (one training-mode pass with momentum 1), then
    perturbed: mean += 0.2 * std * N(0, 1), var *= U(0.5, 2). BN affine
    parameters: weight U(0.5, 1.5), bias N(0, 0.2). Returns ``module`` in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in module.named_parameters():
        if parameter.ndim > 1:
            fan_in = parameter[0].numel() if not isinstance(_owner(module, name), nn.ConvTranspose2d) \
                else parameter.shape[0] * parameter.shape[2] * parameter.shape[3] / 4
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
        elif name.endswith("weight"):
            parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
        else:
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    module.train()
    module(calibration_input)
    for norm in norms:
        std = norm.running_var.sqrt()
        norm.running_mean += 0.2 * std * torch.randn(norm.running_mean.shape, generator=generator)
        norm.running_var *= 0.5 + 1.5 * torch.rand(norm.running_var.shape, generator=generator)
        norm.momentum = 0.1
        norm.num_batches_tracked.fill_(1000)
    return module.eval()


def _owner(module: nn.Module, parameter_name: str) -> nn.Module:
    owner = module
    for part in parameter_name.split(".")[:-1]:
        owner = getattr(owner, part)
    return owner
