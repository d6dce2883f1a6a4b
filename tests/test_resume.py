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

# Runs run.py in this process, with one function (module.name) wrapped so that its n-th call
# sends the process a signal: SIGKILL (no handler, no cleanup: as a node failure would) or
# SLURM's warnings before a time limit or preemption.
KILLER = """
import os, signal, sys, runpy
import importlib
where, when, signum = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
module_name, name = where.rsplit(".", 1)
module = importlib.import_module(module_name)
original, calls = getattr(module, name), [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == when:
        os.kill(os.getpid(), signum)
    return original(*args, **kwargs)
setattr(module, name, wrapped)
sys.argv = [sys.argv[4], *sys.argv[5:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def killed_run(
    where: str,
    when: int,
    run_dir: Path,
    data_root: Path,
    signum: signal.Signals,
    *extra: str,
    base: list[str] = ARGS,
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            where,
            str(when),
            signum.name,
            str(REPO / "run.py"),
            *base,
            *extra,
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


def whole_run(tmp_path: Path, data_root: Path, *extra: str, base: list[str] = ARGS) -> dict:
    """results.json of a run of `base` and `extra` never stopped (in `tmp_path`/whole)."""
    (tmp_path / "whole").mkdir()
    done = run_cli(*base, *extra, cwd=tmp_path / "whole", data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / "whole" / "run" / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = run_cli(*ARGS, cwd=cwd, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    return metrics(cwd / "run")


# (what interrupts it, at which call of which runner function, the checkpoint it leaves:
# tasks done and steps of the next task done), one after another on the same run directory
INTERRUPTIONS = [
    (
        "ewcexp.importance.fisher.estimate_fisher",
        2,
        signal.SIGKILL,
        (1, 0),
    ),  # node failure, task 2's Fisher
    (
        "ewcexp.training.loop.active_cross_entropy",
        40,
        signal.SIGTERM,
        (2, 10),
    ),  # preempted mid-task 3
    ("ewcexp.training.loop.active_cross_entropy", 10, signal.SIGKILL, (2, 10)),  # after that save
    (
        "ewcexp.importance.fisher.estimate_fisher",
        1,
        signal.SIGUSR2,
        (3, 0),
    ),  # time limit during a Fisher
]


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_results(tmp_path, data_root, uninterrupted):
    """Killed and signalled at several points, resumed each time; W&B continues one run."""
    import torch

    run_dir = tmp_path / "run"  # where run_cli puts its run
    earlier_wall_s = 0.0
    for where, when, signum, (tasks_done, task_steps) in INTERRUPTIONS:
        stopped = killed_run(where, when, run_dir, data_root, signum, "logger=wandb")
        expected = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
        assert stopped.returncode == expected, stopped.stderr[-2000:]
        assert not (run_dir / "results.json").exists()
        saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert (saved["tasks_done"], saved["task_steps"]) == (tasks_done, task_steps)
        assert ("optimizer" in saved) == (task_steps > 0)
        assert saved["record"]["wall_s"] >= earlier_wall_s  # the time adds up over processes
        earlier_wall_s = saved["record"]["wall_s"]
    resumed = run_cli(*ARGS, "logger=wandb", cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after task 3/4" in resumed.stdout + resumed.stderr
    assert metrics(run_dir) == uninterrupted
    assert json.loads((run_dir / "results.json").read_text())["wall_time_s"] > earlier_wall_s
    # every process logged to the same W&B run: one id, reopened with resume="allow"
    run_ids = {path.name.rsplit("-", 1)[-1] for path in (run_dir / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == len(INTERRUPTIONS) + 1
    assert (
        json.loads((run_dir / "results.json").read_text())["config"]["logger"]["mode"] == "offline"
    )


def test_checkpoint_from_another_config_is_refused(tmp_path, data_root):
    import torch
    from omegaconf import OmegaConf

    from ewcexp.training.checkpoint import CheckpointMismatch, load, save
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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2])
def test_stop_request_defers_the_signal_then_hands_it_to_the_previous_handler(signum):
    """As under submitit: its handler (here a stand-in) runs only once we have saved; for each
    signal the README names (preemption, USR1 from your own sbatch script, the time limit's warning)."""
    import os

    from ewcexp.training.preemption import StopRequest

    received = []
    original = signal.signal(signum, lambda got, frame: received.append(got))
    try:
        with StopRequest() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signum)
            assert stop.requested and received == []
            with pytest.raises(SystemExit) as exited:
                stop.exit()
        assert received == [signum]
        assert exited.value.code == 128 + signum
        os.kill(os.getpid(), signum)  # the previous handler is back in place
        assert received == [signum, signum]
    finally:
        signal.signal(signum, original)


# where each config node's `_target_` lived before the package moved into layer folders
TARGETS_BEFORE_THE_LAYERS = {
    "TrainSettings": "ewcexp.training.TrainSettings",
    "load_images": "ewcexp.data.load_images",
    "PermutedSequence": "ewcexp.task_sequence.PermutedSequence",
    "MLP": "ewcexp.model.MLP",
    "Fisher": "ewcexp.fisher.Fisher",
    "Adam": "ewcexp.optimizer.Adam",
    "Device": "ewcexp.device.Device",
}


@pytest.mark.slow
def test_a_checkpoint_from_before_the_layers_resumes_to_the_uninterrupted_numbers(
    tmp_path, data_root
):
    """A checkpoint written before the move names the old module paths in its config and keeps
    no per-task metrics or Fisher overlaps in its record: it still resumes (settings are
    compared, not module paths), and the run ends with an uninterrupted run's numbers."""
    import torch

    diagnosed = ["fisher.diagnostics=true"]
    before = whole_run(tmp_path, data_root, *diagnosed)
    run_dir = tmp_path / "run"
    stopped = killed_run(
        "ewcexp.training.runner.evaluate_tasks", 2, run_dir, data_root, signal.SIGKILL, *diagnosed
    )
    assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-2000:]
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["tasks_done"] == 1
    config = json.loads(saved["config"])
    moved = []

    def to_old_paths(node: object) -> None:
        if isinstance(node, dict):
            name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
            if name in TARGETS_BEFORE_THE_LAYERS:
                node["_target_"] = TARGETS_BEFORE_THE_LAYERS[name]
                moved.append(name)
            for value in node.values():
                to_old_paths(value)

    config["logger"]["_target_"] = "ewcexp.logger.NoLogger"  # logger=none, then
    to_old_paths(config)
    assert {"TrainSettings", "Fisher", "MLP", "PermutedSequence"} <= set(moved)
    saved["config"] = json.dumps(config)
    del saved["record"]["per_task"], saved["record"]["overlaps"]
    torch.save(saved, run_dir / "checkpoint.pt")
    resumed = run_cli(*ARGS, *diagnosed, cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after task 1/4" in resumed.stdout + resumed.stderr
    after = json.loads((run_dir / "results.json").read_text())
    for key in ("acc_matrix", "avg_acc", "bwt", "forgetting", "per_task", "fisher_overlap"):
        assert after[key] == before[key], key
