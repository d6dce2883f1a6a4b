"""The one reporter. The loop says what happened (steps trained, a task consolidated or
diagnosed, a continual probe, a row of the accuracy matrix, the end), and the reporter turns
it into the record a checkpoint keeps, the loggers' calls, `results.json` and the figures.
Each statistic is computed once, here, so results.json and the logs cannot disagree."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ewcexp.data.sequences import TaskSequence
from ewcexp.importance.contract import Importance, spectra_of
from ewcexp.importance.diagnostics import overlap_row
from ewcexp.reporting.files import write_json_atomically
from ewcexp.reporting.loggers import Histogram, Logger
from ewcexp.reporting.metrics import task_metrics
from ewcexp.reporting.metrics_file import MetricsFile
from ewcexp.reporting.record import Record
from ewcexp.reporting.results import save_figures, summarize
from ewcexp.reporting.statistics import (
    importance_histogram,
    importance_statistics,
    spectrum_statistics,
)
from ewcexp.strategy.base import Strategy

# T0 (task_sequence.pretrained_on) as a 0-based task: consolidated before task 1, so its
# importance is reported first, as task 0 (`"task": 0`, `fisher_task0.png`, W&B's task 0)
PRETRAINED_TASK = -1


class Reporter:
    """Records and logs a run's events; `loggers` are the configured logger and, once started,
    the run's own `metrics.jsonl`."""

    def __init__(self, record: Record, logger: Logger | None = None) -> None:
        self.record = record
        self.loggers: list[Logger] = [logger if logger is not None else Logger()]
        self.metrics: MetricsFile | None = None

    @property
    def run_id(self) -> str | None:
        """The configured logger's run, kept in checkpoints so a resumed run continues it."""
        return self.loggers[0].run_id

    def start(
        self,
        config: dict[str, Any],
        run_dir: Path,
        group: str | None,
        name: str | None,
        run_id: str | None,
        metrics_kept: int | None,
    ) -> None:
        """Open the logger's run (`run_id`: reopen it) and `<run_dir>/metrics.jsonl`, cut back
        to `metrics_kept` bytes (a checkpoint's `metrics_position()`)."""
        self.metrics = MetricsFile(run_dir, keep=metrics_kept)
        self.loggers.append(self.metrics)
        for logger in self.loggers:
            logger.start(config, run_dir, group=group, name=name, run_id=run_id)

    def metrics_position(self) -> int | None:
        return None if self.metrics is None else self.metrics.position()

    def timing(self, phase: str) -> AbstractContextManager[None]:
        """Time a phase of the run ("train", "fisher", "eval", "diagnostics")."""
        return self.record.timing(phase)

    def trained(
        self, step: int, task: int, loss: float, penalty: float, lr: float, samples_per_s: float
    ) -> None:
        """Training so far at global `step` of `task` (0-based)."""
        self._each(
            "log_training",
            {
                "train/step": step,
                "train/task": task + 1,
                "train/loss": loss,
                "train/penalty": penalty,
                "train/penalty_share": penalty / (loss + penalty or 1.0),
                "train/lr": lr,
                "train/samples_per_s": samples_per_s,
            },
        )

    def consolidated(
        self,
        task: int,
        kind: str,
        importance: dict[str, Tensor],
        accumulated: dict[str, Tensor] | None,
        spectra: dict[str, dict[str, Tensor]] | None,
    ) -> None:
        """Task `task`'s importance (`kind`: "fisher", "mas", "si") per parameter tensor, the
        running one of strategies that merge them, and Kronecker blocks' eigenvalues of A and
        G per layer: statistics to results.json, histograms to the figures, both to the logs.
        `task` counts from 0; T0's is PRETRAINED_TASK."""
        groups = {"task": importance, **({"accumulated": accumulated} if accumulated else {})}
        statistics = {g: {n: importance_statistics(v) for n, v in t.items()} for g, t in groups.items()}  # fmt: skip
        histograms = {g: {n: importance_histogram(v) for n, v in t.items()} for g, t in groups.items()}  # fmt: skip
        self.record.importance_stats.append(
            {
                "task": task + 1,
                "per_parameter": statistics["task"],
                "accumulated": statistics.get("accumulated"),
            }
        )
        for group, by_name in histograms.items():
            key = f"{kind}_task{task + 1}" if group == "task" else f"{kind}_{group}_task{task + 1}"
            self.record.histograms[key] = _as_tensors(by_name)
        self._each("log_importance", kind, task, statistics, histograms)
        if spectra:
            stats = {
                layer: {f: spectrum_statistics(v) for f, v in factors.items()}
                for layer, factors in spectra.items()
            }
            self.record.importance_stats[-1]["spectra"] = stats
            self.record.spectra[f"{kind}_spectra_task{task + 1}"] = spectra
            counts = {
                layer: {f: importance_histogram(v) for f, v in factors.items()}
                for layer, factors in spectra.items()
            }
            self._each("log_spectra", kind, task, stats, counts)

    def importance_estimated(
        self,
        task: int,
        kind: str,
        importance: Importance,
        diagonal: list[Tensor],
        accumulated: list[Tensor] | None,
        names: list[str],
    ) -> None:
        """`consolidated`, from what the strategy's `end_task` returned: its `importance`,
        with `diagonal` (one tensor per parameter, checked to be finite), and the merged one,
        over the trainable parameters `names`; Kronecker blocks' layers named after their
        weights."""
        spectra = spectra_of(importance)
        layers = [name.removesuffix(".weight") for name in names]
        self.consolidated(
            task, kind, dict(zip(names, diagonal, strict=True)),
            dict(zip(names, accumulated, strict=True)) if accumulated else None,
            {layers[i]: factors for i, factors in spectra.items()} if spectra else None,
        )  # fmt: skip

    def diagnosed(
        self,
        task: int,
        samples: int,
        comparisons: dict[str, dict[str, dict[str, float | None]]],
        exact: Tensor,
    ) -> None:
        """`fisher.diagnostics`: every estimator against `exact` on `samples` of task `task`,
        and this task's exact Fisher (flattened), for its overlaps with every task so far."""
        self.record.diagnostics.append(
            {"task": task + 1, "samples": samples, "per_parameter": comparisons}
        )
        self.record.task_fishers.append(exact)
        self.record.overlaps.append(overlap_row(self.record.task_fishers))
        self._each("log_diagnostics", task, comparisons, self.record.overlaps[-1])

    def probed(self, step: int, task: int, task_step: int, acc: list[float]) -> None:
        """A continual evaluation at global `step`, `task_step` steps into `task` (0-based):
        the accuracy of every task seen so far."""
        point = {"step": step, "task": task + 1, "task_step": task_step, "acc": acc}
        self.record.continual.append(point)
        self._each("log_continual", point)

    def pretrained_evaluated(self, accuracy: float) -> None:
        """The pretrained task's (T0's) accuracy: at the start, then before each row."""
        self.record.acc_pretrained.append(accuracy)

    def evaluated_at_start(self, row: list[float]) -> None:
        """Every task at the weights training starts from, before any is learned: the b_j
        that forward transfer is measured against."""
        self.record.acc_init = list(row)

    def evaluated(self, task: int, row: list[float]) -> None:
        """Row `task` of the accuracy matrix: every task after learning task `task` (and
        T0's accuracy then, as `acc/pretrained`, with task_sequence.pretrained_on)."""
        self.record.acc[task] = torch.tensor(row, dtype=self.record.acc.dtype)
        metrics = task_metrics(self.record.acc, task, self.record.acc_init)
        if len(self.record.acc_pretrained) > task + 1:
            metrics["acc/pretrained"] = self.record.acc_pretrained[task + 1]
        self.record.per_task.append(metrics)
        self._each("log_task", task, metrics)

    def concluded(
        self,
        strategy: Strategy,
        config: dict[str, Any],
        sequence: TaskSequence,
        run_dir: Path,
        parameters: dict[str, int],
        diverged: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The end: `results.json` (and the figures, for a run that completed) written, the
        summary logged; returns the results. `parameters`: the model's counts, all and
        trainable."""
        results = summarize(self.record, strategy, config, sequence, diverged=diverged)
        results["parameters"] = parameters
        figures = save_figures(results, self.record, run_dir) if diverged is None else {}
        write_json_atomically(run_dir / "results.json", results)
        self._each("log_summary", results, figures)
        return results

    def finish(self, failed: bool, preempted: bool) -> None:
        """Close every logger, even when one fails to; the first failure is raised."""
        errors = []
        for logger in self.loggers:
            try:
                logger.finish(failed=failed, preempted=preempted)
            except BaseException as error:  # noqa: BLE001 - raised below, after the others
                errors.append(error)
        if errors:
            raise errors[0]

    def _each(self, event: str, *args: Any) -> None:
        for logger in self.loggers:
            getattr(logger, event)(*args)


def _as_tensors(histograms: dict[str, Histogram]) -> dict[str, tuple[Tensor, ...]]:
    """Histograms as tensors: checkpoints are read with weights_only=True."""
    return {n: tuple(torch.from_numpy(a) for a in h) for n, h in histograms.items()}
