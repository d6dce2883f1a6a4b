"""Continual-learning strategies around one quadratic-penalty core.

Every penalty here has the form (convention of Kirkpatrick et al. 2017)

    penalty(θ) = (λ/2) · [ Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²  +  c ]

over a list of terms (precision F_k, anchor θ*_k); `c` is a constant kept so that
merged terms report the same value as the separate ones. Strategies differ only
in how `consolidate` folds a finished task into those terms. The penalty's
gradient λ·F·(θ−θ*) is added straight into `.grad` with fused multi-tensor ops,
so the stored Fishers never enter an autograd graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ewcexp.task_sequence import Task

Tensors = list[Tensor]


class QuadraticPenalty:
    """(λ/2)·Σ_k F_k (θ − θ*_k)² + (λ/2)·c over per-parameter tensor lists."""

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)
        self.terms: list[tuple[Tensors, Tensors]] = []  # (precision, anchor) pairs
        self.constant = 0.0

    def add(self, precision: Tensors, anchor: Tensors) -> None:
        """Keep a new term of its own (memory and step cost grow with the number of terms)."""
        self.terms.append((precision, anchor))

    def merge(self, precision: Tensors, anchor: Tensors) -> None:
        """Fold a term into the single existing one: A(θ−a)² + B(θ−b)² = (A+B)(θ−m)² + AB/(A+B)·(a−b)²,
        with m = (Aa + Bb)/(A+B); where A+B = 0, m = b (any value would do)."""
        if not self.terms:
            self.add(precision, anchor)
            return
        (old_precision, old_anchor), merged_precision, merged_anchor = self.terms[0], [], []
        for a_prec, a, b_prec, b in zip(old_precision, old_anchor, precision, anchor, strict=True):
            total = a_prec + b_prec
            has_weight = total > 0
            safe_total = torch.where(has_weight, total, torch.ones_like(total))
            merged_anchor.append(torch.where(has_weight, (a_prec * a + b_prec * b) / safe_total, b))
            self.constant += float((a_prec * b_prec / safe_total * (a - b) ** 2).sum())
            merged_precision.append(total)
        self.terms = [(merged_precision, merged_anchor)]

    def replace(self, precision: Tensors, anchor: Tensors) -> None:
        """Drop every term and keep only this one (no constant)."""
        self.terms, self.constant = [(precision, anchor)], 0.0

    def state_dict(self) -> dict[str, object]:
        return {
            "terms": [[list(precision), list(anchor)] for precision, anchor in self.terms],
            "constant": self.constant,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.terms = [(list(precision), list(anchor)) for precision, anchor in state["terms"]]
        self.constant = float(state["constant"])

    @torch.no_grad()
    def value(self, params: Tensors) -> float:
        total = self.constant
        for precision, anchor in self.terms:
            diffs = torch._foreach_sub(params, anchor)
            torch._foreach_mul_(diffs, diffs)
            total += sum(
                float(torch.dot(d.flatten(), f.flatten()))
                for d, f in zip(diffs, precision, strict=True)
            )
        return 0.5 * self.strength * total

    @torch.no_grad()
    def add_gradient(self, params: Tensors) -> None:
        """grad += λ · F · (θ − θ*) for every term, as a handful of fused ops per term."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        for precision, anchor in self.terms:
            diffs = torch._foreach_sub(params, anchor)
            torch._foreach_addcmul_(grads, precision, diffs, value=self.strength)


def snapshot(params: Tensors) -> Tensors:
    return [p.detach().clone() for p in params]


class Finetune:
    """Train on the newest task only, no penalty: the lower bound."""

    name = "finetune"
    needs_fisher = False

    def __init__(self) -> None:
        self.penalty: QuadraticPenalty | None = None

    def training_tasks(self, seen: list[Task]) -> list[Task]:
        return seen[-1:]

    def consolidate(self, params: Tensors, fisher: Tensors | None) -> None:
        """Fold the task just finished (parameters θ*, Fisher F) into the penalty."""

    def add_penalty_gradient(self, params: Tensors) -> None:
        if self.penalty is not None:
            self.penalty.add_gradient(params)

    def penalty_value(self, params: Tensors) -> float:
        return 0.0 if self.penalty is None else self.penalty.value(params)

    def accumulated_fisher(self) -> Tensors | None:
        """The Fisher merged over tasks, for strategies that keep one."""
        return None

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint needs to continue: the penalty's terms."""
        return {} if self.penalty is None else self.penalty.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        if self.penalty is not None:
            self.penalty.load_state_dict(state)


class Joint(Finetune):
    """Train on every task seen so far together, no penalty: the upper bound."""

    name = "joint"

    def training_tasks(self, seen: list[Task]) -> list[Task]:
        return list(seen)


class EWC(Finetune):
    """Separate penalties: one (F_t, θ*_t) term per past task, O(T·P) memory and step cost."""

    name = "ewc"
    needs_fisher = True

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.penalty = QuadraticPenalty(strength)

    def consolidate(self, params: Tensors, fisher: Tensors | None) -> None:
        self.penalty.add(fisher, snapshot(params))


class EWCSum(EWC):
    """The separate penalties summed into one quadratic: F̄ = Σ F_t around the precision-weighted
    mean of the anchors. Same gradient as `ewc`, O(P) for any number of tasks."""

    name = "ewc_sum"

    def consolidate(self, params: Tensors, fisher: Tensors | None) -> None:
        self.penalty.merge(fisher, snapshot(params))

    def accumulated_fisher(self) -> Tensors | None:
        return self.penalty.terms[0][0] if self.penalty.terms else None


class L2(EWCSum):
    """EWC with F = 1 for every parameter: plain distance to the past tasks' parameters."""

    name = "l2"
    needs_fisher = False

    def consolidate(self, params: Tensors, fisher: Tensors | None) -> None:
        super().consolidate(params, [torch.ones_like(p) for p in params])

    def accumulated_fisher(self) -> Tensors | None:
        return None  # all ones: nothing to look at


class OnlineEWC(EWC):
    """Online EWC (Schwarz et al. 2018): F̃_t = γ·F̃_{t−1} + F_t, anchored at the latest θ*_t only.
    (γ is applied once, here; some implementations multiply by γ again inside the loss.)"""

    name = "online_ewc"

    def __init__(self, strength: float, gamma: float = 1.0) -> None:
        super().__init__(strength)
        self.gamma = float(gamma)

    def consolidate(self, params: Tensors, fisher: Tensors | None) -> None:
        if self.penalty.terms:
            running = torch._foreach_mul(self.penalty.terms[0][0], self.gamma)
            fisher = torch._foreach_add(running, fisher)
        self.penalty.replace(fisher, snapshot(params))

    def accumulated_fisher(self) -> Tensors | None:
        return self.penalty.terms[0][0] if self.penalty.terms else None
