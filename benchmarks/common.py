"""Helpers shared by the benchmark scripts: timing, synthetic data, tables, the machine."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mnist_like(samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 28x28 images and labels: timing does not depend on the pixels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (samples, 28, 28), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (samples,), generator=generator)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, readable in a terminal too."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def step_ms(model, params, optimizer, batches, strategy) -> float:
    """Mean milliseconds of the runner's training step over `batches`: forward, the
    strategy writes its penalty's gradient into .grad, backward, optimizer step, after_step."""
    import torch.nn.functional as F

    start = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        strategy.write_penalty_gradient(params)
        loss.backward()
        optimizer.step()
        strategy.after_step(params)
    return (time.perf_counter() - start) / len(batches) * 1e3
