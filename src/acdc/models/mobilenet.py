"""MobileNetV1 (Howard et al., 2017): depthwise-separable convolutions, 4.2M params at 1000 classes."""

from __future__ import annotations

import torch
import torch.nn as nn

# (output channels, stride) of the 13 depthwise-separable blocks
_CFG: list[tuple[int, int]] = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]


def _conv_bn(inp: int, out: int, stride: int, groups: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 for 224x224 ImageNet-style inputs (any size >= 32 works via global pooling)."""

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")

        def c(ch: int) -> int:
            return max(8, int(ch * width_mult))

        layers: list[nn.Module] = [_conv_bn(in_channels, c(32), 2)]
        inp = c(32)
        for out, stride in _CFG:
            layers.append(_conv_bn(inp, inp, stride, groups=inp))  # depthwise 3x3
            layers.append(_conv_bn(inp, c(out), 1, k=1))  # pointwise 1x1
            inp = c(out)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(inp, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


def mobilenet_v1(
    num_classes: int, width_mult: float = 1.0, in_channels: int = 3, dropout: float = 0.0
) -> MobileNetV1:
    """MobileNetV1 with channel multiplier ``width_mult``."""
    return MobileNetV1(num_classes, width_mult=width_mult, in_channels=in_channels, dropout=dropout)
