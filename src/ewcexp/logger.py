"""The `logger` config group: where metrics go besides `results.json` and the run's PNGs.

`NoLogger` (`logger=none`) drops them; `WandbLogger` (`logger=wandb`) sends them to
Weights & Biases, offline by default, with `task` as the x-axis of per-task metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor

from ewcexp.schema import Rule

log = logging.getLogger(__name__)

EPS = 1e-12  # histograms are of log10(|importance| + eps): exact zeros land at -12
HISTOGRAM_BINS = 64  # wandb.Histogram accepts at most 512
SMALL = 1e-8  # an importance below this leaves a parameter, in effect, unprotected
# W&B refuses a project name with any of these, or longer than 128 characters, when it starts
# (a warning, and the run goes on without a logger): refused before anything runs instead
PROJECT_FORBIDDEN = "/\\#?%:"
ProjectName = Annotated[
    str,
    Rule(
        lambda v: isinstance(v, str) and 0 < len(v) <= 128 and not set(v) & set(PROJECT_FORBIDDEN),
        f"a W&B project name: 1 to 128 characters, none of {' '.join(PROJECT_FORBIDDEN)}",
        "my/project",
    ),
]


class NoLogger:
    """Logs nothing; the base of the other loggers."""

    run_id: str | None = None  # kept in checkpoints, so a resumed run continues the same run

    def start(
        self,
        config: dict[str, Any],
        run_dir: Path,
        group: str | None,
        name: str | None,
        run_id: str | None = None,
    ) -> None:
        """Open the run (or reopen `run_id`); `group` and `name` are a multirun's defaults."""

    def log_training(self, metrics: dict[str, float]) -> None:
        """Every few steps: `train/step` and loss, penalty, learning rate, throughput."""

    def log_importance(
        self,
        kind: str,
        task: int,
        importance: dict[str, Tensor],
        accumulated: dict[str, Tensor] | None,
    ) -> None:
        """After consolidating `task` (0-based): its importance per parameter tensor (`kind`:
        "fisher", "mas", "si"), and the running one of strategies that merge them."""

    def log_spectra(self, kind: str, task: int, spectra: dict[str, dict[str, Tensor]]) -> None:
        """After consolidating `task` with Kronecker blocks: the eigenvalues of each layer's
        A and G ({layer: {"A": ..., "G": ...}})."""

    def log_continual(self, point: dict[str, Any]) -> None:
        """A continual evaluation while training: {"step" (global), "task" (training, from 1),
        "task_step", "acc" (tasks 1..task)}."""

    def log_diagnostics(
        self,
        task: int,
        comparisons: dict[str, dict[str, dict[str, float | None]]],
        overlaps: list[float],
    ) -> None:
        """With `fisher.diagnostics`, after consolidating `task`: every estimator against
        `exact` ({tensor or "all": {estimator: {stat: value}}}), and the overlap of this
        task's Fisher with each task's so far (itself last)."""

    def log_task(self, task: int, metrics: dict[str, float | None]) -> None:
        """After evaluating everything once `task` (0-based) is learned."""

    def log_summary(self, results: dict[str, Any], images: dict[str, Path]) -> None:
        """At the end: final metrics, the accuracy matrix, and the run's PNG figures."""

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        """Close the run; called whatever happened, errors, Ctrl-C and preemption included."""


