"""What learning the sequence leaves behind besides the trained model: the accuracy matrix,
the time per phase, importance statistics and histograms, spectra, continual evaluations and
diagnostics. Checkpointed with the loop's state; `results.json` and the figures are drawn
from it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ewcexp.importance.diagnostics import overlap_row
from ewcexp.reporting.metrics import task_metrics

PHASES = ("train", "fisher", "eval", "diagnostics")


@dataclass
class Record:
    """What learning the sequence leaves behind, besides the trained model."""

    acc: Tensor  # R[i][j]
    per_task: list[dict[str, float | None]] = field(default_factory=list)  # metrics after each
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    importance_stats: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[str, dict[str, tuple]] = field(default_factory=dict)  # of importances
    spectra: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)  # Kronecker
    continual: list[dict[str, Any]] = field(default_factory=list)  # train.eval_every's points
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # fisher.diagnostics's
    task_fishers: list[Tensor] = field(default_factory=list)  # each task's exact, flattened
    overlaps: list[list[float]] = field(default_factory=list)  # task t's with tasks 1..t
    acc_pretrained: list[float] = field(default_factory=list)  # T0: at the start, after each
    acc_init: list[float] = field(default_factory=list)  # b_j: each task at the starting weights
    earlier_wall_s: float = 0.0  # earlier processes of a resumed run, to their last checkpoint
    started: float = field(default_factory=time.perf_counter)  # this process

    def wall_s(self) -> float:
        """Seconds spent on this run, over all its processes."""
        return self.earlier_wall_s + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "per_task": self.per_task,
            "seconds": self.seconds,
            "importance_stats": self.importance_stats,
            "histograms": self.histograms,
            "spectra": self.spectra,
            "continual": self.continual,
            "diagnostics": self.diagnostics,
            "task_fishers": self.task_fishers,
            "overlaps": self.overlaps,
            "acc_pretrained": self.acc_pretrained,
            "acc_init": self.acc_init,
            "wall_s": self.wall_s(),
        }

    def load_state_dict(self, state: dict[str, Any], tasks_done: int) -> None:
        """Restore a checkpoint's record; one written before the record kept the per-task
        metrics and the overlaps gets them computed here from what it does keep."""
        self.acc, self.seconds, self.earlier_wall_s = (
            state["acc"],
            state["seconds"],
            state["wall_s"],
        )
        self.importance_stats, self.histograms = state["importance_stats"], state["histograms"]
        self.spectra, self.continual = state["spectra"], state["continual"]
        self.diagnostics, self.task_fishers = state["diagnostics"], state["task_fishers"]
        self.acc_init = list(state.get("acc_init", []))  # none before the runner kept it
        self.per_task = state.get("per_task") or [
            task_metrics(self.acc, t, self.acc_init) for t in range(tasks_done)
        ]
        self.overlaps = state.get("overlaps") or [
            overlap_row(self.task_fishers[: t + 1]) for t in range(len(self.task_fishers))
        ]
        self.acc_pretrained = list(state.get("acc_pretrained", []))

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start
