"""Networks. Each takes raw uint8 images and scales them itself, so data stays uint8 in memory."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


def as_float(images: Tensor) -> Tensor:
    """uint8 pixels to [0, 1] floats; float input is taken as already scaled."""
    return images if images.is_floating_point() else images.float() / 255


class MLP(nn.Module):
    """Fully connected ReLU network; in the task scenario its output layer holds every task's head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        hidden_sizes: Sequence[int] = (400, 400),
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden_sizes]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(as_float(images).flatten(1))


class CNN(nn.Module):
    """Small convolutional network: [conv 3x3, ReLU, max-pool 2] per entry of `channels`, then a
    hidden fully connected layer and the output layer. Grey images [N, H, W] or [N, C, H, W]."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
    ) -> None:
        super().__init__()
        in_channels, height, width = (1, *input_shape) if len(input_shape) == 2 else input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, out_features),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = as_float(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))
