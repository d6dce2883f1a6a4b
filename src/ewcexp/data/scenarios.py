"""The three continual-learning scenarios, and the tasks a sequence is made of.

The model has one output layer; a scenario decides which slice of it is active
for a task and where that task's labels sit in it:

- task:   one head of `classes_per_task` units per task, the task id picks the head;
- domain: one shared head of `classes_per_task` units, no task id;
- class:  one head of all classes, active up to the classes seen so far, no task id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ewcexp.data.image_data import ImageData

ScenarioKind = Literal["task", "domain", "class"]


@dataclass(frozen=True)
class Scenario:
    """Where each task's classes live in the output layer, and which units are active."""

    kind: str
    num_tasks: int
    classes_per_task: int
    all_classes_active: bool = False  # class scenario: every unit from the first task on

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
        if self.all_classes_active:
            return slice(0, self.num_tasks * k)
        return slice(0, (max(task, seen) + 1) * k)


@dataclass
class Task:
    """One task: images and task-local labels (0..classes_per_task-1), built on first use."""

    index: int
    name: str
    images: ImageData
    class_ids: list[int]  # the dataset labels this task uses, in local-label order
    pixel_permutation: Tensor | None = None
    rotation: float | None = None  # degrees, counter-clockwise
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
        if self.rotation is not None:
            images = rotate(images, self.rotation)
        return images, local


def rotate(images: Tensor, degrees: float) -> Tensor:
    """uint8 images [N, H, W] or [N, C, H, W], all turned `degrees` counter-clockwise about their
    centre in one call (bilinear; corners that come from outside the image are 0)."""
    from torchvision.transforms.v2.functional import InterpolationMode
    from torchvision.transforms.v2.functional import rotate as turn  # slow import: only when used

    grey = images.dim() == 3
    turned = turn(
        images.unsqueeze(1) if grey else images, degrees, interpolation=InterpolationMode.BILINEAR
    )
    return turned.squeeze(1) if grey else turned
