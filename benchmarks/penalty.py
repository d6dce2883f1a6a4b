"""Training-step cost of each penalty strategy after T tasks, against fine-tuning's step.

    uv run python benchmarks/penalty.py [--tasks 2 5 10 20] [--repeats 5]

A step is what the runner does per minibatch: forward, backward, the strategy's
penalty gradient, optimizer step (MLP 784-400-400-10, batch 128, fused Adam).
Also the memory of the state each strategy keeps (Fishers and anchors).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import machine, median_seconds, mnist_like, table

from ewcexp.model import MLP
from ewcexp.strategy import EWC, L2, EWCSum, Finetune, OnlineEWC

STRATEGIES = {"ewc": EWC, "ewc_sum": EWCSum, "online_ewc": OnlineEWC, "l2": L2}


def stored_bytes(strategy: Finetune) -> int:
    if strategy.penalty is None:
        return 0
    return sum(
        t.numel() * t.element_size()
        for term in strategy.penalty.terms
        for part in term
        for t in part
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="*", default=[2, 5, 10, 20])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MLP((28, 28), 10, [400, 400])
    params = list(model.parameters())
    parameter_bytes = sum(p.numel() * p.element_size() for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    images, labels = mnist_like(128 * args.steps)
    batches = list(zip(images.split(128), labels.split(128), strict=True))

    def block(strategy: Finetune) -> None:
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            strategy.add_penalty_gradient(params)
            optimizer.step()

    def step_ms(strategy: Finetune) -> float:
        return 1e3 * median_seconds(lambda: block(strategy), args.repeats) / args.steps

    finetune = [step_ms(Finetune())]
    rows = []
    for tasks in args.tasks:
        for name, cls in STRATEGIES.items():
            strategy = cls(1.0)
            for _ in range(tasks):
                strategy.consolidate(
                    [p.detach() + 0.01 * torch.randn_like(p) for p in params],
                    [torch.rand_like(p) for p in params],
                )
            ms = step_ms(strategy)
            finetune.append(step_ms(Finetune()))  # re-measured side by side, against drift
            base = finetune[-1]
            memory = stored_bytes(strategy)
            rows.append(
                [
                    name,
                    tasks,
                    f"{ms:.2f}",
                    f"{base:.2f}",
                    f"{ms / base:.3f}",
                    f"{memory / 2**20:.1f}",
                    f"{memory / parameter_bytes:.0f}",
                ]
            )
    print(
        f"Training step, MLP 784-400-400-10 ({parameter_bytes / 2**20:.1f} MiB of parameters), "
        f"batch 128; median of {args.repeats} x {args.steps} steps; {machine()}\n"
    )
    print(
        table(
            [
                "strategy",
                "tasks",
                "step ms",
                "finetune ms",
                "× finetune",
                "state MiB",
                "parameter-sized buffers",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
