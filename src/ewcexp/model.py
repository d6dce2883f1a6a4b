"""Networks. Each takes raw uint8 images and scales them itself, so data stays uint8 in memory."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected ReLU network; in the task scenario its output layer holds every task's head."""

    def __init__(
        self, in_features: int, out_features: int, hidden_sizes: Sequence[int] = (400, 400)
    ):
        super().__init__()
        widths = [in_features, *hidden_sizes]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        x = images.flatten(1)
        if not x.is_floating_point():
            x = x.float() / 255
        return self.layers(x)
