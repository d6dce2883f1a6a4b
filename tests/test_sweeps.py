"""λ searches: W&B sweep files through the open-source sweep engine, Hydra multirun with the
report command, and the Optuna sweeper preset."""

from __future__ import annotations

import json
import statistics
import sys

import pytest
import yaml

from ewcexp.config.checks import check_config
from ewcexp.reporting import report
from tests.conftest import REPO, TINY, compose_config, read_wandb_run, run_cli

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict, proposal: dict) -> list[str]:
    """The command `wandb agent` runs for a proposal, macros expanded by W&B's own code."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": proposal})
    values = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": [sys.executable],
        "${program}": [str(REPO / sweep["program"])],
        "${args_no_hyphens}": macros["args_no_hyphens"],
    }
    return [
        part for item in create_sweep_command(sweep["command"]) for part in values.get(item, [item])
    ]


def test_there_are_grid_and_bayesian_sweeps():
    methods = {yaml.safe_load(path.read_text())["method"] for path in SWEEP_FILES}
    assert methods == {"grid", "bayes"}


def proposals(sweep: dict, count: int) -> list[dict]:
    """The sweep engine's first proposals, each run reported finished before the next."""
    import sweeps

    finished = []
    for index in range(count):
        proposal = sweeps.next_run(sweep, finished).config
        finished.append(
            sweeps.SweepRun(
                name=f"run{index}",
                config=proposal,
                state=sweeps.RunState.finished,
                summary_metrics={"avg_acc": 0.5 + index / 10},
            )
        )
    return [run.config for run in finished]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_validates_and_its_proposals_make_valid_configs(path):
    import sweeps

    sweep = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(sweep) == []
    assert sweep["metric"] == {"name": "avg_acc", "goal": "maximize"}
    for proposal in proposals(sweep, 2):
        assert 1 <= proposal["lambda"]["value"] <= 10_000
        overrides = agent_command(sweep, proposal)[3:]
        check_config(compose_config(*overrides))


