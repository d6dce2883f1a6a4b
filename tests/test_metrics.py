"""Metric formulas on hand-made accuracy matrices."""

import pytest
import torch

from ewcexp.reporting.metrics import average_accuracy, backward_transfer, forgetting

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
