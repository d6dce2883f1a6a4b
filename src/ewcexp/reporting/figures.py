"""The run's figures as PNG files in its directory, whether or not W&B is on.

Drawn on `matplotlib.figure.Figure`s of their own, never through `pyplot`: no backend is
chosen or switched (a notebook that imports ewcexp keeps its own), no display is needed, and
no figure is left open in pyplot's registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor


def accuracy_heatmap(acc_matrix: list[list[float]], title: str, path: Path) -> Path:
    """R[i][j] as a heatmap; the cells of tasks not yet trained are hatched."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    figure, axes = _subplots(figsize=(max(4.5, 1.5 + 0.6 * size), max(3.5, 1.0 + 0.5 * size)))
    image = axes.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    for i in range(size):
        for j in range(size):
            if j > i:
                axes.add_patch(
                    Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch="//",
                        edgecolor="white",
                        linewidth=0,
                    )
                )
            axes.text(
                j,
                i,
                f"{matrix[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] < 60 else "black",
            )
    ticks = range(size)
    axes.set_xticks(ticks, [str(j + 1) for j in ticks])
    axes.set_yticks(ticks, [str(i + 1) for i in ticks])
    axes.set_xlabel("evaluated on task")
    axes.set_ylabel("after training task")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="test accuracy (%)")
    return _save(figure, path)


def accuracy_curves(acc_matrix: list[list[float]], title: str, path: Path) -> Path:
    """Each task's accuracy from the moment it is learned, and the average over tasks seen."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    steps = np.arange(1, size + 1)
    figure, axes = _subplots(figsize=(6, 4))
    for j in range(size):
        axes.plot(steps[j:], matrix[j:, j], marker=".", linewidth=1, label=f"task {j + 1}")
    seen = [matrix[i, : i + 1].mean() for i in range(size)]
    axes.plot(steps, seen, color="black", linewidth=2.5, label="average (seen)")
    axes.set_xlabel("tasks trained")
    axes.set_ylabel("test accuracy (%)")
    axes.set_xticks(steps)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, ncols=2)
    return _save(figure, path)


def importance_histograms(
    histograms: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path, kind: str
) -> Path:
    """One outline per parameter tensor: counts of log10(|importance| + eps). Named in a legend up to 12
    tensors; a deep network's dozens would not fit, and W&B has each one by name anyway."""
    figure, axes = _subplots(figsize=(6, 4))
    for name, (counts, edges) in histograms.items():
        axes.stairs(counts, edges, label=name)
    axes.set_yscale("log")
    axes.set_xlabel(f"log10(|{kind}| + 1e-12)")
    axes.set_ylabel("parameters")
    if len(histograms) <= 12:
        axes.legend(fontsize=7)
    else:
        title = f"{title} ({len(histograms)} parameter tensors)"
    axes.set_title(title, fontsize=9)
    return _save(figure, path)


