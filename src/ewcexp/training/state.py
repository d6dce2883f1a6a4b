"""A run's two halves: what stays fixed while the sequence is learned (`Run`: the components
the config names, where to write), and what changes, which a checkpoint restores so that a
resumed run continues exactly as if never stopped (`LoopState`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from ewcexp.data.replay import ReplayMemory, ReplaySettings
from ewcexp.data.scenarios import Task
from ewcexp.data.sequences import TaskSequence
from ewcexp.importance.fisher import Fisher
from ewcexp.reporting.reporter import Reporter
from ewcexp.strategy.base import Strategy
from ewcexp.training import checkpoint
from ewcexp.training.loop import TrainSettings


@dataclass
class Run:
    """What stays fixed while the sequence is learned: the components and where to write."""

    cfg: DictConfig
    train: TrainSettings
    sequence: TaskSequence
    model: nn.Module
    strategy: Strategy
    optimizer: Callable[[list[Tensor]], torch.optim.Optimizer]
    reporter: Reporter
    device: torch.device
    output_dir: Path
    replay: ReplaySettings
    diagnostics: Fisher | None = None  # fisher.diagnostics: the settings every estimator uses
    pretrained: Task | None = None  # task_sequence.pretrained_on: T0, on the last output units
    named: list[tuple[str, Tensor]] = field(init=False)

    def __post_init__(self) -> None:
        self.named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @property
    def pretrained_units(self) -> slice:
        """T0's output units: after the scenario's."""
        assert self.pretrained is not None
        first = self.sequence.scenario.output_size
        return slice(first, first + len(self.pretrained.class_ids))

    @property
    def params(self) -> list[Tensor]:
        return [p for _, p in self.named]


@dataclass
class LoopState:
    """Parameters, the strategy's state, results so far, random generators, position."""

    model: nn.Module
    strategy: Strategy
    reporter: Reporter  # its record, its logger's run id, its metrics file's length
    batch_rng: torch.Generator
    fisher_rng: torch.Generator
    tasks_done: int = 0
    step: int = 0  # global training step at the start of the current task
    task_steps: int = 0  # steps of the current task done when a stop was requested mid-task
    optimizer_state: dict[str, Any] | None = None  # mid-task, or carried to the next task
    memory: ReplayMemory | None = None  # replay.size > 0: the samples kept so far
    metrics_offset: int | None = 0  # metrics.jsonl's length at the checkpoint (None: older)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "tasks_done": self.tasks_done,
            "step": self.step,
            "task_steps": self.task_steps,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "record": self.reporter.record.state_dict(),
            "batch_rng": self.batch_rng.get_state(),
            "fisher_rng": self.fisher_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "logger_run_id": self.reporter.run_id,
            "metrics_offset": self.reporter.metrics_position(),
        }
        if self.optimizer_state is not None:
            state["optimizer"] = self.optimizer_state
        if self.memory is not None:
            state["memory"] = self.memory.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.reporter.record.load_state_dict(state["record"], tasks_done=state["tasks_done"])
        self.batch_rng.set_state(state["batch_rng"])
        self.fisher_rng.set_state(state["fisher_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.tasks_done, self.step = state["tasks_done"], state["step"]
        self.task_steps = state["task_steps"]
        self.optimizer_state = state.get("optimizer")
        if self.memory is not None:
            self.memory.load_state_dict(state["memory"])
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
