"""Low-rank adapters (LoRA, Hu et al. 2021) on a network's linear and convolutional layers:
`model.lora.rank=r` wraps each targeted layer W as W·x + (α/r)·B·A·x with A (r × in) and B
(out × r, zero at the start, so the network begins as it was), W frozen.

Our own adapter rather than peft's: A and B are themselves `nn.Linear` (or `nn.Conv2d`)
layers, so the per-sample Fisher's fast paths and the Kronecker factors take them as they
take any layer, and no further dependency (peft needs transformers and accelerate) is added.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import Tensor, nn

from ewcexp.config.checks import ConfigError, show
from ewcexp.config.schema import PositiveFloat, PositiveInt
from ewcexp.model.weights import output_layer_name


@dataclass(frozen=True)
class LoRASettings:
    """The `model.lora` section: adapters of `rank` (None: none) on the layers whose module
    names match `targets` (None: every linear and convolutional layer but the output layer),
    scaled by `alpha`/`rank` (None: α = rank, a scale of 1)."""

    rank: PositiveInt | None = None
    targets: list[str] | None = None
    alpha: PositiveFloat | None = None


class LoRALinear(nn.Module):
    """`base(x) + scale · up(down(x))`: `base` frozen, `down` and `up` the adapter."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


class LoRAConv2d(nn.Module):
    """The convolutional form: `down` a convolution of `base`'s kernel, stride and padding
    to `rank` channels, `up` a 1×1 convolution back to `base`'s channels."""

    def __init__(self, base: nn.Conv2d, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.down = nn.Conv2d(
            base.in_channels, rank, base.kernel_size, base.stride, base.padding,
            base.dilation, base.groups if rank % base.groups == 0 else 1, bias=False,
        )  # fmt: skip
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * self.up(self.down(x))


def add_adapters(model: nn.Module, settings: LoRASettings) -> list[str]:
    """Wrap the targeted layers of `model` in place; returns the adapters' parameter names.
    Parameters are not frozen here (`freeze_all_but` does that, keeping the adapters)."""
    assert settings.rank is not None
    layers = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    if settings.targets is None:
        output = output_layer_name(model)
        chosen = [(name, m) for name, m in layers if name != output]
    else:
        chosen = []
        for pattern in settings.targets:
            matched = [(n, m) for n, m in layers if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                names = [n for n, _ in layers]
                raise ConfigError(
                    f"model.lora.targets={show(settings.targets)} is not allowed: {pattern!r} "
                    f"matches no linear or convolutional layer; the model's are "
                    f"{', '.join(names[:12])}"
                    + (f" and {len(names) - 12} more" if len(names) > 12 else "")
                )
            chosen += [(n, m) for n, m in matched if (n, m) not in chosen]
    scale = (settings.alpha or settings.rank) / settings.rank
    names = []
    for name, layer in chosen:
        wrap = LoRALinear if isinstance(layer, nn.Linear) else LoRAConv2d
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrap(layer, settings.rank, scale))
        names += [f"{name}.down.weight", f"{name}.up.weight"]
    return names
