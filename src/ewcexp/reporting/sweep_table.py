"""The numbers of a sweep's report (`ewcexp.reporting.report`) and how they are shown: runs
grouped by (strategy, λ, Fisher, setting), each group's mean with its standard error and 95%
t-interval (and T0's, task_sequence.pretrained_on), the paired differences between
strategies over the seeds both ran, the table as aligned text, and final average accuracy against λ as a figure. It reads no folder: the
report finds the runs and hands over their results."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

WITHOUT_LAMBDA = ("finetune", "joint")  # drawn as horizontal references
COLUMNS = (
    "strategy", "lambda", "fisher", "setting", "runs", "avg_acc", "se", "ci95_low", "ci95_high",
    "bwt", "forgetting", "fwt",
)  # fmt: skip
# beside those, where a row's runs have T0 (task_sequence.pretrained_on): its data set, its
# final accuracy with the same error and interval as avg_acc, and what it kept (final − start)
PRETRAINED_COLUMNS = ("t0", "t0_acc", "t0_se", "t0_ci95_low", "t0_ci95_high", "t0_kept")
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


def columns_of(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The table's columns: T0's only when a row has one, so runs without keep their table."""
    return COLUMNS + PRETRAINED_COLUMNS if any(row.get("t0") for row in rows) else COLUMNS


def pretrained(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's T0 columns: over the runs with T0, its final accuracy's mean, standard error
    and 95% interval (as avg_acc's) and the mean of final − start; all None without T0."""
    with_t0 = [run for run in runs if run.get("acc_pretrained")]
    if not with_t0:
        return dict.fromkeys(PRETRAINED_COLUMNS)
    final = interval([run["acc_pretrained"][-1] for run in with_t0])
    return {
        "t0": with_t0[0]["pretrained_on"], "t0_acc": final["mean"], "t0_se": final["se"],
        "t0_ci95_low": final["ci95_low"], "t0_ci95_high": final["ci95_high"],
        "t0_kept": statistics.fmean(
            run["acc_pretrained"][-1] - run["acc_pretrained"][0] for run in with_t0
        ),
    }  # fmt: skip


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


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per (strategy, λ, Fisher estimator, setting) of these runs' results: the runs
    (seeds) found (a strategy without λ: the first of each seed, repeated by a λ sweep), the
    mean final average accuracy with its standard error and 95% interval, mean BWT,
    forgetting and FWT, T0's columns (`pretrained`); and for the best λ of each strategy, the
    paired differences between strategies of the same setting over the seeds both ran."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for results, setting in zip(runs, settings(runs), strict=True):
        groups[(*group_key(results), setting)].append(results)

    def mean(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]  # older: no FWT
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
                "fwt": mean(grouped, "fwt"), **pretrained(grouped),
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


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None = None) -> str:
    """The rows as aligned text, in `columns` (by default `columns_of(rows)`); the `setting`
    column only when runs differ in one."""
    columns = columns_of(rows) if columns is None else columns
    columns = tuple(c for c in columns if c != "setting" or any(r["setting"] for r in rows))

    def cell(column: str, value: Any, row: dict[str, Any]) -> str:
        if value is None:
            if column.startswith("t0") and not row.get("t0"):
                return "-"  # its runs have no T0
            if column == "se" and (row.get("runs") == 1 or row.get("seeds") == 1):
                return "one seed: no interval"
            interval_cell = column.startswith(("ci95", "t0_se", "t0_ci95"))
            return "" if interval_cell and row.get("se") is None else "-"
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
