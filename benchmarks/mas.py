"""MAS importance three ways, against one plain forward+backward pass.

    uv run python benchmarks/mas.py [--samples 20000] [--loop-samples 500] [--repeats 3]

MAS needs Σ_n |per-sample gradient|. Absolute values do not add like squares, but for a
Linear layer applied once per sample the per-sample gradient δ_n a_nᵀ is rank one, so
|δ_n a_nᵀ| = |δ_n| |a_n|ᵀ and the sum is one matmul, |δ|ᵀ|a|: the path ewcexp uses
(`per_sample.per_sample_sum`, convolutions materialised from unfolded patches). Compared
with the one-backward-per-sample loop and with torch.func's vmap of grad, which
materialises every per-sample gradient of every layer.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import machine, median_seconds, mnist_like, table
from torch.func import functional_call, grad, vmap

from ewcexp.importance.contract import TaskData
from ewcexp.importance.mas import MASImportance
from ewcexp.model.networks import CNN, MLP

MODELS = {
    "MLP 784-400-400-10": lambda: MLP((28, 28), 10, [400, 400]),
    "CNN conv32-conv64-fc128": lambda: CNN((28, 28), 10, [32, 64], 128),
}
CHUNK = 256


def floor(model, images, labels):
    """One batched forward+backward pass of the mean loss over the same samples."""
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(0, len(images), CHUNK):
        loss = F.cross_entropy(model(images[start : start + CHUNK]), labels[start : start + CHUNK])
        torch.autograd.grad(loss, params)


def loop(model, images):
    """One backward pass per sample of ‖f(x)‖²."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for n in range(len(images)):
        grads = torch.autograd.grad((model(images[n : n + 1]) ** 2).sum(), params)
        torch._foreach_add_(total, torch._foreach_abs(grads))
    return total


def vmapped(model, images):
    """torch.func: every per-sample gradient materialised, chunk by chunk."""
    weights = {n: p.detach() for n, p in model.named_parameters()}

    def squared_norm(weights, image):
        return (functional_call(model, weights, (image.unsqueeze(0),)) ** 2).sum()

    per_sample = vmap(grad(squared_norm), in_dims=(None, 0))
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for start in range(0, len(images), CHUNK):
        for n, g in per_sample(weights, images[start : start + CHUNK]).items():
            total[n] += g.abs().sum(0)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--loop-samples", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = mnist_like(args.samples)
    images = images.float() / 255
    data = TaskData(lambda: (images, labels), slice(0, 10), torch.device("cpu"), torch.Generator())
    print(f"{args.samples} samples, median of {args.repeats}; {machine()}\n")
    for name, build in MODELS.items():
        model = build().eval()
        base = median_seconds(lambda m=model: floor(m, images, labels), args.repeats)
        ours = median_seconds(
            lambda m=model: MASImportance(chunk_size=CHUNK)(m, data), args.repeats
        )
        vmap_s = median_seconds(lambda m=model: vmapped(m, images), 1)
        looped = median_seconds(lambda m=model: loop(m, images[: args.loop_samples]), 1)
        looped *= args.samples / args.loop_samples
        rows = [
            ["one batched fwd+bwd (floor)", f"{base:.2f}", "1.00", f"{looped / base:.1f}"],
            ["ewcexp (closed form for Linear)", f"{ours:.2f}", f"{ours / base:.2f}", f"{looped / ours:.1f}"],
            ["torch.func vmap(grad)", f"{vmap_s:.2f}", f"{vmap_s / base:.2f}", f"{looped / vmap_s:.1f}"],
            [f"one backward per sample (timed on {args.loop_samples}, scaled)", f"{looped:.1f}", f"{looped / base:.1f}", "1.0"],
        ]  # fmt: skip
        print(f"### {name}\n")
        print(table(["method", "seconds", "× floor", "× faster than the loop"], rows))
        print(flush=True)


if __name__ == "__main__":
    main()
