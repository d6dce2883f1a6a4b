"""Continual evaluation and Fisher diagnostics: the measures on cases with known answers, and
a run that leaves its curves, diagnostics and overlap heatmap in its directory and in W&B."""

from __future__ import annotations

import json
import math
from itertools import product

import pytest
import torch

from ewcexp.importance.diagnostics import (
    average_ranks,
    compare,
    fisher_overlap,
    overlap_matrix,
    overlap_row,
    spearman,
)
from ewcexp.reporting.continual import stability_gaps
from tests.conftest import TINY, read_wandb_run, run_cli


def test_stability_gap_depth_minimum_and_recovery_on_hand_made_curves():
    points = [
        {"step": 10, "task": 1, "task_step": 10, "acc": [0.6]},
        {"step": 20, "task": 1, "task_step": 20, "acc": [0.9]},
        {"step": 30, "task": 2, "task_step": 10, "acc": [0.5, 0.4]},
        {"step": 40, "task": 2, "task_step": 20, "acc": [0.3, 0.7]},  # task 1's lowest
        {"step": 50, "task": 2, "task_step": 30, "acc": [0.8, 0.8]},
        {"step": 60, "task": 2, "task_step": 40, "acc": [0.95, 0.9]},  # back above 0.9
        {"step": 70, "task": 3, "task_step": 10, "acc": [0.9, 0.2, 0.5]},
        {"step": 80, "task": 3, "task_step": 20, "acc": [0.9, 0.6, 0.7]},  # never back to 0.9
    ]
    first, second = stability_gaps(points)
    assert first == {
        "task": 1, "during": 2, "before": 0.9, "min": 0.3, "min_step": 20,
        "depth": pytest.approx(0.6), "steps_to_recover": 40,
    }  # fmt: skip
    assert (second["task"], second["before"], second["min"], second["min_step"]) == (
        2,
        0.9,
        0.2,
        10,
    )
    assert second["steps_to_recover"] is None


