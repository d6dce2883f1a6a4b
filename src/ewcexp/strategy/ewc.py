"""EWC and the methods that share its diagonal penalty (λ/2)·Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²
(the convention of Kirkpatrick et al. 2017); they differ only in how a finished task is
folded into the terms."""

from __future__ import annotations

import torch

from ewcexp.config.schema import Fraction, NonNegativeFloat
from ewcexp.importance.contract import Importance, ImportanceEstimator
from ewcexp.importance.penalty import Tensors, snapshot
from ewcexp.strategy.base import PenaltyStrategy


def diagonal_only(path: str, importance: dict | None = None, **_: object) -> str | None:
    """`ewc_sum` promises the exact sum of the separate penalties in one term, and a sum of
    Kronecker products around different anchors is no Kronecker product around any anchor
    (checked with the config, before anything loads)."""
    if importance and importance.get("structure") == "kfac":
        return (
            f"fisher.structure=kfac is not allowed with {path}=ewc_sum: it merges the "
            "tasks' terms into one exactly, and a sum of Kronecker products is not one; use "
            "strategy=ewc (one term per task, exact) or strategy=online_ewc (one merged term)"
        )
    return None


class EWC(PenaltyStrategy):
    """Separate penalties: one (F_t, θ*_t) term per past task, O(T·P) memory and step cost."""

    name = "ewc"

    def consolidate(self, params: Tensors, importance: Importance) -> None:
        self.penalty.add(importance, snapshot(params))  # Kronecker blocks too: still exact


class EWCSum(PenaltyStrategy):
    """The separate penalties summed into one quadratic: F̄ = Σ F_t around the precision-weighted
    mean of the anchors. Same gradient as `ewc`, O(P) for any number of tasks."""

    name = "ewc_sum"
    check_arguments = staticmethod(diagonal_only)

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        self.penalty.merge(importance, snapshot(params))

    def accumulated_importance(self) -> Tensors | None:
        return self.penalty.precision()


class L2(EWCSum):
    """EWC with F = 1 for every parameter: plain distance to the past tasks' parameters."""

    name = "l2"

    def __init__(self, strength: NonNegativeFloat) -> None:
        super().__init__(strength)

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        super().consolidate(params, [torch.ones_like(p) for p in params])

    def accumulated_importance(self) -> Tensors | None:
        return None  # all ones: nothing to look at


class OnlineEWC(PenaltyStrategy):
    """Online EWC (Schwarz et al. 2018): F̃_t = γ·F̃_{t−1} + F_t, anchored at the latest θ*_t only.
    (γ is applied once, here; some implementations multiply by γ again inside the loss.)
    With Kronecker blocks (Ritter et al. 2018's online Laplace recursion) each block's
    γ·Ã⊗G̃ + A_t⊗G_t is replaced by its nearest Kronecker product: see `kfac.nearest_kronecker`."""

    name = "online_ewc"

    def __init__(
        self,
        strength: NonNegativeFloat,
        importance: ImportanceEstimator | None = None,
        gamma: Fraction = 1.0,
    ) -> None:
        super().__init__(strength, importance)
        self.gamma = float(gamma)

    def consolidate(self, params: Tensors, importance: Tensors | None) -> None:
        self.penalty.replace(importance, snapshot(params), decay=self.gamma)

    def accumulated_importance(self) -> Tensors | None:
        return self.penalty.precision()
