"""The `logger` config group: where metrics go besides `results.json` and the run's PNGs.

`Logger` (`logger=none`) drops them; `WandbLogger` (`logger=wandb`) sends them to
Weights & Biases, offline by default, with `task` as the x-axis of per-task metrics.
Whatever the group says, the runner also keeps the curves in the run directory
(`MetricsFile`, `<run dir>/metrics.jsonl`), beside the chosen logger (`Tee`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from torch import Tensor

from ewcexp.config.schema import Rule
from ewcexp.reporting.statistics import (
    importance_histogram,
    importance_statistics,
    spectrum_statistics,
)

log = logging.getLogger(__name__)
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
        logged: dict[str, Any] = {
            f"figures/{key}": wandb.Image(str(path)) for key, path in images.items()
        }
        if matrix:  # a run that diverged in its first task has no row
            columns = ["after task"] + [f"task_{j}" for j in range(len(matrix[0]))]
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


METRICS_FILE = "metrics.jsonl"


class MetricsFile(Logger):
    """`<run dir>/metrics.jsonl`: the training curves (`"event": "train"`, W&B's `train/*`
    keys), continual evaluations (`"continual"`), each task's accuracies (`"task"`) and the
    outcome (`"end"`), one JSON object a line, whatever the logger, so a run with
    `logger=none` keeps its curves too. Each line is flushed as it is written. A resumed run
    first cuts the file back to where its checkpoint was written (`position()`), so every
    event is in it once, as in a run never stopped."""

    def __init__(self, run_dir: Path, keep: int | None = 0) -> None:
        """`keep`: how many bytes of an existing file to keep (a checkpoint's `position()`;
        0, a fresh run: none; None: all), without a line a crash cut short."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        size = self.path.stat().st_size if self.path.exists() else 0
        end = _after_last_line(self.path, size if keep is None else min(keep, size))
        if end < size:
            os.truncate(self.path, end)
        self.file = self.path.open("ab")

    def position(self) -> int:
        """The file's length so far: what a checkpoint keeps."""
        self.file.flush()
        return os.fstat(self.file.fileno()).st_size

    def write(self, event: str, entries: dict[str, Any]) -> None:
        if not self.file.closed:
            line = json.dumps({"event": event, **entries}, default=str)
            self.file.write(line.encode() + b"\n")
            self.file.flush()

    def log_training(self, metrics: dict[str, float]) -> None:
        self.write("train", metrics)

    def log_continual(self, point: dict[str, Any]) -> None:
        self.write("continual", point)

    def log_task(self, task: int, metrics: dict[str, float | None]) -> None:
        self.write("task", {"task": task + 1, **metrics})

    def log_summary(self, results: dict[str, Any], images: dict[str, Path]) -> None:
        keys = ("status", "diverged", "avg_acc", "bwt", "forgetting", "wall_time_s")
        self.write("end", {key: results[key] for key in keys if key in results})

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        self.file.close()


def _after_last_line(path: Path, end: int) -> int:
    """`end`, moved back to just after the last newline before it (0 if none)."""
    if end == 0:
        return 0
    with path.open("rb") as file:
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


class Tee(Logger):
    """Every call to each of `loggers` in turn (the configured logger, then the run's own
    metrics file); the first one's run id is the run's."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    @property
    def run_id(self) -> str | None:  # type: ignore[override]
        return self.loggers[0].run_id

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for logger in self.loggers:
            getattr(logger, method)(*args, **kwargs)

    def start(self, *args: Any, **kwargs: Any) -> None:
        self._each("start", *args, **kwargs)

    def log_training(self, *args: Any) -> None:
        self._each("log_training", *args)

    def log_importance(self, *args: Any) -> None:
        self._each("log_importance", *args)

    def log_spectra(self, *args: Any) -> None:
        self._each("log_spectra", *args)

    def log_continual(self, *args: Any) -> None:
        self._each("log_continual", *args)

    def log_diagnostics(self, *args: Any) -> None:
        self._each("log_diagnostics", *args)

    def log_task(self, *args: Any) -> None:
        self._each("log_task", *args)

    def log_summary(self, *args: Any) -> None:
        self._each("log_summary", *args)

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        """Every logger is closed, even when one fails to; the first failure is raised."""
        errors = []
        for logger in self.loggers:
            try:
                logger.finish(failed=failed, preempted=preempted)
            except BaseException as error:  # noqa: BLE001 - raised below, after the others
                errors.append(error)
        if errors:
            raise errors[0]
