"""A-GEM (Chaudhry et al. 2019, "Efficient lifelong learning with A-GEM"): the replay memory
as a constraint instead of extra training data. With g the step's gradient and g_ref the
gradient of the loss on a minibatch drawn from the memory, the step takes

    g − (gᵀg_ref / g_refᵀg_ref) · g_ref     if gᵀg_ref < 0 (the step would raise the memory's loss)
    g                                        otherwise

over all trainable parameters as one vector. The memory is the one `replay.*` configures
(`replay.size` > 0 required); its minibatch is `replay.batch_size` samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ewcexp.importance.penalty import Tensors
from ewcexp.strategy.base import Strategy


def agem_projection(gradient: Tensor, reference: Tensor) -> Tensor:
    """A-GEM's rule on flat vectors: `gradient` with its component against `reference`
    removed when they conflict (negative dot product), else `gradient` unchanged. Computed
    without a host sync."""
    dot = gradient @ reference
    scale = torch.where(dot < 0, dot / (reference @ reference), torch.zeros_like(dot))
    return gradient - scale * reference


def _flat(params: Tensors) -> Tensor:
    return torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]
    )


class AGEM(Strategy):
    """Fine-tuning whose steps never raise the replay memory's loss (to first order)."""

    name = "agem"
    memory_use = "constraint"

    def constrain_gradient(self, params: Tensors, memory_loss: Callable[[], Tensor]) -> None:
        gradient = _flat(params)
        for p in params:
            p.grad = None
        memory_loss().backward()
        projected = agem_projection(gradient, _flat(params))
        for p, part in zip(params, projected.split([p.numel() for p in params]), strict=True):
            p.grad = part.view_as(p)
