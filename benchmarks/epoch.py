"""One training epoch through the project's runner against a minimal hand-written loop.

    uv run python benchmarks/epoch.py [--samples 60000] [--repeats 3]

Both train the same MLP 784-400-400-10 with fused Adam, batch 128, on the same
preloaded uint8 tensors. The runner's epoch includes building the task's training
set (its permutation applied to the whole tensor) and its fine-tuning strategy hook.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from common import machine, median_seconds, mnist_like, table

from ewcexp.data.image_data import ImageData
from ewcexp.data.sequences import PermutedSequence
from ewcexp.model.networks import MLP
from ewcexp.reporting.record import Record
from ewcexp.reporting.reporter import Reporter
from ewcexp.strategy.baselines import Finetune
from ewcexp.training.loop import TrainingLoop, training_set
from ewcexp.training.preemption import StopRequest

BATCH = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = mnist_like(args.samples)
    data = ImageData(images, labels, images[:10], labels[:10], "synthetic")
    sequence = PermutedSequence("mnist", data, num_tasks=1, scenario="domain", seed=0)
    task, scenario = sequence.tasks[0], sequence.scenario
    model = MLP((28, 28), 10, [400, 400])
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    steps = math.ceil(args.samples / BATCH)
    rng = torch.Generator().manual_seed(0)

    def runner_setup() -> tuple:
        return training_set([task], scenario, seen=0, device=torch.device("cpu"))

    batches = runner_setup()

    def runner_epoch() -> None:
        loop = TrainingLoop(
            model,
            optimizer,
            Finetune(),
            params,
            Reporter(Record(torch.zeros(1, 1))),
            log_every=50,
            stop=StopRequest(),
        )
        loop.run(batches, steps, BATCH, rng, task=0, first_step=0, description="epoch")

    task_images, task_labels = task.train_set()

    def minimal_epoch() -> None:
        model.train()
        for batch in torch.randperm(args.samples, generator=rng).split(BATCH):
            loss = F.cross_entropy(model(task_images[batch]), task_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    minimal = median_seconds(minimal_epoch, args.repeats)
    runner = median_seconds(runner_epoch, args.repeats)
    minimal = min(minimal, median_seconds(minimal_epoch, args.repeats))  # again, after: drift
    setup = median_seconds(runner_setup, args.repeats)
    print(
        f"One epoch of {args.samples} samples ({steps} steps); median of {args.repeats}; "
        f"{machine()}\n"
    )
    print(
        table(
            ["loop", "seconds", "× minimal"],
            [
                ["minimal hand-written loop", f"{minimal:.2f}", "1.00"],
                [
                    "project runner (ewcexp.training.loop.TrainingLoop)",
                    f"{runner:.2f}",
                    f"{runner / minimal:.3f}",
                ],
                [
                    "+ once per task: build the training set (permute, targets)",
                    f"{setup:.2f}",
                    f"{(runner + setup) / minimal:.3f}",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
