"""HRNet's ``pose_hrnet`` (Sun et al., CVPR 2019), with its module names.

As in deep-high-resolution-net.pytorch / DarkPose ``lib/models/pose_hrnet.py``
(configs ``w32_256x192`` / ``w48_384x288``): stem ``conv1``/``bn1``/``conv2``/``bn2``
(3x3 stride 2, padding 1), ``layer1`` (4 bottlenecks), ``transition1..3``,
``stage2..4`` (1, 4, 3 modules of ``branches`` (4 basic blocks each) and
``fuse_layers``: ``1x1`` conv + BN + nearest upsampling from lower
resolutions, chains of stride-2 ``3x3`` conv + BN (+ ReLU but the last) from
higher ones) and ``final_layer`` (``1x1`` conv with bias).

``multi_scale_output=True`` keeps every fuse output of the last module, as the
ImageNet classification HRNet (HRNet-Image-Classification ``cls_hrnet.py``,
``hrnet_w32-36af842e.pth``) has; :func:`imagenet_extra_tensors` adds that
network's classification-head tensor names (``incre_modules``,
``downsamp_modules``, ``final_layer.0``, ``classifier``).
"""
import torch
from torch import nn

from .resnet import BasicBlock, Bottleneck

STAGE_MODULES = {2: 1, 3: 4, 4: 3}


def _conv_bn(in_channels, out_channels, kernel, stride, relu):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
              nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    def __init__(self, widths, multi_scale_output=True):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(width, width) for _ in range(4)]) for width in widths)
        self.fuse_layers = nn.ModuleList()
        for i in range(len(widths) if multi_scale_output else 1):
            row = []
            for j in range(len(widths)):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, 1, 0, bias=False),
                                             nn.BatchNorm2d(widths[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="nearest")))
                elif j == i:
                    row.append(None)
                else:
                    steps = [_conv_bn(widths[j], widths[i] if k == i - j - 1 else widths[j], 3, 2,
                                      relu=k != i - j - 1) for k in range(i - j)]
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(nn.ModuleList(row))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        x = [branch(xi) for branch, xi in zip(self.branches, x)]
        if len(x) == 1:
            return x
        outputs = []
        for i, row in enumerate(self.fuse_layers):
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, len(x)):
                y = y + (x[j] if i == j else row[j](x[j]))
            outputs.append(self.relu(y))
        return outputs


class PoseHighResolutionNet(nn.Module):
    def __init__(self, width=32, num_joints=17, multi_scale_output=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        downsample = nn.Sequential(nn.Conv2d(64, 256, 1, 1, bias=False), nn.BatchNorm2d(256))
        self.layer1 = nn.Sequential(Bottleneck(64, 64, 1, downsample), *[Bottleneck(256, 64) for _ in range(3)])
        previous = [256]
        for stage, num_modules in STAGE_MODULES.items():
            widths = [width * 2 ** b for b in range(stage)]
            transition = []
            for b, channels in enumerate(widths):
                if b < len(previous):
                    transition.append(_conv_bn(previous[b], channels, 3, 1, True) if previous[b] != channels
                                      else None)
                else:
                    transition.append(nn.Sequential(_conv_bn(previous[-1], channels, 3, 2, True)))
            setattr(self, f"transition{stage - 1}", nn.ModuleList(transition))
            modules = [HighResolutionModule(widths, multi_scale_output or stage < 4 or m < num_modules - 1)
                       for m in range(num_modules)]
            setattr(self, f"stage{stage}", nn.Sequential(*modules))
            previous = widths
        self.final_layer = nn.Conv2d(width, num_joints, 1, 1, 0)

    def features(self, x):
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))
        branches = [self.layer1(x)]
        for stage in STAGE_MODULES:
            transition = getattr(self, f"transition{stage - 1}")
            branches = [branches[b] if b < len(branches) and layer is None
                        else layer(branches[b] if b < len(branches) else branches[-1])
                        for b, layer in enumerate(transition)]
            branches = getattr(self, f"stage{stage}")(branches)
        return branches

    def forward(self, x):
        return self.final_layer(self.features(x)[0])


def imagenet_extra_tensors(width=32):
    """Name -> shape of the classification-head tensors of the ImageNet HRNet (not in the pose net)."""
    shapes = {}
    head_channels = (32, 64, 128, 256)
    for b in range(4):
        inplanes, planes = width * 2 ** b, head_channels[b]
        prefix = f"incre_modules.{b}.0."
        for name, shape in (("conv1", (planes, inplanes, 1, 1)), ("conv2", (planes, planes, 3, 3)),
                            ("conv3", (planes * 4, planes, 1, 1)), ("downsample.0", (planes * 4, inplanes, 1, 1))):
            shapes[prefix + name + ".weight"] = shape
        for name, channels in (("bn1", planes), ("bn2", planes), ("bn3", planes * 4), ("downsample.1", planes * 4)):
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}{name}.{suffix}"] = (channels,)
    for b in range(3):
        in_channels, out_channels = head_channels[b] * 4, head_channels[b + 1] * 4
        shapes[f"downsamp_modules.{b}.0.weight"] = (out_channels, in_channels, 3, 3)
        shapes[f"downsamp_modules.{b}.0.bias"] = (out_channels,)
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"downsamp_modules.{b}.1.{suffix}"] = (out_channels,)
    shapes["final_layer.0.weight"] = (2048, 1024, 1, 1)
    shapes["final_layer.0.bias"] = (2048,)
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"final_layer.1.{suffix}"] = (2048,)
    shapes["classifier.weight"] = (1000, 2048)
    shapes["classifier.bias"] = (1000,)
    return {name: torch.randn(shape) * 0.01 for name, shape in shapes.items()}
