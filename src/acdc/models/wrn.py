"""Wide Residual Networks (Zagoruyko & Komodakis, 2016), pre-activation basic blocks.

WRN-28-10 with 100 classes has 36.5M parameters, the CIFAR-100 model of the AC/DC paper (B.1).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with a 1x1 conv shortcut when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        same_shape = in_planes == planes and stride == 1
        self.shortcut = None if same_shape else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + skip


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs (depth = 6n+4)."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 100,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        self.depth, self.width = depth, width
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, stride if i == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def wrn(num_classes: int, depth: int = 28, width: int = 10, dropout: float = 0.0, in_channels: int = 3
        ) -> WideResNet:
    """Generic WideResNet-depth-width."""
    return WideResNet(depth, width, num_classes, dropout=dropout, in_channels=in_channels)


def wrn28_10(num_classes: int, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WideResNet-28-10 (36.5M parameters at 100 classes)."""
    return WideResNet(28, 10, num_classes, dropout=dropout, in_channels=in_channels)
