"""Torchvision's ResNet layout sized for the demo images (64x64, few classes, CPU minutes).

``resnet18`` here is torchvision's ``ResNet`` with ``BasicBlock``s in the ResNet-18 layout
[2, 2, 2, 2]; only the widths and the stem are smaller. It is written out here rather than
subclassed from ``torchvision.models.resnet``, because importing any part of torchvision
imports ``torch._dynamo`` (through ``torchvision.ops``), about 2.6 s of every job's start-up
while the demo needs none of it. Module names (``layer4.1.conv2``, ``fc``), module creation
order (so the same seed gives the same weights, bit for bit), initialisation and ``forward``
are exactly torchvision's: ``tests/unit/models/test_models.py`` builds both from one seed and compares
state dicts and outputs.
"""
from __future__ import annotations

import torch
from torch import nn

DEMO_LAYOUTS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (groups 1, no dilation)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    """torchvision ResNet with a 3x3 stride-2 stem, no max-pool and configurable widths
    (64x64 inputs give 32, 16, 8, 4 pixels at layer1..layer4, like 56..7 at 224)."""

    def __init__(self, layers=(2, 2, 2, 2), widths=(16, 32, 64, 128), num_classes: int = 10):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        # the downsample branch is built before the first block, as torchvision does (the
        # order in which modules are built is the order their default inits draw numbers)
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1,
                          stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_demo_net(arch: str, num_classes: int, width: int = 16) -> nn.Module:
    if arch not in DEMO_LAYOUTS:
        raise KeyError(f"no demo-sized variant of {arch!r}; allowed: {sorted(DEMO_LAYOUTS)}")
    return SmallResNet(DEMO_LAYOUTS[arch], tuple(width * 2**k for k in range(4)), num_classes)
