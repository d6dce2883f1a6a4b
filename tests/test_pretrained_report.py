"""T0 (`task_sequence.pretrained_on`) in what a run leaves and the report reads: its importance
statistics in results.json's per-task list, as task 0, and in the logs; its final accuracy and
what it kept in the sweep report, beside avg_acc; runs without T0 reported as before."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import torch

from ewcexp.reporting import report
from ewcexp.reporting.loggers import Logger, WandbLogger
from ewcexp.reporting.record import Record
from ewcexp.reporting.reporter import PRETRAINED_TASK, Reporter
from ewcexp.reporting.statistics import importance_statistics
from ewcexp.reporting.sweep_table import (
    COLUMNS,
    PRETRAINED_COLUMNS,
    columns_of,
    format_table,
    summarise,
    t_quantile,
)
from tests.conftest import TINY, run_cli

T0 = ["strategy=ewc", "task_sequence.pretrained_on=fashion_mnist"]


class Recorded(Logger):
    """Keeps every `log_importance` call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_importance(self, kind, task, statistics, histograms):
        self.calls.append((kind, task, statistics))


class WandbRun:
    """What a W&B run is sent, without W&B."""

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, entries: dict) -> None:
        self.logged.append(entries)


def test_t0s_importance_is_recorded_and_logged_as_task_0_before_the_tasks():
    """The reporter turns T0's importance into the same statistics and histograms as a
    task's, numbered 0: first in results.json's list, `fisher_task0` among the figures, and
    W&B's `task` 0."""
    names = ["layers.0.weight", "layers.0.bias"]
    t0 = [torch.tensor([[0.5, 0.0], [2.0, 1e-9]]), torch.tensor([3.0, 4.0])]
    task1 = [torch.ones(2, 2), torch.ones(2)]
    recorded, wandb = Recorded(), WandbLogger()
    wandb.run = WandbRun()
    reporter = Reporter(Record(torch.zeros(1, 1)), recorded)
    reporter.loggers.append(wandb)
    reporter.importance_estimated(PRETRAINED_TASK, "fisher", t0, t0, None, names)
    reporter.importance_estimated(0, "fisher", task1, task1, None, names)

    first, second = reporter.record.importance_stats
    assert first["task"] == 0 and second["task"] == 1
    assert first["per_parameter"] == {
        "layers.0.weight": pytest.approx({"mean": 0.625, "max": 2.0, "fraction_below_1e-08": 0.5}),
        "layers.0.bias": {"mean": 3.5, "max": 4.0, "fraction_below_1e-08": 0.0},
    }
    assert first["accumulated"] is None
    assert list(reporter.record.histograms) == ["fisher_task0", "fisher_task1"]
    assert [(kind, task) for kind, task, _ in recorded.calls] == [("fisher", -1), ("fisher", 0)]
    assert recorded.calls[0][2]["task"] == first["per_parameter"]
    sent = wandb.run.logged[0]
    assert sent["task"] == 0
    assert sent["fisher_stats/task/layers.0.bias/mean"] == pytest.approx(3.5)


def results_of(strategy: str, seed: int, avg_acc: float, t0: list[float] | None) -> dict:
    """A completed run's results.json, as much of it as the report reads."""
    config = {"seed": seed, "task_sequence": {"pretrained_on": "mnist" if t0 else None}}
    return {
        "strategy": strategy, "lambda": 10, "seed": seed, "avg_acc": avg_acc, "bwt": -0.1,
        "forgetting": 0.1, "fwt": 0.0, "fisher_estimator": "exact", "config": config,
        **({"pretrained_on": "mnist", "acc_pretrained": t0} if t0 else {}),
    }  # fmt: skip


