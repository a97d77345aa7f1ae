"""Torchvision architectures sized for the demo images (64x64, few classes, CPU minutes).

``resnet18`` here is torchvision's ``ResNet`` class with its ``BasicBlock``s in the ResNet-18
layout [2, 2, 2, 2]; only the widths and the stem are smaller, so module names (``layer4.1.conv2``,
``fc``) and ``forward`` are exactly torchvision's.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

DEMO_LAYOUTS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class SmallResNet(ResNet):
    """torchvision ResNet with a 3x3 stride-2 stem, no max-pool and configurable widths
    (64x64 inputs give 32, 16, 8, 4 pixels at layer1..layer4, like 56..7 at 224)."""

    def __init__(self, layers=(2, 2, 2, 2), widths=(16, 32, 64, 128), num_classes: int = 10):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_demo_net(arch: str, num_classes: int, width: int = 16) -> nn.Module:
    if arch not in DEMO_LAYOUTS:
        raise KeyError(f"no demo-sized variant of {arch!r}; allowed: {sorted(DEMO_LAYOUTS)}")
    return SmallResNet(DEMO_LAYOUTS[arch], tuple(width * 2**k for k in range(4)), num_classes)
