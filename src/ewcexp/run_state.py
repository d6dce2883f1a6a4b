"""The run's state: what learning the sequence has produced so far (`Record`) and everything
a checkpoint restores so that a resumed run continues exactly as if never stopped (`LoopState`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ewcexp import checkpoint
from ewcexp.logger import MetricsFile, NoLogger
from ewcexp.strategy.base import Strategy

PHASES = ("train", "fisher", "eval", "diagnostics")


@dataclass
class Record:
    """What learning the sequence leaves behind, besides the trained model."""

    acc: Tensor  # R[i][j]
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    importance_stats: list[dict[str, Any]] = field(default_factory=list)
    histograms: dict[str, dict[str, tuple]] = field(default_factory=dict)  # of importances
    spectra: dict[str, dict[str, dict[str, Tensor]]] = field(default_factory=dict)  # Kronecker
    continual: list[dict[str, Any]] = field(default_factory=list)  # train.eval_every's points
    diagnostics: list[dict[str, Any]] = field(default_factory=list)  # fisher.diagnostics's
    task_fishers: list[Tensor] = field(default_factory=list)  # each task's exact, flattened
    earlier_wall_s: float = 0.0  # earlier processes of a resumed run, to their last checkpoint
    started: float = field(default_factory=time.perf_counter)  # this process

    def wall_s(self) -> float:
        """Seconds spent on this run, over all its processes."""
        return self.earlier_wall_s + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "seconds": self.seconds,
            "importance_stats": self.importance_stats,
            "histograms": self.histograms,
            "spectra": self.spectra,
            "continual": self.continual,
            "diagnostics": self.diagnostics,
            "task_fishers": self.task_fishers,
            "wall_s": self.wall_s(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc, self.seconds, self.earlier_wall_s = (
            state["acc"],
            state["seconds"],
            state["wall_s"],
        )
        self.importance_stats, self.histograms = state["importance_stats"], state["histograms"]
        self.spectra, self.continual = state["spectra"], state["continual"]
        self.diagnostics, self.task_fishers = state["diagnostics"], state["task_fishers"]

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


@dataclass
class LoopState:
    """Parameters, the strategy's state, results so far, random generators, position."""

    model: nn.Module
    strategy: Strategy
    record: Record
    logger: NoLogger
    batch_rng: torch.Generator
    fisher_rng: torch.Generator
    tasks_done: int = 0
    step: int = 0  # global training step at the start of the current task
    task_steps: int = 0  # steps of the current task done when a stop was requested mid-task
    optimizer_state: dict[str, Any] | None = None  # mid-task, or carried to the next task
    metrics: MetricsFile | None = None  # the run's metrics.jsonl, cut back to this on resuming
    metrics_offset: int | None = 0  # its length at the checkpoint (None: an older checkpoint)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "tasks_done": self.tasks_done,
            "step": self.step,
            "task_steps": self.task_steps,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "record": self.record.state_dict(),
            "batch_rng": self.batch_rng.get_state(),
            "fisher_rng": self.fisher_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "logger_run_id": self.logger.run_id,
            "metrics_offset": self.metrics.position() if self.metrics is not None else None,
        }
        if self.optimizer_state is not None:
            state["optimizer"] = self.optimizer_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.record.load_state_dict(state["record"])
        self.batch_rng.set_state(state["batch_rng"])
        self.fisher_rng.set_state(state["fisher_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.tasks_done, self.step = state["tasks_done"], state["step"]
        self.task_steps = state["task_steps"]
        self.optimizer_state = state.get("optimizer")
        self.metrics_offset = state.get("metrics_offset")

    def restore(self, saved: dict[str, Any], run_dir: Path) -> None:
        """`load_state_dict`, with a checkpoint whose contents do not fit reported in one line."""
        try:
            self.load_state_dict(saved)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            reason = " ".join(str(error).split())[:120] or type(error).__name__
            raise checkpoint.CheckpointDamaged(
                f"{run_dir / checkpoint.FILENAME} cannot be restored ({type(error).__name__}: "
                f"{reason}): delete it, or run with resume=false to start over"
            ) from None

    def save(self, run_dir: Path, cfg: DictConfig) -> None:
        """A checkpoint of this state and the config it belongs to."""
        config = json.dumps(OmegaConf.to_container(cfg, resolve=True))
        checkpoint.save(run_dir, {**self.state_dict(), "config": config})
