"""Task sequences: permuted, rotated and split datasets, each a list of tasks learned in one of
the three scenarios (see `scenarios`).

The number of classes and the image size are the loaded data's: what needs them is checked
when a sequence is built, before any training.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ewcexp.config.checks import ConfigError
from ewcexp.config.schema import NonNegativeInt, PositiveInt, Range
from ewcexp.config.seeds import generator
from ewcexp.data.image_data import ImageData, class_count
from ewcexp.data.images import DatasetName
from ewcexp.data.own import load_dataset
from ewcexp.data.scenarios import Scenario, ScenarioKind, Task

if TYPE_CHECKING:
    from omegaconf import DictConfig

AngleSpacing = Literal["even", "random"]  # RotatedSequence's `angles`
ActiveClasses = Literal["seen", "all"]
# every task is evaluated after every task: T² evaluations, a T × T accuracy matrix
TaskCount = Annotated[int, Range(ge=1, le=1000)]


# in the config, a built-in dataset's name or a node whose _target_ loads the images (see
# own.load_dataset); the sequence itself is given the name the loaded images go by
Dataset = DatasetName | ImageData


class TaskSequence:
    """A list of tasks over one dataset, with the scenario they are learned in. `pad_to`
    zero-pads the images to pad_to × pad_to (centred) before anything else, a permutation
    included; the model's input size follows. `active_classes` (class scenario): "seen", the
    classes of the tasks seen so far compete in the softmax; "all", every class from the
    first task on (in training, the Fisher and evaluation), as some reference code does.
    Settings the data cannot take are refused here, as the config check refuses values."""

    def __init__(
        self,
        dataset: Dataset,
        images: ImageData,
        num_tasks: TaskCount,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        pad_to: PositiveInt | None = None,
        active_classes: ActiveClasses = "seen",
    ) -> None:
        self.dataset = dataset  # the name `images` go by
        self.num_tasks = num_tasks
        self.seed = seed
        if problem := self.refusal(images, pad_to):
            raise ConfigError(problem)
        self.images = padded(images, pad_to) if pad_to else images
        self.scenario = Scenario(
            scenario, num_tasks, self.classes_per_task, active_classes == "all"
        )

    classes_per_task: int
    tasks: list[Task]  # built lazily by each sequence type

    def refusal(self, images: ImageData, pad_to: int | None) -> str | None:
        """Why these settings do not fit the loaded `images`, or None: padding can only grow
        the images."""
        height, width = images.train_images.shape[-2:]
        if pad_to is not None and pad_to < max(height, width):
            return (
                f"task_sequence.pad_to={pad_to} is not allowed: {self.dataset} has images of "
                f"{width}×{height}; expected null or at least {max(height, width)}"
            )
        return None

    @property
    def class_order(self) -> list[int] | None:
        """The order the classes were dealt out to tasks in (split sequences), for results.json."""
        return None

    @property
    def source(self) -> str:
        return self.images.source

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.train_images.shape[1:])


def padded(images: ImageData, side: int) -> ImageData:
    """Every image zero-padded to side × side, centred (the odd pixel, if any, right/below)."""

    def pad(batch: Tensor) -> Tensor:
        height, width = batch.shape[-2:]
        top, left = (side - height) // 2, (side - width) // 2
        return F.pad(batch, (left, side - width - left, top, side - height - top))

    return ImageData(
        pad(images.train_images),
        images.train_labels,
        pad(images.test_images),
        images.test_labels,
        f"{images.source}, padded to {side}×{side}",
    )


class PermutedSequence(TaskSequence):
    """Every task is the whole dataset, all of its classes, under its own fixed random pixel
    permutation; `first_unpermuted` keeps the first task's images as they are (the
    permutations of the later tasks are drawn the same either way)."""

    def __init__(
        self,
        dataset: Dataset,
        images: ImageData,
        num_tasks: TaskCount,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        pad_to: PositiveInt | None = None,
        active_classes: ActiveClasses = "seen",
        first_unpermuted: bool = False,
    ) -> None:
        self.classes_per_task = class_count(images)
        self.first_unpermuted = first_unpermuted
        super().__init__(dataset, images, num_tasks, scenario, seed, pad_to, active_classes)

    @cached_property
    def tasks(self) -> list[Task]:
        draws = generator(self.seed, "tasks")
        pixels = int(torch.tensor(self.input_shape).prod())
        permutations = [torch.randperm(pixels, generator=draws) for _ in range(self.num_tasks)]
        if self.first_unpermuted:
            permutations[0] = None
        return [
            Task(
                t,
                "original" if permutation is None else f"permutation {t}",
                self.images,
                list(range(self.classes_per_task)),
                permutation,
            )
            for t, permutation in enumerate(permutations)
        ]


class RotatedSequence(TaskSequence):
    """Every task is the whole dataset, all of its classes, turned by its own fixed angle, in
    [0, `max_angle`) degrees.

    `angles="even"` (the default) spaces them evenly, task t at t·max_angle/num_tasks, so the
    first task is the unrotated dataset and the sequence needs no seed; `angles="random"` draws
    them uniformly from `seed`, as some papers do.
    """

    def __init__(
        self,
        dataset: Dataset,
        images: ImageData,
        num_tasks: TaskCount,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        max_angle: Annotated[float, Range(gt=0, le=360, unit="degrees")] = 180.0,
        angles: AngleSpacing = "even",
        pad_to: PositiveInt | None = None,
        active_classes: ActiveClasses = "seen",
    ) -> None:
        self.classes_per_task = class_count(images)
        self.max_angle = max_angle
        self.angles = angles
        super().__init__(dataset, images, num_tasks, scenario, seed, pad_to, active_classes)

    @cached_property
    def tasks(self) -> list[Task]:
        if self.angles == "even":
            angles = [t * self.max_angle / self.num_tasks for t in range(self.num_tasks)]
        else:
            draws = generator(self.seed, "tasks")
            angles = (torch.rand(self.num_tasks, generator=draws) * self.max_angle).tolist()
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
    """The classes are dealt out to tasks, `classes_per_task` at a time, in `class_order`:
    null for 0, 1, 2, ...; a permutation; or "random", a permutation drawn from the seed."""

    def __init__(
        self,
        dataset: Dataset,
        images: ImageData,
        num_tasks: TaskCount,
        scenario: ScenarioKind,
        seed: NonNegativeInt,
        classes_per_task: PositiveInt = 2,
        class_order: list[int] | Literal["random"] | None = None,
        pad_to: PositiveInt | None = None,
        active_classes: ActiveClasses = "seen",
    ) -> None:
        self.classes_per_task = classes_per_task
        self.order_option = class_order if class_order in (None, "random") else list(class_order)
        super().__init__(dataset, images, num_tasks, scenario, seed, pad_to, active_classes)

    @staticmethod
    def check_arguments(
        path: str, class_order: list[int] | str | None = None, **_: object
    ) -> str | None:
        """An order must be a permutation: no class twice (which classes there are, the data
        says: see `refusal`)."""
        if isinstance(class_order, list) and (
            len(set(class_order)) < len(class_order) or min(class_order, default=0) < 0
        ):
            return (
                f"{path}.class_order={class_order} is not allowed: expected null, random or a "
                "permutation of the classes 0..C-1"
            )
        return None

    def refusal(self, images: ImageData, pad_to: int | None) -> str | None:
        """The tasks must fit in the data's classes; an order must be a permutation of them."""
        total, k = class_count(images), self.classes_per_task
        if k > total:
            return (
                f"task_sequence.classes_per_task={k} is not allowed: {self.dataset} has "
                f"{total} classes; expected at most {total}"
            )
        if self.num_tasks > total // k:
            return (
                f"task_sequence.num_tasks={self.num_tasks} is not allowed: {self.dataset} has "
                f"{total} classes, so with classes_per_task={k} at most {total // k} tasks"
            )
        order = self.order_option
        if order not in (None, "random") and sorted(order) != list(range(total)):
            return (
                f"task_sequence.class_order={order} is not allowed: expected null, random or a "
                f"permutation of 0..{total - 1} ({self.dataset} has {total} classes)"
            )
        return super().refusal(images, pad_to)

    @cached_property
    def class_order(self) -> list[int]:
        classes = class_count(self.images)
        if self.order_option == "random":
            return torch.randperm(classes, generator=generator(self.seed, "tasks")).tolist()
        return self.order_option or list(range(classes))

    @cached_property
    def tasks(self) -> list[Task]:
        order = self.class_order
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


