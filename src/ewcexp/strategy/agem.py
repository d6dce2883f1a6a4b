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


def conflict_scale(gradient: Tensor, reference: Tensor) -> Tensor:
    """How much of `reference` A-GEM takes out of `gradient`: gᵀg_ref / g_refᵀg_ref when
    they conflict (negative dot product), else 0. A 0-d tensor: no host sync."""
    dot = gradient @ reference
    return torch.where(dot < 0, dot / (reference @ reference), torch.zeros_like(dot))


def agem_projection(gradient: Tensor, reference: Tensor) -> Tensor:
    """A-GEM's rule on flat vectors: `gradient` with its component against `reference`
    removed when they conflict, else `gradient` unchanged."""
    return gradient - conflict_scale(gradient, reference) * reference


class AGEM(Strategy):
    """Fine-tuning whose steps never raise the replay memory's loss (to first order).

    The two flat gradients live in buffers kept from step to step, the parameters' .grad
    are views into the projected one: a step allocates no parameter-sized vector (fresh
    pages cost as much as the projection itself)."""

    name = "agem"
    memory_use = "constraint"

    def __init__(self) -> None:
        super().__init__()
        self._gradient = self._reference = torch.empty(0)

    def constrain_gradient(self, params: Tensors, memory_loss: Callable[[], Tensor]) -> None:
        numel = sum(p.numel() for p in params)
        if self._gradient.numel() != numel:
            self._gradient, self._reference = params[0].new_empty(numel), params[0].new_empty(numel)
        gradient_views, reference_views = (
            _views(self._gradient, params),
            _views(self._reference, params),
        )
        for p, view, reference in zip(params, gradient_views, reference_views, strict=True):
            _copy_grad(p, view)
            p.grad = reference.zero_()  # the memory's backward pass adds into it in place
        memory_loss().backward()
        for p, view in zip(params, reference_views, strict=True):
            _copy_grad(p, view)
        scale = conflict_scale(self._gradient, self._reference)
        self._gradient.addcmul_(self._reference, scale.neg())
        for p, view in zip(params, gradient_views, strict=True):
            p.grad = view


def _views(buffer: Tensor, params: Tensors) -> list[Tensor]:
    """`buffer` cut into pieces shaped like `params`, sharing its memory."""
    parts = buffer.split([p.numel() for p in params])
    return [part.view_as(p) for part, p in zip(parts, params, strict=True)]


def _copy_grad(param: Tensor, into: Tensor) -> None:
    if param.grad is None:
        into.zero_()
    elif param.grad.data_ptr() != into.data_ptr():
        into.copy_(param.grad)