def naive_ranks(values):
    """Rank r_i = 1 + #{j: x_j < x_i} + (#{j: x_j = x_i} − 1)/2: the mean rank of a tie."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def test_spearman_averages_tied_ranks_as_its_definition_does():
    x = torch.tensor([0.0, 3.0, 0.0, 1.0, 3.0, 3.0, 2.0])
    y = torch.tensor([1.0, 2.0, 0.0, 0.0, 5.0, 4.0, 4.0])
    assert average_ranks(x).tolist() == naive_ranks(x.tolist())
    rx, ry = (torch.tensor(naive_ranks(v.tolist()), dtype=torch.float64) for v in (x, y))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    assert spearman(x, y) == pytest.approx(float(rx @ ry / (rx.norm() * ry.norm())))
    assert spearman(x, x**3 + 1) == pytest.approx(1.0)  # any increasing map
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(7)) is None


def test_estimator_comparison_scale_error_and_rank():
    exact = torch.rand(50, generator=torch.Generator().manual_seed(0)) + 0.1
    assert compare(exact, exact) == {"spearman": pytest.approx(1.0), "relative_error": 0.0,
                                     "scale_ratio": pytest.approx(1.0)}  # fmt: skip
    halved = compare(exact / 256, exact)  # as `batched` with minibatches of 256, roughly
    assert halved["scale_ratio"] == pytest.approx(256) and halved["spearman"] == pytest.approx(1)
    assert halved["relative_error"] == pytest.approx(1 - 1 / 256)


def test_fisher_overlap_is_one_for_identical_zero_for_disjoint_and_the_frechet_formula_between():
    f = torch.tensor([1.0, 2.0, 3.0, 0.0])
    assert fisher_overlap(f, 5 * f) == pytest.approx(1.0)  # the scale is normalised away
    disjoint = fisher_overlap(torch.tensor([1.0, 2.0, 0, 0]), torch.tensor([0, 0, 4.0, 1.0]))
    assert disjoint == pytest.approx(0.0, abs=1e-12)
    # F̂₁ = [1, 0], F̂₂ = [½, ½]: d² = ½((1 − √½)² + ½) = 1 − √½
    assert fisher_overlap(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) == pytest.approx(
        math.sqrt(0.5)
    )
    fishers = [f, torch.tensor([0.0, 1.0, 1.0, 1.0]), f]
    matrix = overlap_matrix([overlap_row(fishers[: t + 1]) for t in range(3)])
    assert matrix[2][0] == pytest.approx(1.0) and matrix[0][1] == fisher_overlap(fishers[1], f)
    assert [matrix[i][i] for i in range(3)] == [pytest.approx(1.0)] * 3
    assert all(matrix[i][j] == matrix[j][i] for i, j in product(range(3), repeat=2))


@pytest.mark.slow
def test_eval_every_and_diagnostics_leave_curves_diagnostics_and_overlaps_not_other_numbers(
    tmp_path, data_root
):
    """The issue's run, shortened: the continual curves, the stability gaps, every estimator
    against exact and the task × task overlap in results.json, PNGs and W&B; the accuracy
    matrix and the Fisher statistics those instruments leave untouched."""
    common = [*TINY, "fisher.num_samples=64"]
    common = [o for o in common if o != "logger=none"] + ["logger=wandb"]
    for name, extra in (("plain", []), ("instruments", ["train.eval_every=10", "fisher.diagnostics=true", "train.eval_subset=50"])):  # fmt: skip
        (tmp_path / name).mkdir()
        done = run_cli(*common, *extra, cwd=tmp_path / name, data_root=data_root)
        assert done.returncode == 0, done.stderr[-2000:]
    plain, run_dir = tmp_path / "plain" / "run", tmp_path / "instruments" / "run"
    results = json.loads((run_dir / "results.json").read_text())
    baseline = json.loads((plain / "results.json").read_text())
    for key in ("acc_matrix", "fisher"):
        assert results[key] == baseline[key]

    points = results["continual_eval"]["points"]
    assert [p["step"] for p in points] == list(range(10, 91, 10))
    assert [len(p["acc"]) for p in points] == [1] * 3 + [2] * 3 + [3] * 3
    assert [g["task"] for g in results["stability_gap"]] == [1, 2]
    diagnostics = results["fisher_diagnostics"]
    assert [d["task"] for d in diagnostics] == [1, 2, 3] and diagnostics[0]["samples"] == 64
    every = diagnostics[0]["per_parameter"]
    assert set(every) == {"layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias", "all"}  # fmt: skip
    assert set(every["all"]) == {"sample", "empirical", "batched"}
    assert every["all"]["batched"]["scale_ratio"] > 3  # minibatch means shrink it
    overlap = results["fisher_overlap"]
    assert len(overlap) == 3 and all(
        0 < overlap[i][j] <= 1 + 1e-9 for i in range(3) for j in range(3)
    )
    for png in ("continual_eval", "stability_gap", "fisher_overlap", "fisher_diagnostics_task3"):
        assert (run_dir / f"{png}.png").stat().st_size > 10_000

    rows = [r["history"]["item"] for r in read_wandb_run(run_dir) if r["type"] == "history"]
    continual = [r for r in rows if "continual/step" in r]
    assert [r["continual/step"] for r in continual] == [p["step"] for p in points]
    assert continual[-1]["continual/task_1"] == pytest.approx(points[-1]["acc"][0])
    logged = {r["task"]: r for r in rows if any(k.startswith("fisher_diag/") for k in r)}
    assert sorted(logged) == [1, 2, 3]
    assert logged[2]["fisher_diag/batched/all/scale_ratio"] == pytest.approx(
        diagnostics[1]["per_parameter"]["all"]["batched"]["scale_ratio"]
    )
    assert logged[3]["fisher_overlap/task_1"] == pytest.approx(overlap[2][0])


def test_no_dip_recovers_in_zero_steps_and_a_task_without_evaluations_is_drawn(tmp_path):
    """eval_every longer than a task leaves some tasks without a point: the gaps skip them,
    the figure still draws."""
    from ewcexp.reporting.figures import continual_curves

    points = [
        {"step": 40, "task": 1, "task_step": 40, "acc": [0.8]},
        {"step": 80, "task": 2, "task_step": 10, "acc": [0.85, 0.5]},  # no dip for task 1
        {"step": 160, "task": 4, "task_step": 10, "acc": [0.7, 0.6, 0.5, 0.4]},  # task 3: none
    ]
    (gap,) = stability_gaps(points)
    assert (gap["task"], gap["depth"], gap["steps_to_recover"]) == (1, pytest.approx(-0.05), 0)
    figure = continual_curves(points, "t", tmp_path / "curves.png")
    assert figure.stat().st_size > 5_000
