"""The diagonal Fisher of library architectures at their own resolution, against one batched
forward+backward pass over the same images, with peak memory; and the share of a training
step that adapting each batch (scale, grey → RGB, resize, normalise) takes.

    uv run python benchmarks/pretrained.py [--images 32] [--arch torchvision:resnet18 ...]

Every network is built as `model=torchvision|timm` builds it (`ewcexp.model.libraries`), fed
28×28 uint8 grey images adapted per batch to its input size (224×224 RGB), 10 output units.
Each measurement runs in a process of its own, so its peak resident memory (ru_maxrss) is
its own; the ratio is the Fisher's time over the batched pass's, both on `--images` images.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import torch
import torch.nn.functional as F
from common import machine, median_seconds, mnist_like, table

from ewcexp.importance.fisher import estimate_fisher
from ewcexp.model.libraries import timm_network, torchvision_network


def build(arch: str) -> torch.nn.Module:
    library, name = arch.split(":")
    builder = torchvision_network if library == "torchvision" else timm_network
    torch.manual_seed(0)
    return builder(name, (28, 28), 10)


def measure(arch: str, what: str, images: int, repeats: int) -> tuple[float, float]:
    """(seconds, peak resident MiB above the start) of one `what` on `images` images."""
    model = build(arch)
    x, y = mnist_like(images)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def batched() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    def fisher() -> None:
        estimate_fisher(
            model, x, y, estimator=what, active=slice(0, 10), chunk_size="auto", memory_mb=4096
        )

    seconds = median_seconds(batched if what == "batched pass" else fisher, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return seconds, max(0.0, (peak - base) / 1024)


def adaptation_share(arch: str, batch: int, repeats: int) -> tuple[float, float]:
    """(ms of adapting a batch, ms of the whole training step) for `arch`."""
    model = build(arch)
    x, y = mnist_like(batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def adapt() -> None:
        with torch.no_grad():
            images = x.float().div(255).unsqueeze(1).expand(-1, model.channels, -1, -1)
            images = F.interpolate(images, size=model.image_size, mode="bilinear")
            (images - model.mean) / model.std

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return median_seconds(adapt, repeats) * 1e3, median_seconds(step, repeats) * 1e3


def in_process(function, *args):  # noqa: ANN001, ANN202 - a fresh process per measurement
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--arch", nargs="+", default=["torchvision:resnet18", "timm:vit_tiny_patch16_224"]
    )
    args = parser.parse_args()
    print(f"{args.images} images, 28×28 grey adapted to 224×224 RGB; {machine()}\n")
    rows = []
    for arch in args.arch:
        started = time.perf_counter()
        batched, batched_mib = in_process(measure, arch, "batched pass", args.images, args.repeats)
        for estimator in ("sample", "empirical"):
            seconds, mib = in_process(measure, arch, estimator, args.images, args.repeats)
            rows.append([arch, estimator, f"{seconds:.2f}", f"{batched:.2f}",
                         f"{seconds / batched:.2f}", f"{mib:.0f}", f"{batched_mib:.0f}"])  # fmt: skip
        adapt, step = in_process(adaptation_share, arch, args.images, args.repeats)
        rows.append([arch, "adapting a batch / the training step", f"{adapt / 1e3:.3f}",
                     f"{step / 1e3:.2f}", f"{adapt / step:.3f}", "-", "-"])  # fmt: skip
        print(f"({arch}: {time.perf_counter() - started:.0f} s)")
    print(table(["network", "what", "s", "batched pass s", "× batched pass",
                 "peak MiB", "batched pass peak MiB"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
