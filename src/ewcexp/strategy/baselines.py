"""The bounds every method is compared with: no penalty, trained on the newest task only
(fine-tuning) or on every task seen so far (joint)."""

from __future__ import annotations

from ewcexp.data.scenarios import Task
from ewcexp.strategy.base import Strategy


class Finetune(Strategy):
    """Train on the newest task only, no penalty: the lower bound."""

    name = "finetune"


class Joint(Strategy):
    """Train on every task seen so far together, no penalty: the upper bound."""

    name = "joint"
    memory_use = "none"  # it trains on every task's data already

    def training_tasks(self, seen: list[Task]) -> list[Task]:
        return list(seen)
