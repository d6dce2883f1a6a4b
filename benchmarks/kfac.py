"""Kronecker-factored EWC's costs against the diagonal's: estimating, stepping, storing.

    uv run python benchmarks/kfac.py [--samples 5000] [--tasks 1 2 5 10] [--repeats 9]

1. Estimating: `fisher.structure=kfac` against the diagonal `exact` Fisher on the same
   samples (MLP 784-400-400-10 and the CNN), both `exact` (C − 1 = 9 signals per sample).
2. Stepping: a training step (forward, penalty gradient written into .grad, backward, fused
   Adam; the MLP at batch 128, 1024 and 2048, the CNN at 128) of online EWC and EWC with
   Kronecker blocks after T tasks, against fine-tuning's step, timed in alternating blocks
   like benchmarks/penalty.py; the diagonal EWC step beside them.
3. Storing: per layer, the numbers the factors keep (A: (in+1)², G: out²) against the
   diagonal Fisher's ((in+1)·out), per task.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
from common import machine, median_seconds, mnist_like, step_ms, table

from ewcexp.importance.contract import TaskData
from ewcexp.importance.fisher import Fisher
from ewcexp.model.networks import CNN, MLP
from ewcexp.strategy.base import Strategy
from ewcexp.strategy.baselines import Finetune
from ewcexp.strategy.ewc import EWC, OnlineEWC

MODELS = {
    "MLP 784-400-400-10": lambda: MLP((28, 28), 10, [400, 400]),
    "CNN conv32-conv64-fc128": lambda: CNN((28, 28), 10, [32, 64], 128),
}


def task_data(samples: int) -> TaskData:
    images, labels = mnist_like(samples)
    generator = torch.Generator().manual_seed(0)
    return TaskData(lambda: (images, labels), slice(0, 10), torch.device("cpu"), generator)


def estimating(samples: int, repeats: int) -> list[list[object]]:
    rows = []
    data = task_data(samples)
    for name, build in MODELS.items():
        torch.manual_seed(0)
        model = build()
        diagonal = Fisher(estimator="exact", num_samples=samples)
        kfac = Fisher(estimator="exact", num_samples=samples, structure="kfac")
        diagonal(model, data), kfac(model, data)  # warm-up: the first call pays allocations
        pairs = [
            (
                median_seconds(partial(diagonal, model, data), 1, warmup=0),
                median_seconds(partial(kfac, model, data), 1, warmup=0),
            )
            for _ in range(repeats)
        ]
        diagonal_s = statistics.median(p[0] for p in pairs)
        kfac_s = statistics.median(p[1] for p in pairs)
        ratios = sorted(p[1] / p[0] for p in pairs)
        spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
        row = [name, samples, f"{diagonal_s:.2f}", f"{kfac_s:.2f}"]
        rows.append([*row, f"{statistics.median(ratios):.2f}", spread])
    return rows


def stepping(
    model_name: str, tasks: list[int], steps: int, repeats: int, batch: int
) -> list[list[object]]:
    torch.manual_seed(0)
    model = MODELS[model_name]()
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    images, labels = mnist_like(batch * steps)
    batches = list(zip(images.split(batch), labels.split(batch), strict=True))
    data = task_data(1000)
    blocks = Fisher(estimator="exact", num_samples=1000, structure="kfac")(model, data)
    diagonal = Fisher(estimator="exact", num_samples=1000)(model, data)

    def block_ms(strategy: Strategy) -> float:
        return step_ms(model, params, optimizer, batches, strategy)

    def after(strategy: Strategy, count: int, importance: object) -> Strategy:
        for _ in range(count):  # the same Fisher around different anchors
            strategy.consolidate(
                [p.detach() + 0.01 * torch.randn_like(p) for p in params], importance
            )
        return strategy

    rows = []
    cases = [("finetune (control)", "-", lambda: Finetune())]
    cases += [("online_ewc, kfac", t, lambda t=t: after(OnlineEWC(1.0), t, blocks)) for t in tasks]
    cases += [("ewc, kfac", t, lambda t=t: after(EWC(1.0), t, blocks)) for t in tasks]
    cases += [("ewc, diagonal", t, lambda t=t: after(EWC(1.0), t, diagonal)) for t in tasks[:1]]
    for name, count, build in cases:
        strategy = build()
        block_ms(strategy)  # warm-up
        pairs = [(block_ms(strategy), block_ms(Finetune())) for _ in range(repeats)]
        rows.append(
            [
                name,
                count,
                f"{statistics.median(p[0] for p in pairs):.2f}",
                f"{statistics.median(p[1] for p in pairs):.2f}",
                f"{statistics.median(p[0] / p[1] for p in pairs):.3f}",
            ]
        )
    return rows


def storing() -> list[list[object]]:
    rows = []
    for name, build in MODELS.items():
        model = build()
        for layer_name, layer in model.named_modules():
            if not isinstance(layer, torch.nn.Linear | torch.nn.Conv2d):
                continue
            inputs = layer.weight[0].numel() + (layer.bias is not None)
            outputs = layer.weight.shape[0]
            diagonal, factors = inputs * outputs, inputs**2 + outputs**2
            rows.append(
                [
                    f"{name}: {layer_name}",
                    f"{inputs} × {outputs}",
                    diagonal,
                    factors,
                    f"{factors / diagonal:.2f}",
                    f"{4 * factors / 2**20:.2f}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000, help="samples per Fisher")
    parser.add_argument("--tasks", type=int, nargs="*", default=[1, 2, 5, 10])
    parser.add_argument("--steps", type=int, default=50, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs")
    parser.add_argument("--batches", type=int, nargs="*", default=[128, 1024, 2048])
    parser.add_argument("--cnn-tasks", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--cnn-batches", type=int, nargs="*", default=[128])
    args = parser.parse_args()
    print(f"{machine()}\n")
    print("Estimating one task's Fisher, `exact` (s; medians of alternating pairs):\n")
    print(
        table(
            ["model", "samples", "diagonal s", "kfac s", "kfac × diagonal", "lowest-highest pair"],
            estimating(args.samples, args.repeats),
        )
    )
    mlp, cnn = MODELS
    runs = [(mlp, args.tasks, batch) for batch in args.batches]
    runs += [(cnn, args.cnn_tasks, batch) for batch in args.cnn_batches]
    for name, tasks, batch in runs:
        print(
            f"\nTraining step after T tasks ({name}, batch {batch}; medians over "
            f"{args.repeats} alternating pairs of {args.steps}-step blocks):\n"
        )
        print(
            table(
                ["strategy", "tasks", "step ms", "finetune ms", "× finetune (median of pairs)"],
                stepping(name, tasks, args.steps, args.repeats, batch),
            )
        )
    print("\nStored per layer and task (numbers; the anchor, (in+1)·out, comes on top of both):\n")
    print(
        table(
            ["layer", "(in+1) × out", "diagonal", "A and G", "factors / diagonal", "factors MiB"],
            storing(),
        )
    )


if __name__ == "__main__":
    main()