@pytest.mark.slow
def test_grid_sweep_command_runs_run_py(tmp_path, data_root):
    sweep = yaml.safe_load((REPO / "sweeps" / "lambda_grid.yaml").read_text())
    proposal = proposals(sweep, 2)[-1]
    command = agent_command(sweep, proposal)
    assert command[:3] == ["/usr/bin/env", sys.executable, str(REPO / "run.py")]
    assert "logger.mode=online" in command  # agents report to the W&B server...
    command[command.index("logger.mode=online")] = "logger.mode=disabled"  # ...which tests lack
    done = run_cli(
        *command[3:], *[o for o in TINY if o != "logger=none"], cwd=tmp_path, data_root=data_root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["lambda"] == proposal["lambda"]["value"]
    assert results["strategy"] == proposal["strategy"]["value"] == "ewc_sum"


@pytest.mark.slow
def test_multirun_lambda_sweep_and_its_report(tmp_path, data_root, capsys):
    done = run_cli(
        "-m",
        "strategy=ewc,finetune",
        "lambda=1,100",
        *TINY,
        "task_sequence.num_tasks=2",
        cwd=tmp_path,
        data_root=data_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sweep_dir = tmp_path / "multirun"
    assert len(list(sweep_dir.glob("*/results.json"))) == 4

    assert report.main([str(sweep_dir), "--wandb", "offline"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == [c for c in report.COLUMNS if c != "setting"]  # none differ
    rows = [line.split() for line in printed[1:4]]
    assert [row[:4] for row in rows] == [
        ["ewc", "1", "exact", "1"],
        ["ewc", "100", "exact", "1"],
        ["finetune", "-", "-", "1"],  # run once per λ, the same seed: one run, not two
    ]
    assert "one seed: no interval" in printed[1] and "one seed: no interval" in printed[3]
    ewc_1 = json.loads(
        next(
            p
            for p in sweep_dir.glob("*/results.json")
            if '"lambda": 1,' in p.read_text() and '"strategy": "ewc"' in p.read_text()
        ).read_text()
    )
    assert float(rows[0][4]) == pytest.approx(ewc_1["avg_acc"], abs=1e-4)
    assert (sweep_dir / "lambda_sweep.png").stat().st_size > 1000
    assert (
        (sweep_dir / "lambda_sweep.csv")
        .read_text()
        .startswith("strategy,lambda,fisher,setting,runs,avg_acc")
    )
    summary = [r for r in read_wandb_run(sweep_dir) if r["type"] == "history"]
    logged = {key for r in summary for key in r["history"]["item"]}
    assert {"lambda_sweep._type", "lambda_sweep_plot._type", "paired_differences._type"} <= logged


def write_run(
    folder, strategy: str, strength: float, seed: int, accuracy: float, lr: float = 0.001
) -> None:
    folder.mkdir(parents=True)
    results = {
        "strategy": strategy, "lambda": strength, "seed": seed, "avg_acc": accuracy,
        "bwt": -0.01, "forgetting": 0.01, "fisher_estimator": "exact",
        "config": {"fisher": {"structure": "diagonal"}, "seed": seed, "optimizer": {"lr": lr}},
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))


def test_report_gives_intervals_over_seeds_and_paired_differences(tmp_path, capsys):
    """Three seeds: mean ± t_{0.975,2}·sd/√3; a lone seed says so; the paired difference's
    interval comes from the per-seed differences, tighter than the rows' own here."""
    ewc = [0.80, 0.84, 0.86]
    si = [0.78, 0.83, 0.84]  # each seed 0.01-0.02 below ewc
    for seed in range(3):
        write_run(tmp_path / f"ewc{seed}", "ewc", 100, seed, ewc[seed])
        write_run(tmp_path / f"si{seed}", "si", 10, seed, si[seed])
    write_run(tmp_path / "lone", "ewc", 1000, 0, 0.5)
    rows, pairs = report.collect(tmp_path)
    row = next(r for r in rows if r["strategy"] == "ewc" and r["lambda"] == 100)
    sd = statistics.stdev(ewc)
    assert row["avg_acc"] == pytest.approx(statistics.fmean(ewc))
    assert row["se"] == pytest.approx(sd / 3**0.5)
    assert row["ci95_high"] - row["avg_acc"] == pytest.approx(4.303 * sd / 3**0.5)
    lone = next(r for r in rows if r["lambda"] == 1000)
    assert lone["se"] is None and lone["ci95_low"] is None
    (pair,) = pairs
    differences = [a - b for a, b in zip(ewc, si, strict=True)]
    assert (pair["first"], pair["second"], pair["seeds"]) == ("ewc@100", "si@10", 3)
    assert pair["difference"] == pytest.approx(statistics.fmean(differences))
    half = 4.303 * statistics.stdev(differences) / 3**0.5
    assert pair["ci95_low"] == pytest.approx(pair["difference"] - half)
    si_row = next(r for r in rows if r["strategy"] == "si")
    assert si_row["ci95_high"] > row["ci95_low"]  # the two rows' intervals overlap, yet
    assert pair["ci95_low"] > 0  # paired over the seeds, the difference excludes 0
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "one seed: no interval" in printed and "paired differences" in printed
    assert (tmp_path / "lambda_sweep.png").stat().st_size > 1000
    assert report.t_quantile(1) == 12.706 and report.t_quantile(10_000) == pytest.approx(
        1.96, abs=1e-3
    )


def test_report_never_pools_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    for seed in range(2):
        for lr in (0.001, 0.01):
            write_run(tmp_path / f"ewc{seed}-{lr}", "ewc", 100, seed, 0.8 + lr, lr=lr)
        write_run(tmp_path / f"si{seed}", "si", 10, seed, 0.7, lr=0.01)
    rows, pairs = report.collect(tmp_path)
    ewc = sorted((r["setting"], r["runs"]) for r in rows if r["strategy"] == "ewc")
    assert ewc == [("optimizer.lr=0.001", 2), ("optimizer.lr=0.01", 2)]
    (pair,) = pairs  # si ran with lr 0.01 only: paired with that ewc row alone
    assert (pair["setting"], pair["difference"]) == ("optimizer.lr=0.01", pytest.approx(0.11))
    assert report.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[3] == "setting"


def test_report_counts_a_seed_once_where_a_lambda_sweep_repeats_finetune(tmp_path):
    """`-m strategy=ewc,finetune lambda=1,10` runs finetune (no λ) twice per seed: one run
    per seed in its row, not a repeat that would shrink the interval to nothing."""
    for seed in range(2):
        for strength in (1, 10):
            write_run(
                tmp_path / f"ft{seed}-{strength}", "finetune", strength, seed, 0.6 + seed / 10
            )
    (row,) = report.collect(tmp_path)[0]
    assert (row["runs"], row["by_seed"]) == (2, {0: 0.6, 1: 0.7})
    assert row["se"] == pytest.approx(0.05)


def test_report_refuses_a_folder_without_runs(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: directory={tmp_path} holds no results.json")


@pytest.mark.slow
def test_optuna_preset_searches_lambda_and_returns_the_best_accuracy(tmp_path, data_root):
    done = run_cli(
        "hparams_search=online_ewc_optuna",
        "hydra.sweeper.n_trials=3",
        *TINY,
        "task_sequence.num_tasks=2",
        cwd=tmp_path,
        data_root=data_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "multirun").glob("*/results.json")]
    assert len(jobs) == 3 and {job["strategy"] for job in jobs} == {"online_ewc"}
    assert len({job["lambda"] for job in jobs}) == 3
    best = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(job["avg_acc"] for job in jobs))
    assert set(best["best_params"]) == {"lambda", "strategy.gamma"}
