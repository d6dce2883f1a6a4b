"""The run's figures as PNG files in its directory, whether or not W&B is on.

Drawn on `matplotlib.figure.Figure`s of their own, never through `pyplot`: no backend is
chosen or switched (a notebook that imports ewcexp keeps its own), no display is needed, and
no figure is left open in pyplot's registry.

Each figure should read without the text around it: every axis is labelled (with its unit),
every mark is named in a legend or a label, legends sit outside the axes (they never hide
data), and bars start at 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory
from torch import Tensor

MAX_NAMED = 12  # lines named in a legend; more would not fit (W&B has each one by name)
LEVEL = 1.5  # the landscape's contour lines: each a loss this factor above the one inside it
EPS_EXPONENT = -12  # histograms are of log10(|importance| + 1e-12): exact zeros land at -12
# T0 (task_sequence.pretrained_on): its data set's name, and its accuracy at the start then
# after each task (results.json's `pretrained_on` and `acc_pretrained`)
Pretrained = tuple[str, list[float]]


def accuracy_heatmap(
    acc_matrix: list[list[float]], title: str, path: Path, pretrained: Pretrained | None = None
) -> Path:
    """R[i][j] as a heatmap; the cells of tasks not yet trained are hatched. With `pretrained`
    (T0), its column comes first and a `start` row above the tasks' rows: T0 is known before
    any task is learned."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    labels = [str(j + 1) for j in range(size)]
    rows, known = labels, ""
    if pretrained is not None:  # row 0: the start, where only T0 has been measured
        name, kept = pretrained
        tasks = np.vstack([np.full(size, np.nan), matrix])
        matrix = np.column_stack([100 * np.array(kept), tasks])
        labels, rows = ["0", *labels], ["start", *rows]
        known = f" (0: {name}, learned before)"  # too wide for its tick
    first = len(rows) - size  # the row and column of task 1: 1 after T0's
    figure, axes = _subplots(
        figsize=(max(5.0, 2.0 + 0.6 * len(rows)), max(3.8, 1.3 + 0.5 * len(rows)))
    )
    image = axes.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    for i, j in np.ndindex(matrix.shape):
        if first <= i < j:  # the start row has nothing to hatch: no task measured there
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
        if np.isfinite(matrix[i, j]):
            axes.text(
                j,
                i,
                f"{matrix[i, j]:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[i, j] < 60 else "black",
            )
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel(f"evaluated on task{known}\n(hatched: that task not trained yet)")
    axes.set_ylabel("after training task")
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="test accuracy (%)")
    return _save(figure, path)


def accuracy_curves(
    acc_matrix: list[list[float]], title: str, path: Path, pretrained: Pretrained | None = None
) -> Path:
    """Each task's accuracy from the moment it is learned, and the average over tasks seen;
    with `pretrained`, T0's from the start (0 tasks trained) on, dashed: it is never trained."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    steps = np.arange(1, size + 1)
    figure, axes = _subplots(figsize=(7, 4))
    if pretrained is not None:
        name, kept = pretrained
        axes.plot(np.arange(size + 1), 100 * np.array(kept), marker=".", linestyle="--",
                  color="grey", linewidth=1.5, label=f"task 0 ({name})")  # fmt: skip
    for j in range(size):
        axes.plot(steps[j:], matrix[j:, j], marker=".", linewidth=1, label=f"task {j + 1}")
    seen = [matrix[i, : i + 1].mean() for i in range(size)]
    axes.plot(steps, seen, color="black", linewidth=2.5, label="average over\nthe tasks trained")
    axes.set_xlabel("tasks trained")
    axes.set_ylabel("test accuracy (%)")
    axes.set_xticks(np.arange(0 if pretrained else 1, size + 1))
    axes.set_title(title, fontsize=9)
    _legend_outside(axes, title="accuracy on", ncols=1 if size <= 12 else 2)
    return _save(figure, path)


def importance_histograms(
    histograms: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path, kind: str
) -> Path:
    """One outline per parameter tensor: counts of log10(|importance| + eps). Named in a legend up to 12
    tensors; a deep network's dozens would not fit, and W&B has each one by name anyway."""
    figure, axes = _subplots(figsize=(7.5, 4))
    for name, (counts, edges) in histograms.items():
        axes.stairs(counts, edges, label=name)
    axes.set_yscale("log")
    axes.set_xlabel(f"log10(|{kind}| + 1e-12), per parameter  ({EPS_EXPONENT}: {kind} exactly 0)")
    axes.set_ylabel("number of parameters (log scale)")
    if len(histograms) <= MAX_NAMED:
        _legend_outside(axes, title="parameter tensor")
    else:
        title = f"{title}\n({len(histograms)} parameter tensors, too many to name)"
    axes.set_title(title, fontsize=9)
    return _save(figure, path)


