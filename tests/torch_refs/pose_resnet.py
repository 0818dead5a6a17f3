"""SimpleBaseline's ``pose_resnet`` (Xiao et al., ECCV 2018), with its module names.

As in Microsoft's human-pose-estimation.pytorch and DarkPose ``lib/models/pose_resnet.py``:
the ResNet backbone (torchvision names, no ``fc``), ``deconv_layers`` =
``Sequential(ConvTranspose2d(k=4, s=2, p=1, output_padding=0, bias=False), BN, ReLU) x 3``
(indices 0/1, 3/4, 6/7 hold weights) and ``final_layer`` = ``Conv2d(256, K, 1)`` with bias.
"""
from torch import nn

from .resnet import ResNet

# ConvTranspose2d padding / output_padding per kernel size, as pose_resnet's _get_deconv_cfg.
DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class PoseResNet(ResNet):
    def __init__(self, depth=50, num_joints=17, deconv_filters=(256, 256, 256), deconv_kernel=4, final_kernel=1):
        super().__init__(depth, classifier=False)
        padding, output_padding = DECONV_PADDING[deconv_kernel]
        layers = []
        channels = self.inplanes
        for filters in deconv_filters:
            layers += [nn.ConvTranspose2d(channels, filters, deconv_kernel, 2, padding, output_padding, bias=False),
                       nn.BatchNorm2d(filters), nn.ReLU(inplace=True)]
            channels = filters
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_joints, final_kernel, 1, 1 if final_kernel == 3 else 0)

    def forward(self, x):
        return self.final_layer(self.deconv_layers(self.features(x)))
