"""What importance estimators share: the data they are given and how they are called.

An importance estimator (the Fisher estimators of `fisher.py` today) is a component built
from its config group with `_target_`; the runner hands it, at the end of each task, the
task's training data as a `TaskData`, and a strategy calls it as

    importance = estimator(model, data)     # one tensor per trainable parameter

It must be a pure function of (model, data): it leaves the model's parameters, mode and
statistics as it found them, and draws random numbers only from `data.generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Protocol

import torch
from torch import Tensor, nn

from ewcexp.config.schema import Rule
from ewcexp.data.sequences import Scenario, Task

# how many of the task's training samples an estimator averages over
SampleCount = Annotated[
    int, Rule(lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1", refused=0)
]


@dataclass
class TaskData:
    """A task's training samples for consolidation: `load()` gives uint8 images (on the CPU)
    and labels indexing the `active` output units, called only if an estimator asks."""

    load: Callable[[], tuple[Tensor, Tensor]]
    active: slice
    device: torch.device
    generator: torch.Generator  # the run's stream for importance estimation

    @classmethod
    def of(
        cls, task: Task, scenario: Scenario, device: torch.device, generator: torch.Generator
    ) -> TaskData:
        """Task `task`'s training set, over the units active for it once it is learned."""
        active = scenario.active(task.index, seen=task.index)

        def load() -> tuple[Tensor, Tensor]:
            images, labels = task.train_set()
            return images, labels + scenario.offset(task.index) - active.start

        return cls(load, active, device, generator)

    @cached_property
    def samples(self) -> tuple[Tensor, Tensor]:
        return self.load()

    def subset(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """All samples (`num_samples` -1 or at least their number), or that many drawn at
        random; on `device`."""
        images, labels = self.samples
        if 0 < num_samples < len(labels):
            chosen = torch.randperm(
                len(labels), generator=self.generator, device=self.generator.device
            )[:num_samples].cpu()
            images, labels = images[chosen], labels[chosen]
        return images.to(self.device), labels.to(self.device)


def diagonal_of(importance: list[Tensor] | Any, params: list[Tensor]) -> list[Tensor]:
    """An importance as one tensor per parameter, for the logs: a structured one (Kronecker
    blocks) through its `as_diagonal`."""
    return (
        list(importance) if isinstance(importance, list | tuple) else importance.as_diagonal(params)
    )


class ImportanceEstimator(Protocol):
    """Per-parameter importance of a trained model on a task's data."""

    kind: str  # what it estimates, naming its logs and figures: "fisher", "mas"
    name: str  # which variant, as results.json calls it: "exact", ..., "mas"

    def __call__(self, model: nn.Module, data: TaskData) -> list[Tensor]: ...
