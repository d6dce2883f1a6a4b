"""EWC++ (Chaudhry et al. 2018, "Riemannian walk"): the Fisher as a moving average updated
during training, consolidated online.

Every `update_every` steps, the squared gradient of the step's task loss (the minibatch's
mean loss, without the penalty: the `batched` kind of Fisher, so λ is on that scale) enters

    F ← α·F_new + (1 − α)·F          (the first estimate is taken as it is)

and F runs on across tasks. At the end of each task the penalty becomes (λ/2)·Σ F (θ − θ*)²
around the parameters just learned. The defaults (α = 0.1, every 10 steps) are those of the
authors' code, whose decay 0.9 is our 1 − α.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ewcexp.config.schema import Fraction, NonNegativeFloat, PositiveInt
from ewcexp.importance.contract import TaskData
from ewcexp.importance.penalty import Tensors, snapshot
from ewcexp.strategy.base import PenaltyStrategy


class EWCPlusPlus(PenaltyStrategy):
    """A running Fisher from the training steps themselves: no pass over the data at the end."""

    name = "ewcpp"
    importance_kind = "fisher"
    importance_from_training = True

    def __init__(
        self, strength: NonNegativeFloat, alpha: Fraction = 0.1, update_every: PositiveInt = 10
    ) -> None:
        super().__init__(strength)
        self.alpha, self.update_every = float(alpha), int(update_every)
        self.running: Tensors | None = None  # F
        self.steps = 0  # over the whole run
        self.penalty_gradient: Tensors | None = None  # kept for an updating step only

    def write_penalty_gradient(self, params: Tensors) -> None:
        super().write_penalty_gradient(params)
        updating = (self.steps + 1) % self.update_every == 0
        self.penalty_gradient = (
            [p.grad.clone() for p in params] if updating and self.penalty.terms else None
        )

    @torch.no_grad()
    def after_step(self, params: Tensors) -> None:
        self.steps += 1
        if self.steps % self.update_every:
            return
        gradients = [p.grad for p in params]
        if self.penalty_gradient is not None:  # the task loss's share of the step's gradient
            gradients = torch._foreach_sub(gradients, self.penalty_gradient)
        new = torch._foreach_mul(gradients, gradients)
        if self.running is None:
            self.running = new
        else:
            torch._foreach_lerp_(self.running, new, self.alpha)

    def end_task(self, model: nn.Module, params: Tensors, data: TaskData) -> Tensors | None:
        fisher = (
            [torch.zeros_like(p) for p in params]
            if self.running is None
            else [f.clone() for f in self.running]
        )
        self.consolidate(params, fisher)
        return fisher

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        self.penalty.replace(importance, snapshot(params))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "running": self.running, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.running, self.steps = state["running"], int(state["steps"])
