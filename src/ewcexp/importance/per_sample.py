"""Sums over samples of a power of per-sample gradients, at about the cost of one batched
backward pass: the engine of the per-sample Fisher estimators (squares) and of MAS
(absolute values).

For each sample n and backward signal s on the active logits, the per-sample gradient is
∂(s · logits(x_n))/∂θ; `per_sample_sum` returns Σ_n Σ_s m(that gradient), m(x) = x² or |x|.
One forward pass and one backward pass per signal give each layer's output gradients δ;
then, per layer:
- `nn.Linear` applied once per sample: the gradient δ_n a_nᵀ is rank one, and both x² and
  |x| factor over a product, so Σ_n m(δ_n a_nᵀ) = m(δ)ᵀ m(a): one matmul;
- `nn.Conv2d` (weights shared across positions: a sum of such products, which does not
  factor): per-sample gradients from the unfolded input, one chunk and signal at a time;
- `nn.Linear` applied once to a sequence per sample ([N, tokens, in]: a transformer's
  layers): the same sum over positions, the tokens as the positions;
- any other parameter: per-sample gradients by `torch.func` (vmap of grad), chunked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ewcexp.config.schema import PositiveInt

FLOATS_PER_CHUNK = 2**25  # per-sample gradients materialised at once (128 MiB of float32)
MOMENTS: dict[int, Callable[[Tensor], Tensor]] = {2: lambda x: x * x, 1: torch.abs}
# (detached logits of a chunk, the chunk's rows) -> backward signals [signal, sample, class]
Signals = Callable[[Tensor, slice], Tensor]
# samples held at once: a number, or "auto": as many as `memory_mb` allows (`chunk_for`)
ChunkSize = PositiveInt | Literal["auto"]


def per_sample_sum(
    model: nn.Module,
    images: Tensor,
    signals_for: Signals,
    *,
    active: slice,
    signals_per_sample: int,
    power: int,
    chunk_size: int | Literal["auto"] = 256,
    memory_mb: int = 2048,
) -> list[Tensor]:
    """Σ_n Σ_s |∂(s · logits_active(x_n))/∂θ|^power, one tensor per trainable parameter in
    `model.parameters()` order. At most `chunk_size` samples are held at once (memory only;
    "auto": `chunk_for` picks it from `memory_mb`).
    The model is put in eval mode (BatchNorm uses its running statistics, which are left
    untouched) and restored after."""
    moment = MOMENTS[power]
    params = [p for p in model.parameters() if p.requires_grad]
    totals = {p: torch.zeros_like(p) for p in params}
    was_training = model.training
    model.eval()
    try:
        plan = plan_for(model, params, images[:1])
        chunk = chunk_for(model, plan, images, chunk_size, signals_per_sample, memory_mb)
        for start in range(0, len(images), chunk):
            rows = slice(start, start + chunk)
            _add_chunk(model, plan, totals, images[rows], rows, signals_for, active, moment)
    finally:
        model.train(was_training)
    return [totals[p] for p in params]


@dataclass
class Plan:
    """Which path computes each trainable parameter's per-sample gradients."""

    linears: list[nn.Linear] = field(default_factory=list)
    convs: list[nn.Conv2d] = field(default_factory=list)
    sequences: list[nn.Linear] = field(default_factory=list)  # on [N, tokens, in] inputs
    others: dict[str, Tensor] = field(default_factory=dict)  # name -> parameter, for torch.func
    floats_per_sample: int = 0  # most floats held per sample and signal (gradients, δ)

    def max_chunk(self, signals: int) -> int:
        """Samples per chunk that keep materialised per-sample gradients within budget."""
        return max(1, FLOATS_PER_CHUNK // max(1, self.floats_per_sample * signals))


def plan_for(model: nn.Module, params: list[Tensor], probe: Tensor) -> Plan:
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
    plan = Plan()
    for module in candidates:
        if isinstance(module, nn.Linear) and input_dims[module] == [2]:
            plan.linears.append(module)
        elif isinstance(module, nn.Conv2d) and input_dims[module] == [4]:
            plan.convs.append(module)
            plan.floats_per_sample = max(plan.floats_per_sample, module.weight.numel())
        elif isinstance(module, nn.Linear) and len(input_dims[module]) == 1:
            plan.sequences.append(module)  # one call on [N, tokens..., in]
            plan.floats_per_sample = max(plan.floats_per_sample, module.weight.numel())
    fast_layers = plan.linears + plan.convs + plan.sequences
    # the output gradients δ of every fast layer are held at once
    plan.floats_per_sample = max(plan.floats_per_sample, sum(output_sizes[m] for m in fast_layers))
    fast = {id(p) for m in fast_layers for p in m.parameters()}
    plan.others = {
        n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in fast
    }
    if plan.others:
        plan.floats_per_sample = max(
            plan.floats_per_sample, sum(p.numel() for p in plan.others.values())
        )
    return plan


def chunk_for(
    model: nn.Module,
    plan: Plan,
    images: Tensor,
    chunk_size: int | Literal["auto"],
    signals: int,
    memory_mb: int,
) -> int:
    """Samples per chunk: `chunk_size` within `Plan.max_chunk`'s bound, or for "auto" the
    most that fit `memory_mb`: a chunk of n holds the forward pass's saved activations,
    about as much again while the backward pass runs, and the materialised per-sample
    gradients (`Plan.floats_per_sample` per signal); the activations are measured on one and
    two samples (bytes(n) = fixed + n · per sample)."""
    if chunk_size != "auto":
        return min(chunk_size, plan.max_chunk(signals))
    one = _saved_bytes(model, images[:1])
    per_sample = max(1, _saved_bytes(model, images[:2]) - one) if len(images) > 1 else one
    fixed = max(0, one - per_sample)
    room = memory_mb * 2**20 - fixed
    return max(1, int(room // (2 * per_sample + 4 * plan.floats_per_sample * signals)))


def _saved_bytes(model: nn.Module, images: Tensor) -> int:
    """Bytes autograd keeps for the backward pass of `model(images)`, and the output."""
    total = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
    return total + output.numel() * output.element_size()


def _unfoldable(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _add_chunk(
    model: nn.Module,
    plan: Plan,
    totals: dict[Tensor, Tensor],
    images: Tensor,
    rows: slice,
    signals_for: Signals,
    active: slice,
    moment: Callable[[Tensor], Tensor],
) -> None:
    """Add a chunk's Σ_n Σ_s moment(per-sample gradient) to `totals`."""
    layers = plan.linears + plan.convs + plan.sequences
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
    signals = signals_for(logits.detach(), rows)
    if layers:
        outputs = [seen[m][1] for m in layers]
        linear_moments = [0.0] * len(plan.linears)  # Σ over signals of moment(δ), per Linear
        patches = {conv: unfold(conv, seen[conv][0]) for conv in plan.convs}
        patches |= {m: seen[m][0].flatten(1, -2) for m in plan.sequences}  # [N, tokens, in]
        # one backward pass per signal (for `exact`, per class), each used at once; batching
        # them with `is_grads_batched` is slower (vmap falls back to loops for max-pooling)
        for signal in signals:
            deltas = torch.autograd.grad(logits, outputs, signal, retain_graph=True)
            for i, (layer, delta) in enumerate(zip(layers, deltas, strict=True)):
                if i < len(plan.linears):
                    linear_moments[i] = linear_moments[i] + moment(delta)
                elif isinstance(layer, nn.Conv2d):  # [N, out, positions]
                    _add_shared(layer, totals, patches[layer], delta.flatten(2), moment)
                else:  # [N, tokens, out] → [N, out, tokens]
                    per_token = delta.flatten(1, -2).transpose(1, 2)
                    _add_shared(layer, totals, patches[layer], per_token, moment)
        for layer, delta_moment in zip(plan.linears, linear_moments, strict=True):
            _add_linear(layer, totals, seen[layer][0], delta_moment, moment)
    if plan.others:
        _add_torch_func(model, plan.others, totals, images, signals, active, moment)


def _add_linear(
    layer: nn.Linear,
    totals: dict[Tensor, Tensor],
    inputs: Tensor,
    delta_moment: Tensor,
    moment: Callable[[Tensor], Tensor],
) -> None:
    """Σ_n m(δ_n a_nᵀ) = m(δ)ᵀ m(a) for m = square or absolute value (each a product of the
    factors' m); `delta_moment` is already summed over signals, which `a` does not depend on."""
    totals[layer.weight] += delta_moment.T @ moment(inputs)
    if layer.bias is not None:
        totals[layer.bias] += delta_moment.sum(0)


def unfold(layer: nn.Conv2d, inputs: Tensor) -> Tensor:
    """The input patches each output position sees, transposed: [sample, positions, in·kh·kw]."""
    patches = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    return patches.transpose(1, 2)


def _add_shared(
    layer: nn.Conv2d | nn.Linear,
    totals: dict[Tensor, Tensor],
    patches: Tensor,
    per_position: Tensor,
    moment: Callable[[Tensor], Tensor],
) -> None:
    """Per-sample weight gradients δ_n · patches_n for one signal, a layer's weights shared
    across positions (a convolution's, a sequence's tokens): a sum over positions, so no
    factoring: materialised, through `moment` and summed. `per_position`: [sample, out,
    positions]; `patches`: [sample, positions, in]."""
    weight_grads = torch.bmm(per_position, patches)
    totals[layer.weight] += moment(weight_grads).sum(0).view_as(layer.weight)
    if layer.bias is not None:
        bias_grads = per_position.sum(2)
        totals[layer.bias] += moment(bias_grads).sum(0)


def _add_torch_func(
    model: nn.Module,
    others: dict[str, Tensor],
    totals: dict[Tensor, Tensor],
    images: Tensor,
    signals: Tensor,
    active: slice,
    moment: Callable[[Tensor], Tensor],
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
            totals[others[name]] += moment(g).sum(0)