class WandbLogger(NoLogger):
    """A W&B run in the Hydra job's directory. If W&B cannot start, the experiment goes on
    without it (one warning line) and still writes its local results."""

    def __init__(
        self,
        mode: Literal["online", "offline", "disabled"] = "offline",
        project: ProjectName = "ewcexp",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = {
            "mode": mode,
            "project": project,
            "entity": entity,
            "group": group,
            "tags": list(tags or []),
            "name": name,
        }
        self.run = None

    def start(
        self,
        config: dict[str, Any],
        run_dir: Path,
        group: str | None,
        name: str | None,
        run_id: str | None = None,
    ) -> None:
        import wandb  # only when W&B is on: importing it takes a second

        settings = dict(self.settings)
        settings["group"] = settings["group"] or group
        settings["name"] = settings["name"] or name
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                config=config, dir=str(run_dir), id=run_id, resume="allow", **settings
            )
        except Exception as error:  # no network, bad key, service down: keep training
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("W&B did not start (%s); continuing without it", first_line)
            return
        self.run_id = self.run.id
        self.run.define_metric("task")
        for pattern in ("acc/*", "bwt", "forgetting"):
            self.run.define_metric(pattern, step_metric="task")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("continual/*", step_metric="continual/step")

    def log_training(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def log_importance(
        self,
        kind: str,
        task: int,
        importance: dict[str, Tensor],
        accumulated: dict[str, Tensor] | None,
    ) -> None:
        if self.run is None:
            return
        import wandb

        for pattern in (f"{kind}/*", f"{kind}_stats/*"):
            self.run.define_metric(pattern, step_metric="task")
        entries: dict[str, Any] = {"task": task + 1}
        for which, tensors in (("task", importance), ("accumulated", accumulated or {})):
            for name, values in tensors.items():
                counts, edges = importance_histogram(values)
                entries[f"{kind}/{which}/{name}"] = wandb.Histogram(np_histogram=(counts, edges))
                for stat, value in importance_statistics(values).items():
                    entries[f"{kind}_stats/{which}/{name}/{stat}"] = value
        self.run.log(entries)

    def log_spectra(self, kind: str, task: int, spectra: dict[str, dict[str, Tensor]]) -> None:
        if self.run is None:
            return
        import wandb

        for pattern in (f"{kind}_spectrum/*", f"{kind}_spectrum_stats/*"):
            self.run.define_metric(pattern, step_metric="task")
        entries: dict[str, Any] = {"task": task + 1}
        for layer, factors in spectra.items():
            for factor, eigenvalues in factors.items():
                counts, edges = importance_histogram(eigenvalues)
                key = f"{layer}/{factor}"
                entries[f"{kind}_spectrum/{key}"] = wandb.Histogram(np_histogram=(counts, edges))
                for stat, value in spectrum_statistics(eigenvalues).items():
                    entries[f"{kind}_spectrum_stats/{key}/{stat}"] = value
        self.run.log(entries)

    def log_diagnostics(
        self,
        task: int,
        comparisons: dict[str, dict[str, dict[str, float | None]]],
        overlaps: list[float],
    ) -> None:
        if self.run is None:
            return
        for pattern in ("fisher_diag/*", "fisher_overlap/*"):
            self.run.define_metric(pattern, step_metric="task")
        entries: dict[str, Any] = {"task": task + 1}
        for name, by_estimator in comparisons.items():
            for estimator, stats in by_estimator.items():
                for stat, value in stats.items():
                    if value is not None:
                        entries[f"fisher_diag/{estimator}/{name}/{stat}"] = value
        for earlier, overlap in enumerate(overlaps[:-1]):
            entries[f"fisher_overlap/task_{earlier + 1}"] = overlap
        self.run.log(entries)

    def log_continual(self, point: dict[str, Any]) -> None:
        if self.run is None:
            return
        accuracies = {f"continual/task_{j + 1}": a for j, a in enumerate(point["acc"])}
        self.run.log({"continual/step": point["step"], **accuracies})

    def log_task(self, task: int, metrics: dict[str, float | None]) -> None:
        if self.run is not None:
            self.run.log({"task": task + 1, **{k: v for k, v in metrics.items() if v is not None}})

    def log_summary(self, results: dict[str, Any], images: dict[str, Path]) -> None:
        if self.run is None:
            return
        import wandb

        matrix = results["acc_matrix"]
        columns = ["after task"] + [f"task_{j}" for j in range(len(matrix))]
        table = wandb.Table(columns=columns, data=[[i + 1, *row] for i, row in enumerate(matrix)])
        self.run.log(
            {
                "acc_matrix": table,
                **{f"figures/{key}": wandb.Image(str(path)) for key, path in images.items()},
            }
        )
        for gap in results.get("stability_gap", []):
            for stat in ("depth", "min", "steps_to_recover"):
                self.run.summary[f"stability_gap/task_{gap['task']}/{stat}"] = gap[stat]
        for key in (
            "avg_acc",
            "bwt",
            "forgetting",
            "wall_time_s",
            "data_source",
            "strategy",
            "lambda",
            "fisher_estimator",
        ):
            self.run.summary[key] = results[key]

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if preempted:  # shown as preempted, not crashed; the requeued job resumes this run
                run.mark_preempting()
            run.finish(exit_code=1 if failed else 0)
        except Exception as error:  # e.g. its service already killed: never hide the real outcome
            log.warning(
                "W&B run did not close cleanly (%s)",
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )


def importance_histogram(values: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of log10(|importance| + eps) (SI's can be negative)."""
    logs = torch.log10(values.detach().flatten().double().cpu().abs() + EPS).numpy()
    return np.histogram(logs, bins=HISTOGRAM_BINS)


def importance_statistics(values: Tensor) -> dict[str, float]:
    """Mean, max, and the fraction of parameters whose importance is below SMALL."""
    flat = values.detach().flatten()
    return {
        "mean": float(flat.mean()),
        "max": float(flat.max()),
        f"fraction_below_{SMALL:g}": float((flat < SMALL).float().mean()),
    }


def spectrum_statistics(eigenvalues: Tensor) -> dict[str, float]:
    """Largest and smallest eigenvalue, trace, and the effective rank (trace / largest): how
    many directions carry the factor's mass."""
    values = eigenvalues.detach().double()
    top = float(values.max())
    return {
        "max": top,
        "min": float(values.min()),
        "trace": float(values.sum()),
        "effective_rank": float(values.sum()) / top if top > 0 else 0.0,
    }
