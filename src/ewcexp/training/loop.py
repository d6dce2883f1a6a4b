"""Training one task: minibatches of its (and, for joint training, earlier tasks') data,
the loss over each sample's active output units, and the strategy's hooks around each step."""

from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ewcexp.config.schema import NonNegativeInt, PositiveInt
from ewcexp.data.replay import ReplayMemory
from ewcexp.data.scenarios import Scenario, Task
from ewcexp.reporting.reporter import Reporter
from ewcexp.strategy.base import Strategy
from ewcexp.training.divergence import Diverged
from ewcexp.training.preemption import StopRequest

log = logging.getLogger(__name__)


def _on_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def _to_host(loss: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    """The loss's value on its way to the host: on a GPU copied without waiting for it, with
    an event that says when it has arrived, so checking every step's loss costs no sync."""
    value = loss.detach()
    if value.device.type != "cuda":
        return value, None
    value = value.to("cpu", non_blocking=True)  # into pinned memory, in stream order
    arrived = torch.cuda.Event()
    arrived.record()
    return value, arrived


@dataclass(frozen=True)
class TrainSettings:
    """The `train` section: how long each task trains, in minibatches, how often to report,
    whether to evaluate during training (continual evaluation: every `eval_every` steps,
    every task seen so far on its first `eval_subset` test images; None: off), and whether to
    keep the parameters every `snapshot_every` steps and at each task's end (0 or None: off;
    `ewcexp.training.snapshots`)."""

    epochs: PositiveInt = 1
    iterations: PositiveInt | None = 500  # steps per task; None: `epochs` passes instead
    batch_size: PositiveInt = 128
    eval_batch_size: PositiveInt = 1024
    log_every: PositiveInt = 50  # steps between training-metric reports
    eval_every: PositiveInt | None = None
    eval_subset: PositiveInt = 1000
    # the forward pass and the loss under autocast in bf16 or fp16 (a gradient scaler for
    # fp16, which needs a GPU); parameters, optimizer state and importances stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    snapshot_every: NonNegativeInt | None = None

    def steps(self, train_size: int) -> int:
        return self.iterations or self.epochs * math.ceil(train_size / self.batch_size)


@dataclass
class MixedPrecision:
    """`train.precision` in the step: the forward pass and the loss under autocast (bf16,
    fp16), the weights and their gradients fp32. fp16 scales the loss (and the penalty's
    gradient, written into `.grad` first) so small gradients survive, and skips a step whose
    gradients overflowed, as `torch.amp.GradScaler` does; the scale starts afresh each task."""

    precision: Literal["fp32", "bf16", "fp16"]
    device_type: str
    scaler: torch.amp.GradScaler | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device_type)

    def autocast(self) -> AbstractContextManager[object]:
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device_type, dtype=dtype, enabled=self.precision != "fp32")

    def backward(self, loss: Tensor, params: list[Tensor]) -> None:
        """`loss.backward()`, adding to what `.grad` holds (the penalty's gradient)."""
        if self.scaler is None:
            loss.backward()
            return
        written = [p.grad for p in params if p.grad is not None]
        if written:
            torch._foreach_mul_(written, self.scaler.get_scale())
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """The optimizer's step; False when fp16's scaler skipped it (gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before


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
class Replay:
    """Experience replay (Chaudhry et al. 2019): each step of the second task on (of the first,
    when the memory holds task 0's samples: `task_sequence.pretrained_on`) trains on its
    minibatch and `batch_size` samples drawn from `memory`, concatenated (one mean loss); each
    step's minibatch is then offered to the memory. `bounds[k]`: the output units active for
    a sample of task k now ([lo, hi), as the scenario gives them to the current task); task 0's
    samples are stored as task `len(tasks)`, the last row, its own units."""

    memory: ReplayMemory
    batch_size: int
    bounds: Tensor
    first_task: int = 1  # the first task whose steps draw from the memory

    @classmethod
    def of(
        cls,
        memory: ReplayMemory | None,
        batch_size: int,
        scenario: Scenario,
        tasks: int,
        task: int,
        pretrained: slice | None = None,
    ) -> Replay | None:
        """Task `task`'s replay (of `tasks`): None without a memory. `pretrained`: task 0's
        units, when its samples were offered to the memory before the first task."""
        if memory is None:
            return None
        active = [scenario.active(k, seen=task) for k in range(tasks)]
        active += [pretrained] if pretrained is not None else []
        bounds = torch.tensor([[a.start, a.stop] for a in active])
        return cls(memory, batch_size, bounds, first_task=0 if pretrained is not None else 1)

    def held(self, task: int) -> Tensor:
        """The bounds of the tasks whose samples the memory may hold while `task` trains."""
        past = self.bounds[: task + 1]
        return torch.cat([past, self.bounds[-1:]]) if self.first_task == 0 else past

    def added_to(
        self, images: Tensor, units: Tensor, lo: Tensor | int, hi: Tensor | int
    ) -> tuple[Tensor, Tensor, Tensor | int, Tensor | int]:
        kept, kept_units, tasks = self.memory.draw(self.batch_size)
        images, units = torch.cat([images, kept]), torch.cat([units, kept_units])
        if isinstance(lo, int) and isinstance(hi, int):  # the same units for every sample
            return images, units, lo, hi
        bounds = self.bounds.to(units.device)[tasks]
        return images, units, torch.cat([lo, bounds[:, 0]]), torch.cat([hi, bounds[:, 1]])

    def loss(self, model: nn.Module) -> Tensor:
        """The loss on a minibatch drawn from the memory (A-GEM's reference gradient)."""
        images, units, tasks = self.memory.draw(self.batch_size)
        bounds = self.bounds.to(units.device)[tasks]
        return active_cross_entropy(model(images), units, bounds[:, 0], bounds[:, 1])


@dataclass
class TrainingLoop:
    """Minibatch steps with the strategy's hooks, reporting every `log_every` steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Strategy
    params: list[Tensor]
    reporter: Reporter
    log_every: int
    stop: StopRequest
    # (n, call): `call(global step)` after every n-th step (continual evaluation, snapshots)
    periodic: tuple[tuple[int, Callable[[int], None]], ...] = ()
    replay: Replay | None = None
    precision: MixedPrecision | None = None  # None: fp32

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
        start. Returns the steps done (fewer when a stop is requested) and the last loss reported.
        Every step's loss is checked (a step late, so a GPU never waits for it), the penalty at
        each report: `Diverged` when one is not finite."""
        images, targets, lo, hi = data
        replaying = self.replay is not None and task >= self.replay.first_task
        use = self.strategy.memory_use
        mixing = replaying and use == "batch"  # memory samples join each minibatch
        # the same units for every sample: all but task-incremental joint training or replay
        shared = bool((lo == lo[0]).all() and (hi == hi[0]).all())
        if shared and mixing:
            seen = self.replay.held(task)
            shared = bool((seen[:, 0] == lo[0].cpu()).all() and (seen[:, 1] == hi[0].cpu()).all())
        if shared:
            lo, hi = int(lo[0]), int(hi[0])
        self.model.train()
        precision = self.precision or MixedPrecision("fp32", images.device.type)
        loss_value, since, clock = float("nan"), 0, time.perf_counter()
        batches = itertools.islice(batch_indices(len(targets), batch_size, steps, rng), done, None)
        # a progress bar on a terminal; in a log file or SLURM's captured output, where a bar
        # would be a heap of carriage returns, a log line every `log_every` steps instead
        interactive = _on_terminal(sys.stderr)
        pending = None  # the last step's loss on its way to the host, checked a step later

        def checked(step: int, value: Tensor, arrived: torch.cuda.Event | None) -> float:
            if arrived is not None:
                arrived.synchronize()
            loss = float(value)
            if not math.isfinite(loss):
                raise Diverged("loss", loss, task, step + 1, first_step + step)
            return loss

        with tqdm(
            total=steps,
            initial=done,
            desc=description,
            leave=False,
            dynamic_ncols=True,
            disable=not interactive,
        ) as progress:
            for step, batch in enumerate(batches, start=done):
                if pending is not None:
                    checked(*pending)
                    pending = None
                if self.stop.requested:
                    return step, loss_value
                batch = batch.to(images.device)
                inputs, units = images[batch], targets[batch]
                bounds = (lo, hi) if shared else (lo[batch], hi[batch])
                if mixing:
                    inputs, units, *bounds = self.replay.added_to(inputs, units, *bounds)
                with precision.autocast():
                    logits = self.model(inputs)
                    loss = active_cross_entropy(logits, units, *bounds)
                    if (extra := self.strategy.extra_loss(self.model, inputs, logits)) is not None:
                        loss = loss + extra
                pending = (step, *_to_host(loss))
                self.strategy.write_penalty_gradient(self.params)
                precision.backward(loss, self.params)
                if replaying and use == "constraint":
                    with precision.autocast():
                        self.strategy.constrain_gradient(
                            self.params, partial(self.replay.loss, self.model)
                        )
                if precision.step(self.optimizer):
                    self.strategy.after_step(self.params)
                if self.replay is not None:
                    self.replay.memory.add(images[batch], targets[batch], task)
                since += len(batch)
                for every, call in self.periodic:
                    if (first_step + step + 1) % every == 0:
                        call(first_step + step + 1)
                if step % self.log_every == 0 or step == steps - 1:
                    loss_value, pending = checked(*pending), None
                    elapsed, clock = time.perf_counter() - clock, time.perf_counter()
                    rate, since = since / elapsed, 0
                    penalty = self.report(first_step + step, task, step + 1, loss_value, rate)
                    progress.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                    if not interactive:
                        log.info(
                            "%s: step %d/%d, loss %.4f, penalty %.4g, %.0f samples/s",
                            description, step + 1, steps, loss_value, penalty, rate,
                        )  # fmt: skip
                progress.update()
        if pending is not None:
            checked(*pending)
        return steps, loss_value

    def report(
        self, step: int, task: int, task_step: int, loss: float, samples_per_s: float
    ) -> float:
        """Training so far at global `step` (`task_step` of the task, from 1) to the
        reporter; returns the penalty, checked to be finite."""
        penalty = self.strategy.penalty_value(self.params)
        if not math.isfinite(penalty):
            raise Diverged("penalty", penalty, task, task_step, step)
        lr = self.optimizer.param_groups[0]["lr"]
        self.reporter.trained(step, task, loss, penalty, lr, samples_per_s)
        return penalty
