"""Damaged files and unwritable folders stop a run with one line naming the file and the remedy:
no traceback, nothing half-written. Checked where it is decided (checkpoint.load,
data.load_images, cli.unwritable_run_dir), and end to end through `python run.py` once each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision import datasets

from ewcexp.app.command_line import unwritable_run_dir
from ewcexp.data.image_data import DataUnavailable
from ewcexp.data.images import load_images
from ewcexp.training import checkpoint
from ewcexp.training.checkpoint import CheckpointDamaged, CheckpointMismatch
from tests.conftest import (
    REPO,
    TINY,
    compose_config,
    run_cli,
    trust_cifar_files,
    write_cifar,
    write_dataset,
)

CONFIG = {"seed": 0, "lambda": 400, "strategy": {"name": "ewc"}}


def valid_checkpoint(run_dir: Path) -> Path:
    """A checkpoint as the runner writes one (tensors, the config as JSON), at its usual path."""
    checkpoint.save(run_dir, {"model": {"w": torch.zeros(100, 100)}, "config": json.dumps(CONFIG)})
    return run_dir / checkpoint.FILENAME


def assert_nothing_half_written(folder: Path) -> None:
    assert not list(folder.rglob("*.partial"))
    assert not list(folder.rglob("results.json"))


def assert_one_error_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    """The run failed with exactly one line on stderr, `error: ...` holding each of `expected`."""
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    return lines[0]


# --- checkpoint.pt --------------------------------------------------------------------------

DAMAGES = {
    "truncated": lambda good: good[: len(good) // 2],  # a copy or a disk cut short
    "garbage": lambda good: b"\x80\x04 certainly not a checkpoint " * 50,
    "empty": lambda good: b"",
}
REASONS = {
    "truncated": "zip archive cut short",
    "garbage": "not a file written by torch.save",
    "empty": "empty file",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_checkpoint_is_one_line_naming_it_and_resume_false(tmp_path, damage):
    path = valid_checkpoint(tmp_path)
    damaged = DAMAGES[damage](path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CheckpointDamaged) as raised:
        checkpoint.load(tmp_path, CONFIG)
    assert isinstance(raised.value, CheckpointMismatch)  # what run.py reports as `error: ...`
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path} cannot be read (truncated or damaged: {REASONS[damage]}")
    assert message.endswith(
        "delete it, or run with resume=false to start over (it is then replaced)"
    )
    assert path.read_bytes() == damaged  # left as it was, for the user to look at
    assert_nothing_half_written(tmp_path)


@pytest.mark.parametrize(
    "payload",
    [{"model": {}}, {"config": "{not json"}, {"config": json.dumps([1, 2])}, [1, 2]],
    ids=["no-config", "config-not-json", "config-not-a-mapping", "not-a-dict"],
)
def test_a_checkpoint_without_a_config_is_refused_in_one_line(tmp_path, payload):
    torch.save(payload, tmp_path / checkpoint.FILENAME)
    with pytest.raises(CheckpointDamaged, match=r"\(truncated or damaged: no config in it\)"):
        checkpoint.load(tmp_path, CONFIG)


def test_a_valid_checkpoint_still_loads_and_a_missing_one_is_none(tmp_path):
    assert checkpoint.load(tmp_path, CONFIG) is None
    valid_checkpoint(tmp_path)
    assert json.loads(checkpoint.load(tmp_path, CONFIG)["config"]) == CONFIG


def test_resume_false_starts_over_and_replaces_a_damaged_checkpoint(tmp_path, data_root):
    from ewcexp.config.checks import check_config
    from ewcexp.training.runner import run_experiment

    path = tmp_path / checkpoint.FILENAME
    path.write_bytes(b"garbage" * 100)
    cfg = compose_config(*TINY, "resume=false", f"data.root={data_root}")
    check_config(cfg)
    results = run_experiment(cfg, tmp_path)
    assert len(results["acc_matrix"]) == 3
    state = checkpoint.load(tmp_path, OmegaConf.to_container(cfg, resolve=True))
    assert state is not None and state["tasks_done"] == 3
    assert not list(tmp_path.rglob("*.partial"))


# --- dataset files --------------------------------------------------------------------------


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    """A data root of one's own, with synthetic MNIST and Fashion-MNIST, free to damage."""
    root = tmp_path / "data"
    write_dataset(root, "MNIST")
    write_dataset(root, "FashionMNIST")
    return root


def damaged_data_message(root: Path, name: str, download: bool = False) -> str:
    with pytest.raises(DataUnavailable) as raised:
        load_images(name, root, download=download, allow_fallback=True)
    message = str(raised.value)
    assert "\n" not in message
    assert_nothing_half_written(root)
    return message


@pytest.mark.parametrize("download", [False, True])
def test_a_truncated_idx_images_file_is_named_not_replaced_by_the_fallback(mnist_root, download):
    # data.download=true changes nothing: torchvision never fetches over files that are there
    path = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:5000])
    message = damaged_data_message(mnist_root, "mnist", download)
    assert message == (
        f"mnist: file {path} is damaged (truncated: 5,000 bytes where its header (400x28x28) "
        f"announces 313,616); delete it and download again with "
        f"`python -m ewcexp.data download mnist --root {mnist_root}`"
    )


def test_an_idx_labels_file_with_a_wrong_magic_number_is_named(mnist_root):
    path = mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])  # says 3 dimensions, not 1
    message = damaged_data_message(mnist_root, "mnist")
    assert message.startswith(
        f"mnist: file {path} is damaged (not an IDX file of bytes: magic 0x00000803, "
        "expected 0x00000801); delete it and download again with `python -m ewcexp.data "
    )


