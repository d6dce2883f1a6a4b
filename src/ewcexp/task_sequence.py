"""Task sequences (permuted, rotated and split datasets) and the three continual-learning scenarios.

The model has one output layer; a scenario decides which slice of it is active
for a task and where that task's labels sit in it:

- task:   one head of `classes_per_task` units per task, the task id picks the head;
- domain: one shared head of `classes_per_task` units, no task id;
- class:  one head of all classes, active up to the classes seen so far, no task id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Literal

import torch
from torch import Tensor

from ewcexp.data import NUM_CLASSES, DatasetName, ImageData
from ewcexp.schema import NonNegativeInt, PositiveInt, Range

ScenarioKind = Literal["task", "domain", "class"]
AngleSpacing = Literal["even", "random"]  # RotatedSequence's `angles`


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


class TaskSequence:
    """A list of tasks over one dataset, with the scenario they are learned in."""

    def __init__(
        self,
        dataset: DatasetName,
        images: ImageData,
        num_tasks: PositiveInt,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
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


class RotatedSequence(TaskSequence):
    """Every task is the whole dataset turned by its own fixed angle, in [0, `max_angle`) degrees.

    `angles="even"` (the default) spaces them evenly, task t at t·max_angle/num_tasks, so the
    first task is the unrotated dataset and the sequence needs no seed; `angles="random"` draws
    them uniformly from `seed`, as some papers do.
    """

    def __init__(
        self,
        dataset: DatasetName,
        images: ImageData,
        num_tasks: PositiveInt,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        max_angle: Annotated[float, Range(gt=0, le=360, unit="degrees")] = 180.0,
        angles: AngleSpacing = "even",
    ) -> None:
        self.classes_per_task = NUM_CLASSES[dataset]
        self.max_angle = max_angle
        self.angles = angles
        super().__init__(dataset, images, num_tasks, scenario, seed)

    @cached_property
    def tasks(self) -> list[Task]:
        if self.angles == "even":
            angles = [t * self.max_angle / self.num_tasks for t in range(self.num_tasks)]
        else:
            generator = torch.Generator().manual_seed(self.seed)
            angles = (torch.rand(self.num_tasks, generator=generator) * self.max_angle).tolist()
        return [
            Task(
                t,
                f"rotation {angle:g}°",
                self.images,
                list(range(self.classes_per_task)),
                rotation=angle,
            )
            for t, angle in enumerate(angles)
        ]


class SplitSequence(TaskSequence):
    """The classes are dealt out to tasks, `classes_per_task` at a time, in `class_order`."""

    def __init__(
        self,
        dataset: DatasetName,
        images: ImageData,
        num_tasks: PositiveInt,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        classes_per_task: PositiveInt = 2,
        class_order: list[int] | None = None,  # null: 0, 1, 2, ...
    ) -> None:
        self.classes_per_task = classes_per_task
        self.class_order = list(class_order) if class_order is not None else None
        super().__init__(dataset, images, num_tasks, scenario, seed)

    @staticmethod
    def check_arguments(
        path: str,
        dataset: str,
        num_tasks: int,
        classes_per_task: int = 2,
        class_order: list[int] | None = None,
        **_: object,
    ) -> str | None:
        """The tasks must fit in the dataset's classes; an order must be a permutation."""
        total = NUM_CLASSES[dataset]
        if num_tasks > total // classes_per_task:
            return (
                f"{path}.num_tasks={num_tasks} is not allowed: {dataset} has {total} classes, "
                f"so with classes_per_task={classes_per_task} at most "
                f"{total // classes_per_task} tasks"
            )
        if class_order is not None and sorted(class_order) != list(range(total)):
            return (
                f"{path}.class_order={class_order} is not allowed: expected null or a "
                f"permutation of 0..{total - 1}"
            )
        return None

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
