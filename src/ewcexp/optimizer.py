"""The `optimizer` config group: torch's optimizers, with their config keys declared.

Each is built with `_partial_: true`, so the runner completes it with the parameters:
`instantiate(cfg.optimizer)(params)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import torch
from torch import Tensor

from ewcexp.schema import NonNegativeFloat, PositiveFloat, Range

Beta = Annotated[float, Range(ge=0, lt=1)]


class Adam(torch.optim.Adam):
    """Adam; `fused` runs one kernel for all parameters (~1.5x faster steps on CPU)."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: PositiveFloat = 1e-3,
        betas: tuple[Beta, Beta] = (0.9, 0.999),
        fused: bool = True,
    ) -> None:
        super().__init__(params, lr=lr, betas=tuple(betas), fused=fused)


class SGD(torch.optim.SGD):
    """Plain SGD, with optional momentum."""

    def __init__(
        self, params: Iterable[Tensor], lr: PositiveFloat = 0.01, momentum: NonNegativeFloat = 0.0
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum)
