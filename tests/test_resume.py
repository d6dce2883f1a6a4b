"""Checkpoints: a run killed anywhere resumes after its last completed task and ends with
exactly the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, run_cli

ARGS = [
    *TINY,
    "task_sequence.num_tasks=4",
    "strategy=online_ewc",
    "fisher.estimator=sample",
    "fisher.num_samples=200",
]

# Runs run.py in this process, with one function of the runner wrapped so that its n-th call
# kills the process with SIGKILL (no handler, no cleanup: as a node failure would).
KILLER = """
import os, signal, sys, runpy
import ewcexp.runner as runner
name, when = sys.argv[1], int(sys.argv[2])
original, calls = getattr(runner, name), [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(runner, name, wrapped)
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def killed_run(
    where: str, when: int, run_dir: Path, data_root: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            where,
            str(when),
            str(REPO / "run.py"),
            *ARGS,
            f"data.root={data_root}",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def metrics(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {
        key: results[key]
        for key in ("acc_matrix", "avg_acc", "bwt", "forgetting", "per_task", "fisher")
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(*ARGS, cwd=cwd, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    return metrics(cwd / "run")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "when", "tasks_done"),
    [
        ("active_cross_entropy", 30 + 15, 1),  # task 2, mid-training (30 steps per task)
        ("estimate_fisher", 3, 2),  # task 3, during the Fisher estimation
    ],
    ids=["task2-training", "task3-fisher"],
)
def test_killed_run_resumes_to_identical_results(
    tmp_path, data_root, uninterrupted, where, when, tasks_done
):
    import torch

    run_dir = tmp_path / "run"  # where run_cli puts its run
    killed = killed_run(where, when, run_dir, data_root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (run_dir / "results.json").exists()
    checkpoint = run_dir / "checkpoint.pt"
    if tasks_done:
        assert torch.load(checkpoint, weights_only=True)["tasks_done"] == tasks_done
    else:
        assert not checkpoint.exists()
    resumed = run_cli(*ARGS, cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    if tasks_done:
        assert f"resuming after task {tasks_done}/4" in resumed.stdout + resumed.stderr
    assert metrics(run_dir) == uninterrupted


def test_checkpoint_from_another_config_is_refused(tmp_path, data_root):
    import torch
    from omegaconf import OmegaConf

    from ewcexp.checkpoint import CheckpointMismatch, load, save
    from tests.conftest import compose_config

    config = OmegaConf.to_container(compose_config(*ARGS, f"data.root={data_root}"), resolve=True)
    save(tmp_path, {"config": json.dumps(config), "tasks_done": 1, "weights": torch.ones(2)})
    assert (
        load(tmp_path, {**config, "logger": {"mode": "online"}})["tasks_done"] == 1
    )  # logger ignored
    other = json.loads(json.dumps(config))
    other["strategy"]["gamma"] = 0.5
    with pytest.raises(
        CheckpointMismatch,
        match=r"checkpoint.pt was written with strategy.gamma=1.0, "
        r"this run has strategy.gamma=0.5",
    ):
        load(tmp_path, other)
    assert not list(tmp_path.glob("*.partial"))
