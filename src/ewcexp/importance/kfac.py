"""Kronecker-factored Fisher blocks (K-FAC; KFC for convolutions) and their penalty term.

For a layer s = W ā (ā: its input with a 1 appended for the bias; W: out × (in+1)), the
per-sample gradient of −log p is g āᵀ, and the Fisher block of vec(W) is approximated as

    F ≈ A ⊗ G,    A = E[ā āᵀ],    G = E[g gᵀ]      (Martens & Grosse 2015)

with G's expectation over the same label choices as the diagonal Fisher (`exact`: over the
model's predictive distribution; `sample`; `empirical`): each is a set of backward signals
on the logits (see `fisher._signals`), and G sums δδᵀ over them. For a convolution (Grosse &
Martens 2016) ā_t are the unfolded patches and δ_t the output gradients at each of its T
positions; here A = E_n[(1/T) Σ_t ā_t ā_tᵀ] (a mean over positions) and G = E_n[Σ_t δ_t δ_tᵀ]
(a sum), so that A ⊗ G = T·E_t[āāᵀ] ⊗ E_t[δδᵀ]: KFC's approximation of the second moment
of the per-sample gradient Σ_t δ_t ā_tᵀ, which assumes uncorrelated positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ewcexp.importance.contract import StructuredImportance
from ewcexp.importance.penalty import PenaltyTerm, Tensors
from ewcexp.importance.per_sample import Signals, chunk_for, plan_for, unfold


@dataclass
class Factors:
    """A ⊗ G for one layer; `weight` and `bias` index its parameters in the model's list of
    trainable parameters (`bias` None without one)."""

    weight: int
    bias: int | None
    A: Tensor
    G: Tensor


def homogeneous(inputs: Tensor, bias: bool) -> Tensor:
    """Rows ā = [a, 1] (the 1 only for a layer with a bias)."""
    return torch.cat([inputs, inputs.new_ones(*inputs.shape[:-1], 1)], -1) if bias else inputs


GRAM_LEAF = 128  # column blocks up to this wide are one general product in `add_gram`


def add_gram(total: Tensor, rows: Tensor) -> None:
    """Add rowsᵀ rows to `total` on and above the diagonal only (`mirrored` completes it), in
    place, since torch offers no symmetric rank-k update. The columns are halved recursively;
    each off-diagonal block is one product, each diagonal block of at most GRAM_LEAF columns
    another: 5/8 of a general product's work at 400 columns, 9/16 at 785, all of it at 128
    or fewer."""
    width = rows.shape[1]
    if width <= GRAM_LEAF:
        total.addmm_(rows.T, rows)
        return
    half = width // 2
    left, right = rows[:, :half], rows[:, half:]
    add_gram(total[:half, :half], left)
    add_gram(total[half:, half:], right)
    total[:half, half:].addmm_(left.T, right)


def mirrored(upper: Tensor) -> Tensor:
    """The symmetric matrix whose upper triangle `upper` holds."""
    return upper.triu() + upper.triu(1).T


def kronecker_factors(
    model: nn.Module,
    images: Tensor,
    signals_for: Signals,
    *,
    active: slice,
    signals_per_sample: int,
    chunk_size: int | Literal["auto"] = 256,
    memory_mb: int = 2048,
) -> list[Factors]:
    """A and G of every Linear layer applied once per sample and every unfoldable Conv2d,
    from one forward pass and one backward pass per signal, chunk by chunk; a chunk's stacked
    output gradients, signals × samples × Σ outputs, stay within `per_sample.Plan.max_chunk`'s
    budget."""
    params = [p for p in model.parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(params)}
    was_training = model.training
    model.eval()
    try:
        plan = plan_for(model, params, images[:1])
        layers = plan.linears + plan.convs
        a_sums: dict[nn.Module, Tensor] = {}  # upper triangles (see add_gram)
        g_sums: dict[nn.Module, Tensor] = {}
        positions: dict[nn.Module, int] = {}
        chunk = chunk_for(model, plan, images, chunk_size, signals_per_sample, memory_mb)
        seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}  # a layer's input and output
        for start in range(0, len(images), chunk):
            rows = slice(start, start + chunk)
            seen.clear()
            hooks = [
                m.register_forward_hook(lambda m, i, o: seen.update({m: (i[0].detach(), o)}))
                for m in layers
            ]
            try:
                logits = model(images[rows])[:, active]
            finally:
                for hook in hooks:
                    hook.remove()
            signals = signals_for(logits.detach(), rows)
            for m in layers:  # A does not depend on the labels
                inputs = seen[m][0]
                rows_in = inputs if isinstance(m, nn.Linear) else unfold(m, inputs)
                a = homogeneous(rows_in, m.bias is not None).flatten(0, -2)
                positions[m] = 1 if isinstance(m, nn.Linear) else rows_in.shape[1]
                add_gram(_zeros_once(a_sums, m, a), a)
            outputs = [seen[m][1] for m in layers]
            # one backward pass per signal, each layer's output gradients copied into one
            # stack [signal, sample, position, out], and one Gram product per stack
            stacks = {m: o.new_empty(len(signals), *_rows(o).shape) for m, (_, o) in seen.items()}
            for k, signal in enumerate(signals):
                deltas = torch.autograd.grad(logits, outputs, signal, retain_graph=True)
                for m, delta in zip(layers, deltas, strict=True):
                    stacks[m][k].copy_(_rows(delta))
            for m, stack in stacks.items():
                rows = stack.view(-1, stack.shape[-1])
                add_gram(_zeros_once(g_sums, m, rows), rows)
    finally:
        model.train(was_training)
    return [
        Factors(
            index[id(m.weight)],
            None if m.bias is None else index[id(m.bias)],
            mirrored(a_sums[m]) / (len(images) * positions[m]),
            mirrored(g_sums[m]) / len(images),
        )
        for m in layers
    ]


def _zeros_once(sums: dict[nn.Module, Tensor], layer: nn.Module, rows: Tensor) -> Tensor:
    """`sums[layer]`, a zero width × width matrix the first time (allocated once, not per chunk)."""
    if layer not in sums:
        sums[layer] = rows.new_zeros(rows.shape[1], rows.shape[1])
    return sums[layer]


def _rows(output: Tensor) -> Tensor:
    """A layer's outputs (or their gradients) as [sample, position, out]: one position for a
    Linear layer, every spatial position of a convolution."""
    return output[:, None] if output.dim() == 2 else output.flatten(2).transpose(1, 2)


@dataclass
class KroneckerImportance(StructuredImportance):
    """One task's Fisher: Kronecker blocks for the layers that have them, the diagonal for
    every other parameter (None where a block covers it); `damping` d adds √d·I to A and G."""

    diagonal: list[Tensor | None]
    blocks: list[Factors]
    damping: float = 0.0

    def term(self, anchor: Tensors, strength: float) -> KroneckerTerm:
        """The penalty term around `anchor` with strength λ: λ·F on the diagonal, λ·G in the
        blocks, each factor damped."""
        root = self.damping**0.5

        def damped(factor: Tensor) -> Tensor:
            return factor + root * torch.eye(len(factor), dtype=factor.dtype, device=factor.device)

        blocks = [
            Factors(b.weight, b.bias, damped(b.A), strength * damped(b.G)) for b in self.blocks
        ]
        stiffness = [None if f is None else strength * f for f in self.diagonal]
        return KroneckerTerm(stiffness, anchor, blocks)

    def as_diagonal(self, params: list[Tensor]) -> list[Tensor]:
        """Every parameter's diagonal, a block's being diag(A ⊗ G) = diag(G) diag(A)ᵀ: for
        the histograms and statistics the diagonal Fisher gets."""
        out = list(self.diagonal)
        for block in self.blocks:
            both = torch.outer(block.G.diagonal(), block.A.diagonal())
            weight = params[block.weight]
            out[block.weight] = both[:, : weight[0].numel()].reshape(weight.shape)
            if block.bias is not None:
                out[block.bias] = both[:, -1]
        return out

    def spectra(self) -> dict[int, dict[str, Tensor]]:
        """The eigenvalues of A and of G (ascending) per block, keyed by its weight's index:
        how many directions of a layer's inputs and outputs this task's Fisher holds (for
        `online_ewc`, the task's own factors, before they are merged into the running term)."""
        return {
            b.weight: {
                "A": torch.linalg.eigvalsh(b.A.double()),
                "G": torch.linalg.eigvalsh(b.G.double()),
            }
            for b in self.blocks
        }


def nearest_kronecker(pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The A ⊗ G nearest in Frobenius norm to Σ_i A_i ⊗ G_i (Van Loan & Pitsianis 1993).

    Rearranging every entry (A⊗G)[(i,k),(j,l)] = A_ij G_kl turns A ⊗ G into the rank-one
    vec(A) vec(G)ᵀ, so the answer is the sum's leading singular pair, R = Σ_i vec(A_i) vec(G_i)ᵀ.
    With Kₐ, K_g the Gram matrices ⟨A_i, A_j⟩, ⟨G_i, G_j⟩ (n × n), the right singular vector
    is Σ_i β_i vec(G_i) with Kₐ K_g β = σ² β. For positive semi-definite factors every Gram
    entry is ≥ 0, so β (the Perron vector) is ≥ 0 and both answers are again positive
    semi-definite. Exact when the sum is one Kronecker product (all A_i, or all G_i,
    proportional); otherwise the nearest one, not the sum."""
    a_vecs = torch.stack([a.flatten() for a, _ in pairs]).double()
    g_vecs = torch.stack([g.flatten() for _, g in pairs]).double()
    gram_a, gram_g = a_vecs @ a_vecs.T, g_vecs @ g_vecs.T
    values, vectors = torch.linalg.eig(gram_a @ gram_g)
    beta = vectors[:, values.real.argmax()].real
    beta = (beta * beta.sum().sign()).clamp_min(0)  # the Perron vector, rounding removed
    norm = beta @ gram_g @ beta
    if norm <= 0:  # the sum is zero
        return torch.zeros_like(pairs[0][0]), torch.zeros_like(pairs[0][1])
    alpha = gram_g @ beta / norm
    a, g = pairs[0]
    dims_a, dims_g = a.shape, g.shape
    return (
        (alpha @ a_vecs).reshape(dims_a).to(a.dtype),
        (beta @ g_vecs).reshape(dims_g).to(g.dtype),
    )


class KroneckerTerm(PenaltyTerm):
    """q(θ) = Σ_i K_i (θ_i − θ*_i)² over the parameters outside any block, plus, per block,
    tr(ΔW̄ᵀ G ΔW̄ A) with ΔW̄ = [ΔW, Δb] (G already scaled by λ): one task's penalty.
    Its gradient G ΔW̄ A is formed from the stored factors, outside any autograd graph."""

    kind = "kronecker"

    def __init__(self, stiffness: list[Tensor | None], anchor: Tensors, blocks: list[Factors]):
        self.stiffness, self.anchor, self.blocks = stiffness, anchor, blocks

    def _difference(self, params: Tensors, block: Factors) -> Tensor:
        weight = params[block.weight] - self.anchor[block.weight]
        columns = [weight.reshape(len(weight), -1)]
        if block.bias is not None:
            columns.append((params[block.bias] - self.anchor[block.bias])[:, None])
        return torch.cat(columns, 1)

    def quadratic(self, params: Tensors) -> float:
        total = 0.0
        for param, k, a in zip(params, self.stiffness, self.anchor, strict=True):
            if k is not None:
                total += float(torch.dot(((param - a) ** 2).flatten(), k.flatten()))
        for block in self.blocks:
            difference = self._difference(params, block)
            total += float((block.G @ difference @ block.A * difference).sum())
        return total

    def _apply(self, grads: Tensors, params: Tensors, add: bool) -> None:
        for grad, param, k, a in zip(grads, params, self.stiffness, self.anchor, strict=True):
            if k is None:
                continue
            if add:
                grad.addcmul_(k, param - a)
            else:
                torch.sub(param, a, out=grad).mul_(k)
        for block in self.blocks:
            gradient = block.G @ self._difference(params, block) @ block.A
            parts = [(block.weight, gradient[:, : grads[block.weight][0].numel()])]
            if block.bias is not None:
                parts.append((block.bias, gradient[:, -1]))
            for i, part in parts:
                part = part.reshape(grads[i].shape)
                grads[i].add_(part) if add else grads[i].copy_(part)

    def write_gradient(self, grads: Tensors, params: Tensors) -> None:
        self._apply(grads, params, add=False)

    def plus_decayed(self, older: PenaltyTerm, decay: float) -> KroneckerTerm:
        """Online merging: this term's anchor, its curvature plus `decay` times `older`'s: exact
        on the diagonal part, per block the nearest Kronecker product to
        decay·A₀⊗G₀ + A⊗G (a sum of two Kronecker products is not one)."""
        assert isinstance(older, KroneckerTerm)
        stiffness = [
            k if k is None else k + decay * old
            for k, old in zip(self.stiffness, older.stiffness, strict=True)
        ]
        blocks = [
            Factors(b.weight, b.bias, *nearest_kronecker([(decay * o.A, o.G), (b.A, b.G)]))
            for b, o in zip(self.blocks, older.blocks, strict=True)
        ]
        return KroneckerTerm(stiffness, self.anchor, blocks)

    def add_gradient(self, grads: Tensors, params: Tensors) -> None:
        self._apply(grads, params, add=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stiffness": list(self.stiffness),
            "anchor": list(self.anchor),
            "blocks": [[b.weight, -1 if b.bias is None else b.bias, b.A, b.G] for b in self.blocks],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KroneckerTerm:
        blocks = [Factors(w, None if b < 0 else b, A, G) for w, b, A, G in state["blocks"]]
        return cls(list(state["stiffness"]), list(state["anchor"]), blocks)