def continual_curves(points: list[dict], title: str, path: Path) -> Path:
    """Each task's accuracy on its test subset against the global step, from the task's own
    start; dashed lines at the task switches."""
    figure, axes = _subplots(figsize=(9, 4))
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
    switch = "next task starts"
    for t in range(2, tasks + 1):
        if t in starts:
            axes.axvline(starts[t], color="grey", linestyle="--", linewidth=0.8, label=switch)
            switch = "_"  # one legend entry for all the switches
    axes.set_xlabel("training step (all tasks, one after another)")
    axes.set_ylabel("test accuracy on the evaluation subset (%)")
    axes.set_title(f"{title}: accuracy during training", fontsize=9)
    _legend_outside(axes, title="accuracy on", ncols=1 if tasks <= 12 else 2)
    return _save(figure, path)


def estimator_comparison(
    comparisons: dict[str, dict[str, dict[str, float | None]]], title: str, path: Path
) -> Path:
    """Three panels, each estimator against `exact` per parameter tensor (and "all"): rank
    correlation, relative error, and the factor λ must change by (log scale)."""
    names = list(comparisons)
    estimators = list(comparisons[names[0]])
    stacked = len(names) > 10
    if not stacked:  # side by side
        figure, panels = _subplots(1, 3, figsize=(3 * max(3.4, 1.2 + 0.3 * len(names)) + 1.8, 4.8))
    else:  # a deep network's tensors: one above the other, the full width for the names
        figure, panels = _subplots(3, 1, figsize=(max(8, 3.5 + 0.22 * len(names)), 10), sharex=True)
    width = 0.8 / len(estimators)
    where = np.arange(len(names))
    panel_text = {
        "spearman": ("rank correlation", "Spearman ρ with exact\n(1: same order)"),
        "relative_error": ("relative error", "‖F − E‖ / ‖E‖\n(0: equal to exact)"),
        "scale_ratio": ("scale ratio: λ's factor", "ΣE / ΣF, log scale\n(1: same scale as exact)"),
    }
    for axes, (stat, (heading, unit)) in zip(panels, panel_text.items(), strict=True):
        below = blended_transform_factory(axes.transData, axes.transAxes)
        for k, estimator in enumerate(estimators):
            values = [comparisons[n][estimator][stat] for n in names]
            heights = [np.nan if v is None else v for v in values]
            axes.bar(where + k * width, heights, width, label=estimator)
            for x, value in zip(where + k * width, values, strict=True):
                if value is None:  # a constant side: no rank correlation, no scale
                    axes.text(x, 0.02, "n/a", transform=below, rotation=90, fontsize=6,
                              ha="center", va="bottom")  # fmt: skip
        if stat == "scale_ratio":
            axes.set_yscale("log")
            axes.axhline(1, color="black", linestyle=":", linewidth=1, label="same as exact")
        axes.set_xticks(
            where + 0.4 - width / 2, names, rotation=45, ha="right", rotation_mode="anchor",
            fontsize=7,
        )  # fmt: skip
        if axes is panels[-1] or not stacked:
            axes.set_xlabel("parameter tensor")
        axes.set_ylabel(unit)
        axes.set_title(f"{heading} vs exact", fontsize=9)
    handles = panels[-1].get_legend_handles_labels()[0]  # the bars and the line at 1
    _legend_outside(panels[0] if stacked else panels[-1], handles=handles, title="estimator")
    figure.suptitle(f"{title}: Fisher estimators (F) against the exact Fisher (E)", fontsize=9)
    return _save(figure, path)


