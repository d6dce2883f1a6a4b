"""A user's own images, named by `task_sequence.dataset`'s `_target_`: `image_folder` (one
folder per class), `tensor_file` (tensors in one file) or any function of the user's, whose
result `as_image_data` checks; `load_dataset` tells such a node from a built-in's name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
from torch import Tensor

from ewcexp.config.schema import PositiveInt, Range, Rule
from ewcexp.data.image_data import DataUnavailable, ImageData, one_line

if TYPE_CHECKING:
    from omegaconf import DictConfig


def load_dataset(data: DictConfig, dataset: str | DictConfig) -> tuple[ImageData, str]:
    """The images `task_sequence.dataset` names (a built-in's name, or a node whose `_target_`
    loads them) through the `data` section, and the name they go by in messages."""
    from hydra.utils import instantiate

    if isinstance(dataset, str):
        return instantiate(data)(dataset), dataset
    # called here, not by Hydra, so that our one-line errors are not wrapped in Hydra's
    target = dataset._target_
    loaded = as_image_data(instantiate(dataset, _partial_=True)(), target)
    return instantiate(data)(loaded), loaded.source


IMAGE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def as_image_data(value: Any, source: str) -> ImageData:
    """What a user's loader returned, `source` named, as checked ImageData: an ImageData, or a
    mapping of IMAGE_KEYS to tensors or numpy arrays (so a loader needs no ewcexp import)."""
    if isinstance(value, ImageData):
        source = value.source
        parts = [getattr(value, key) for key in IMAGE_KEYS]
    elif isinstance(value, Mapping) and all(key in value for key in IMAGE_KEYS):
        parts = [torch.as_tensor(value[key]) for key in IMAGE_KEYS]
    else:
        raise DataUnavailable(
            f"{source} returned {type(value).__name__}: expected an ewcexp.data.ImageData or a "
            f"mapping of {', '.join(IMAGE_KEYS)} to tensors"
        )
    if problem := _images_problem(*parts):
        raise DataUnavailable(f"{source}: {problem}")
    train_images, train_labels, test_images, test_labels = parts
    return ImageData(train_images, train_labels.long(), test_images, test_labels.long(), source)


def _images_problem(
    train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor
) -> str | None:
    """What makes these tensors unusable as a dataset, in a few words, or None."""
    for split, images, labels in (
        ("train", train_images, train_labels),
        ("test", test_images, test_labels),
    ):
        if images.dtype != torch.uint8 or images.dim() not in (3, 4):
            return (
                f"{split}_images are {_describe(images)}; expected uint8 images, "
                "[N, H, W] grey or [N, C, H, W]"
            )
        if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
            return f"{split}_labels are {_describe(labels)}; expected integer labels [N]"
        if len(labels) != len(images) or not len(labels):
            return f"{len(images)} {split}_images but {len(labels)} {split}_labels"
        if int(labels.min()) < 0:
            return f"{split}_labels hold {int(labels.min())}; expected labels 0..C-1"
    if test_images.shape[1:] != train_images.shape[1:]:
        return (
            f"test_images are {_describe(test_images)} but train_images {_describe(train_images)}: "
            "expected the same image shape"
        )
    classes = max(int(train_labels.max()), int(test_labels.max())) + 1
    if missing := sorted(set(range(classes)) - set(train_labels.unique().tolist())):
        return f"no training images of class {', '.join(map(str, missing))}; expected labels 0..C-1"
    return None


def _describe(tensor: Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


# a side, or [height, width]
ImageSize = PositiveInt | tuple[PositiveInt, PositiveInt]
OpenFraction = Annotated[float, Range(gt=0, lt=1)]


def image_folder(
    path: str,
    image_size: ImageSize | None = None,
    grey: bool = False,
    test_fraction: OpenFraction = 0.2,
) -> ImageData:
    """Images in one folder per class, as torchvision's ImageFolder finds them (classes
    numbered in sorted folder-name order): `path/train/<class>/` and `path/test/<class>/`, or
    `path/<class>/`, of which `test_fraction` of each class is held out for testing (a fixed
    draw, the same in every run). RGB, or one channel with `grey`; `image_size` resizes every
    image (bilinear), which images of different sizes need."""
    folder = Path(path).expanduser()
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        train_classes, train = _read_class_folders(folder / "train", image_size, grey)
        test_classes, test = _read_class_folders(folder / "test", image_size, grey)
        if train_classes != test_classes:
            raise DataUnavailable(
                f"image folder {folder}: train/ has the classes {', '.join(train_classes)} but "
                f"test/ {', '.join(test_classes)}; expected the same class folders in both"
            )
        return ImageData(*train, *test, f"image folder {folder}")
    _, (images, labels) = _read_class_folders(folder, image_size, grey)
    test = _fixed_draw(labels, test_fraction)
    return ImageData(
        images[~test],
        labels[~test],
        images[test],
        labels[test],
        f"image folder {folder} ({test_fraction:g} of each class held out for testing)",
    )


def _read_class_folders(
    folder: Path, size: ImageSize | None, grey: bool
) -> tuple[list[str], tuple[Tensor, Tensor]]:
    """The class names and (uint8 images, int64 labels) of the class folders in `folder`."""
    from torchvision.datasets import ImageFolder

    try:
        found = ImageFolder(str(folder))
        arrays = [_read_image(Path(file), size, grey) for file, _ in found.samples]
    except OSError as error:  # no such folder, no class folders, an unreadable image file
        raise DataUnavailable(f"image folder {folder}: {one_line(error)}") from None
    shapes = {array.shape: file for array, (file, _) in zip(arrays, found.samples, strict=True)}
    if len(shapes) > 1:
        (first, one), (second, other) = list(shapes.items())[:2]
        raise DataUnavailable(
            f"image folder {folder}: images of different sizes ({_size(first)} in {one}, "
            f"{_size(second)} in {other}); set task_sequence.dataset.image_size to resize them"
        )
    images = torch.from_numpy(np.stack(arrays))
    if not grey:
        images = images.permute(0, 3, 1, 2).contiguous()  # channels first, as models take them
    return found.classes, (images, torch.tensor(found.targets, dtype=torch.int64))


def _read_image(file: Path, size: ImageSize | None, grey: bool) -> np.ndarray:
    """One image as uint8 [H, W] (grey) or [H, W, 3], resized to `size` if given."""
    from PIL import Image

    with Image.open(file) as opened:
        image = opened.convert("L" if grey else "RGB")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}×{shape[0]}"  # width × height, as image viewers say it


def _fixed_draw(labels: Tensor, fraction: float) -> Tensor:
    """A mask of `fraction` of each class's samples (at least one, never all), drawn the same
    way in every run, whatever its seed: runs compare on one test set."""
    draws = torch.Generator().manual_seed(0)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        (members,) = torch.nonzero(labels == label, as_tuple=True)
        count = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen[members[torch.randperm(len(members), generator=draws)[:count]]] = True
    return chosen


TENSOR_SUFFIXES = (".pt", ".pth", ".npz")
TensorFile = Annotated[
    str,
    Rule(
        lambda v: isinstance(v, str) and v.endswith(TENSOR_SUFFIXES),
        "a .pt, .pth or .npz file",
        "x.csv",
    ),
]


def tensor_file(path: TensorFile) -> ImageData:
    """train_images, train_labels, test_images and test_labels from one file: `.npz` (numpy's
    `savez`) or `.pt`/`.pth` (a dict of tensors saved with `torch.save`)."""
    file = Path(path).expanduser()
    try:
        if file.suffix == ".npz":
            with np.load(file) as arrays:
                contents = {key: arrays[key] for key in arrays.files}
        else:
            contents = torch.load(file, weights_only=True)
    except Exception as error:  # noqa: BLE001 - missing, unreadable, not what the suffix says
        raise DataUnavailable(f"tensor file {file}: {one_line(error)}") from None
    return as_image_data(contents, f"tensor file {file}")
