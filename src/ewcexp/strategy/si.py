"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): importance from the path integral of
each parameter's contribution to the decrease of the task loss, on the shared penalty core.

While training task μ, after every optimizer step,

    ω_i += −g_i · Δθ_i        g: the gradient of the task loss alone, Δθ: the step just taken

and at the end of the task Ω_i += ω_i / ((θ_i(μ) − θ_i(μ−1))² + ξ), ω ← 0; the penalty is
(λ/2)·Σ_i Ω_i (θ_i − θ*_i)² around the latest parameters. The paper writes it c·Σ Ω (θ̃ − θ)²
(no ½), so its c is our λ/2: c = 0.1 is λ = 0.2.

The gradient the optimizer stepped with includes the penalty's (written before backward);
the task loss's share is recovered by subtracting the penalty's gradient at the parameters
before the step, which this strategy keeps to measure Δθ anyway.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ewcexp.config.schema import NonNegativeFloat, PositiveFloat
from ewcexp.importance.contract import TaskData
from ewcexp.importance.penalty import DiagonalTerm, Tensors, snapshot
from ewcexp.strategy.base import PenaltyStrategy


class SI(PenaltyStrategy):
    """Synaptic Intelligence; `xi` (ξ) damps the division by small total changes."""

    name = "si"
    importance_kind = "si"  # the path integral: no estimator
    importance_from_training = True

    def __init__(self, strength: NonNegativeFloat, xi: PositiveFloat = 0.1) -> None:
        super().__init__(strength)
        self.xi = float(xi)
        self.omega: Tensors | None = None  # ω: the path integral over the current task
        self.before_step: Tensors | None = None  # θ before the step being taken
        self.task_start: Tensors | None = None  # θ(μ−1): the parameters the task started from
        self.importance_sum: Tensors | None = None  # Ω, summed over the tasks so far

    def write_penalty_gradient(self, params: Tensors) -> None:
        if self.before_step is None:  # the first step of the run: θ before it is θ(0)
            self.start_path(params)
        super().write_penalty_gradient(params)

    def start_path(self, params: Tensors) -> None:
        self.before_step, self.task_start = snapshot(params), snapshot(params)
        self.omega = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def after_step(self, params: Tensors) -> None:
        """ω += −g·Δθ, with g = (the step's gradient) − (the penalty's gradient before it)."""
        step = torch._foreach_sub(params, self.before_step)
        torch._foreach_addcmul_(self.omega, [p.grad for p in params], step, value=-1.0)
        if self.penalty.terms:
            (term,) = self.penalty.terms
            assert isinstance(term, DiagonalTerm)
            penalty_gradient = torch._foreach_sub(self.before_step, term.anchor)
            torch._foreach_mul_(penalty_gradient, term.stiffness)
            torch._foreach_addcmul_(self.omega, penalty_gradient, step)
        torch._foreach_copy_(self.before_step, params)

    def end_task(self, model: nn.Module, params: Tensors, data: TaskData) -> Tensors | None:
        importance = self.task_importance(params)
        self.consolidate(params, importance)
        return importance

    @torch.no_grad()
    def task_importance(self, params: Tensors) -> Tensors:
        """ω / ((θ(μ) − θ(μ−1))² + ξ) for the task just trained; ω and θ(μ−1) restart."""
        if self.omega is None:  # no step taken yet: nothing moved
            self.start_path(params)
        change = torch._foreach_sub(params, self.task_start)
        torch._foreach_mul_(change, change)
        torch._foreach_add_(change, self.xi)
        importance = torch._foreach_div(self.omega, change)
        self.task_start = snapshot(params)
        for w in self.omega:
            w.zero_()
        return importance

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        """Ω += the task's importance; the stiffness is λ·Ω (penalty (λ/2)·Σ Ω(θ − θ*)²) around
        the latest parameters."""
        if self.importance_sum is None:
            self.importance_sum = [t.clone() for t in importance]
        else:
            torch._foreach_add_(self.importance_sum, importance)
        self.penalty.replace(self.importance_sum, snapshot(params))

    def accumulated_importance(self) -> Tensors | None:
        return self.importance_sum

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "omega": self.omega,
            "before_step": self.before_step,
            "task_start": self.task_start,
            "importance_sum": self.importance_sum,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.omega, self.before_step = state["omega"], state["before_step"]
        self.task_start, self.importance_sum = state["task_start"], state["importance_sum"]
