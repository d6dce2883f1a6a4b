"""Training one task: minibatches of its (and, for joint training, earlier tasks') data,
the loss over each sample's active output units, and the strategy's hooks around each step."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ewcexp.logger import NoLogger
from ewcexp.preemption import StopRequest
from ewcexp.schema import PositiveInt
from ewcexp.strategy.base import Strategy
from ewcexp.task_sequence import Scenario, Task


@dataclass(frozen=True)
class TrainSettings:
    """The `train` section: how long each task trains, in minibatches, how often to report,
    and whether to evaluate during training (continual evaluation: every `eval_every` steps,
    every task seen so far on its first `eval_subset` test images; None: off)."""

    epochs: PositiveInt = 1
    iterations: PositiveInt | None = 500  # steps per task; None: `epochs` passes instead
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1024
    log_every: PositiveInt = 50  # steps between training-metric reports
    eval_every: PositiveInt | None = None
    eval_subset: PositiveInt = 1000

    def steps(self, train_size: int) -> int:
        return self.iterations or self.epochs * math.ceil(train_size / self.batch_size)


def training_set(
    tasks: list[Task], scenario: Scenario, seen: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images, target output units, and the [lo, hi) range of output units active per sample."""
    columns: list[list[Tensor]] = [[], [], [], []]
    for task in tasks:
        images, labels = task.train_set()
        active = scenario.active(task.index, seen)
        for column, part in zip(
            columns,
            (
                images,
                labels + scenario.offset(task.index),
                torch.full_like(labels, active.start),
                torch.full_like(labels, active.stop),
            ),
            strict=True,
        ):
            column.append(part)
    return tuple(torch.cat(column).to(device) for column in columns)  # type: ignore[return-value]


def batch_indices(size: int, batch_size: int, steps: int, rng: torch.Generator) -> Iterator[Tensor]:
    """`steps` minibatches of indices, reshuffled at every pass over the data."""
    while True:
        for batch in torch.randperm(size, generator=rng).split(batch_size):
            if steps == 0:
                return
            steps -= 1
            yield batch


def active_cross_entropy(
    logits: Tensor, targets: Tensor, lo: Tensor | int, hi: Tensor | int
) -> Tensor:
    """Cross-entropy over each sample's active output units [lo, hi) only; `targets` index the
    whole output. With the same range for every sample (int bounds), a plain slice."""
    if isinstance(lo, int) and isinstance(hi, int):
        return F.cross_entropy(logits[:, lo:hi], targets - lo)
    units = torch.arange(logits.shape[1], device=logits.device)
    inactive = (units < lo[:, None]) | (units >= hi[:, None])
    return F.cross_entropy(logits.masked_fill(inactive, float("-inf")), targets)


@dataclass
class TrainingLoop:
    """Minibatch steps with the strategy's hooks, reporting every `log_every` steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    params: list[Tensor]
    logger: NoLogger
    log_every: int
    stop: StopRequest
    probe: Callable[[int], None] | None = None  # called with the global step, every `probe_every`
    probe_every: int = 0

    def run(
        self,
        data: tuple[Tensor, Tensor, Tensor, Tensor],
        steps: int,
        batch_size: int,
        rng: torch.Generator,
        task: int,
        first_step: int,
        description: str,
        done: int = 0,
    ) -> tuple[int, float]:
        """Train the task's minibatches `done`..`steps`-1 (`rng` as at the task's start, so a
        resumed task draws the same batches); `first_step` is the global step at the task's
        start. Returns the steps done (fewer when a stop is requested) and the last loss reported."""
        images, targets, lo, hi = data
        shared = bool((lo == lo[0]).all() and (hi == hi[0]).all())  # all but task-incremental joint
        if shared:
            lo, hi = int(lo[0]), int(hi[0])
        self.model.train()
        loss_value, since, clock = float("nan"), 0, time.perf_counter()
        batches = itertools.islice(batch_indices(len(targets), batch_size, steps, rng), done, None)
        # disable=None: a progress bar on a terminal, none in log files
        with tqdm(
            total=steps,
            initial=done,
            desc=description,
            leave=False,
            dynamic_ncols=True,
            disable=None,
        ) as progress:
            for step, batch in enumerate(batches, start=done):
                if self.stop.requested:
                    return step, loss_value
                batch = batch.to(images.device)
                logits = self.model(images[batch])
                loss = (
                    active_cross_entropy(logits, targets[batch], lo, hi)
                    if shared
                    else active_cross_entropy(logits, targets[batch], lo[batch], hi[batch])
                )
                self.strategy.write_penalty_gradient(self.params)
                loss.backward()
                self.optimizer.step()
                self.strategy.after_step(self.params)
                since += len(batch)
                if self.probe and (first_step + step + 1) % self.probe_every == 0:
                    self.probe(first_step + step + 1)
                if step % self.log_every == 0 or step == steps - 1:
                    loss_value = loss.item()
                    elapsed, clock = time.perf_counter() - clock, time.perf_counter()
                    self.report(first_step + step, task, loss_value, since / elapsed)
                    since = 0
                    progress.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                progress.update()
        return steps, loss_value

    def report(self, step: int, task: int, loss: float, samples_per_s: float) -> None:
        penalty = self.strategy.penalty_value(self.params)
        self.logger.log_training(
            {
                "train/step": step,
                "train/task": task + 1,
                "train/loss": loss,
                "train/penalty": penalty,
                "train/penalty_share": penalty / (loss + penalty or 1.0),
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/samples_per_s": samples_per_s,
            }
        )