def overlap_heatmap(overlaps: list[list[float]], title: str, path: Path) -> Path:
    """Task × task Fisher overlap (1: identical, 0: disjoint)."""
    size = len(overlaps)
    figure, axes = _subplots(figsize=(max(4.6, 2.2 + 0.6 * size), max(3.8, 1.4 + 0.6 * size)))
    image = axes.imshow(np.array(overlaps), vmin=0, vmax=1, cmap="viridis")
    for i in range(size):
        for j in range(size):
            axes.text(j, i, f"{overlaps[i][j]:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if overlaps[i][j] < 0.6 else "black")  # fmt: skip
    ticks = [str(t + 1) for t in range(size)]
    axes.set_xticks(range(size), ticks)
    axes.set_yticks(range(size), ticks)
    axes.set_xlabel("Fisher after task")
    axes.set_ylabel("Fisher after task")
    figure.colorbar(image, ax=axes, fraction=0.046, label="overlap\n(1: identical, 0: disjoint)")
    axes.set_title(f"Fisher overlap between tasks\n{title}", fontsize=8)
    return _save(figure, path)


def stability_gap_bars(gaps: list[dict], title: str, path: Path) -> Path:
    """Per task, side by side: its accuracy before the next task and the lowest during it (the
    gap's depth between), on an axis from 0; under each pair, the depth and the steps into the
    next task until it was back (or that it was not back within it)."""
    figure, axes = _subplots(figsize=(max(6.5, 2.5 + 1.5 * len(gaps)), 4.4))
    where = np.arange(len(gaps))
    width = 0.38
    before = [100 * g["before"] for g in gaps]
    lowest = [100 * g["min"] for g in gaps]
    bars = axes.bar(where - width / 2, before, width, color="lightgrey", edgecolor="grey",
                    label="last, while\nit trained")  # fmt: skip
    dips = axes.bar(where + width / 2, lowest, width, color="tab:red",
                    label="lowest, while\nthe next task trained")  # fmt: skip
    axes.bar_label(bars, fmt="%.1f", label_type="center", fontsize=7)
    axes.bar_label(dips, fmt="%.1f", label_type="center", fontsize=7, color="white")
    axes.set_xticks(where, [_gap_label(g) for g in gaps], fontsize=7)
    axes.set_xlim(-0.6, len(gaps) - 0.4)
    axes.set_ylim(0, 100)
    axes.set_xlabel(
        "task, while the next one trains: the dip, and steps until recovered", fontsize=8
    )
    axes.set_ylabel("test accuracy on the evaluation subset (%)")
    axes.set_title(f"{title}: stability gap", fontsize=9)
    _legend_outside(axes, title="accuracy on the task")
    return _save(figure, path)


def _gap_label(gap: dict) -> str:
    """A bar pair's tick label: which task, during which, how deep, and whether it came back."""
    steps = gap["steps_to_recover"]
    depth = 100 * (gap["before"] - gap["min"])
    if steps == 0:
        back = "no dip"
    elif steps is None:
        back = f"not recovered\nwithin task {gap['during']}"
    else:
        back = f"recovered after\n{steps} steps"
    dip = f"dip {depth:.1f} points\n" if depth > 0 else ""
    return f"task {gap['task']} during {gap['during']}\n{dip}{back}"


def eigenvalue_spectra(spectra: dict[str, dict[str, Tensor]], title: str, path: Path) -> Path:
    """Left A, right G: each layer's eigenvalues, largest first, against their rank divided
    by the factor's size (layers of different widths side by side), on log scales."""
    figure, panels = _subplots(1, 2, figsize=(10.5, 4.2), sharey=True)
    for axes, factor in zip(panels, ("A", "G"), strict=True):
        for layer, factors in spectra.items():
            values = factors[factor].detach().double().cpu().flip(0).clamp_min(1e-12).numpy()
            ranks = np.arange(1, len(values) + 1) / len(values)
            axes.plot(ranks, values, label=f"{layer} ({len(values)})")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("eigenvalue's rank / factor size (largest first)")
        side = "layer inputs" if factor == "A" else "gradients w.r.t. layer outputs"
        axes.set_title(f"factor {factor}: {side}", fontsize=9)
    panels[0].set_ylabel("eigenvalue (floored at 1e-12)")
    if len(spectra) <= MAX_NAMED:
        _legend_outside(panels[-1], title="layer (factor size)")
    figure.suptitle(f"{title}: K-FAC factors' eigenvalues", fontsize=9)
    return _save(figure, path)


def landscape(result: dict[str, Any], path: Path) -> Path:
    """`python -m ewcexp.landscape`'s figure. Left: the plane through θ*_A and two end points,
    task A's and task B's loss as contour lines (blue, orange), the region where each is low
    shaded, each run's path through task B from θ*_A, its end point labelled. Right: both
    tasks' loss along the straight line from θ*_A to each end point."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    grid, tasks = result["grid"], result["tasks"]
    xs, ys = np.array(grid["x"]), np.array(grid["y"])
    figure = Figure(figsize=(13.0, 7.4), layout="constrained")  # room for legends below
    plane, lines = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    handles: list[Any] = []
    for key, colour, task in (("loss_a", "tab:blue", "A"), ("loss_b", "tab:orange", "B")):
        loss = np.array(grid[key])
        low = grid["low"][key]
        plane.contourf(xs, ys, loss, levels=[loss.min(), low], colors=[colour], alpha=0.22)
        levels = low * LEVEL ** np.arange(8)
        plane.contour(xs, ys, loss, levels=levels, colors=[colour], linewidths=0.8)
        name = tasks[key[-1]]
        shaded = (
            f"task {task} ({name}) low: loss ≤ {low:.2f}, {grid['low']['factor']:g}× its lowest"
        )
        handles.append(Patch(color=colour, alpha=0.3, label=shaded))
        contours = f"task {task} loss contours, each {LEVEL:g}× the one inside it"
        handles.append(Line2D([], [], color=colour, linewidth=0.8, label=contours))
    colours = [f"C{k + 2}" for k in range(len(result["runs"]))]
    for run, colour in zip(result["runs"], colours, strict=True):
        track = run["path"]
        label = (
            f"{run['label']}: path {run['path_length']:.1f}, Fisher-weighted "
            f"{run['path_length_fisher']:.2f}; end {run['end_distance_to_plane']:.1f} off the plane"
        )
        (drawn,) = plane.plot(track["x"], track["y"], marker=".", markersize=3, linewidth=1.2,
                              color=colour, label=label)  # fmt: skip
        handles.append(drawn)
        plane.plot(track["x"][-1], track["y"][-1], marker="o", color=colour, markersize=6)
        plane.annotate(run["label"], (track["x"][-1], track["y"][-1]), xytext=(5, 5),
                       textcoords="offset points", fontsize=8, color=colour)  # fmt: skip
    (start,) = plane.plot(0, 0, marker="*", color="black", markersize=12, linestyle="none",
                          label="θ*_A: the end of task A, where every path starts")  # fmt: skip
    handles.append(start)
    plane.set_aspect("equal", adjustable="box")
    plane.set_xlim(xs[0], xs[-1])
    plane.set_ylim(ys[0], ys[-1])
    axes_of = result["plane"]
    plane.set_xlabel(f"distance along ê₁ (towards {axes_of['e1_towards']}'s end)")
    plane.set_ylabel(f"distance along ê₂ (towards {axes_of['e2_towards']}'s end)")
    plane.set_title("the plane through θ*_A and two end points after task B", fontsize=9)
    for run, colour in zip(result["runs"], colours, strict=True):
        line = run["line"]
        lines.plot(line["s"], line["loss_a"], color=colour, label=f"{run['label']}: task A")
        lines.plot(line["s"], line["loss_b"], color=colour, linestyle="--",
                   label=f"{run['label']}: task B")  # fmt: skip
    lines.set_xlabel("position on the straight line (0: θ*_A, 1: the run's end point)")
    lines.set_ylabel("test loss (cross-entropy)")
    lines.set_title("both tasks' loss from θ*_A straight to each end point", fontsize=9)
    lines.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7,
                 frameon=False).set_in_layout(True)  # fmt: skip
    legend = plane.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14),
                          fontsize=7, frameon=False)  # fmt: skip
    legend.set_in_layout(True)
    figure.suptitle(
        f"Task A ({tasks['a']}) then task B ({tasks['b']}): where each strategy's training on "
        f"B went, seen on a 2-D slice of {result['parameters']:,} parameters",
        fontsize=10,
    )
    return _save(figure, path)


def _legend_outside(axes: Any, **options: Any) -> Legend:
    """The axes' legend to their right, outside them: it never hides data."""
    legend = axes.legend(
        loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7, **options
    )
    legend.get_title().set_fontsize(7)
    return legend


def _subplots(*grid: int, **options: Any) -> tuple[Figure, Any]:
    """A figure of its own (no pyplot) and its axes, as `pyplot.subplots` returns them."""
    figsize = options.pop("figsize", None)
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **options)


def _save(figure: Figure, path: Path) -> Path:
    """tight_layout makes room for the labels and outside legends (unless the figure has a
    layout engine of its own); bbox_inches="tight" keeps anything that still sticks out (a
    very long name) in the file."""
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.05)
    return path
