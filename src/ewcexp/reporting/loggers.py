"""The `logger` config group: where metrics go besides `results.json` and the run's PNGs.

`Logger` (`logger=none`) drops them; `WandbLogger` (`logger=wandb`) sends them to
Weights & Biases, offline by default, with `task` as the x-axis of per-task metrics.
Loggers are given numbers: the reporter (`reporter.Reporter`) computes every statistic and
histogram once, for them and for results.json alike. Whatever the group says, the reporter
also keeps the curves in the run directory (`metrics_file.MetricsFile`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from ewcexp.config.schema import Rule

log = logging.getLogger(__name__)
Histogram = tuple[np.ndarray, np.ndarray]  # counts, bin edges (numpy's histogram)
Statistics = dict[str, dict[str, dict[str, float]]]  # {group: {name: {stat: value}}}
Histograms = dict[str, dict[str, Histogram]]  # {group: {name: histogram}}
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


class Logger:
    """The base of every logger: each method is an event of the run, and here does nothing
    (`logger=none`). A logger of your own subclasses it and overrides what it needs."""

    run_id: str | None = None  # kept in checkpoints, so a resumed run continues the same run

    def start(
        self, config: dict[str, Any], run_dir: Path, group: str | None, name: str | None,
        run_id: str | None = None,
    ) -> None:  # fmt: skip
        """Open the run (or reopen `run_id`); `group` and `name` are a multirun's defaults."""

    def log_training(self, metrics: dict[str, float]) -> None:
        """Every few steps: `train/step` and loss, penalty, learning rate, throughput."""

    def log_importance(
        self, kind: str, task: int, statistics: Statistics, histograms: Histograms
    ) -> None:
        """After consolidating `task` (0-based; T0, task_sequence.pretrained_on, is -1), the
        importance (`kind`: "fisher", "mas", "si") per parameter tensor, as {"task" or
        "accumulated" (the running one of strategies that merge them): {tensor: {stat:
        value}}} and histograms of log10."""

    def log_spectra(
        self, kind: str, task: int, statistics: Statistics, histograms: Histograms
    ) -> None:
        """After consolidating `task` with Kronecker blocks: the eigenvalues of each layer's
        A and G, as {layer: {"A"/"G": {stat: value}}} and histograms of their log10."""

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
        """At the end: final metrics, the accuracy matrix, and the run's PNG figures. A run
        that diverged ends here too, without figures: `results["status"]` is "diverged",
        `results["diverged"]` says where, and the matrix has the rows of the tasks done."""

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        """Close the run; called whatever happened, errors, Ctrl-C and preemption included."""


class WandbLogger(Logger):
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
        for pattern in ("acc/*", "bwt", "forgetting", "fwt"):
            self.run.define_metric(pattern, step_metric="task")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("continual/*", step_metric="continual/step")

    def log_training(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def log_importance(
        self, kind: str, task: int, statistics: Statistics, histograms: Histograms
    ) -> None:
        self._log_per_task(task, f"{kind}", f"{kind}_stats", statistics, histograms)

    def log_spectra(
        self, kind: str, task: int, statistics: Statistics, histograms: Histograms
    ) -> None:
        self._log_per_task(
            task, f"{kind}_spectrum", f"{kind}_spectrum_stats", statistics, histograms
        )

    def _log_per_task(
        self,
        task: int,
        histogram_key: str,
        statistics_key: str,
        statistics: Statistics,
        histograms: Histograms,
    ) -> None:
        """Histograms as `<histogram_key>/<group>/<name>`, statistics as
        `<statistics_key>/<group>/<name>/<stat>`, against `task` (from 1)."""
        if self.run is None:
            return
        import wandb

        for pattern in (f"{histogram_key}/*", f"{statistics_key}/*"):
            self.run.define_metric(pattern, step_metric="task")
        entries: dict[str, Any] = {"task": task + 1}
        for group, by_name in histograms.items():
            for name, histogram in by_name.items():
                entries[f"{histogram_key}/{group}/{name}"] = wandb.Histogram(np_histogram=histogram)
        for group, by_name in statistics.items():
            for name, stats in by_name.items():
                for stat, value in stats.items():
                    entries[f"{statistics_key}/{group}/{name}/{stat}"] = value
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
        logged: dict[str, Any] = {
            f"figures/{key}": wandb.Image(str(path)) for key, path in images.items()
        }
        if matrix:  # a run that diverged in its first task has no row
            columns = ["after task"] + [f"task_{j + 1}" for j in range(len(matrix[0]))]
            rows = [[i + 1, *row] for i, row in enumerate(matrix)]
            logged["acc_matrix"] = wandb.Table(columns=columns, data=rows)
        if logged:
            self.run.log(logged)
        for gap in results.get("stability_gap", []):
            for stat in ("depth", "min", "steps_to_recover"):
                self.run.summary[f"stability_gap/task_{gap['task']}/{stat}"] = gap[stat]
        for key in (
            "status",
            "avg_acc",
            "bwt",
            "forgetting",
            "fwt",
            "wall_time_s",
            "data_source",
            "strategy",
            "lambda",
            "fisher_estimator",
            "diverged",
        ):
            if results.get(key) is not None:
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
