"""Summarise a sweep: `python -m ewcexp.report <multirun dir> [--wandb offline|online]`.

First every job folder (one with Hydra's `.hydra/`) and how it ended: completed, diverged
(its results.json says so), crashed (an error in its log, no results) or unfinished (no
results and no error: still running, killed, or waiting for a requeue). Then, from the
completed jobs only, a table: per (strategy, λ,
Fisher estimator), the runs (seeds), the mean final average accuracy with its standard
error and 95% t-interval (a single seed says so, rather than ±0), mean BWT and forgetting.
Below it, for the best λ of each two strategies, the paired difference over the seeds both
ran, with its interval. Writes the table as `lambda_sweep.csv` and plots final average
accuracy against λ with the intervals as error bars (`lambda_sweep.png`). With `--wandb`,
logs both tables and the plot to one summary run in the multirun's W&B group.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

WITHOUT_LAMBDA = ("finetune", "joint")  # drawn as horizontal references
COLUMNS = (
    "strategy", "lambda", "fisher", "setting", "runs", "avg_acc", "se", "ci95_low", "ci95_high",
    "bwt", "forgetting",
)  # fmt: skip
PAIRED_COLUMNS = (
    "first",
    "second",
    "setting",
    "seeds",
    "difference",
    "se",
    "ci95_low",
    "ci95_high",
)
# Student's t quantile t_{0.975, df} for df = 1..30; beyond, interpolated in 1/df to 1.96
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
    2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
    2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom: the half-width of a 95% interval in SEs."""
    if df <= len(T_975):
        return T_975[df - 1]
    return 1.960 + (T_975[-1] - 1.960) * len(T_975) / df


