"""Diagonal Fisher information estimators: pure functions of (model, data).

Per-sample estimators average, over the N samples given, a squared gradient of
the log-likelihood under the model's softmax over the `active` output units:

    exact      Σ_c p(c|x) · (∇ log p(c|x))²     (expected over the model's own predictions)
    sample     (∇ log p(ŷ|x))²,  ŷ ~ p(·|x)     (one Monte Carlo draw per sample)
    empirical  (∇ log p(y|x))²,  y the true label

`batched` is what many tutorials compute: the squared gradient of a minibatch's
mean loss, averaged over minibatches. It is not a per-sample quantity (its scale
shrinks roughly with the batch size) and needs a far larger λ.

Speed: for `nn.Linear` layers applied once per sample, the per-sample squared
gradients sum in closed form, Σ_n (δ_n a_nᵀ)² = (δ⊙δ)ᵀ(a⊙a), from one batched
backward pass; `exact` sends one backward signal per class (√p_c-weighted), all
classes in one batched call. Any other model goes through `torch.func`
(vmap of per-sample gradients), in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

ESTIMATORS = ("exact", "sample", "empirical", "batched")
PER_SAMPLE_GRADIENT_BUDGET = 2**26  # floats materialised at once by the torch.func path


def estimate_fisher(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    active: slice,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Fisher diagonal, one tensor per trainable parameter, in `model.parameters()` order.

    `labels` index into the `active` output units. The model is put in eval mode
    (BatchNorm uses its running statistics, which are left untouched) and restored after.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: allowed are {', '.join(ESTIMATORS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = {p: torch.zeros_like(p) for p in params}
    was_training = model.training
    model.eval()
    try:
        if estimator == "batched":
            num_batches = 0
            for start in range(0, len(images), batch_size):
                logits = model(images[start : start + batch_size])[:, active]
                loss = F.cross_entropy(logits, labels[start : start + batch_size])
                for p, g in zip(params, torch.autograd.grad(loss, params), strict=True):
                    fisher[p] += g * g
                num_batches += 1
            return [fisher[p] / num_batches for p in params]

        linears = _closed_form_linears(model, params, images[:1])
        if linears is None:  # bound the per-sample gradients held in memory at once
            floats_per_sample = sum(p.numel() for p in params)
            if estimator == "exact":
                floats_per_sample *= active.stop - active.start
            batch_size = max(1, min(batch_size, PER_SAMPLE_GRADIENT_BUDGET // floats_per_sample))
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size], labels[start : start + batch_size]
            if linears is not None:
                _add_closed_form(model, linears, fisher, *chunk, estimator, active, generator)
            else:
                _add_per_sample(model, fisher, *chunk, estimator, active, generator)
    finally:
        model.train(was_training)
    return [fisher[p] / len(images) for p in params]


def _targets(
    probs: Tensor, labels: Tensor, estimator: str, generator: torch.Generator | None
) -> Tensor:
    """The label whose log-likelihood is differentiated: true (`empirical`) or drawn (`sample`)."""
    if estimator == "empirical":
        return labels
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _closed_form_linears(
    model: nn.Module, params: list[Tensor], probe: Tensor
) -> list[nn.Linear] | None:
    """The model's Linear layers if they hold every trainable parameter and each sees one
    2-D input per sample (checked on a probe forward); otherwise None."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    covered = {id(p) for m in linears for p in m.parameters()}
    if any(id(p) not in covered for p in params):
        return None
    calls: dict[nn.Module, list[int]] = {m: [] for m in linears}
    hooks = [m.register_forward_hook(lambda m, i, o: calls[m].append(i[0].dim())) for m in linears]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return linears if all(dims == [2] for dims in calls.values()) else None


def _add_closed_form(
    model: nn.Module,
    linears: list[nn.Linear],
    fisher: dict[Tensor, Tensor],
    images: Tensor,
    labels: Tensor,
    estimator: str,
    active: slice,
    generator: torch.Generator | None,
) -> None:
    """Add Σ_n of the per-sample squared gradients of a chunk, one batched backward pass."""
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.update({m: (i[0], o)})) for m in linears]
    try:
        logits = model(images)[:, active]
    finally:
        for hook in hooks:
            hook.remove()
    outputs = [seen[m][1] for m in linears]
    probs = logits.detach().softmax(-1)
    # ∂ log p(c|x) / ∂ logits = onehot(c) − p
    if estimator == "exact":
        classes = probs.shape[1]
        onehots = torch.eye(classes, dtype=probs.dtype, device=probs.device)[:, None, :]
        signals = probs.T.sqrt()[:, :, None] * (onehots - probs)  # [class, sample, class]
        deltas = torch.autograd.grad(logits, outputs, signals, is_grads_batched=True)
        squared = [(delta * delta).sum(0) for delta in deltas]
    else:
        targets = _targets(probs, labels, estimator, generator)
        signal = F.one_hot(targets, probs.shape[1]).to(probs.dtype) - probs
        deltas = torch.autograd.grad(logits, outputs, signal)
        squared = [delta * delta for delta in deltas]
    for layer, delta_sq in zip(linears, squared, strict=True):
        activations = seen[layer][0].detach()
        fisher[layer.weight] += delta_sq.T @ (activations * activations)
        if layer.bias is not None:
            fisher[layer.bias] += delta_sq.sum(0)


def _add_per_sample(
    model: nn.Module,
    fisher: dict[Tensor, Tensor],
    images: Tensor,
    labels: Tensor,
    estimator: str,
    active: slice,
    generator: torch.Generator | None,
) -> None:
    """Generic path for any model: materialise per-sample gradients with torch.func."""
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    frozen.update(model.named_buffers())
    by_name = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def log_probs(weights: dict[str, Tensor], image: Tensor) -> Tensor:
        logits = functional_call(model, {**weights, **frozen}, (image.unsqueeze(0),))
        return logits[0, active].log_softmax(-1)

    with torch.no_grad():
        probs = model(images)[:, active].softmax(-1)
    if estimator == "exact":
        jacobians = vmap(jacrev(log_probs), in_dims=(None, 0))(trainable, images)
        for name, jac in jacobians.items():
            fisher[by_name[name]] += torch.einsum("nc,nc...->...", probs, jac * jac)
        return

    onehots = F.one_hot(_targets(probs, labels, estimator, generator), probs.shape[1])

    def target_log_prob(weights: dict[str, Tensor], image: Tensor, onehot: Tensor) -> Tensor:
        return (log_probs(weights, image) * onehot).sum()

    grads = vmap(grad(target_log_prob), in_dims=(None, 0, 0))(trainable, images, onehots)
    for name, g in grads.items():
        fisher[by_name[name]] += (g * g).sum(0)
