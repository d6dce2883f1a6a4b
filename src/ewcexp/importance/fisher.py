"""Diagonal Fisher information estimators: pure functions of (model, data).

Per-sample estimators average, over the N samples given, a squared gradient of
the log-likelihood under the model's softmax over the `active` output units:

    exact      Σ_c p(c|x) · (∇ log p(c|x))²     (expected over the model's own predictions)
    sample     (∇ log p(ŷ|x))²,  ŷ ~ p(·|x)     (one Monte Carlo draw per sample)
    empirical  (∇ log p(y|x))²,  y the true label

`batched` is what many tutorials compute: the squared gradient of a minibatch's
mean loss, averaged over minibatches. It is not a per-sample quantity (its scale
shrinks roughly with the batch size) and needs a far larger λ.

How it is fast. Since ∂ log p(c|x)/∂logits = onehot(c) − p, every per-sample
estimator is a sum of squared per-sample gradients of `g · logits` for a few
backward signals g per sample: onehot(y) − p (empirical), onehot(ŷ) − p (sample),
and for exact the columns of any L with L Lᵀ = Σ_c p_c (onehot(c) − p)(onehot(c) − p)ᵀ
= diag(p) − p pᵀ. That matrix has rank C − 1 (its null space is the all-ones vector),
so C − 1 signals suffice, not the C of the sum as written (`_exact_signals`).
`per_sample.per_sample_sum` sums those squares over samples at about the cost of one
batched backward pass per signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewcexp.config.schema import NonNegativeFloat, PositiveInt
from ewcexp.importance.contract import SampleCount, TaskData
from ewcexp.importance.kfac import KroneckerImportance, kronecker_factors
from ewcexp.importance.per_sample import ChunkSize, per_sample_sum

Estimator = Literal["exact", "sample", "empirical", "batched"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)


@dataclass(frozen=True)
class Fisher:
    """The `fisher` config group: the diagonal Fisher of the task just learned, estimated on
    `num_samples` of its training samples (-1: all) with `estimator`. `chunk_size` bounds the
    samples the per-sample estimators hold at once (memory only, same result; "auto": as
    many as `memory_mb` megabytes hold, `per_sample.chunk_for`); `batch_size`
    is the minibatch of `batched`, whose result depends on it."""

    estimator: Estimator = "exact"
    num_samples: SampleCount = -1
    chunk_size: ChunkSize = 256
    memory_mb: PositiveInt = 2048  # chunk_size=auto: what the per-sample estimators may hold
    batch_size: PositiveInt = 256
    structure: Literal["diagonal", "kfac"] = "diagonal"
    damping: NonNegativeFloat = 0.0  # kfac: √damping·I added to A and G
    diagnostics: bool = False  # every estimator beside this one at each consolidation (runner)

    @staticmethod
    def check_arguments(
        path: str, estimator: str = "exact", structure: str = "diagonal", **_: object
    ) -> str | None:
        if structure == "kfac" and estimator == "batched":
            return (
                f"{path}.structure=kfac is not allowed with {path}.estimator=batched: Kronecker "
                "factors are per sample (exact, sample or empirical)"
            )
        return None

    kind: ClassVar[str] = "fisher"
    EXACT_AFFORDABLE: ClassVar[int] = 100  # active classes beyond which `exact` is warned about

    def cost_warning(self, classes: int) -> str | None:
        """One line when `exact` would take far more backward passes than the others: it
        needs C − 1 per chunk over C active classes (999 for ImageNet's 1000), `sample` and
        `empirical` one."""
        if self.estimator != "exact" or classes <= self.EXACT_AFFORDABLE:
            return None
        return (
            f"fisher.estimator=exact over {classes} active classes takes {classes - 1} backward "
            f"passes per chunk, {classes - 1}x fisher.estimator=sample or empirical (one each): "
            "consider those, or fewer fisher.num_samples"
        )

    @property
    def name(self) -> str:
        return self.estimator

    def __call__(self, model: nn.Module, data: TaskData) -> list[Tensor] | KroneckerImportance:
        images, labels = data.subset(self.num_samples)
        if self.structure == "kfac":
            return self.kronecker(model, images, labels, data)
        return estimate_fisher(
            model,
            images,
            labels,
            estimator=self.estimator,
            active=data.active,
            chunk_size=self.chunk_size,
            memory_mb=self.memory_mb,
            batch_size=self.batch_size,
            generator=data.generator,
        )

    def kronecker(
        self, model: nn.Module, images: Tensor, labels: Tensor, data: TaskData
    ) -> KroneckerImportance:
        """Kronecker blocks for Linear and Conv2d layers, the diagonal for the rest (BatchNorm,
        layers used twice). For `sample`, the two parts draw their labels independently."""

        def signals_for(logits: Tensor, rows: slice) -> Tensor:
            return _signals(logits.softmax(-1), labels[rows], self.estimator, data.generator)

        blocks = kronecker_factors(
            model, images, signals_for, active=data.active,
            signals_per_sample=signal_count(self.estimator, data.active),
            chunk_size=self.chunk_size, memory_mb=self.memory_mb,
        )  # fmt: skip
        covered = {b.weight for b in blocks} | {b.bias for b in blocks if b.bias is not None}
        trainable = [p for p in model.parameters() if p.requires_grad]
        if len(covered) == len(trainable):  # every parameter in a block: no diagonal to estimate
            return KroneckerImportance([None] * len(trainable), blocks, self.damping)
        diagonal = estimate_fisher(
            model, images, labels, estimator=self.estimator, active=data.active,
            chunk_size=self.chunk_size, memory_mb=self.memory_mb, generator=data.generator,
        )  # fmt: skip
        return KroneckerImportance(
            [None if i in covered else f for i, f in enumerate(diagonal)], blocks, self.damping
        )


def estimate_fisher(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    active: slice,
    chunk_size: int | Literal["auto"] = 256,
    memory_mb: int = 2048,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Fisher diagonal, one tensor per trainable parameter, in `model.parameters()` order.

    Per-sample estimators hold at most `chunk_size` samples at once (memory only); `batched`
    squares the gradients of minibatches of `batch_size` (which changes the result).

    `labels` index into the `active` output units. The model is put in eval mode
    (BatchNorm uses its running statistics, which are left untouched) and restored after.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: allowed are {', '.join(ESTIMATORS)}")
    if estimator == "batched":
        params = [p for p in model.parameters() if p.requires_grad]
        was_training = model.training
        model.eval()
        try:
            return _batched(model, params, images, labels, active, batch_size)
        finally:
            model.train(was_training)

    def signals_for(logits: Tensor, rows: slice) -> Tensor:
        return _signals(logits.softmax(-1), labels[rows], estimator, generator)

    total = per_sample_sum(
        model,
        images,
        signals_for,
        active=active,
        signals_per_sample=signal_count(estimator, active),
        power=2,
        chunk_size=chunk_size,
        memory_mb=memory_mb,
    )
    return [t / len(images) for t in total]


def _batched(
    model: nn.Module,
    params: list[Tensor],
    images: Tensor,
    labels: Tensor,
    active: slice,
    batch_size: int,
) -> list[Tensor]:
    """Squared gradients of minibatch mean losses, averaged over minibatches."""
    total = [torch.zeros_like(p) for p in params]
    starts = range(0, len(images), batch_size)
    for start in starts:
        logits = model(images[start : start + batch_size])[:, active]
        loss = F.cross_entropy(logits, labels[start : start + batch_size])
        grads = torch.autograd.grad(loss, params)
        torch._foreach_addcmul_(total, grads, grads)
    return [t / len(starts) for t in total]


def signal_count(estimator: str, active: slice) -> int:
    """Backward signals per sample: C − 1 for `exact` over C active classes, else one."""
    return max(1, active.stop - active.start - 1) if estimator == "exact" else 1


def _signals(
    probs: Tensor, labels: Tensor, estimator: str, generator: torch.Generator | None
) -> Tensor:
    """Backward signals on the logits, [signal, sample, class]; the estimator is the sum over
    signals of the squared per-sample gradients of signal · logits."""
    if estimator == "exact":
        return _exact_signals(probs)
    if estimator == "sample":
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return (F.one_hot(labels, probs.shape[1]).to(probs.dtype) - probs)[None]


def _exact_signals(probs: Tensor) -> Tensor:
    """C − 1 signals l_j per sample with Σ_j l_j l_jᵀ = diag(p) − p pᵀ: C − 1 backward passes
    instead of C. With s = √p (a unit vector), diag(p) − p pᵀ = diag(s)(I − s sᵀ)diag(s), and the
    Householder reflection R = I − v vᵀ/(1 + s_C), v = s + e_C, maps s to −e_C, so R's first
    C − 1 columns are an orthonormal basis Q of s's complement: QQᵀ = I − s sᵀ, l_j = s ⊙ Q_j.
    1 + s_C ≥ 1 keeps it stable for any p. One class: a single zero signal (the Fisher is 0)."""
    classes = probs.shape[1]
    if classes == 1:
        return torch.zeros_like(probs)[None]
    s = probs.sqrt()
    v = torch.cat([s[:, :-1], s[:, -1:] + 1], 1)
    eye = torch.eye(classes, classes - 1, dtype=probs.dtype, device=probs.device)
    basis = eye - v[:, :, None] * (s[:, None, :-1] / (1 + s[:, -1, None, None]))
    return (s[:, :, None] * basis).permute(2, 0, 1)  # [C − 1, sample, class]