def test_several_damaged_files_are_named_each_with_its_reason(mnist_root):
    raw = mnist_root / "FashionMNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes(b"<html>Not Found</html>")
    (raw / "t10k-images-idx3-ubyte").write_bytes(
        (raw / "t10k-images-idx3-ubyte").read_bytes() + b"x"
    )
    message = damaged_data_message(mnist_root, "fashion_mnist")
    assert message.startswith(
        "fashion_mnist: files train-labels-idx1-ubyte, t10k-images-idx3-ubyte in "
        f"{raw} are damaged (train-labels-idx1-ubyte: not an IDX file of bytes: magic "
        "0x3c68746d, expected 0x00000801; t10k-images-idx3-ubyte: 78,417 bytes where its "
        "header (100x28x28) announces 78,416); delete them and download again with "
    )
    assert "apt-get install dataset-fashion-mnist" in message
    assert "/usr/share/datasets/fashion-mnist" in message


def test_a_merely_missing_file_keeps_the_not_found_message(mnist_root):
    (mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataUnavailable, match=r"^mnist: files train-images-idx3-ubyte, .* not found"
    ):
        load_images("mnist", mnist_root, download=False, allow_fallback=False)


@pytest.mark.parametrize("download", [False, True])
def test_a_corrupt_cifar_batch_fails_torchvisions_md5_and_is_named(tmp_path, monkeypatch, download):
    root = tmp_path / "data"
    write_cifar(root, "CIFAR10")
    trust_cifar_files(monkeypatch, root, "CIFAR10")  # the md5s of the files as written...
    path = root / "cifar-10-batches-py" / "data_batch_3"
    corrupt = bytearray(path.read_bytes())
    corrupt[1000] ^= 0xFF  # ...then one byte flipped: same size, still unpickles
    path.write_bytes(bytes(corrupt))
    # torchvision would fetch the archive again: from nowhere here, as without internet
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    message = damaged_data_message(root, "cifar10", download)
    assert message == (
        f"cifar10: file {path} is damaged (md5 differs from torchvision's); delete it and "
        f"download again with `python -m ewcexp.data download cifar10 --root {root}`"
    )
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # nothing fetched


# --- the run directory ----------------------------------------------------------------------


def test_a_run_directory_under_a_file_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    run_dir = tmp_path / "a-file" / "run"
    assert unwritable_run_dir([f"hydra.run.dir={run_dir}", "lambda=3"]) == (
        f"cannot write the run directory {run_dir} ({tmp_path / 'a-file'} is a file, not a "
        "folder): choose another with hydra.run.dir=..."
    )
    sweep = unwritable_run_dir(["-m", f"hydra.sweep.dir={run_dir}", "lambda=3,4"])
    assert sweep.startswith(f"cannot write the sweep directory {run_dir} (")
    assert sweep.endswith("choose another with hydra.sweep.dir=...")
    # the hparams_search presets make a multirun; ${now:...} is filled in as Hydra does
    searched = unwritable_run_dir(
        ["hparams_search=lambda_optuna", f"hydra.sweep.dir={tmp_path}/a-file/${{now:%Y}}"]
    )
    assert searched.startswith(f"cannot write the sweep directory {tmp_path}/a-file/20")
    assert not (tmp_path / "a-file").is_dir()


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs on this machine")
def test_a_file_system_that_takes_no_folder_is_refused_for_root_too():
    """As root, os.access says yes everywhere: /sys is tried with a folder made and removed."""
    problem = unwritable_run_dir(["hydra.run.dir=/sys/ewcexp-run"])
    assert problem is not None and problem.startswith("cannot write the run directory /sys/")


def test_writable_run_directories_and_no_run_flags_pass(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.chdir(tmp_path)
    assert unwritable_run_dir(["lambda=3"]) is None  # Hydra's default, under the working dir
    assert unwritable_run_dir([f"hydra.run.dir={tmp_path}/new/deeper"]) is None
    assert unwritable_run_dir(["-m", f"hydra.run.dir={tmp_path}/a-file/x"]) is None  # not used
    assert unwritable_run_dir(["--help", f"hydra.run.dir={tmp_path}/a-file/x"]) is None
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]  # nothing created


# --- end to end: python run.py --------------------------------------------------------------


def test_run_py_with_an_unwritable_run_directory_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    run_dir = tmp_path / "a-file" / "run"
    # not run_cli, which sets its own hydra.run.dir; stopped before torch is imported: not slow
    done = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *TINY, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = assert_one_error_line(done, f"cannot write the run directory {run_dir} (")
    assert line.endswith("choose another with hydra.run.dir=...")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "a-file"]


@pytest.mark.slow
def test_run_py_with_a_damaged_checkpoint_is_one_line(tmp_path, data_root):
    path = tmp_path / "run" / checkpoint.FILENAME  # run_cli's hydra.run.dir
    path.parent.mkdir()
    path.write_bytes(b"garbage" * 100)
    done = run_cli(*TINY, cwd=tmp_path, data_root=data_root)
    assert_one_error_line(done, f"error: {path} cannot be read (", "resume=false")
    assert path.read_bytes() == b"garbage" * 100
    assert_nothing_half_written(tmp_path)


@pytest.mark.slow
def test_run_py_with_a_truncated_dataset_file_is_one_line(tmp_path, data_root):
    root = tmp_path / "data"
    shutil.copytree(data_root / "MNIST", root / "MNIST")
    path = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:100])
    # with data.download=true (the default): torchvision fetches nothing over files that are there
    overrides = [override for override in TINY if not override.startswith("data.download=")]
    done = run_cli(*overrides, cwd=tmp_path, data_root=root)
    assert_one_error_line(
        done,
        f"error: mnist: file {path} is damaged (truncated: 100 bytes where",
        f"download again with `python -m ewcexp.data download mnist --root {root}`",
    )
    assert_nothing_half_written(tmp_path)
