"""Shared fixtures: small synthetic datasets written in the IDX format torchvision reads."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]

# The tests' models are tiny: a second intra-op thread costs more than it gives, and on a
# 2-core machine the threads of concurrent processes spin waiting on each other (5-25x
# slower). Set before torch is imported; the runs the tests start inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic (0, 0, type 0x08 = ubyte, number of dims), big-endian int32 sizes, bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_images(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 digits: a fixed random stroke pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).random((10, 28, 28)) < 0.2
    labels = np.repeat(np.arange(10), per_class)
    rng.shuffle(labels)
    noise = rng.integers(0, 90, size=(len(labels), 28, 28))
    images = np.where(prototypes[labels], 200, 0) + noise
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_dataset(
    root: Path, folder: str, per_class_train: int = 40, per_class_test: int = 10
) -> None:
    """Uncompressed IDX files where torchvision's MNIST-style loaders look: root/<folder>/raw/."""
    raw = root / folder / "raw"
    for prefix, per_class, seed in (("train", per_class_train, 0), ("t10k", per_class_test, 1)):
        images, labels = synthetic_images(per_class, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding synthetic MNIST and Fashion-MNIST (400 train / 100 test images each)."""
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST")
    return root


# what a group option needs beside it to be a valid run on its own
COMPANIONS = {"strategy=agem": ["replay.size=100"]}  # A-GEM's constraint needs a memory


def with_companions(option: str) -> list[str]:
    """`option` and the overrides it needs beside it."""
    return [option, *COMPANIONS.get(option, [])]


def compose_config(*overrides: str) -> DictConfig:
    """The config `python run.py <overrides>` would run with (Hydra's compose API)."""
    with initialize_config_dir(
        config_dir=str(REPO / "src" / "ewcexp" / "conf"), version_base="1.3"
    ):
        return compose(config_name="config", overrides=list(overrides))


# Overrides that make any run tiny: a few steps per task, a small network.
TINY = [
    "train.iterations=30",
    "train.batch_size=32",
    "model.hidden_sizes=[32]",
    "task_sequence.num_tasks=3",
    "data.download=false",
    "logger=none",
]


def run_cli(
    *overrides: str, cwd: Path, data_root: Path | None = None
) -> subprocess.CompletedProcess:
    """`python run.py ...` as a user types it, outputs kept under `cwd`."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    args = [
        sys.executable,
        str(REPO / "run.py"),
        *overrides,
        f"hydra.run.dir={cwd}/run",
        f"hydra.sweep.dir={cwd}/multirun",
    ]
    if data_root is not None:
        args.append(f"data.root={data_root}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def wandb_files_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wandb also writes under ~/.cache, ~/.config and ~/.local/share: keep tests out of them."""
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    for variable, folder in (
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CONFIG_DIR", "config"),
    ):
        monkeypatch.setenv(variable, str(home / folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def read_wandb_run(job_dir: Path) -> list[dict]:
    """Every record of the one offline W&B run under `job_dir`, read from its .wandb file
    without a server (`wandb leet inspect --json`)."""
    (run_dir,) = (job_dir / "wandb").glob("offline-run-*")
    wandb_cli = Path(sys.executable).parent / "wandb"
    done = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def md5_of(path: Path) -> str:
    """The checksum torchvision compares its downloads and CIFAR batches against."""
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def synthetic_colour_images(
    num_classes: int, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 32x32 colour images [N, 3, 32, 32]: a fixed random pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(4321).integers(0, 170, size=(num_classes, 3, 32, 32))
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    images = prototypes[labels] + rng.integers(0, 86, size=(len(labels), 3, 32, 32))
    return images.astype(np.uint8), labels.astype(np.int64)


def write_cifar(
    root: Path, class_name: str, per_class_train: int = 10, per_class_test: int = 3
) -> None:
    """Pickled batches in the format and layout of torchvision's CIFAR10/CIFAR100 (`class_name`)
    under root/<base_folder>/, as the real archives unpack. torchvision checks every file's md5
    against its class attributes: see `trust_cifar_files`."""
    import pickle

    from torchvision import datasets

    dataset_class = getattr(datasets, class_name)
    folder = root / dataset_class.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = 100 if class_name == "CIFAR100" else 10

    def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        # rows of 3072 bytes: the red, green and blue 32x32 planes one after another
        batch = {"batch_label": path.name, "data": images.reshape(len(images), -1)}
        if num_classes == 100:
            batch |= {"fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist()}
        else:
            batch["labels"] = labels.tolist()
        path.write_bytes(pickle.dumps(batch))

    images, labels = synthetic_colour_images(num_classes, per_class_train, seed=0)
    train_files = [name for name, _ in dataset_class.train_list]
    parts = np.array_split(np.arange(len(labels)), len(train_files))
    for name, part in zip(train_files, parts, strict=True):
        write_batch(folder / name, images[part], labels[part])
    images, labels = synthetic_colour_images(num_classes, per_class_test, seed=1)
    ((test_file, _),) = dataset_class.test_list
    write_batch(folder / test_file, images, labels)
    names = {dataset_class.meta["key"]: [f"class {c}" for c in range(num_classes)]}
    (folder / dataset_class.meta["filename"]).write_bytes(pickle.dumps(names))


def trust_cifar_files(monkeypatch: pytest.MonkeyPatch, root: Path, class_name: str) -> None:
    """Make torchvision's `class_name` accept the synthetic files under `root`: its md5 table
    (`train_list`, `test_list`, `meta`) set to theirs, for this test only."""
    from torchvision import datasets

    dataset_class = getattr(datasets, class_name)
    folder = root / dataset_class.base_folder
    for table in ("train_list", "test_list"):
        entries = [[name, md5_of(folder / name)] for name, _ in getattr(dataset_class, table)]
        monkeypatch.setattr(dataset_class, table, entries)
    meta = dataset_class.meta
    monkeypatch.setattr(dataset_class, "meta", {**meta, "md5": md5_of(folder / meta["filename"])})
