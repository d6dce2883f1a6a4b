"""A run's outcome, drawn from its record: the contents of `results.json`, the PNG figures
and the printed accuracy matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ewcexp.data.sequences import TaskSequence
from ewcexp.importance.diagnostics import overlap_matrix
from ewcexp.reporting.continual import stability_gaps
from ewcexp.reporting.record import Record
from ewcexp.strategy.base import Strategy


def summarize(
    record: Record,
    strategy: Strategy,
    config: dict[str, Any],
    sequence: TaskSequence,
    diverged: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The contents of results.json; the importance statistics under the importance's kind
    ("fisher", "mas", "si"), which `importance` names (T0's first, as task 0). `status` is
    "completed", or with `diverged` (where: `Diverged.record()`) "diverged": then the matrix
    has the rows of the tasks finished before, and no final average, BWT or forgetting, which
    no run reached."""
    done = len(record.acc) if diverged is None else diverged["task"] - 1
    acc, per_task = record.acc[:done], record.per_task[:done]  # as logged after each task
    kind = strategy.importance_kind
    last: dict[str, Any] = per_task[-1] if diverged is None else {}
    return {
        "status": "completed" if diverged is None else "diverged",
        **({} if diverged is None else {"diverged": diverged, "tasks_done": done}),
        "strategy": strategy.name,
        "lambda": config["lambda"],
        "seed": config["seed"],
        "scenario": sequence.scenario.kind,
        "importance": kind,
        "fisher_estimator": strategy.importance.name
        if kind == "fisher" and strategy.importance
        else None,  # ewcpp's running Fisher has no estimator
        "task_names": [task.name for task in sequence.tasks],
        "class_order": sequence.class_order,  # split sequences: the order dealt out
        "acc_matrix": acc.tolist(),
        "avg_acc": last.get("acc/avg_seen"),
        "avg_acc_seen": [metrics["acc/avg_seen"] for metrics in per_task],
        "bwt": last.get("bwt"),
        "forgetting": last.get("forgetting"),
        "fwt": last.get("fwt"),
        "acc_init": record.acc_init or None,  # b_j; None: resumed from an older checkpoint
        "per_task": per_task,
        **(
            {
                "pretrained_on": config["task_sequence"]["pretrained_on"],
                "acc_pretrained": record.acc_pretrained[: done + 1],
            }
            if record.acc_pretrained
            else {}
        ),
        "data_source": sequence.source,
        "wall_time_s": record.wall_s(),
        "phase_time_s": record.seconds,
        **continual_summary(record, config),
        **(
            {
                "fisher_diagnostics": record.diagnostics,
                "fisher_overlap": overlap_matrix(record.overlaps),
            }
            if record.diagnostics
            else {}
        ),
        **({kind: record.importance_stats} if kind else {}),
        "config": config,
    }


def continual_summary(record: Record, config: dict[str, Any]) -> dict[str, Any]:
    """With `train.eval_every`: every continual evaluation and the stability gaps they show."""
    if not record.continual:
        return {}
    return {
        "continual_eval": {
            "every": config["train"]["eval_every"],
            "subset": config["train"]["eval_subset"],
            "points": record.continual,
        },
        "stability_gap": stability_gaps(record.continual),
    }


def save_figures(results: dict[str, Any], record: Record, output_dir: Path) -> dict[str, Path]:
    """The run's PNGs: accuracy matrix and curves (with T0's, task_sequence.pretrained_on),
    an importance histogram per consolidation, and with Kronecker blocks their spectra."""
    from ewcexp.reporting import (
        figures as plots,  # matplotlib: imported only once there is something to draw
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{results['strategy']}, λ={results['lambda']}, {results['scenario']}-incremental"
    pretrained = (
        (results["pretrained_on"], results["acc_pretrained"])
        if "acc_pretrained" in results
        else None
    )
    figures = {
        "accuracy_matrix": plots.accuracy_heatmap(
            results["acc_matrix"], title, output_dir / "accuracy_matrix.png", pretrained
        ),
        "accuracy_curves": plots.accuracy_curves(
            results["acc_matrix"], title, output_dir / "accuracy_curves.png", pretrained
        ),
    }
    for key, per_tensor in record.histograms.items():
        figures[key] = plots.importance_histograms(
            per_tensor,
            f"{title}: {key.replace('_', ' ')}",
            output_dir / f"{key}.png",
            results["importance"],
        )
    if record.continual:
        figures["continual_eval"] = plots.continual_curves(
            record.continual, title, output_dir / "continual_eval.png"
        )
        if results["stability_gap"]:
            figures["stability_gap"] = plots.stability_gap_bars(
                results["stability_gap"], title, output_dir / "stability_gap.png"
            )
    for entry in record.diagnostics:
        key = f"fisher_diagnostics_task{entry['task']}"
        figures[key] = plots.estimator_comparison(
            entry["per_parameter"], f"{title}: task {entry['task']}", output_dir / f"{key}.png"
        )
    if record.diagnostics:
        figures["fisher_overlap"] = plots.overlap_heatmap(
            results["fisher_overlap"], title, output_dir / "fisher_overlap.png"
        )
    for key, per_layer in record.spectra.items():
        figures[key] = plots.eigenvalue_spectra(
            per_layer, f"{title}: {key.replace('_', ' ')}", output_dir / f"{key}.png"
        )
    return figures


def format_report(results: dict[str, Any]) -> str:
    """The accuracy matrix (rows: after training task i; columns: task j) and the metrics."""
    matrix = results["acc_matrix"]
    header = "after \\ on  " + " ".join(f"{f'T{j + 1}':>6}" for j in range(len(matrix)))
    lines = [
        f"Accuracy matrix ({results['strategy']}, λ={results['lambda']}, "
        f"{results['scenario']}-incremental, data: {results['data_source']})",
        header,
    ]
    kept = results.get("acc_pretrained")
    if kept:
        header += f"   T0 ({results['pretrained_on']})"
        lines[-1] = header
        lines.append(f"{'start':>11} {' ' * 7 * len(matrix)}{' ' * 11}   {100 * kept[0]:5.1f}")
    for i, row in enumerate(matrix):
        cells = " ".join(f"{100 * a:6.1f}" if j <= i else f"{'·':>6}" for j, a in enumerate(row))
        t0 = f"   {100 * kept[i + 1]:5.1f}" if kept else ""
        lines.append(f"{f'T{i + 1}':>11} {cells}   ACC {100 * results['avg_acc_seen'][i]:5.1f}{t0}")

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:+.1f}"

    lines.append(
        f"average accuracy {100 * results['avg_acc']:.2f} %   BWT {percent(results['bwt'])}"
        f"   forgetting {percent(results['forgetting'])}   FWT {percent(results.get('fwt'))}   "
        f"wall time {results['wall_time_s']:.1f} s"
    )
    return "\n".join(lines)
