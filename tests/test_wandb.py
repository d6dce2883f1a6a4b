"""W&B runs, offline, read back from disk: what a run logs, multiruns, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ewcexp.training.runner import run_experiment
from tests.conftest import TINY, compose_config, read_wandb_run, run_cli

WITH_WANDB = [o for o in TINY if o != "logger=none"]


def history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def summary(records: list[dict]) -> dict:
    merged: dict = {}
    for record in records:
        if record["type"] == "summary":
            merged.update(record["summary"].get("update", record["summary"]))
    return merged


@pytest.mark.slow
def test_offline_runs_of_a_multirun_hold_what_results_json_holds(tmp_path, data_root):
    done = run_cli("-m", "strategy=online_ewc,l2", *WITH_WANDB, cwd=tmp_path, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p.parent for p in (tmp_path / "multirun").glob("*/results.json"))
    assert_runs_are_separate_and_grouped(jobs)
    job = jobs[0]  # online_ewc: it also logs the accumulated Fisher
    results = json.loads((job / "results.json").read_text())
    records = read_wandb_run(job)
    rows = history(records)

    per_task = {row["task"]: row for row in rows if "acc/avg_seen" in row}
    assert sorted(per_task) == [1, 2, 3]
    for t, row in per_task.items():
        logged = [row[f"acc/task_{j + 1}"] for j in range(3)]
        assert logged == pytest.approx(results["acc_matrix"][t - 1])
        assert row["acc/avg_seen"] == pytest.approx(results["avg_acc_seen"][t - 1])
        assert {k: row[k] for k in results["per_task"][t - 1] if k in row} == pytest.approx(
            {k: v for k, v in results["per_task"][t - 1].items() if v is not None}
        )
    assert per_task[3]["bwt"] == pytest.approx(results["bwt"])
    assert per_task[3]["forgetting"] == pytest.approx(results["forgetting"])

    names = list(results["fisher"][0]["per_parameter"])
    assert names == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    fisher_rows = {row["task"]: row for row in rows if any(k.startswith("fisher/") for k in row)}
    assert sorted(fisher_rows) == [1, 2, 3]
    for t, row in fisher_rows.items():
        for kind in ("task", "accumulated"):
            for name in names:
                assert row[f"fisher/{kind}/{name}._type"] == "histogram"
                assert sum(row[f"fisher/{kind}/{name}.values"]) > 0
            stats = results["fisher"][t - 1][{"task": "per_parameter"}.get(kind, kind)]
            assert row[f"fisher_stats/{kind}/{names[0]}/mean"] == pytest.approx(
                stats[names[0]]["mean"]
            )

    training = [row for row in rows if "train/loss" in row]
    assert len(training) >= 3 and {"train/penalty", "train/lr", "train/samples_per_s"} <= set(
        training[-1]
    )
    assert any(row["train/penalty"] > 0 for row in training)

    final = summary(records)
    assert final["avg_acc"] == pytest.approx(results["avg_acc"])
    assert final["fwt"] == pytest.approx(results["fwt"])  # beside BWT, wherever BWT is
    assert final["data_source"] == results["data_source"]
    assert final["figures/accuracy_matrix._type"] == "image-file"
    assert final["acc_matrix._type"] == "table-file"
    (run_dir,) = (job / "wandb").glob("offline-run-*")
    table = json.loads((run_dir / "files" / final["acc_matrix.path"]).read_text())
    assert [row[1:] for row in table["data"]] == results["acc_matrix"]
    # columns count tasks from 1, as every other key does (acc/task_1, continual/task_1)
    tasks = len(results["acc_matrix"])
    assert table["columns"] == ["after task", *(f"task_{j + 1}" for j in range(tasks))]
    assert [row[0] for row in table["data"]] == list(range(1, tasks + 1))
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    config = run["config"].get("update", run["config"])
    assert config["strategy"]["_target_"] == "ewcexp.strategy.ewc.OnlineEWC"
    assert config["lambda"] == results["lambda"] and config["data"]["root"] == str(data_root)
    for png in ("accuracy_matrix", "accuracy_curves", "fisher_task1", "fisher_accumulated_task3"):
        assert (job / f"{png}.png").stat().st_size > 1000


def assert_runs_are_separate_and_grouped(jobs: list[Path]) -> None:
    runs = [next(r["run"] for r in read_wandb_run(job) if r["type"] == "run") for job in jobs]
    assert len(runs) == 2 and runs[0]["run_id"] != runs[1]["run_id"]
    targets = [run["config"].get("update", run["config"])["strategy"]["_target_"] for run in runs]
    assert targets == ["ewcexp.strategy.ewc.OnlineEWC", "ewcexp.strategy.ewc.L2"]
    assert runs[0]["run_group"] == runs[1]["run_group"]
    assert runs[0]["run_group"].startswith("multirun-")
    assert (
        "strategy=online_ewc" in runs[0]["display_name"]
        and "strategy=l2" in runs[1]["display_name"]
    )


def compose_logger(*overrides: str):
    return compose_config(*overrides).logger


def test_wandb_mode_default_environment_and_command_line(monkeypatch):
    assert compose_logger().mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_logger().mode == "disabled"
    assert compose_logger("logger.mode=online").mode == "online"


@pytest.mark.slow
def test_run_goes_on_when_wandb_cannot_start(tmp_path, data_root, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    cfg = compose_config(
        *WITH_WANDB,
        f"data.root={data_root}",
        "logger.mode=online",
        "task_sequence.num_tasks=2",
    )
    results = run_experiment(cfg, tmp_path)
    assert "W&B did not start" in caplog.text
    assert (tmp_path / "results.json").exists() and results["avg_acc"] > 0


class RecordingLogger:
    """A logger that remembers how it was finished."""

    calls: list[tuple[str, object]] = []

    def start(self, *args, **kwargs):
        self.calls.append(("start", None))

    def log_training(self, metrics):
        pass

    def log_importance(self, kind, task, importance, accumulated):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the first consolidation

    def log_task(self, task, metrics):
        pass

    def log_summary(self, results, images):
        pass

    def finish(self, failed=False, preempted=False):
        self.calls.append(("finish", failed, preempted))


def test_logger_is_finished_on_ctrl_c_and_no_results_are_written(tmp_path, data_root):
    RecordingLogger.calls = []
    cfg = compose_config(
        *TINY,
        f"data.root={data_root}",
        "logger._target_=tests.test_wandb.RecordingLogger",
    )
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, Path(tmp_path))
    assert RecordingLogger.calls == [("start", None), ("finish", True, False)]
    assert not (tmp_path / "results.json").exists()
