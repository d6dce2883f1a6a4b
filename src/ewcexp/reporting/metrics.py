"""Continual-learning metrics from the accuracy matrix R[i][j]: accuracy on task j after task i."""

from __future__ import annotations

from torch import Tensor


def average_accuracy(acc: Tensor, after: int) -> float:
    """ACC_i: mean accuracy over the tasks seen so far, 0..`after`."""
    return float(acc[after, : after + 1].mean())


def backward_transfer(acc: Tensor, after: int) -> float | None:
    """BWT: mean over earlier tasks j of R[after][j] − R[j][j]; None before a second task."""
    if after == 0:
        return None
    return float(sum(acc[after, j] - acc[j, j] for j in range(after)) / after)


def forgetting(acc: Tensor, after: int) -> float | None:
    """Chaudhry et al. 2018: mean over earlier tasks j of the best accuracy j had after it was
    learned (rows j..after−1) minus its accuracy now; None before a second task. Rows before
    j are left out: the runner scores every task after every task, and a task's accuracy
    before it was trained (which Chaudhry et al.'s matrix never holds) is no baseline."""
    if after == 0:
        return None
    drops = [acc[j:after, j].max() - acc[after, j] for j in range(after)]
    return float(sum(drops) / after)


def task_metrics(acc: Tensor, after: int) -> dict[str, float | None]:
    """The metrics logged after task `after` (0-based): the row R[after][·] as acc/task_1..T,
    and the averages, BWT and forgetting so far."""
    row = {f"acc/task_{j + 1}": float(a) for j, a in enumerate(acc[after])}
    return {
        **row,
        "acc/avg_seen": average_accuracy(acc, after),
        "acc/avg_all": float(acc[after].mean()),
        "bwt": backward_transfer(acc, after),
        "forgetting": forgetting(acc, after),
    }
