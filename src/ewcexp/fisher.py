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
or √p_c·(onehot(c) − p) for every class c (exact). One forward pass and one
batched backward pass of those signals give each layer's output gradients δ;
then, per layer:
- `nn.Linear` applied once per sample: Σ_n (δ_n a_nᵀ)² = (δ⊙δ)ᵀ(a⊙a), one matmul;
- `nn.Conv2d` (weights shared across positions): per-sample gradients from the
  unfolded input, materialised one chunk and one signal at a time;
- any other parameter: per-sample gradients by `torch.func` (vmap of grad), chunked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ewcexp.importance import TaskData
from ewcexp.schema import PositiveInt, Rule

Estimator = Literal["exact", "sample", "empirical", "batched"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
FLOATS_PER_CHUNK = 2**25  # per-sample gradients materialised at once (128 MiB of float32)
SampleCount = Annotated[
    int, Rule(lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1", refused=0)
]


@dataclass(frozen=True)
class Fisher:
    """The `fisher` config group: the diagonal Fisher of the task just learned, estimated on
    `num_samples` of its training samples (-1: all) with `estimator`. `chunk_size` bounds the
    samples the per-sample estimators hold at once (memory only, same result); `batch_size`
    is the minibatch of `batched`, whose result depends on it."""

    estimator: Estimator = "exact"
    num_samples: SampleCount = -1
    chunk_size: PositiveInt = 256
    batch_size: PositiveInt = 256

    @property
    def name(self) -> str:
        return self.estimator

    def __call__(self, model: nn.Module, data: TaskData) -> list[Tensor]:
        images, labels = data.subset(self.num_samples)
        return estimate_fisher(
            model,
            images,
            labels,
            estimator=self.estimator,
            active=data.active,
            chunk_size=self.chunk_size,
            batch_size=self.batch_size,
            generator=data.generator,
        )


def estimate_fisher(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    estimator: str,
    active: slice,
    chunk_size: int = 256,
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
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = {p: torch.zeros_like(p) for p in params}
    was_training = model.training
    model.eval()
    try:
        if estimator == "batched":
            return _batched(model, params, images, labels, active, batch_size)
        plan = _plan(model, params, images[:1])
        chunk = min(chunk_size, plan.max_chunk(active.stop - active.start, estimator))
        for start in range(0, len(images), chunk):
            _add_chunk(
                model,
                plan,
                fisher,
                images[start : start + chunk],
                labels[start : start + chunk],
                estimator,
                active,
                generator,
            )
    finally:
        model.train(was_training)
    return [fisher[p] / len(images) for p in params]


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


@dataclass
class _Plan:
    """Which path computes each trainable parameter's per-sample squared gradients."""

    linears: list[nn.Linear] = field(default_factory=list)
    convs: list[nn.Conv2d] = field(default_factory=list)
    others: dict[str, Tensor] = field(default_factory=dict)  # name -> parameter, for torch.func
    floats_per_sample: int = 0  # most floats held per sample and signal (gradients, δ)

    def max_chunk(self, classes: int, estimator: str) -> int:
        """Samples per chunk that keep materialised per-sample gradients within budget."""
        signals = classes if estimator == "exact" else 1
        return max(1, FLOATS_PER_CHUNK // max(1, self.floats_per_sample * signals))


def _plan(model: nn.Module, params: list[Tensor], probe: Tensor) -> _Plan:
    """Route Linear and Conv2d layers that run once per sample to their fast paths (checked
    on a probe forward); every other trainable parameter goes to torch.func."""
    candidates = [
        m
        for m in model.modules()
        if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and _unfoldable(m)))
        and any(p.requires_grad for p in m.parameters())
    ]
    input_dims: dict[nn.Module, list[int]] = {m: [] for m in candidates}
    output_sizes: dict[nn.Module, int] = {}

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        input_dims[module].append(inputs[0].dim())
        output_sizes[module] = output[0].numel()

    hooks = [m.register_forward_hook(record) for m in candidates]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    plan = _Plan()
    for module in candidates:
        if isinstance(module, nn.Linear) and input_dims[module] == [2]:
            plan.linears.append(module)
        elif isinstance(module, nn.Conv2d) and input_dims[module] == [4]:
            plan.convs.append(module)
            plan.floats_per_sample = max(plan.floats_per_sample, module.weight.numel())
    # the output gradients δ of every fast layer are held at once
    plan.floats_per_sample = max(
        plan.floats_per_sample, sum(output_sizes[m] for m in plan.linears + plan.convs)
    )
    fast = {id(p) for m in plan.linears + plan.convs for p in m.parameters()}
    plan.others = {
        n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in fast
    }
    if plan.others:
        plan.floats_per_sample = max(
            plan.floats_per_sample, sum(p.numel() for p in plan.others.values())
        )
    return plan


def _unfoldable(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _signals(
    probs: Tensor, labels: Tensor, estimator: str, generator: torch.Generator | None
) -> Tensor:
    """Backward signals on the logits, [signal, sample, class]; the estimator is the sum over
    signals of the squared per-sample gradients of signal · logits."""
    classes = probs.shape[1]
    if estimator == "exact":
        onehots = torch.eye(classes, dtype=probs.dtype, device=probs.device)[:, None, :]
        return probs.T.sqrt()[:, :, None] * (onehots - probs)
    if estimator == "sample":
        labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return (F.one_hot(labels, classes).to(probs.dtype) - probs)[None]


def _add_chunk(
    model: nn.Module,
    plan: _Plan,
    fisher: dict[Tensor, Tensor],
    images: Tensor,
    labels: Tensor,
    estimator: str,
    active: slice,
    generator: torch.Generator | None,
) -> None:
    """Add a chunk's Σ_n of per-sample squared gradients to `fisher`."""
    layers = plan.linears + plan.convs
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.update({m: (i[0].detach(), o)}))
        for m in layers
    ]
    try:
        logits = model(images)[:, active]
    finally:
        for hook in hooks:
            hook.remove()
    signals = _signals(logits.detach().softmax(-1), labels, estimator, generator)
    if layers:
        outputs = [seen[m][1] for m in layers]
        linear_delta_sq = [0.0] * len(plan.linears)  # Σ over signals of δ⊙δ, per Linear layer
        patches = {conv: _unfold(conv, seen[conv][0]) for conv in plan.convs}
        # one backward pass per signal (for `exact`, per class), each used at once; batching
        # them with `is_grads_batched` is slower (vmap falls back to loops for max-pooling)
        for signal in signals:
            deltas = torch.autograd.grad(logits, outputs, signal, retain_graph=True)
            for i, (layer, delta) in enumerate(zip(layers, deltas, strict=True)):
                if i < len(plan.linears):
                    linear_delta_sq[i] = linear_delta_sq[i] + delta * delta
                else:
                    _add_conv(layer, fisher, patches[layer], delta)
        for layer, delta_sq in zip(plan.linears, linear_delta_sq, strict=True):
            _add_linear(layer, fisher, seen[layer][0], delta_sq)
    if plan.others:
        _add_torch_func(model, plan.others, fisher, images, signals, active)


def _add_linear(
    layer: nn.Linear, fisher: dict[Tensor, Tensor], inputs: Tensor, delta_sq: Tensor
) -> None:
    """Σ_n (δ_n a_nᵀ)² = (δ⊙δ)ᵀ(a⊙a); `delta_sq` is already summed over signals, which the
    activations do not depend on."""
    fisher[layer.weight] += delta_sq.T @ (inputs * inputs)
    if layer.bias is not None:
        fisher[layer.bias] += delta_sq.sum(0)


def _unfold(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
    """The input patches each output position sees, transposed: [sample, positions, in·kh·kw]."""
    patches = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return patches.transpose(1, 2)


def _add_conv(
    layer: nn.Conv2d, fisher: dict[Tensor, Tensor], patches: Tensor, delta: Tensor
) -> None:
    """Per-sample weight gradients δ_n · patches_n for one signal, squared and summed."""
    per_position = delta.flatten(2)  # [sample, out_channels, positions]
    weight_grads = torch.bmm(per_position, patches)
    fisher[layer.weight] += (weight_grads * weight_grads).sum(0).view_as(layer.weight)
    if layer.bias is not None:
        bias_grads = per_position.sum(2)
        fisher[layer.bias] += (bias_grads * bias_grads).sum(0)


def _add_torch_func(
    model: nn.Module,
    others: dict[str, Tensor],
    fisher: dict[Tensor, Tensor],
    images: Tensor,
    signals: Tensor,
    active: slice,
) -> None:
    """Generic path: materialise per-sample gradients of signal · logits with torch.func."""
    weights = {name: p.detach() for name, p in others.items()}
    # every other parameter enters as a constant, so no autograd history reaches the result
    constants = {n: p.detach() for n, p in model.named_parameters() if n not in others}

    def signal_dot_logits(weights: dict[str, Tensor], image: Tensor, signal: Tensor) -> Tensor:
        logits = functional_call(model, (weights, constants), (image.unsqueeze(0),))
        return (logits[0, active] * signal).sum()

    per_sample_grad = vmap(grad(signal_dot_logits), in_dims=(None, 0, 0))
    for signal in signals:
        for name, g in per_sample_grad(weights, images, signal).items():
            fisher[others[name]] += (g * g).sum(0)
