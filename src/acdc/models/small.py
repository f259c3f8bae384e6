"""Small models for the MNIST / digits demos and quick tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool blocks and a 2-layer classifier head.

    An ``AdaptiveAvgPool2d((7, 7))`` before the flatten makes the head independent of the input
    resolution, so the same network runs on 28x28 MNIST and 8x8 sklearn digits.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, hidden: int = 128, width: int = 32) -> None:
        super().__init__()
        c1, c2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d((7, 7)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs."""

    def __init__(
        self, num_classes: int = 10, in_features: int = 784, hidden: Sequence[int] = (1024, 1024)
    ) -> None:
        super().__init__()
        if isinstance(hidden, int):
            hidden = (hidden,)
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, int(h)), nn.ReLU(inplace=True)]
            prev = int(h)
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def small_cnn(num_classes: int, in_channels: int = 1, hidden: int = 128, width: int = 32) -> SmallCNN:
    """Small CNN for 1x28x28 (or any size) inputs; ``width`` channels in the first conv, twice that in the second."""
    return SmallCNN(num_classes, in_channels=in_channels, hidden=hidden, width=width)


def mlp(num_classes: int, in_features: int = 784, hidden: Sequence[int] = (1024, 1024)) -> MLP:
    """MLP; ``in_features`` must equal the flattened input size (784 for MNIST, 64 for digits)."""
    return MLP(num_classes, in_features=in_features, hidden=hidden)
