"""Metric formulas on hand-made accuracy matrices."""

import pytest
import torch

from ewcexp.reporting.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    task_metrics,
)

# R[i][j]: accuracy on task j after training through task i (upper triangle: not yet learned)
R = torch.tensor(
    [
        [0.90, 0.10, 0.20],
        [0.70, 0.95, 0.15],
        [0.60, 0.80, 0.85],
    ]
)


def test_average_accuracy_is_over_tasks_seen():
    assert average_accuracy(R, 0) == pytest.approx(0.90)
    assert average_accuracy(R, 1) == pytest.approx((0.70 + 0.95) / 2)
    assert average_accuracy(R, 2) == pytest.approx((0.60 + 0.80 + 0.85) / 3)


def test_backward_transfer():
    assert backward_transfer(R, 2) == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)
    assert backward_transfer(R, 1) == pytest.approx(0.70 - 0.90)
    assert backward_transfer(R, 0) is None


def test_forgetting_uses_the_best_accuracy_after_learning():
    # task 0: best of R[0][0], R[1][0] = 0.90 → 0.30; task 1: best of R[1][1] = 0.95 → 0.15
    assert forgetting(R, 2) == pytest.approx((0.30 + 0.15) / 2)
    assert forgetting(R, 0) is None


def test_forgetting_ignores_accuracy_before_a_task_was_learned():
    high_before = torch.tensor([[0.5, 0.99], [0.5, 0.80]])
    assert forgetting(high_before, 1) == pytest.approx(0.0)


def test_improvement_gives_positive_bwt_and_negative_forgetting():
    improving = torch.tensor([[0.5, 0.0], [0.7, 0.9]])
    assert backward_transfer(improving, 1) == pytest.approx(0.2)
    assert forgetting(improving, 1) == pytest.approx(-0.2)


def test_forward_transfer_compares_each_task_before_it_is_learned_with_the_start():
    """Lopez-Paz & Ranzato 2017: mean over j ≥ 2 of R[j−1][j] − b_j; row 1's entry for task 1
    and everything on or below the diagonal play no part."""
    initial = [0.11, 0.12, 0.18]
    assert forward_transfer(R, 2, initial) == pytest.approx(((0.10 - 0.12) + (0.15 - 0.18)) / 2)
    assert forward_transfer(R, 1, initial) == pytest.approx(0.10 - 0.12)
    assert forward_transfer(R, 0, initial) is None
    assert forward_transfer(R, 2, []) is None  # no b_j: an older checkpoint's run
    changed = R.clone()
    changed[2, 0] = changed[1, 1] = changed[0, 0] = 0.0  # not R[j−1][j]: no effect
    assert forward_transfer(changed, 2, initial) == forward_transfer(R, 2, initial)


def test_task_metrics_carry_forward_transfer_so_far():
    initial = [0.1, 0.1, 0.1]
    assert task_metrics(R, 1, initial)["fwt"] == pytest.approx(0.10 - 0.1)
    assert task_metrics(R, 2)["fwt"] is None


def test_a_run_measures_forward_transfer_against_its_untrained_network(tmp_path, data_root):
    """b_j is each task's accuracy at the seed's initial weights (built here again, untrained),
    over the units R[j−1][j] uses; results.json's FWT is the formula over its own matrix."""
    from omegaconf import OmegaConf

    from ewcexp.config.checks import check_config
    from ewcexp.training.evaluation import accuracy
    from ewcexp.training.runner import prepare, run_experiment
    from tests.conftest import TINY, compose_config

    cfg = compose_config(*TINY, f"data.root={data_root}", "task_sequence.scenario=class")
    check_config(cfg)
    results = run_experiment(cfg, tmp_path / "run")
    run, _, _ = prepare(cfg, OmegaConf.to_container(cfg, resolve=True), tmp_path / "fresh")
    untrained = [
        accuracy(run.model, task, run.sequence.scenario, max(task.index - 1, 0), run.device, 64)
        for task in run.sequence.tasks
    ]
    assert results["acc_init"] == untrained
    matrix = results["acc_matrix"]
    expected = sum(matrix[j - 1][j] - untrained[j] for j in (1, 2)) / 2
    assert results["fwt"] == pytest.approx(expected)
    assert results["per_task"][-1]["fwt"] == results["fwt"]
