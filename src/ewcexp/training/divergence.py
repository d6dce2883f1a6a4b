"""A run that diverged: a loss, penalty, parameter or importance that is no longer a finite
number. Nothing computed after it means anything, so the run stops there (one line, a
results.json that says where) instead of training on NaNs."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Diverged(ArithmeticError):
    """A loss, penalty, parameter or importance that is no longer a finite number: nothing the
    run computes after it means anything, so the run stops there instead of training on NaNs.
    `task` counts from 0, `step` is the bad step's number within the task (from 1) and
    `train_step` its global index (the `train/step` of the logs)."""

    def __init__(self, what: str, value: float, task: int, step: int, train_step: int) -> None:
        subject = {"parameters": "a parameter", "importance": "an importance value"}.get(what)
        super().__init__(f"{subject or 'the ' + what} is {value}")
        self.what, self.value = what, value
        self.task, self.step, self.train_step = task, step, train_step

    def record(self) -> dict[str, int | str]:
        """What results.json says: tasks from 1, the value as text (JSON has no NaN)."""
        return {
            "task": self.task + 1,
            "step": self.step,
            "train_step": self.train_step,
            "what": self.what,
            "value": str(self.value),
        }


def first_non_finite(tensors: list[Tensor]) -> float | None:
    """None when every value is finite (one host sync); else NaN if any is, else the first
    infinity."""
    if not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all()):
        return None
    values = torch.cat([t.detach()[~t.isfinite()].double().cpu() for t in tensors])
    return math.nan if bool(values.isnan().any()) else float(values[0])
