"""Continual-learning strategies around one quadratic-penalty core.

Every penalty here has the form (convention of Kirkpatrick et al. 2017)

    penalty(θ) = (λ/2) · [ Σ_k Σ_i F_k,i (θ_i − θ*_k,i)²  +  c ]

over a list of terms (precision F_k, anchor θ*_k); `c` is a constant kept so that
merged terms report the same value as the separate ones. Strategies differ only
in how `consolidate` folds a finished task into those terms. Each term is stored as
its stiffness λ·F_k, so that the gradient λ·F·(θ−θ*) costs two in-place passes per
parameter; it is written straight into `.grad` before the backward pass, so the stored
Fishers never enter an autograd graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ewcexp.task_sequence import Task

Tensors = list[Tensor]


class QuadraticPenalty:
    """(1/2)·Σ_k K_k (θ − θ*_k)² + (1/2)·c over per-parameter tensor lists, with stiffness K = λ·F."""

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)
        self.terms: list[tuple[Tensors, Tensors]] = []  # (stiffness λ·F, anchor) pairs
        self.constant = 0.0  # in the units of the stiffness: λ·c

    def stiffness(self, precision: Tensors) -> Tensors:
        return torch._foreach_mul(precision, self.strength)

    def add(self, precision: Tensors, anchor: Tensors) -> None:
        """Keep a new term of its own (memory and step cost grow with the number of terms)."""
        self.terms.append((self.stiffness(precision), anchor))

    def merge(self, precision: Tensors, anchor: Tensors) -> None:
        """Fold a term into the single existing one: A(θ−a)² + B(θ−b)² = (A+B)(θ−m)² + AB/(A+B)·(a−b)²,
        with m = (Aa + Bb)/(A+B); where A+B = 0, m = b (any value would do)."""
        if not self.terms:
            self.add(precision, anchor)
            return
        (old_stiffness, old_anchor), merged_stiffness, merged_anchor = self.terms[0], [], []
        new_stiffness = self.stiffness(precision)
        for a_k, a, b_k, b in zip(old_stiffness, old_anchor, new_stiffness, anchor, strict=True):
            total = a_k + b_k
            has_weight = total > 0
            safe_total = torch.where(has_weight, total, torch.ones_like(total))
            merged_anchor.append(torch.where(has_weight, (a_k * a + b_k * b) / safe_total, b))
            self.constant += float((a_k * b_k / safe_total * (a - b) ** 2).sum())
            merged_stiffness.append(total)
        self.terms = [(merged_stiffness, merged_anchor)]

    def replace(self, precision: Tensors, anchor: Tensors, decay: float = 0.0) -> None:
        """Keep one term only, at `anchor`, with stiffness λ·precision plus `decay` times the
        current one (online EWC's running Fisher; 0 forgets it). No constant."""
        stiffness = self.stiffness(precision)
        if self.terms and decay:
            torch._foreach_add_(stiffness, self.terms[0][0], alpha=decay)
        self.terms, self.constant = [(stiffness, anchor)], 0.0

    def precision(self) -> Tensors | None:
        """The single term's F (the stiffness over λ), for logging; None without one or at λ = 0."""
        if len(self.terms) != 1 or self.strength == 0:
            return None
        return torch._foreach_div(self.terms[0][0], self.strength)

    def state_dict(self) -> dict[str, object]:
        return {
            "terms": [[list(stiffness), list(anchor)] for stiffness, anchor in self.terms],
            "constant": self.constant,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.terms = [(list(stiffness), list(anchor)) for stiffness, anchor in state["terms"]]
        self.constant = float(state["constant"])

    @torch.no_grad()
    def value(self, params: Tensors) -> float:
        total = self.constant
        for stiffness, anchor in self.terms:
            diffs = torch._foreach_sub(params, anchor)
            torch._foreach_mul_(diffs, diffs)
            total += sum(
                float(torch.dot(d.flatten(), k.flatten()))
                for d, k in zip(diffs, stiffness, strict=True)
            )
        return 0.5 * total

    @torch.no_grad()
    def write_gradient(self, params: Tensors) -> None:
        """Overwrite each `.grad` with Σ_k K_k·(θ − θ*_k), before the backward pass, which then
        adds the loss's gradient on top. Writing instead of adding saves the zeroing pass and,
        for the first term, any temporary; θ − θ* is formed first, so nothing cancels."""
        grads = gradient_buffers(params)
        (stiffness, anchor), *others = self.terms
        for grad, param, k, a in zip(grads, params, stiffness, anchor, strict=True):
            torch.sub(param, a, out=grad).mul_(k)
        for stiffness, anchor in others:
            torch._foreach_addcmul_(grads, stiffness, torch._foreach_sub(params, anchor))


def gradient_buffers(params: Tensors) -> Tensors:
    """Each parameter's `.grad`, allocated where missing, to be overwritten in place."""
    for p in params:
        if p.grad is None:
            p.grad = torch.empty_like(p)
    return [p.grad for p in params]


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

    def start_gradient(self, params: Tensors) -> None:
        """Set `.grad` to the penalty's gradient, for `loss.backward()` to add to: the optimizer's
        `zero_grad` and the penalty in one pass. Without a penalty term, `.grad` is set to None,
        so the backward pass stores its gradient instead of adding it to zeros (faster)."""
        if self.penalty is None or not self.penalty.terms:
            for p in params:
                p.grad = None
        else:
            self.penalty.write_gradient(params)

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
        return self.penalty.precision()


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
        self.penalty.replace(fisher, snapshot(params), decay=self.gamma)

    def accumulated_fisher(self) -> Tensors | None:
        return self.penalty.precision()
