"""Task sequences (permuted and split datasets) and the three continual-learning scenarios.

The model has one output layer; a scenario decides which slice of it is active
for a task and where that task's labels sit in it:

- task:   one head of `classes_per_task` units per task, the task id picks the head;
- domain: one shared head of `classes_per_task` units, no task id;
- class:  one head of all classes, active up to the classes seen so far, no task id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from ewcexp.data import ImageData

SCENARIOS = ("task", "domain", "class")


@dataclass(frozen=True)
class Scenario:
    """Where each task's classes live in the output layer, and which units are active."""

    kind: str
    num_tasks: int
    classes_per_task: int

    @property
    def output_size(self) -> int:
        return self.classes_per_task * (1 if self.kind == "domain" else self.num_tasks)

    def offset(self, task: int) -> int:
        """Output unit of the task's first class."""
        return 0 if self.kind == "domain" else task * self.classes_per_task

    def active(self, task: int, seen: int) -> slice:
        """Output units that compete in the softmax for `task` once tasks 0..`seen` are learned."""
        k = self.classes_per_task
        if self.kind == "task":
            return slice(task * k, (task + 1) * k)
        if self.kind == "domain":
            return slice(0, k)
        return slice(0, (max(task, seen) + 1) * k)


@dataclass
class Task:
    """One task: images and task-local labels (0..classes_per_task-1), built on first use."""

    index: int
    name: str
    images: ImageData
    class_ids: list[int]  # the dataset labels this task uses, in local-label order
    pixel_permutation: Tensor | None = None
    _test: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def train_size(self) -> int:
        return int(torch.isin(self.images.train_labels, torch.tensor(self.class_ids)).sum())

    def train_set(self) -> tuple[Tensor, Tensor]:
        """(uint8 images, local labels); not cached, a training set is only needed while training."""
        return self._select(self.images.train_images, self.images.train_labels)

    def test_set(self) -> tuple[Tensor, Tensor]:
        """(uint8 images, local labels); cached, every task is evaluated after every task."""
        if self._test is None:
            self._test = self._select(self.images.test_images, self.images.test_labels)
        return self._test

    def _select(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        lookup = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.class_ids)] = torch.arange(len(self.class_ids))
        local = lookup[labels]
        keep = local >= 0
        images, local = images[keep], local[keep]
        if self.pixel_permutation is not None:  # once, on the whole tensor
            images = images.flatten(1)[:, self.pixel_permutation].view_as(images)
        return images, local


class TaskSequence:
    """A list of tasks over one dataset, with the scenario they are learned in."""

    def __init__(
        self, dataset: str, images: ImageData, num_tasks: int, scenario: str, seed: int
    ) -> None:
        self.dataset = dataset  # the name `images` were loaded under
        self.images = images
        self.num_tasks = num_tasks
        self.seed = seed
        self.scenario = Scenario(scenario, num_tasks, self.classes_per_task)

    classes_per_task: int
    tasks: list[Task]  # built lazily by each sequence type

    @property
    def source(self) -> str:
        return self.images.source

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.train_images.shape[1:])


class PermutedSequence(TaskSequence):
    """Every task is the whole dataset under its own fixed random pixel permutation."""

    classes_per_task = 10

    @cached_property
    def tasks(self) -> list[Task]:
        generator = torch.Generator().manual_seed(self.seed)
        pixels = int(torch.tensor(self.input_shape).prod())
        return [
            Task(
                t,
                f"permutation {t}",
                self.images,
                list(range(10)),
                torch.randperm(pixels, generator=generator),
            )
            for t in range(self.num_tasks)
        ]


class SplitSequence(TaskSequence):
    """The classes are dealt out to tasks, `classes_per_task` at a time, in `class_order`."""

    def __init__(
        self,
        dataset: str,
        images: ImageData,
        num_tasks: int,
        scenario: str,
        seed: int,
        classes_per_task: int = 2,
        class_order: list[int] | None = None,
    ) -> None:
        self.classes_per_task = classes_per_task
        self.class_order = list(class_order) if class_order is not None else None
        super().__init__(dataset, images, num_tasks, scenario, seed)

    @cached_property
    def tasks(self) -> list[Task]:
        order = self.class_order or list(range(int(self.images.train_labels.max()) + 1))
        k = self.classes_per_task
        return [
            Task(
                t,
                "classes " + "/".join(map(str, order[t * k : (t + 1) * k])),
                self.images,
                order[t * k : (t + 1) * k],
            )
            for t in range(self.num_tasks)
        ]
