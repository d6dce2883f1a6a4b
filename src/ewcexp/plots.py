"""The run's figures as PNG files in its directory, whether or not W&B is on."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402


def accuracy_heatmap(acc_matrix: list[list[float]], title: str, path: Path) -> Path:
    """R[i][j] as a heatmap; the cells of tasks not yet trained are hatched."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    figure, axes = plt.subplots(figsize=(max(4.5, 1.5 + 0.6 * size), max(3.5, 1.0 + 0.5 * size)))
    image = axes.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    for i in range(size):
        for j in range(size):
            if j > i:
                axes.add_patch(
                    plt.Rectangle(
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
    figure.colorbar(image, label="test accuracy (%)")
    return _save(figure, path)


def accuracy_curves(acc_matrix: list[list[float]], title: str, path: Path) -> Path:
    """Each task's accuracy from the moment it is learned, and the average over tasks seen."""
    matrix = np.array(acc_matrix) * 100
    size = len(matrix)
    steps = np.arange(1, size + 1)
    figure, axes = plt.subplots(figsize=(6, 4))
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
    figure, axes = plt.subplots(figsize=(6, 4))
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


def eigenvalue_spectra(spectra: dict[str, dict[str, Tensor]], title: str, path: Path) -> Path:
    """Left A, right G: each layer's eigenvalues, largest first, against their rank divided
    by the factor's size (layers of different widths side by side), on log scales."""
    figure, panels = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
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


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