def continual_curves(points: list[dict], title: str, path: Path) -> Path:
    """Each task's accuracy on its test subset against the global step, from the task's own
    start; dashed lines at the task switches."""
    figure, axes = _subplots(figsize=(8, 4))
    tasks = max(p["task"] for p in points)
    for j in range(tasks):
        seen = [p for p in points if p["task"] > j]
        axes.plot(
            [p["step"] for p in seen],
            [100 * p["acc"][j] for p in seen],
            linewidth=1,
            label=f"task {j + 1}",
        )
    starts = {p["task"]: p["step"] - p["task_step"] for p in points}  # tasks evaluated in
    for t in range(2, tasks + 1):
        if t in starts:
            axes.axvline(starts[t], color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel("training step")
    axes.set_ylabel("test accuracy on the subset (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7, ncols=2)
    return _save(figure, path)


def estimator_comparison(
    comparisons: dict[str, dict[str, dict[str, float | None]]], title: str, path: Path
) -> Path:
    """Three panels, each estimator against `exact` per parameter tensor (and "all"): rank
    correlation, relative error, and the factor λ must change by (log scale)."""
    names = list(comparisons)
    estimators = list(comparisons[names[0]])
    figure, panels = _subplots(1, 3, figsize=(12, 4))
    width = 0.8 / len(estimators)
    for axes, stat in zip(panels, ("spearman", "relative_error", "scale_ratio"), strict=True):
        for k, estimator in enumerate(estimators):
            values = [comparisons[n][estimator][stat] for n in names]
            heights = [np.nan if v is None else v for v in values]
            axes.bar(np.arange(len(names)) + k * width, heights, width, label=estimator)
        axes.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, fontsize=6)
        axes.set_title(stat.replace("_", " ") + " vs exact", fontsize=9)
        if stat == "scale_ratio":
            axes.set_yscale("log")
    panels[0].legend(fontsize=7, loc="lower left")
    figure.suptitle(f"{title}: Fisher estimators", fontsize=9)
    return _save(figure, path)


def overlap_heatmap(overlaps: list[list[float]], title: str, path: Path) -> Path:
    """Task × task Fisher overlap (1: identical, 0: disjoint)."""
    size = len(overlaps)
    figure, axes = _subplots(figsize=(1.0 + 0.6 * size, 0.8 + 0.6 * size))
    image = axes.imshow(np.array(overlaps), vmin=0, vmax=1, cmap="viridis")
    for i in range(size):
        for j in range(size):
            axes.text(j, i, f"{overlaps[i][j]:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if overlaps[i][j] < 0.6 else "black")  # fmt: skip
    ticks = [str(t + 1) for t in range(size)]
    axes.set_xticks(range(size), ticks)
    axes.set_yticks(range(size), ticks)
    axes.set_xlabel("task")
    axes.set_ylabel("task")
    figure.colorbar(image, ax=axes, fraction=0.046)
    axes.set_title(f"Fisher overlap\n{title}", fontsize=8)
    return _save(figure, path)


def stability_gap_bars(gaps: list[dict], title: str, path: Path) -> Path:
    """Per task: its accuracy before the next task, the lowest during it (the gap's depth
    between), and the steps into the next task until it was back (✗: not within it)."""
    figure, axes = _subplots(figsize=(6, 4))
    labels = [f"task {g['task']}\nduring {g['during']}" for g in gaps]
    before = [100 * g["before"] for g in gaps]
    lowest = [100 * g["min"] for g in gaps]
    axes.bar(labels, before, color="lightgrey", label="before the switch")
    axes.bar(labels, lowest, color="tab:red", label="lowest after it")
    for x, g in enumerate(gaps):
        recovered = "✗" if g["steps_to_recover"] is None else f"{g['steps_to_recover']} steps"
        axes.annotate(recovered, (x, 100 * g["before"]), ha="center", va="bottom", fontsize=7)
    axes.set_ylim(min(lowest) - 5, 100)
    axes.set_ylabel("test accuracy on the subset (%)")
    axes.set_title(f"{title}: stability gap, and steps to recover", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def eigenvalue_spectra(spectra: dict[str, dict[str, Tensor]], title: str, path: Path) -> Path:
    """Left A, right G: each layer's eigenvalues, largest first, against their rank divided
    by the factor's size (layers of different widths side by side), on log scales."""
    figure, panels = _subplots(1, 2, figsize=(9, 4), sharey=True)
    for axes, factor in zip(panels, ("A", "G"), strict=True):
        for layer, factors in spectra.items():
            values = factors[factor].detach().double().cpu().flip(0).clamp_min(1e-12).numpy()
            ranks = np.arange(1, len(values) + 1) / len(values)
            axes.plot(ranks, values, label=f"{layer} ({len(values)})")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("eigenvalue rank / size")
        axes.set_title(f"{factor}: {'inputs' if factor == 'A' else 'output gradients'}", fontsize=9)
        if len(spectra) <= 12:
            axes.legend(fontsize=7)
    panels[0].set_ylabel("eigenvalue")
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def _subplots(*grid: int, **options: Any) -> tuple[Figure, Any]:
    """A figure of its own (no pyplot) and its axes, as `pyplot.subplots` returns them."""
    figsize = options.pop("figsize", None)
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **options)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
