"""The small convolutional classifiers: synthmed's two-layer baseline (``cnn``) and the OCT synthetic-ratio study's
three-layer CNN (``oct_cnn``), plus Xavier initialisation (``classifier.init: xavier``)."""

from __future__ import annotations

import torch
from torch import nn

from synthmed.errors import ConfigError


class SmallCNN(nn.Module):
    """synthmed's small baseline: two 3x3 conv layers with ReLU and 2x2 max pooling, 4x4 adaptive average pooling;
    features feed one FC layer."""

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.out_dim = 2 * width * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class OctCNN(nn.Module):
    """The OCT synthetic-ratio study's CNN: three blocks of 3x3 conv (padding 1) + ReLU + 2x2 max-pool with 3 -> 16 ->
    32 -> 64 channels, flatten, FC to 128 + ReLU (the features); the head is FC 128 -> classes. No dropout, no
    batch norm. The flattened size is 64 (size // 8)^2, so the net is built for one input size (262,144 inputs to
    the FC layer at 512 px)."""

    def __init__(self, size: int, in_channels: int = 3) -> None:
        super().__init__()
        if size < 8:
            raise ConfigError(f"classifier.model=oct_cnn needs images of at least 8 px (three 2x2 poolings), got {size}")
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        side = size // 8
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(inplace=True))
        self.out_dim = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def xavier_init(module: nn.Module) -> int:
    """Xavier-uniform (Glorot) weights and zero biases for every conv and linear layer; returns how many."""
    n = 0
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            n += 1
    return n
