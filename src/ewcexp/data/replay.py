"""A replay memory: up to `size` training samples of the stream seen so far, kept as the data
set keeps them (uint8 images), for any strategy to train on beside the current task.

Which samples stay is the `policy`:
- `reservoir` (Vitter 1985): the n-th sample of the stream takes a random slot with
  probability M/n once the M slots are full, so every sample seen is kept with probability M/n;
- `class_balanced`: the slots are shared evenly among the classes seen (a class is an output
  unit: a task's class in the task and class scenarios, a label shared by every task in the
  domain one). A sample of a class holding fewer slots than the largest evicts a random sample
  of a largest class; one of a largest class replaces a random sample of its own class with
  probability (its class's slots)/(its class's samples seen): a reservoir within the class.
The memory draws from its own random stream (the run's "replay" stream) and is checkpointed
whole, so a resumed run keeps and draws exactly what it would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ewcexp.config.schema import NonNegativeInt, PositiveInt
from ewcexp.config.seeds import generator
from ewcexp.data.scenarios import Task

log = logging.getLogger(__name__)

Policy = Literal["reservoir", "class_balanced"]


@dataclass(frozen=True)
class ReplaySettings:
    """The `replay` section: a memory of `size` samples (0: none) kept by `policy`; each step
    of the second task on adds `batch_size` of them (None: `train.batch_size`) to the
    current minibatch."""

    size: NonNegativeInt = 0
    policy: Policy = "reservoir"
    batch_size: PositiveInt | None = None


class ReplayMemory:
    """The samples kept: images (as stored), the output unit each trains, the task it came
    from; `seen` samples offered so far (per class for `class_balanced`)."""

    def __init__(self, size: int, policy: Policy, generator: torch.Generator) -> None:
        self.size, self.policy, self.generator = size, policy, generator
        self.images: Tensor | None = None  # allocated at the first sample: its shape and dtype
        self.units = torch.zeros(size, dtype=torch.long)
        self.tasks = torch.zeros(size, dtype=torch.long)
        self.filled = 0
        self.seen = 0
        self.seen_per_unit: dict[int, int] = {}

    def __len__(self) -> int:
        return self.filled

    def add(self, images: Tensor, units: Tensor, task: int) -> None:
        """Offer a minibatch of the stream: `images` as stored, `units` the output unit each
        trains, all of task `task`."""
        if self.size == 0:
            return
        if self.images is None:
            self.images = images.new_zeros((self.size, *images.shape[1:]))
            self.units, self.tasks = self.units.to(images.device), self.tasks.to(images.device)
        if self.policy == "reservoir":
            self._add_to_reservoir(images, units, task)
            return
        for image, unit in zip(images, units.tolist(), strict=True):
            slot = self._slot_for(unit)
            if slot is not None:
                self.images[slot], self.units[slot], self.tasks[slot] = image, unit, task

    def _add_to_reservoir(self, images: Tensor, units: Tensor, task: int) -> None:
        """Reservoir sampling for a whole minibatch at once (no Python loop per sample): the
        free slots take the first samples; each later sample, the n-th of the stream, draws
        j = ⌊u·n⌋ and replaces slot j when j < size. Samples of one minibatch that draw the
        same slot replace each other in stream order, so the last one stays, as one by one."""
        assert self.images is not None
        free = min(self.size - self.filled, len(images))
        if free:
            slots = slice(self.filled, self.filled + free)
            self.images[slots], self.units[slots], self.tasks[slots] = (
                images[:free],
                units[:free],
                task,
            )
            self.filled += free
        rest = len(images) - free
        stream_numbers = torch.arange(
            self.seen + free + 1, self.seen + len(images) + 1, dtype=torch.float64
        )
        self.seen += len(images)  # no count per class: only `class_balanced` reads them
        if rest == 0:
            return
        uniform = torch.rand(
            rest, generator=self.generator, dtype=torch.float64, device=self.generator.device
        )
        slots = (uniform.cpu() * stream_numbers).floor().long()
        kept = (slots < self.size).nonzero().flatten()
        if len(kept) == 0:
            return
        order = torch.argsort(slots[kept], stable=True)  # stream order within each slot
        targets, writers = slots[kept][order], kept[order]
        last = torch.ones_like(targets, dtype=torch.bool)
        last[:-1] = targets[1:] != targets[:-1]  # the last writer of each slot stays
        replaced = targets[last].to(images.device)
        source = (writers[last] + free).to(images.device)
        self.images[replaced], self.units[replaced], self.tasks[replaced] = (
            images[source],
            units[source],
            task,
        )

    def _slot_for(self, unit: int) -> int | None:
        """Where the next sample of the stream, of output unit `unit`, goes (None: nowhere)."""
        self.seen += 1
        self.seen_per_unit[unit] = self.seen_per_unit.get(unit, 0) + 1
        if self.filled < self.size:
            self.filled += 1
            return self.filled - 1
        if self.policy == "reservoir":
            j = self._below(self.seen)
            return j if j < self.size else None
        counts = torch.bincount(self.units, minlength=max(self.seen_per_unit) + 1)
        largest = int(counts.max())
        if int(counts[unit]) < largest:  # evict at random within a largest class
            candidates = torch.isin(self.units, (counts == largest).nonzero().flatten())
        else:  # a reservoir within its own class
            if self._below(self.seen_per_unit[unit]) >= int(counts[unit]):
                return None
            candidates = self.units == unit
        slots = candidates.nonzero().flatten()
        return int(slots[self._below(len(slots))])

    def _below(self, n: int) -> int:
        """A uniform draw from 0..n-1 on the memory's own stream."""
        return int(torch.randint(n, (1,), generator=self.generator, device=self.generator.device))

    def draw(self, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """`count` samples drawn uniformly with replacement: images, units, tasks."""
        chosen = torch.randint(
            self.filled, (count,), generator=self.generator, device=self.generator.device
        ).to(self.units.device)
        assert self.images is not None
        return self.images[chosen], self.units[chosen], self.tasks[chosen]

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "units": self.units,
            "tasks": self.tasks,
            "filled": self.filled,
            "seen": self.seen,
            "seen_per_unit": dict(self.seen_per_unit),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images, self.units, self.tasks = state["images"], state["units"], state["tasks"]
        self.filled, self.seen = state["filled"], state["seen"]
        self.seen_per_unit = {int(u): int(n) for u, n in state["seen_per_unit"].items()}
        self.generator.set_state(state["generator"])


def replay_memory(settings: ReplaySettings, tasks: list[Task], seed: int) -> ReplayMemory | None:
    """`replay.size` > 0: an empty memory on the run's "replay" stream (with a warning when it
    could hold every training sample of the sequence: then it is no small memory)."""
    if settings.size == 0:
        return None
    samples = sum(task.train_size for task in tasks)
    if settings.size >= samples:
        log.warning(
            "replay.size=%d can hold all %d training samples of the sequence: every sample "
            "seen stays in memory", settings.size, samples,
        )  # fmt: skip
    return ReplayMemory(settings.size, settings.policy, generator(seed, "replay"))
