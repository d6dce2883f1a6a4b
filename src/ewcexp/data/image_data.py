"""A labelled image dataset in memory, `ImageData`, whatever its source, and what every source
shares: the error that says a dataset cannot be had, and the held-out validation split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class DataUnavailable(RuntimeError):
    """A dataset could not be found or fetched; the message says where we looked and what to do."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image dataset, train and test: uint8 images, [N, H, W] grey or [N, C, H, W]
    colour, and int64 labels [N], 0..C-1 (`as_image_data` checks a user's)."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


def class_count(data: ImageData) -> int:
    """C, for labels 0..C-1 (every class has training images: `as_image_data` checks a user's)."""
    return int(data.train_labels.max()) + 1


def hold_out_validation(data: ImageData, size: int) -> ImageData:
    """Training images split into training and validation, the validation part in the test
    set's place, so λ can be chosen without looking at the test set. The split is the same
    for every run (fixed seed), whatever the run's seed: a sweep's runs compare on one set."""
    if size >= len(data.train_labels):
        raise DataUnavailable(
            f"data.validation_size={size} is not allowed: {data.source} has only "
            f"{len(data.train_labels)} training images"
        )
    order = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(0))
    held, kept = order[:size].sort().values, order[size:].sort().values
    return ImageData(
        data.train_images[kept],
        data.train_labels[kept],
        data.train_images[held],
        data.train_labels[held],
        f"{data.source} (validation: {size} held-out training images)",
    )


def one_line(error: BaseException) -> str:
    """An exception's message on one line (torchvision's span several, one per mirror)."""
    return " ".join(str(error).split()) or type(error).__name__
