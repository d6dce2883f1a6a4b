"""Summarise a sweep: `python -m ewcexp.report <multirun dir> [--wandb offline|online]`.

Reads every job's `results.json` under the directory, prints a table (strategy, λ,
final average accuracy, BWT, forgetting; means over seeds), writes it as
`lambda_sweep.csv` and plots final average accuracy against λ per strategy as
`lambda_sweep.png`. With `--wandb`, logs the table and the plot to one summary run in
the multirun's W&B group.
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
COLUMNS = ("strategy", "lambda", "runs", "avg_acc", "bwt", "forgetting")


def collect(root: Path) -> list[dict[str, Any]]:
    """One row per (strategy, λ): metrics averaged over the runs (seeds) found."""
    groups: dict[tuple[str, float | None], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(root.rglob("results.json")):
        results = json.loads(path.read_text())
        strength = None if results["strategy"] in WITHOUT_LAMBDA else float(results["lambda"])
        groups[(results["strategy"], strength)].append(results)

    def mean(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [run[key] for run in runs if run[key] is not None]
        return statistics.fmean(values) if values else None

    return [
        {
            "strategy": strategy,
            "lambda": strength,
            "runs": len(runs),
            **{key: mean(runs, key) for key in ("avg_acc", "bwt", "forgetting")},
        }
        for (strategy, strength), runs in sorted(
            groups.items(), key=lambda g: (g[0][0], g[0][1] or 0)
        )
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    def cell(column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column in ("avg_acc", "bwt", "forgetting"):
            return f"{value:.4f}"
        return value if column == "strategy" else f"{value:g}"

    body = [[cell(c, row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Final average accuracy against λ (log scale), one line per strategy."""
    from ewcexp.plots import plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for strategy in sorted({row["strategy"] for row in rows}):
        points = [row for row in rows if row["strategy"] == strategy]
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
        axes.plot(
            [p["lambda"] for p in points],
            [100 * p["avg_acc"] for p in points],
            marker="o",
            label=strategy,
        )
    axes.set_xscale("log")
    axes.set_xlabel("λ (penalty (λ/2)·Σ F (θ−θ*)²)")
    axes.set_ylabel("final average accuracy (%)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def log_to_wandb(
    rows: list[dict[str, Any]], figure: Path, root: Path, mode: str, project: str
) -> None:
    """One summary run in the multirun's group: the table and a line plot per strategy."""
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
        swept = [row for row in rows if row["strategy"] not in WITHOUT_LAMBDA]
        strategies = sorted({row["strategy"] for row in swept})
        lambdas = sorted({row["lambda"] for row in swept})
        by_key = {(row["strategy"], row["lambda"]): row["avg_acc"] for row in swept}
        run.log(
            {
                "lambda_sweep": table,
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
    rows = collect(args.directory)
    if not rows:
        print(
            f"error: directory={args.directory} holds no results.json: expected a multirun "
            "directory such as multirun/<date>/<time>",
            file=sys.stderr,
        )
        return 2
    print(format_table(rows))
    with open(args.directory / "lambda_sweep.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    figure = plot(rows, args.directory / "lambda_sweep.png")
    print(f"\nwrote {args.directory / 'lambda_sweep.csv'} and {figure}")
    if args.wandb:
        log_to_wandb(rows, figure, args.directory, args.wandb, args.project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