def build_sequence(node: DictConfig, data: DictConfig) -> TaskSequence:
    """The sequence `node` describes, over the images its `dataset` names, loaded through the
    `data` section. Hydra's partial is called here, so that what the data refuses (a
    ConfigError, DataUnavailable) is raised as it is, one line."""
    from hydra.utils import instantiate

    from ewcexp.config.checks import SEQUENCE_KEYS, without_keys

    node = without_keys(node, SEQUENCE_KEYS)
    images, dataset = load_dataset(data, node.dataset)
    return instantiate(node, dataset=dataset, _partial_=True)(images=images)


def pretrained_task(name: str, data: DictConfig, sequence: TaskSequence) -> Task:
    """Task 0 of `task_sequence.pretrained_on=name`: every class of that data set, loaded
    through the `data` section as the sequence's own; its images must have the sequence's
    shape (one line otherwise)."""
    images, _ = load_dataset(data, name)
    shape = tuple(images.train_images.shape[1:])
    if shape != tuple(sequence.input_shape):
        raise ConfigError(
            f"task_sequence.pretrained_on={name} is not allowed: its images are {list(shape)}, "
            f"the sequence's {list(sequence.input_shape)}"
        )
    classes = list(range(class_count(images)))
    return Task(index=-1, name=f"{name} (pretrained)", images=images, class_ids=classes)