def interval(values: list[float]) -> dict[str, float | None]:
    """Mean, standard error (sd/√n) and the 95% t-interval; no error or interval for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "se": None, "ci95_low": None, "ci95_high": None}
    se = statistics.stdev(values) / len(values) ** 0.5
    half = t_quantile(len(values) - 1) * se
    return {"mean": mean, "se": se, "ci95_low": mean - half, "ci95_high": mean + half}


def group_key(results: dict[str, Any]) -> tuple[str, float | None, str | None]:
    """(strategy, λ, Fisher): the estimator, with "/kfac" for Kronecker blocks."""
    strategy = results["strategy"]
    strength = None if strategy in WITHOUT_LAMBDA else float(results["lambda"])
    estimator = results.get("fisher_estimator")
    if estimator and results["config"].get("fisher", {}).get("structure") == "kfac":
        estimator += "/kfac"
    return strategy, strength, estimator


# config keys that do not make two runs different settings: the seed and what follows from
# it, what the row already names, and where output goes
NOT_A_SETTING = (
    "seed", "lambda", "resume", "logger.", "data.root", "data.download", "data.allow_fallback",
    "train.log_every", "task_sequence.seed", "strategy.", "fisher.estimator", "fisher.structure",
    "fisher.chunk_size", "device.",
)  # fmt: skip


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted key → value (as text) of a nested config."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def settings(runs: list[dict[str, Any]]) -> list[str]:
    """Per run, the config keys whose values differ between the runs (other than the
    seed and what each row already names) as `key=value ...`: runs that differ in more than
    the seed are never pooled into one interval."""
    flats = [
        {
            k: v
            for k, v in flat(run.get("config", {})).items()
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NOT_A_SETTING)
        }
        for run in runs
    ]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({f.get(k) for f in flats}) > 1]
    return [" ".join(f"{k}={f.get(k, '-')}" for k in varying) for f in flats]


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
    """One row per (strategy, λ, Fisher estimator, setting): the runs (seeds) found (a
    strategy without λ: the first of each seed, repeated by a λ sweep), the mean
    final average accuracy with its standard error and 95% interval, mean BWT and forgetting;
    and for the best λ of each strategy, the paired differences between strategies of the
    same setting over the seeds both ran. Jobs that did not complete are left out: a run
    that diverged or crashed has no final accuracy to average."""
    runs = [
        json.loads((job / "results.json").read_text())
        for job, status in job_statuses(root).items()
        if status == "completed"
    ]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for results, setting in zip(runs, settings(runs), strict=True):
        groups[(*group_key(results), setting)].append(results)

    def mean(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return statistics.fmean(values) if values else None

    rows = []
    for (strategy, strength, estimator, setting), grouped in sorted(
        groups.items(), key=lambda g: (g[0][0], g[0][1] or 0, g[0][2] or "", g[0][3])
    ):
        if strength is None:  # a λ sweep runs `finetune` (no λ) once per value, alike: once
            grouped = list({run["seed"]: run for run in reversed(grouped)}.values())[::-1]
        accuracy = interval([run["avg_acc"] for run in grouped])
        rows.append(
            {
                "strategy": strategy, "lambda": strength, "fisher": estimator, "setting": setting,
                "runs": len(grouped), "avg_acc": accuracy["mean"], "se": accuracy["se"],
                "ci95_low": accuracy["ci95_low"], "ci95_high": accuracy["ci95_high"],
                "bwt": mean(grouped, "bwt"), "forgetting": mean(grouped, "forgetting"),
                "by_seed": {run["seed"]: run["avg_acc"] for run in grouped},
            }
        )  # fmt: skip
    return rows, paired_differences(rows)


def paired_differences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each two strategies (a Fisher other than exact counting as its own), their best
    rows (highest mean) compared seed by seed: the
    mean of the per-seed differences with its own interval (narrower than the two rows'
    intervals suggest when the seeds move both alike)."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        method = (row["setting"], label({**row, "lambda": None}))
        if method not in best or row["avg_acc"] > best[method]["avg_acc"]:
            best[method] = row
    pairs = []
    names = sorted(best)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if first[0] != second[0]:  # only within one setting
                continue
            a, b = best[first], best[second]
            seeds = sorted(set(a["by_seed"]) & set(b["by_seed"]))
            if not seeds:
                continue
            difference = interval([a["by_seed"][s] - b["by_seed"][s] for s in seeds])
            pairs.append(
                {
                    "first": label(a), "second": label(b), "setting": a["setting"],
                    "seeds": len(seeds),
                    "difference": difference["mean"], "se": difference["se"],
                    "ci95_low": difference["ci95_low"], "ci95_high": difference["ci95_high"],
                }
            )  # fmt: skip
    return pairs


def label(row: dict[str, Any]) -> str:
    fisher = "" if row["fisher"] in (None, "exact") else f"[{row['fisher']}]"
    return row["strategy"] + fisher + ("" if row["lambda"] is None else f"@{row['lambda']:g}")


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows as aligned text; the `setting` column only when runs differ in one."""
    columns = tuple(c for c in columns if c != "setting" or any(r["setting"] for r in rows))

    def cell(column: str, value: Any, row: dict[str, Any]) -> str:
        if value is None:
            if column == "se" and (row.get("runs") == 1 or row.get("seeds") == 1):
                return "one seed: no interval"
            return "" if column.startswith("ci95") and row.get("se") is None else "-"
        if isinstance(value, float):
            return f"{value:.4f}" if column != "lambda" else f"{value:g}"
        return str(value)

    body = [[cell(c, row[c], row) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in body]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Final average accuracy against λ (log scale), one line per strategy (for each λ the
    first estimator's row), with 95% intervals as error bars where there are seeds enough."""
    from matplotlib.figure import Figure  # no pyplot: no backend is chosen

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for strategy in sorted({row["strategy"] for row in rows}):
        points = list(
            {row["lambda"]: row for row in reversed(rows) if row["strategy"] == strategy}.values()
        )[::-1]
        if strategy in WITHOUT_LAMBDA:
            axes.axhline(100 * points[0]["avg_acc"], linestyle="--", color="grey", linewidth=1)
            axes.annotate(
                strategy,
                (0.01, 100 * points[0]["avg_acc"]),
                xycoords=("axes fraction", "data"),
                fontsize=8,
                color="grey",
                va="bottom",
            )
            continue
        half = [0.0 if p["se"] is None else 100 * (p["ci95_high"] - p["avg_acc"]) for p in points]
        axes.errorbar(
            [p["lambda"] for p in points],
            [100 * p["avg_acc"] for p in points],
            yerr=half,
            marker="o",
            capsize=3,
            label=strategy,
        )
    axes.set_xscale("log")
    axes.set_xlabel("λ (penalty (λ/2)·Σ F (θ−θ*)²)")
    axes.set_ylabel("final average accuracy (%)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


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
        table = wandb.Table(columns=list(COLUMNS), data=[[row[c] for c in COLUMNS] for row in rows])
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
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    figure = plot(rows, args.directory / "lambda_sweep.png")
    print(f"\nwrote {args.directory / 'lambda_sweep.csv'} and {figure}")
    if args.wandb:
        log_to_wandb(rows, pairs, figure, args.directory, args.wandb, args.project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
