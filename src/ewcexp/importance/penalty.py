"""The quadratic-penalty core every penalty strategy shares.

    penalty(θ) = (1/2) · [ Σ_k q_k(θ)  +  c ]

is a list of terms, each owning its quadratic form q_k and its gradient ∂(q_k/2)/∂θ: a
diagonal term (EWC, L2, online EWC) has q = Σ_i K_i (θ_i − θ*_i)² with stiffness K = λ·F;
other terms (Kronecker-factored blocks) can sit beside it. `c` is a constant kept so that
merged terms report the same value as the separate ones. The gradient is written straight
into `.grad` before the backward pass (which adds the loss's gradient on top), so stored
importances never enter an autograd graph.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

Tensors = list[Tensor]


class PenaltyTerm:
    """One term of the penalty. Subclasses set `kind` (its name in checkpoints)."""

    kind: ClassVar[str]
    kinds: ClassVar[dict[str, type[PenaltyTerm]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PenaltyTerm.kinds[cls.kind] = cls

    def quadratic(self, params: Tensors) -> float:
        """q(θ): twice this term's share of the penalty."""
        raise NotImplementedError

    def write_gradient(self, grads: Tensors, params: Tensors) -> None:
        """Overwrite `grads` with ∂(q/2)/∂θ."""
        raise NotImplementedError

    def add_gradient(self, grads: Tensors, params: Tensors) -> None:
        """Add ∂(q/2)/∂θ to `grads`."""
        raise NotImplementedError

    def plus_decayed(self, older: PenaltyTerm, decay: float) -> PenaltyTerm:
        """One term around this one's anchor with this curvature plus `decay` times `older`'s
        (online EWC's running Fisher)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PenaltyTerm:
        return cls.kinds[state["kind"]].from_state(state)


class DiagonalTerm(PenaltyTerm):
    """q(θ) = Σ_i K_i (θ_i − θ*_i)², one stiffness K and anchor θ* tensor per parameter."""

    kind = "diagonal"

    def __init__(self, stiffness: Tensors, anchor: Tensors) -> None:
        self.stiffness, self.anchor = stiffness, anchor

    def quadratic(self, params: Tensors) -> float:
        diffs = torch._foreach_sub(params, self.anchor)
        torch._foreach_mul_(diffs, diffs)
        return sum(
            float(torch.dot(d.flatten(), k.flatten()))
            for d, k in zip(diffs, self.stiffness, strict=True)
        )

    def write_gradient(self, grads: Tensors, params: Tensors) -> None:
        """K·(θ − θ*) with θ − θ* formed first, so nothing cancels; no temporary."""
        for grad, param, k, a in zip(grads, params, self.stiffness, self.anchor, strict=True):
            torch.sub(param, a, out=grad).mul_(k)

    def add_gradient(self, grads: Tensors, params: Tensors) -> None:
        torch._foreach_addcmul_(grads, self.stiffness, torch._foreach_sub(params, self.anchor))

    def plus_decayed(self, older: PenaltyTerm, decay: float) -> DiagonalTerm:
        assert isinstance(older, DiagonalTerm)
        return DiagonalTerm(
            torch._foreach_add(self.stiffness, older.stiffness, alpha=decay), self.anchor
        )

    def merged(self, other: DiagonalTerm) -> tuple[DiagonalTerm, float]:
        """One term equal to the sum of the two, and the constant left over:
        A(θ−a)² + B(θ−b)² = (A+B)(θ−m)² + AB/(A+B)·(a−b)², with m = (Aa + Bb)/(A+B); where
        A+B = 0, m = b (any value would do)."""
        stiffness, anchor, constant = [], [], 0.0
        for a_k, a, b_k, b in zip(
            self.stiffness, self.anchor, other.stiffness, other.anchor, strict=True
        ):
            total = a_k + b_k
            has_weight = total > 0
            safe_total = torch.where(has_weight, total, torch.ones_like(total))
            anchor.append(torch.where(has_weight, (a_k * a + b_k * b) / safe_total, b))
            constant += float((a_k * b_k / safe_total * (a - b) ** 2).sum())
            stiffness.append(total)
        return DiagonalTerm(stiffness, anchor), constant

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "stiffness": list(self.stiffness), "anchor": list(self.anchor)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> DiagonalTerm:
        return cls(list(state["stiffness"]), list(state["anchor"]))


class QuadraticPenalty:
    """(1/2)·(Σ_k q_k(θ) + c), the terms' stiffness already scaled by λ (`strength`)."""

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)
        self.terms: list[PenaltyTerm] = []
        self.constant = 0.0  # in the units of the stiffness: λ·c

    def diagonal(self, precision: Tensors, anchor: Tensors) -> DiagonalTerm:
        """A diagonal term with stiffness λ·precision."""
        return DiagonalTerm(torch._foreach_mul(precision, self.strength), anchor)

    def term(self, importance: Tensors | Any, anchor: Tensors) -> PenaltyTerm:
        """λ·importance around `anchor`: a diagonal term from one tensor per parameter, or a
        structured importance's own term (Kronecker blocks)."""
        if isinstance(importance, list | tuple):
            return self.diagonal(importance, anchor)
        return importance.term(anchor, self.strength)

    def add(self, importance: Tensors | Any, anchor: Tensors) -> None:
        """Keep a new term of its own (memory and step cost grow with the terms)."""
        self.terms.append(self.term(importance, anchor))

    def merge(self, precision: Tensors, anchor: Tensors) -> None:
        """Fold a diagonal term into the single existing one, keeping the constant."""
        new = self.diagonal(precision, anchor)
        if not self.terms:
            self.terms = [new]
            return
        (old,) = self.terms
        merged, constant = old.merged(new)
        self.terms = [merged]
        self.constant += constant

    def replace(self, importance: Tensors | Any, anchor: Tensors, decay: float = 0.0) -> None:
        """Keep one term only, at `anchor`, with curvature λ·importance plus `decay` times the
        current one's (online EWC's running Fisher; 0 forgets it). No constant."""
        new = self.term(importance, anchor)
        if self.terms and decay:
            new = new.plus_decayed(self.terms[0], decay)
        self.terms, self.constant = [new], 0.0

    def precision(self) -> Tensors | None:
        """The single diagonal term's F (the stiffness over λ), for logging; None without one
        or at λ = 0."""
        if len(self.terms) != 1 or not isinstance(self.terms[0], DiagonalTerm) or not self.strength:
            return None
        return torch._foreach_div(self.terms[0].stiffness, self.strength)

    @torch.no_grad()
    def value(self, params: Tensors) -> float:
        return 0.5 * (self.constant + sum(term.quadratic(params) for term in self.terms))

    @torch.no_grad()
    def write_gradient(self, params: Tensors) -> None:
        """Overwrite each `.grad` with the penalty's gradient, before the backward pass, which
        then adds the loss's gradient on top: writing instead of adding saves the zeroing."""
        grads = gradient_buffers(params)
        first, *others = self.terms
        first.write_gradient(grads, params)
        for term in others:
            term.add_gradient(grads, params)

    def state_dict(self) -> dict[str, Any]:
        return {"terms": [term.state_dict() for term in self.terms], "constant": self.constant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.terms = [PenaltyTerm.from_state(term) for term in state["terms"]]
        self.constant = float(state["constant"])


def gradient_buffers(params: Tensors) -> Tensors:
    """Each parameter's `.grad`, allocated where missing, to be overwritten in place."""
    for p in params:
        if p.grad is None:
            p.grad = torch.empty_like(p)
    return [p.grad for p in params]


def snapshot(params: Tensors) -> Tensors:
    return [p.detach().clone() for p in params]
