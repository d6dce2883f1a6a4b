"""Summarise a sweep: `python -m ewcexp.report <multirun dir> [--wandb offline|online]`.

First every job folder (one with Hydra's `.hydra/`) and how it ended: completed, diverged
(its results.json says so), crashed (an error in its log, no results) or unfinished (no
results and no error: still running, killed, or waiting for a requeue). Then, from the
completed jobs only, a table: per (strategy, λ, Fisher estimator), the runs (seeds), the
mean final average accuracy with its standard error and 95% t-interval (a single seed says
so, rather than ±0), mean BWT, forgetting and FWT; for runs with a pretrained task 0
(task_sequence.pretrained_on), T0's final accuracy with the same error and interval, and
what it kept of its starting accuracy. Below it, for the best λ of each two strategies, the
paired difference over the seeds both ran, with its interval. Writes the table as
`lambda_sweep.csv` and plots final average accuracy against λ with the intervals as error
bars (`lambda_sweep.png`). With `--wandb`, logs both tables and the plot to one summary run
in the multirun's W&B group.

This file finds the jobs, says how each ended and writes the outputs; the numbers, the
table's text and the plot are `ewcexp.reporting.sweep_table`'s.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ewcexp.reporting.sweep_table import (
    COLUMNS,
    PAIRED_COLUMNS,
    WITHOUT_LAMBDA,
    columns_of,
    format_table,
    plot,
    summarise,
    t_quantile,
)

# the report's names for callers: the command, how jobs ended, and the table's columns, rows
# and t quantiles (those last computed in sweep_table)
__all__ = [
    "COLUMNS",
    "collect",
    "job_statuses",
    "logged_error",
    "main",
    "t_quantile",
]

STATUSES = ("completed", "diverged", "crashed", "unfinished")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job folder under `sweep_dir` (itself included): one with Hydra's `.hydra/`, or,
    in a folder of runs gathered by hand, one with a results.json."""
    found = {path.parent for path in sweep_dir.rglob(".hydra") if path.is_dir()}
    found |= {path.parent for path in sweep_dir.rglob("results.json")}
    return sorted(found, key=lambda job: [_number_first(part) for part in job.parts])


def _number_first(name: str) -> tuple[int, int | str]:
    """Job folders 0, 1, ..., 10 in numeric order, before any other name."""
    return (0, int(name)) if name.isdigit() else (1, name)


def job_statuses(sweep_dir: Path) -> dict[Path, str]:
    """How each job folder of `sweep_dir` ended: "completed" and "diverged" as its
    results.json says (one without a status, from before there were any, completed);
    "crashed", no results but an error in its log (or a results.json it cannot read);
    "unfinished", neither (still running, killed, or waiting for a requeue)."""
    return {job: job_status(job)[0] for job in job_dirs(sweep_dir)}


def job_status(job: Path) -> tuple[str, str]:
    """How the job in folder `job` ended, and a few words on why (empty when it completed)."""
    path = job / "results.json"
    if path.is_file():
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return "crashed", f"results.json cannot be read ({type(error).__name__})"
        status = results.get("status", "completed")
        if status == "diverged":
            where = results.get("diverged", {})
            return status, (
                f"task {where.get('task')}, step {where.get('step')}: "
                f"{where.get('what')} {where.get('value')}"
            )
        return (status, "") if status == "completed" else ("crashed", f"status {status}")
    if error := logged_error(job):
        return "crashed", error
    has_checkpoint = (job / "checkpoint.pt").is_file()
    return "unfinished", "a checkpoint to resume from" if has_checkpoint else "no checkpoint"


def logged_error(job: Path) -> str | None:
    """The first error line of the job's log (`<job>/<name>.log`, Hydra's), without its time
    stamp, or that it holds a traceback."""
    for log_file in sorted(job.glob("*.log")):
        try:
            lines = log_file.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "][ERROR] - " in line:
                return line.split("][ERROR] - ", 1)[1][:200]
            if line.startswith("Traceback (most recent call last)"):
                return f"a traceback in {log_file.name}"
    return None


