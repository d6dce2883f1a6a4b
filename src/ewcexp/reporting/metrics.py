"""Continual-learning metrics from the accuracy matrix R[i][j]: accuracy on task j after task i,
and b_j, task j's accuracy at the weights training starts from (for forward transfer)."""

from __future__ import annotations

from collections.abc import Sequence

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


def forward_transfer(acc: Tensor, after: int, initial: Sequence[float]) -> float | None:
    """FWT (Lopez-Paz & Ranzato 2017): mean over tasks j = 1..`after` of R[j−1][j] − b_j, what
    learning the tasks before j did for j before j itself was trained, against b_j = `initial`[j],
    j's accuracy at the starting weights. None before a second task, or without `initial`
    (a run resumed from a checkpoint written before the runner evaluated the start)."""
    if after == 0 or not initial:
        return None
    return float(sum(acc[j - 1, j] - initial[j] for j in range(1, after + 1)) / after)


def task_metrics(acc: Tensor, after: int, initial: Sequence[float] = ()) -> dict[str, float | None]:
    """The metrics logged after task `after` (0-based): the row R[after][·] as acc/task_1..T,
    and the averages, BWT, forgetting and FWT (against `initial`, b_j) so far."""
    row = {f"acc/task_{j + 1}": float(a) for j, a in enumerate(acc[after])}
    return {
        **row,
        "acc/avg_seen": average_accuracy(acc, after),
        "acc/avg_all": float(acc[after].mean()),
        "bwt": backward_transfer(acc, after),
        "forgetting": forgetting(acc, after),
        "fwt": forward_transfer(acc, after, initial),
    }
