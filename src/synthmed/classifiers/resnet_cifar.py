"""CIFAR-style ResNet-20 / ResNet-32 (He et al. 2016, section 4.2): the standard backbone of the long-tail literature.

A 3x3 stride-1 conv with 16 channels, then three stages of ``n`` BasicBlocks with 16, 32 and 64 channels (stride 2 at
the start of stages 2 and 3), global average pooling -> 64 features. Depth = 6n + 2: n = 3 -> ResNet-20 (0.27 M
parameters), n = 5 -> ResNet-32 (0.46 M).

Shortcuts are **option A** of the paper (as in the LDAM-DRW / logit-adjustment reference code): where a block halves
the resolution and doubles the width, the identity is subsampled with stride 2 and zero-padded with the missing
channels, so the shortcut has no parameters. Convolutions and the linear head use Kaiming-normal initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEPTHS = {"resnet20": 3, "resnet32": 5}


class ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling plus zero channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, half, self.pad - half))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes
                                    else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The backbone (up to the pooled 64-d features); the classifier head lives in :class:`~.models.Net`."""

    def __init__(self, n_blocks: int, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n_blocks):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.out_dim = widths[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def cifar_resnet(name: str, in_channels: int) -> CifarResNet:
    """``resnet20`` or ``resnet32`` taking ``in_channels`` directly (grayscale is not repeated to RGB)."""
    return CifarResNet(DEPTHS[name], in_channels)