def format_jobs(sweep_dir: Path) -> str:
    """One line per job folder: its name, how it ended and why, its overrides."""
    lines, statuses = [], []
    for job in job_dirs(sweep_dir):
        status, why = job_status(job)
        statuses.append(status)
        overrides = job / ".hydra" / "overrides.yaml"
        try:
            told = " ".join(
                line.removeprefix("- ").strip() for line in overrides.read_text().splitlines()
            )
        except OSError:
            told = ""
        name = str(job.relative_to(sweep_dir)) if job != sweep_dir else "."
        lines.append(f"{name:>4}  {status:<10}  {told}" + (f"  ({why})" if why else ""))
    counts = {status: statuses.count(status) for status in STATUSES}
    header = f"{len(lines)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return "\n".join([header, *lines])


def collect(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The table's rows and paired differences (`sweep_table.summarise`) over the jobs under
    `root` that completed: a run that diverged or crashed has no final accuracy to average."""
    runs = [
        json.loads((job / "results.json").read_text())
        for job, status in job_statuses(root).items()
        if status == "completed"
    ]
    return summarise(runs)


def log_to_wandb(
    rows: list[dict[str, Any]],
    pairs: list[dict[str, Any]],
    figure: Path,
    root: Path,
    mode: str,
    project: str,
) -> None:
    """One summary run in the multirun's group: both tables and a line plot per strategy."""
    import wandb

    group = "multirun-" + "-".join(root.resolve().parts[-2:])
    run = wandb.init(
        project=project,
        group=group,
        job_type="report",
        name=f"report-{group}",
        mode=mode,
        dir=str(root),
    )
    try:
        columns = columns_of(rows)
        table = wandb.Table(columns=list(columns), data=[[row[c] for c in columns] for row in rows])
        paired = wandb.Table(
            columns=list(PAIRED_COLUMNS), data=[[p[c] for c in PAIRED_COLUMNS] for p in pairs]
        )
        swept = [row for row in rows if row["strategy"] not in WITHOUT_LAMBDA]
        strategies = sorted({row["strategy"] for row in swept})
        lambdas = sorted({row["lambda"] for row in swept})
        by_key = {(row["strategy"], row["lambda"]): row["avg_acc"] for row in swept}
        run.log(
            {
                "lambda_sweep": table,
                "paired_differences": paired,
                "lambda_sweep_plot": wandb.Image(str(figure)),
                "avg_acc_vs_lambda": wandb.plot.line_series(
                    xs=lambdas,
                    ys=[[by_key.get((s, x), float("nan")) for x in lambdas] for s in strategies],
                    keys=strategies,
                    title="final average accuracy against λ",
                    xname="lambda",
                ),
            }
        )
    finally:
        run.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ewcexp.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="a multirun directory (or any folder of runs)")
    parser.add_argument(
        "--wandb", choices=("offline", "online"), help="also log to a W&B summary run"
    )
    parser.add_argument("--project", default="ewcexp", help="W&B project (default: ewcexp)")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        print(
            f"error: directory={args.directory} is not allowed: expected an existing directory",
            file=sys.stderr,
        )
        return 2
    if not job_dirs(args.directory):
        print(
            f"error: directory={args.directory} holds no results.json: expected a multirun "
            "directory such as multirun/<date>/<time>",
            file=sys.stderr,
        )
        return 2
    rows, pairs = collect(args.directory)
    if not rows:
        print(format_jobs(args.directory))
        print(
            f"error: directory={args.directory} holds no completed run: nothing to summarise",
            file=sys.stderr,
        )
        return 1
    print(format_table(rows))
    if pairs:
        print("\npaired differences in final average accuracy (best λ of each, same seeds):")
        print(format_table(pairs, PAIRED_COLUMNS))
    print(f"\n{format_jobs(args.directory)}")
    with open(args.directory / "lambda_sweep.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns_of(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figure = plot(rows, args.directory / "lambda_sweep.png")
    print(f"\nwrote {args.directory / 'lambda_sweep.csv'} and {figure}")
    if args.wandb:
        log_to_wandb(rows, pairs, figure, args.directory, args.wandb, args.project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
