"""The run's figures as PNG files in its directory, whether or not W&B is on."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