def test_the_report_puts_t0_beside_avg_acc_only_where_runs_have_it():
    """Rows of runs with T0 get its final accuracy with the same standard error and interval
    as avg_acc's, and the mean of final − start; rows without show "-"; a table without any
    T0 has the columns it always had."""
    runs = [
        results_of("ewc", 0, 0.9, [0.8, 0.7, 0.6]),
        results_of("ewc", 1, 0.8, [0.9, 0.5, 0.4]),
        results_of("ewc", 2, 0.7, [0.85, 0.6, 0.5]),
        results_of("l2", 0, 0.6, [0.8, 0.8, 0.75]),  # one seed: no interval
        results_of("ewc", 0, 0.5, None),  # no T0: another setting
    ]
    rows, _ = summarise(runs)
    assert columns_of(rows) == COLUMNS + PRETRAINED_COLUMNS
    (ewc,) = [r for r in rows if r["strategy"] == "ewc" and r["t0"]]
    finals = [0.6, 0.4, 0.5]
    assert ewc["t0"] == "mnist" and ewc["runs"] == 3
    assert ewc["t0_acc"] == pytest.approx(0.5)
    assert ewc["t0_se"] == pytest.approx(statistics.stdev(finals) / 3**0.5)
    half = t_quantile(2) * ewc["t0_se"]
    assert (ewc["t0_ci95_low"], ewc["t0_ci95_high"]) == pytest.approx((0.5 - half, 0.5 + half))
    assert ewc["t0_kept"] == pytest.approx(statistics.fmean([-0.2, -0.5, -0.35]))
    text = format_table(rows).splitlines()
    assert text[0].split()[-6:] == list(PRETRAINED_COLUMNS)
    by_row = {(r["strategy"], bool(r["t0"])): line for r, line in zip(rows, text[1:], strict=True)}
    assert by_row[("ewc", True)].split()[-6:] == [
        "mnist", "0.5000", f"{ewc['t0_se']:.4f}", f"{0.5 - half:.4f}", f"{0.5 + half:.4f}",
        "-0.3500",
    ]  # fmt: skip
    assert by_row[("ewc", False)].split()[-6:] == ["-"] * 6
    l2 = by_row[("l2", True)]
    assert l2.count("one seed: no interval") == 1 and l2.split()[-2:] == ["0.7500", "-0.0500"]

    without, _ = summarise([run for run in runs if "acc_pretrained" not in run])
    assert columns_of(without) == COLUMNS
    assert "t0" not in format_table(without)


@pytest.mark.slow
def test_runs_with_t0_record_its_importance_and_the_report_shows_its_mean(
    tmp_path, data_root, capsys
):
    """Two seeds of EWC with T0: results.json lists T0's Fisher statistics first, as task 0,
    equal to those of the Fisher its penalty holds (the checkpoint's first term, λ·F_0), and
    draws it (`fisher_task0.png`); the report shows T0's mean final accuracy, its interval
    and what it kept, and writes them to lambda_sweep.csv. Starting weights that are not
    finite give T0 no statistics (there are none): the run diverges at its first step, as
    without T0."""
    done = run_cli("-m", "seed=0,1", *TINY, *T0, cwd=tmp_path, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "multirun"
    runs = [json.loads((sweep / str(k) / "results.json").read_text()) for k in (0, 1)]
    for k, results in enumerate(runs):
        assert [entry["task"] for entry in results["fisher"]] == [0, 1, 2, 3]
        checkpoint = torch.load(sweep / str(k) / "checkpoint.pt", weights_only=True)
        first_term = checkpoint["strategy"]["penalty"]["terms"][0]
        names = list(results["fisher"][0]["per_parameter"])
        for name, stiffness in zip(names, first_term["stiffness"], strict=True):
            expected = importance_statistics(stiffness / results["lambda"])
            assert results["fisher"][0]["per_parameter"][name] == pytest.approx(expected, rel=1e-5)
        assert (sweep / str(k) / "fisher_task0.png").stat().st_size > 1000

    assert report.main([str(sweep)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split()[-6:] == list(PRETRAINED_COLUMNS)
    assert printed[1].split()[-6] == "fashion_mnist"
    with open(sweep / "lambda_sweep.csv", newline="") as file:
        (row,) = list(csv.DictReader(file))
    finals = [results["acc_pretrained"][-1] for results in runs]
    assert float(row["t0_acc"]) == pytest.approx(statistics.fmean(finals))
    assert float(row["t0_se"]) == pytest.approx(statistics.stdev(finals) / 2**0.5)
    kept = [results["acc_pretrained"][-1] - results["acc_pretrained"][0] for results in runs]
    assert float(row["t0_kept"]) == pytest.approx(statistics.fmean(kept))
    assert printed[1].split()[-5] == f"{statistics.fmean(finals):.4f}"

    weights = torch.load(sweep / "0" / "model.pt", weights_only=True)["state_dict"]
    broken = {name: tensor.clone() for name, tensor in weights.items()}
    broken["layers.0.weight"][0, 0] = float("nan")
    broken["layers.2.weight"], broken["layers.2.bias"] = (
        broken["layers.2.weight"][10:], broken["layers.2.bias"][10:],
    )  # fmt: skip  # T0's ten units, as a file that learned fashion_mnist has them
    torch.save(broken, tmp_path / "broken.pt")
    done = run_cli(
        *TINY, *T0, f"model.weights={tmp_path / 'broken.pt'}", cwd=tmp_path, data_root=data_root
    )
    assert done.returncode == 3 and "Traceback" not in done.stderr, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["diverged"]["task"] == 1 and results["diverged"]["step"] == 1
    assert results["fisher"] == []
