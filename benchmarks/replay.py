"""Training steps with a replay memory (ER, A-GEM) and with LwF's distillation, against
fine-tuning doing the same work; the memory's bytes per sample.

    uv run python benchmarks/replay.py [--memory 5000] [--steps 100] [--repeats 9]

Every step runs through the project's runner (`ewcexp.training.loop.TrainingLoop`) on the
second task (task index 1: replay acts from the second task on) of a permuted domain-scenario
sequence: MLP 784-400-400-10, fused Adam, batch 128, MNIST-like uint8 images. The memory
(`ReplayMemory`, reservoir) is filled with `--memory` samples of the first task before timing,
and the runner offers it each step's 128 samples, as in a run.

- ER: 128 samples of the task and 128 drawn from the memory, one mean loss, against
  fine-tuning on minibatches of 256 (the same samples per step, no memory).
- A-GEM: a forward+backward pass on the minibatch, one on 128 memory samples, the projection,
  against fine-tuning doing the same two passes (the two gradients summed, the same draws)
  without the projection and without offering its samples to the memory.
- LwF: the teacher's forward pass and the distillation term, against fine-tuning.

Strategy and reference blocks of `--steps` steps alternate; a ratio is the median over
`--repeats` pairs of the pair's ratio, so the machine's drift cancels within each pair. Each
block also counts the minor page faults per step (fresh memory the kernel maps and zeroes: a
step that allocates large buffers anew can pay for it). A second table times the pieces alone:
the memory's add and draw, A-GEM's projection, LwF's teacher and distillation term. On a
machine shared with other work, OMP_NUM_THREADS=1 keeps the ratios steadier.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import machine, median_seconds, mnist_like, table

from ewcexp.data.image_data import ImageData
from ewcexp.data.replay import ReplayMemory
from ewcexp.data.sequences import PermutedSequence
from ewcexp.model.networks import MLP
from ewcexp.reporting.record import Record
from ewcexp.reporting.reporter import Reporter
from ewcexp.strategy.agem import AGEM
from ewcexp.strategy.base import Strategy
from ewcexp.strategy.baselines import Finetune
from ewcexp.strategy.lwf import LwF, distillation, frozen_copy
from ewcexp.training.loop import Replay, TrainingLoop, training_set
from ewcexp.training.preemption import StopRequest

BATCH = 128


class TwoPasses(Finetune):
    """Fine-tuning that, like A-GEM, takes a second forward+backward pass on a memory
    minibatch each step, and sums the two gradients instead of projecting one on the other."""

    name = "two_passes"
    memory_use = "constraint"

    def constrain_gradient(self, params, memory_loss: Callable[[], torch.Tensor]) -> None:
        memory_loss().backward()


class KeptMemory(ReplayMemory):
    """A memory that keeps what it holds: the runner's offer of each step's samples is
    ignored (for references that train on a memory without keeping one up)."""

    def add(self, images: torch.Tensor, units: torch.Tensor, task: int) -> None:
        pass


def copy_of(memory: ReplayMemory, kind: type[ReplayMemory]) -> ReplayMemory:
    copy = kind(memory.size, memory.policy, torch.Generator())
    copy.load_state_dict(memory.state_dict())
    copy.images = copy.images.clone()
    copy.units, copy.tasks = copy.units.clone(), copy.tasks.clone()
    return copy


@dataclass(frozen=True)
class Block:
    ms: float  # per step
    faults: float  # minor page faults per step: fresh memory the kernel had to map


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bytes_per_sample(memory: ReplayMemory) -> dict[str, int]:
    assert memory.images is not None
    return {
        "image": memory.images.element_size() * memory.images[0].numel(),
        "unit": memory.units.element_size(),
        "task": memory.tasks.element_size(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60_000, help="training samples per task")
    parser.add_argument("--memory", type=int, default=5000, help="memory slots, filled at start")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=9, help="alternating pairs of blocks")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, labels = mnist_like(args.samples)
    data = ImageData(images, labels, images[:10], labels[:10], "synthetic")
    sequence = PermutedSequence("mnist", data, num_tasks=2, scenario="domain", seed=0)
    scenario = sequence.scenario
    first = training_set(sequence.tasks[:1], scenario, seen=0, device=torch.device("cpu"))
    second = training_set(sequence.tasks[1:], scenario, seen=1, device=torch.device("cpu"))

    model = MLP((28, 28), 10, [400, 400])
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    memory = ReplayMemory(args.memory, "reservoir", torch.Generator().manual_seed(0))
    memory.add(first[0][: args.memory], first[1][: args.memory], task=0)
    kept = copy_of(memory, KeptMemory)  # the same samples, never replaced
    rng = torch.Generator().manual_seed(0)

    def block(strategy: Strategy, batch_size: int, memory: ReplayMemory | None) -> Block:
        """Milliseconds and page faults per step of `--steps` steps of task 1 in the runner."""
        loop = TrainingLoop(
            model,
            optimizer,
            strategy,
            params,
            Reporter(Record(torch.zeros(2, 2))),
            log_every=50,
            stop=StopRequest(),
            replay=None if memory is None else Replay.of(memory, BATCH, scenario, 2, task=1),
        )
        faults, start = minor_faults(), time.perf_counter()
        loop.run(second, args.steps, batch_size, rng, task=1, first_step=0, description="block")
        seconds, faults = time.perf_counter() - start, minor_faults() - faults
        return Block(seconds / args.steps * 1e3, faults / args.steps)

    def paired(run: Callable[[], Block], reference: Callable[[], Block]) -> list[float]:
        """Median step times of `run` and `reference` in alternating blocks, the median of
        the per-pair ratios, and the median page faults per step of each."""
        run(), reference()  # warm-up
        pairs = [(run(), reference()) for _ in range(args.repeats)]
        return [
            statistics.median(p[0].ms for p in pairs),
            statistics.median(p[1].ms for p in pairs),
            statistics.median(p[0].ms / p[1].ms for p in pairs),
            statistics.median(p[0].faults for p in pairs),
            statistics.median(p[1].faults for p in pairs),
        ]

    def finetune(batch_size: int) -> Callable[[], Block]:
        return lambda: block(Finetune(), batch_size, None)

    def step(strategy: Strategy, memory: ReplayMemory | None) -> Callable[[], Block]:
        return lambda: block(strategy, BATCH, memory)

    lwf = LwF()  # with a teacher, as after one end_task
    lwf.teacher, lwf.actives = frozen_copy(model), [scenario.active(0, seen=0)]
    ft128, ft256 = "finetune, 128", "finetune, 256"
    two = "two passes, 128 + 128 drawn"  # A-GEM's reference: no projection, no memory upkeep
    comparisons = {
        "finetune, batch 128 (control)": (ft128, finetune(128), finetune(128)),
        # ER: the finetune strategy with a memory whose samples join each minibatch
        "ER, 128 + 128 drawn": (ft256, step(Finetune(), memory), finetune(256)),
        "ER, memory not kept up (no add)": (ft256, step(Finetune(), kept), finetune(256)),
        "A-GEM": (two, step(AGEM(), memory), step(TwoPasses(), kept)),
        "A-GEM, memory not kept up (no add)": (two, step(AGEM(), kept), step(TwoPasses(), kept)),
        "two passes, memory kept up (add)": (
            two,
            step(TwoPasses(), memory),
            step(TwoPasses(), kept),
        ),
        "LwF (teacher's forward, distillation)": (ft128, step(lwf, None), finetune(128)),
    }
    times = {name: paired(run, reference) for name, (_, run, reference) in comparisons.items()}
    rows = [
        [
            name,
            comparisons[name][0],
            f"{ms:.2f}",
            f"{base:.2f}",
            f"{ratio:.3f}",
            f"{faults:.0f}",
            f"{base_faults:.0f}",
        ]
        for name, (ms, base, ratio, faults, base_faults) in times.items()
    ]

    # pieces of the steps, alone (median of blocks of `--steps` calls)
    offered = [second[0][i * BATCH : (i + 1) * BATCH] for i in range(args.steps)]
    units = second[1][:BATCH]
    upkeep = copy_of(memory, ReplayMemory)
    gradients = [torch.randn_like(p) for p in params]
    with torch.no_grad():
        logits = model(offered[0])

    def add() -> None:
        for part in offered:
            upkeep.add(part, units, 1)

    def draw() -> None:
        for part in offered:
            drawn, drawn_units, _ = upkeep.draw(BATCH)
            torch.cat([part, drawn]), torch.cat([units, drawn_units])

    agem = AGEM()
    no_memory_pass = torch.zeros((), requires_grad=True)

    def projection() -> None:  # A-GEM's constrain_gradient less the memory's pass
        for _ in range(args.steps):
            for p, gradient in zip(params, gradients, strict=True):
                p.grad = gradient  # as the step's backward pass leaves it
            agem.constrain_gradient(params, lambda: no_memory_pass * 1)

    def teacher() -> None:
        with torch.no_grad():
            for part in offered:
                lwf.teacher(part)

    def distill() -> None:
        for _ in range(args.steps):
            student = logits.clone().requires_grad_()
            distillation(student, logits, lwf.actives, lwf.temperature).backward()

    def per_step(run: Callable[[], None]) -> float:
        return median_seconds(run, args.repeats) / args.steps * 1e3

    pieces = [
        (f"memory.add of the step's {BATCH} samples", per_step(add), "ER, 128 + 128 drawn"),
        (f"memory.draw({BATCH}) and the concatenation", per_step(draw), "ER, 128 + 128 drawn"),
        ("A-GEM: zero the buffer, project .grad in place", per_step(projection), "A-GEM"),
        (
            f"LwF: the teacher's forward pass on {BATCH}",
            per_step(teacher),
            "LwF (teacher's forward, distillation)",
        ),
        (
            "LwF: the distillation term's forward and backward",
            per_step(distill),
            "LwF (teacher's forward, distillation)",
        ),
    ]

    stored = bytes_per_sample(memory)
    total = sum(stored.values())
    float_copy = 4 * memory.images[0].numel()

    print(
        f"Training step of task 1, MLP 784-400-400-10, batch {BATCH}, memory of {args.memory} "
        f"samples (reservoir); medians over {args.repeats} alternating pairs of "
        f"{args.steps}-step blocks; {machine()}\n"
    )
    print(
        table(
            [
                "step",
                "reference",
                "step ms",
                "reference ms",
                "× reference (median of pairs)",
                "page faults / step",
                "reference's page faults / step",
            ],
            rows,
        )
    )
    print(f"\nPieces of the steps, timed alone (median of {args.repeats} blocks)\n")
    print(
        table(
            ["piece", "ms per step", "× the reference step"],
            [[name, f"{ms:.3f}", f"{ms / times[of][1]:.3f}"] for name, ms, of in pieces],
        )
    )
    print("\nThe memory's bytes per sample\n")
    print(
        table(
            ["storage", "bytes per sample", "× a float32 copy of the image"],
            [
                [
                    f"as kept: {memory.images.dtype} image {stored['image']} + unit {stored['unit']}"
                    f" + task {stored['task']}",
                    total,
                    f"{total / float_copy:.3f}",
                ],
                ["a float32 copy of the image", float_copy, "1.000"],
            ],
        )
    )


if __name__ == "__main__":
    main()
