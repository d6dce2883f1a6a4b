"""What importance estimators share: the data they are given and how they are called.

An importance estimator (the Fisher estimators of `fisher.py` today) is a component built
from its config group with `_target_`; the runner hands it, at the end of each task, the
task's training data as a `TaskData`, and a strategy calls it as

    importance = estimator(model, data)     # one tensor per trainable parameter

It must be a pure function of (model, data): it leaves the model's parameters, mode and
statistics as it found them, and draws random numbers only from `data.generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Protocol

import torch
from torch import Tensor, nn

from ewcexp.schema import Rule
from ewcexp.task_sequence import Scenario, Task

# how many of the task's training samples an estimator averages over
SampleCount = Annotated[
    int, Rule(lambda v: v == -1 or v >= 1, "-1 (all) or an integer >= 1", refused=0)
]


@dataclass
class TaskData:
    """A task's training samples for consolidation, built only if an estimator asks."""

    task: Task
    scenario: Scenario
    device: torch.device
    generator: torch.Generator  # the run's stream for importance estimation

    @property
    def active(self) -> slice:
        """The output units the task's softmax runs over."""
        return self.scenario.active(self.task.index, seen=self.task.index)

    @cached_property
    def samples(self) -> tuple[Tensor, Tensor]:
        """uint8 images (on the CPU) and labels indexing the `active` units."""
        images, labels = self.task.train_set()
        return images, labels + self.scenario.offset(self.task.index) - self.active.start

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


class ImportanceEstimator(Protocol):
    """Per-parameter importance of a trained model on a task's data."""

    kind: str  # what it estimates, naming its logs and figures: "fisher", "mas"
    name: str  # which variant, as results.json calls it: "exact", ..., "mas"

    def __call__(self, model: nn.Module, data: TaskData) -> list[Tensor]: ...
