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


def conflict_scale(dot: Tensor, reference_squared: Tensor) -> Tensor:
    """How much of g_ref A-GEM takes out of g, from dot = gᵀg_ref and g_refᵀg_ref:
    gᵀg_ref / g_refᵀg_ref when they conflict (negative dot product), else 0. A 0-d tensor:
    no host sync."""
    return torch.where(dot < 0, dot / reference_squared, torch.zeros_like(dot))


def agem_projection(gradient: Tensor, reference: Tensor) -> Tensor:
    """A-GEM's rule on flat vectors: `gradient` with its component against `reference`
    removed when they conflict, else `gradient` unchanged."""
    return gradient - conflict_scale(gradient @ reference, reference @ reference) * reference


class AGEM(Strategy):
    """Fine-tuning whose steps never raise the replay memory's loss (to first order).

    The step's gradient stays where backward put it, in each parameter's .grad, and is
    projected there; the memory's gradient goes into a flat buffer kept from step to step
    (fresh pages cost as much as the projection itself): no parameter-sized copy a step."""

    name = "agem"
    memory_use = "constraint"

    def __init__(self) -> None:
        super().__init__()
        self._reference = torch.empty(0)

    def constrain_gradient(self, params: Tensors, memory_loss: Callable[[], Tensor]) -> None:
        numel = sum(p.numel() for p in params)
        if self._reference.numel() != numel:
            self._reference = params[0].new_empty(numel)
        references = self._reference.zero_().split([p.numel() for p in params])
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for p, reference in zip(params, references, strict=True):
            p.grad = reference.view_as(p)  # the memory's backward pass adds into it in place
        memory_loss().backward()
        for p, reference in zip(params, references, strict=True):
            if p.grad is not None and p.grad.data_ptr() != reference.data_ptr():
                reference.copy_(p.grad.flatten())
        dot = torch.stack(
            [g.flatten() @ r for g, r in zip(gradients, references, strict=True)]
        ).sum()
        scale = conflict_scale(dot, self._reference @ self._reference).neg()
        for p, gradient, reference in zip(params, gradients, references, strict=True):
            p.grad = gradient.addcmul_(reference.view_as(p), scale)
