"""What importance estimators share: the data they are given and how they are called.

An importance estimator (the Fisher estimators of `fisher.py`, MAS's of `mas.py`) is a
component built from its config group with `_target_`; the runner hands it, at the end of each
task, the task's training data as a `TaskData`, and a strategy calls it as

    importance = estimator(model, data)     # one tensor per trainable parameter

or, for a structured importance (Kronecker blocks), a `StructuredImportance`.

It must be a pure function of (model, data): it leaves the model's parameters, mode and
statistics as it found them, and draws random numbers only from `data.generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Protocol

import torch
from torch import Tensor, nn

from ewcexp.config.schema import Rule
from ewcexp.data.scenarios import Scenario, Task
from ewcexp.importance.penalty import PenaltyTerm

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


class StructuredImportance:
    """An importance that is not one tensor per parameter (Kronecker blocks). It builds its
    own penalty term, and offers its diagonal, for the statistics and histograms every
    importance gets, and the eigenvalues of its factors."""

    def term(self, anchor: list[Tensor], strength: float) -> PenaltyTerm:
        """The penalty term (λ/2)·q(θ) around `anchor` with λ = `strength`."""
        raise NotImplementedError

    def as_diagonal(self, params: list[Tensor]) -> list[Tensor]:
        """One tensor per parameter: the diagonal of this importance."""
        raise NotImplementedError

    def spectra(self) -> dict[int, dict[str, Tensor]]:
        """Each factor's eigenvalues ({"A": ..., "G": ...}), keyed by the index of the
        parameter (a layer's weight) its block covers."""
        raise NotImplementedError


Importance = list[Tensor] | StructuredImportance


def diagonal_of(importance: Importance, params: list[Tensor]) -> list[Tensor]:
    """An importance as one tensor per parameter, for the logs."""
    if isinstance(importance, StructuredImportance):
        return importance.as_diagonal(params)
    return list(importance)


def spectra_of(importance: Importance) -> dict[int, dict[str, Tensor]] | None:
    """A structured importance's eigenvalue spectra; None for a diagonal one."""
    return importance.spectra() if isinstance(importance, StructuredImportance) else None


class ImportanceEstimator(Protocol):
    """Per-parameter importance of a trained model on a task's data."""

    kind: str  # what it estimates, naming its logs and figures: "fisher", "mas"
    name: str  # which variant, as results.json calls it: "exact", ..., "mas"

    def __call__(self, model: nn.Module, data: TaskData) -> Importance: ...
