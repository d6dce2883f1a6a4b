"""The run's figures read without the text around them: bars start at 0, every mark is named,
no legend hides data, every axis is labelled, and no title or label is cut off or drawn over
another. Each figure is drawn from made-up numbers dense enough that a legend inside the axes
would have nowhere free to go; the checks measure the drawn figure with its renderer."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, StepPatch
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from ewcexp.reporting import figures as plots

TITLE = "online_ewc, λ=400, task-incremental"  # as long as a run's titles get
TENSORS = [f"layers.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")]
GAPS = [
    {"task": 1, "during": 2, "before": 0.926, "min": 0.870, "depth": 0.056, "steps_to_recover": 60},
    {
        "task": 2,
        "during": 3,
        "before": 0.916,
        "min": 0.885,
        "depth": 0.031,
        "steps_to_recover": None,
    },
    {"task": 3, "during": 4, "before": 0.90, "min": 0.91, "depth": -0.01, "steps_to_recover": 0},
]
T0_ACCURACY = [0.812, 0.745, 0.62, 0.55, 0.31, 0.288]  # at the start, then after 5 tasks


def _matrix(size: int) -> list[list[float]]:
    rng = np.random.default_rng(size)
    return rng.uniform(0.1, 0.99, (size, size)).tolist()


def _histograms(count: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Outlines across the whole x range at heights from 1 to 10^5: no free corner."""
    edges = np.linspace(-12, 0, 65)
    return {
        f"layers.{k}.weight": (
            np.full(64, 10.0 ** (k % 6)) * (1 + 0.5 * np.sin(edges[:-1] + k)),
            edges,
        )
        for k in range(count)
    }


def _comparisons(names: list[str]) -> dict:
    return {
        n: {
            "sample": {"spearman": 0.99, "relative_error": 0.12, "scale_ratio": 1.02},
            "empirical": {"spearman": 0.97, "relative_error": 0.55, "scale_ratio": 2.2},
            "batched": {
                "spearman": None if n == "layers.4.bias" else 0.9,
                "relative_error": 0.95,
                "scale_ratio": None if n == "layers.4.bias" else 30.0,
            },
        }
        for n in names
    }


def _continual(tasks: int, every: int = 20, per_task: int = 200) -> list[dict]:
    """Each task's accuracy swinging between 10 % and 95 %: lines all over the axes."""
    points = []
    for task in range(1, tasks + 1):
        for task_step in range(every, per_task + 1, every):
            step = (task - 1) * per_task + task_step
            acc = [0.525 + 0.425 * np.sin(step / 30 + j) for j in range(task)]
            points.append({"step": step, "task": task, "task_step": task_step, "acc": acc})
    return points


def _spectra(layers: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    sizes = [(785, 400), (401, 400), (401, 10), (65, 33)][:layers]
    return {
        f"layers.{2 * i}": {
            "A": torch.logspace(2, -14, a).flip(0) * torch.rand(a, generator=generator),
            "G": torch.logspace(0, -14, g).flip(0),
        }
        for i, (a, g) in enumerate(sizes)
    }


def _landscape(runs: int) -> dict:
    """Two tilted quadratic bowls over a 21×21 grid and `runs` curved paths fanning out from
    the origin, as `python -m ewcexp.landscape` writes them."""
    xs, ys = np.linspace(-3, 15, 21), np.linspace(-3, 12, 21)
    x, y = np.meshgrid(xs, ys)
    loss_a = 0.4 + 0.01 * (x - y) ** 2 + 0.05 * (x + y) ** 2 / 10
    loss_b = 0.4 + 0.02 * (x - 12) ** 2 + 0.01 * (y - 6) ** 2
    names = ["finetune", "l2 λ=0.1", "ewc λ=1000", "ewc kfac λ=10"]
    entries = []
    for k in range(runs):
        angle = np.pi / 2 * k / max(runs - 1, 1)
        t = np.linspace(0, 1, 11)
        entries.append(
            {
                "label": names[k % 4] + "'" * (k // 4),
                "path": {"x": list(12 * t * np.cos(angle) + t * (1 - t)), "y": list(10 * t * np.sin(angle))},
                "path_length": 12.0 + k, "path_length_fisher": 0.1 * k, "end_distance_to_plane": 2.0 * k,
                "line": {"s": list(t), "loss_a": list(0.4 + t**2 * k), "loss_b": list(4 - 3.6 * t**0.5)},
            }
        )  # fmt: skip
    return {
        "tasks": {"a": "permutation 0", "b": "permutation 1"},
        "parameters": 478410,
        "plane": {"e1_towards": "finetune", "e2_towards": "ewc kfac λ=10"},
        "grid": {
            "x": list(xs), "y": list(ys), "loss_a": loss_a.tolist(), "loss_b": loss_b.tolist(),
            "low": {"factor": 1.5, "loss_a": 0.6, "loss_b": 0.6},
        },
        "runs": entries,
    }  # fmt: skip


FIGURES: dict[str, Callable[[Path], Path]] = {
    "landscape": lambda d: plots.landscape(_landscape(4), d / "l.png"),
    "accuracy_matrix": lambda d: plots.accuracy_heatmap(_matrix(5), TITLE, d / "m.png"),
    "accuracy_matrix_20": lambda d: plots.accuracy_heatmap(_matrix(20), TITLE, d / "m.png"),
    "accuracy_curves": lambda d: plots.accuracy_curves(_matrix(5), TITLE, d / "c.png"),
    "accuracy_curves_20": lambda d: plots.accuracy_curves(_matrix(20), TITLE, d / "c.png"),
    "accuracy_matrix_t0": lambda d: plots.accuracy_heatmap(
        _matrix(5), TITLE, d / "m.png", ("fashion_mnist", T0_ACCURACY)
    ),
    "accuracy_curves_t0": lambda d: plots.accuracy_curves(
        _matrix(5), TITLE, d / "c.png", ("fashion_mnist", T0_ACCURACY)
    ),
    "importance_histograms": lambda d: plots.importance_histograms(
        _histograms(6), f"{TITLE}: fisher task2", d / "f.png", "fisher"
    ),
    "importance_histograms_40": lambda d: plots.importance_histograms(
        _histograms(40), f"{TITLE}: fisher accumulated task5", d / "f.png", "fisher"
    ),
    "continual_curves": lambda d: plots.continual_curves(_continual(3), TITLE, d / "e.png"),
    "continual_curves_10": lambda d: plots.continual_curves(_continual(10), TITLE, d / "e.png"),
    "stability_gap": lambda d: plots.stability_gap_bars(GAPS, TITLE, d / "g.png"),
    "stability_gap_9": lambda d: plots.stability_gap_bars(
        [dict(GAPS[k % 3], task=k + 1, during=k + 2) for k in range(9)], TITLE, d / "g.png"
    ),
    "estimator_comparison": lambda d: plots.estimator_comparison(
        _comparisons([*TENSORS, "all"]), f"{TITLE}: task 2", d / "x.png"
    ),
    "estimator_comparison_30": lambda d: plots.estimator_comparison(
        _comparisons([f"encoder.layers.{i}.linear.weight" for i in range(30)]),
        f"{TITLE}: task 2",
        d / "x.png",
    ),
    "overlap_heatmap": lambda d: plots.overlap_heatmap(
        [[1.0, 0.77, 0.73], [0.77, 1.0, 0.69], [0.73, 0.69, 1.0]], TITLE, d / "o.png"
    ),
    "eigenvalue_spectra": lambda d: plots.eigenvalue_spectra(
        _spectra(3), f"{TITLE}: fisher spectra task2", d / "s.png"
    ),
}


_DRAWN: dict[str, Figure] = {}


@pytest.fixture
def draw(tmp_path_factory) -> Callable[[str], Figure]:
    """Draws one of FIGURES to a PNG as a run does, and hands back the figure, laid out as saved
    and drawn again on an Agg canvas, so that every artist's extent can be measured (each
    figure drawn once for all the tests)."""

    def drawing(name: str) -> Figure:
        if name not in _DRAWN:
            kept: list[Figure] = []
            save = plots._save

            def keep(figure: Figure, path: Path) -> Path:
                kept.append(figure)
                return save(figure, path)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(plots, "_save", keep)
                path = FIGURES[name](tmp_path_factory.mktemp(name))
            assert path.read_bytes()[:4] == b"\x89PNG"
            (figure,) = kept
            FigureCanvasAgg(figure).draw()
            _DRAWN[name] = figure
        return _DRAWN[name]

    return drawing


def _renderer(figure: Figure):
    return figure.canvas.get_renderer()


def _legends(figure: Figure) -> list:
    return [a.get_legend() for a in figure.axes if a.get_legend() is not None] + list(
        figure.legends
    )


def _densified(points: np.ndarray, per_segment: int = 25) -> np.ndarray:
    """Points along a polyline in display space, not only its vertices."""
    if len(points) < 2:
        return points
    t = np.linspace(0, 1, per_segment)[:, None, None]
    return (points[:-1] * (1 - t) + points[1:] * t).reshape(-1, 2)


def _data_drawn(axes, renderer) -> tuple[np.ndarray, list[Bbox]]:
    """What the axes plot, in display coordinates: points along the lines and outlines, the
    boxes of bars and patches, and of the texts written on the data (values, "n/a")."""
    points = []
    for line in axes.lines:
        points.append(_densified(line.get_transform().transform(line.get_xydata())))
    boxes = []
    for patch in axes.patches:
        if isinstance(patch, StepPatch):
            path = patch.get_path()
            points.append(_densified(patch.get_transform().transform(path.vertices)))
        elif patch.get_visible():
            boxes.append(patch.get_window_extent(renderer))
    boxes += [t.get_window_extent(renderer) for t in axes.texts if t.get_text().strip()]
    drawn = np.concatenate(points) if points else np.empty((0, 2))
    drawn = drawn[np.isfinite(drawn).all(axis=1)]
    inside = axes.bbox.padded(1)
    drawn = drawn[
        (drawn[:, 0] >= inside.x0)
        & (drawn[:, 0] <= inside.x1)
        & (drawn[:, 1] >= inside.y0)
        & (drawn[:, 1] <= inside.y1)
    ]
    boxes = [Bbox.intersection(b, axes.bbox) for b in boxes if b.width > 0 and b.height > 0]
    boxes = [b for b in boxes if b is not None]  # the part inside the axes: the part drawn
    return drawn, boxes


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_no_legend_hides_data(draw, name):
    figure = draw(name)
    renderer = _renderer(figure)
    for legend in _legends(figure):
        frame = legend.get_window_extent(renderer).padded(-1)
        for axes in figure.axes:
            points, boxes = _data_drawn(axes, renderer)
            hidden = points[
                (points[:, 0] > frame.x0)
                & (points[:, 0] < frame.x1)
                & (points[:, 1] > frame.y0)
                & (points[:, 1] < frame.y1)
            ]
            assert len(hidden) == 0, f"{name}: the legend hides {len(hidden)} points of lines"
            covered = [b for b in boxes if b.overlaps(frame)]
            assert not covered, f"{name}: the legend covers bars or values at {covered[0]}"


def _colour(artist) -> str:
    if isinstance(artist, Line2D):
        return to_hex(artist.get_color())
    if isinstance(artist, Patch) and artist.get_fill():
        return to_hex(artist.get_facecolor())
    return to_hex(artist.get_edgecolor())


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_line_and_bar_is_named_in_a_legend(draw, name):
    """Each colour of line, outline or bar appears in a legend: nothing is left to guess (the
    grey switch lines too). Only a histogram of too many tensors to name leaves them out, and
    says so in its title."""
    figure = draw(name)
    named = {_colour(h) for legend in _legends(figure) for h in legend.legend_handles}
    for axes in figure.axes:
        drawn = [*axes.lines, *(p for c in axes.containers for p in c)]
        drawn += [p for p in axes.patches if isinstance(p, StepPatch)]
        unnamed = {_colour(a) for a in drawn} - named
        if unnamed and name == "importance_histograms_40":
            assert "too many to name" in axes.get_title()
            continue
        assert not unnamed, f"{name}: colours {unnamed} are in no legend"


def _shared_label(axes, which: str) -> str:
    """The axis label, or that of an axes this one shares the axis with (stacked panels)."""
    group = axes.get_shared_x_axes() if which == "x" else axes.get_shared_y_axes()
    for other in group.get_siblings(axes):
        label = other.get_xlabel() if which == "x" else other.get_ylabel()
        if label.strip():
            return label
    return ""


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_axis_is_labelled(draw, name):
    figure = draw(name)
    for axes in figure.axes:
        colorbar = getattr(axes, "_colorbar", None)
        if colorbar is not None:
            assert (axes.get_xlabel() + axes.get_ylabel()).strip(), f"{name}: colour bar"
            continue
        assert _shared_label(axes, "x"), f"{name}: an x axis without a label"
        assert _shared_label(axes, "y"), f"{name}: a y axis without a label"


def _tick_labels(axis) -> list[Text]:
    """The tick labels actually drawn: visible, not empty, and inside the view (compared on
    the axis's scale: a log axis's view is not a linear interval)."""
    scale = axis.get_transform()
    low, high = sorted(scale.transform(np.asarray(axis.get_view_interval(), dtype=float)))
    span = (high - low) * 1e-6
    return [
        tick.label1
        for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]
        if tick.label1.get_visible()
        and tick.label1.get_text().strip()
        and low - span <= scale.transform(np.array([tick.get_loc()], dtype=float))[0] <= high + span
    ]


def _rotated(text: Text) -> bool:
    return text.get_rotation() % 90 != 0


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_titles_labels_and_legends_are_inside_the_figure_and_apart(draw, name):
    """Nothing cut off at the edge; no title, axis label, tick label or legend drawn over
    another (slanted tick labels: their baselines far enough apart for the text's height)."""
    figure = draw(name)
    renderer = _renderer(figure)
    items: list[tuple[str, Bbox, object]] = []
    for text in figure.texts:
        if text.get_text().strip():
            items.append(
                (f"figure text {text.get_text()!r}", text.get_window_extent(renderer), None)
            )
    for k, axes in enumerate(figure.axes):
        for text in (axes.title, axes.xaxis.label, axes.yaxis.label):
            if text.get_text().strip():
                items.append(
                    (f"axes {k} {text.get_text()!r}", text.get_window_extent(renderer), None)
                )
        for axis in (axes.xaxis, axes.yaxis):
            labels = _tick_labels(axis)
            slanted = [t for t in labels if _rotated(t)]
            for text in labels:
                group = axis if text in slanted else None
                box = text.get_window_extent(renderer)
                items.append((f"axes {k} tick {text.get_text()!r}", box, group))
            if len(slanted) > 1:
                where = sorted(
                    t.get_transform().transform(t.get_position())[0 if axis is axes.xaxis else 1]
                    for t in slanted
                )
                angle = np.deg2rad(slanted[0].get_rotation())
                height = renderer.points_to_pixels(slanted[0].get_fontsize())
                apart = np.diff(where).min() * abs(np.sin(angle))
                assert apart >= height, f"{name}: slanted tick labels {apart:.1f} px apart"
    for legend in _legends(figure):
        items.append(("legend", legend.get_window_extent(renderer), None))
    page = figure.bbox.padded(1)
    for what, box, _ in items:
        assert page.containsx(box.x0) and page.containsx(box.x1), f"{name}: {what} cut off"
        assert page.containsy(box.y0) and page.containsy(box.y1), f"{name}: {what} cut off"
    for (first, a, group_a), (second, b, group_b) in itertools.combinations(items, 2):
        if group_a is not None and group_a is group_b:
            continue  # slanted labels of one axis: their boxes overlap, their text does not
        assert not a.padded(-0.5).overlaps(b.padded(-0.5)), f"{name}: {first} over {second}"


def test_the_stability_gap_bars_start_at_zero_and_spell_out_the_recovery(draw):
    """The y axis from 0 to 100 % (a bar cut at 82 % makes a 3-point dip look like half the
    bar); the before/lowest bars side by side, with their values; no unexplained mark: under
    each pair, in words, the dip and whether (after how many steps) the task came back."""
    figure = draw("stability_gap")
    (axes,) = figure.axes
    assert axes.get_ylim() == (0, 100)
    assert "%" in axes.get_ylabel()
    written = [t.get_text() for t in figure.findobj(Text)]
    assert not [t for t in written if "✗" in t or "✓" in t]
    ticks = [t.get_text() for t in axes.get_xticklabels()]
    assert len(ticks) == 3
    assert "task 1 during 2" in ticks[0] and "dip 5.6 points" in ticks[0]
    assert "recovered after\n60 steps" in ticks[0]
    assert "not recovered\nwithin task 3" in ticks[1]
    assert "no dip" in ticks[2] and "dip " not in ticks[2].replace("no dip", "")
    values = {t for t in written if t in {"92.6", "87.0", "91.6", "88.5", "90.0", "91.0"}}
    assert len(values) == 6, "each bar carries its value"
    before, lowest = axes.containers
    for bar, other in zip(before, lowest, strict=True):
        assert bar.get_y() == 0 and other.get_y() == 0
        assert bar.get_x() + bar.get_width() <= other.get_x() + 1e-9, "side by side"


def test_the_marks_without_a_legend_are_explained_in_a_label(draw):
    """The hatching of the accuracy matrix, the floor of the histograms (exact zeros at -12)
    and of the spectra, and the overlap's scale are each said in a label."""
    matrix = draw("accuracy_matrix").axes[0]
    assert "hatched" in matrix.get_xlabel() + matrix.get_title()
    histogram = draw("importance_histograms").axes[0]
    assert "-12" in histogram.get_xlabel() and "0" in histogram.get_xlabel()
    spectra = draw("eigenvalue_spectra").axes[0]
    assert "1e-12" in spectra.get_ylabel()
    overlap = draw("overlap_heatmap")
    (colorbar,) = [a for a in overlap.axes if getattr(a, "_colorbar", None) is not None]
    assert "identical" in colorbar.get_ylabel() and "disjoint" in colorbar.get_ylabel()


def test_a_run_with_t0_draws_its_column_start_row_and_curve_and_one_without_does_not(draw):
    """With task_sequence.pretrained_on, the matrix gets T0's column first (its data set named
    in the axis label) and a `start` row on top, which holds T0's starting accuracy alone; the curves
    get T0's line from 0 tasks trained on. Without it, neither: the tasks only, from task 1."""
    matrix, t0 = _matrix(5), [round(100 * a) for a in T0_ACCURACY]
    axes = draw("accuracy_matrix_t0").axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["0", "1", "2", "3", "4", "5"]
    assert "0: fashion_mnist" in axes.get_xlabel()
    assert [t.get_text() for t in axes.get_yticklabels()] == ["start", "1", "2", "3", "4", "5"]
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in axes.texts
    }
    assert [cells[(i, 0)] for i in range(6)] == [str(a) for a in t0]
    assert [(i, j) for i, j in cells if i == 0] == [(0, 0)], "the start row: T0 alone"
    assert cells[(3, 2)] == f"{100 * matrix[2][1]:.0f}", "R[i][j] one row and column down"
    hatched = {(round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in axes.patches}
    assert hatched == {(i, j) for i in range(1, 6) for j in range(i + 1, 6)}
    plain = draw("accuracy_matrix").axes[0]
    assert [t.get_text() for t in plain.get_yticklabels()] == ["1", "2", "3", "4", "5"]
    assert len(plain.texts) == 25 and "0:" not in plain.get_xlabel()

    curves = draw("accuracy_curves_t0").axes[0]
    (line,) = [ln for ln in curves.lines if ln.get_label() == "task 0 (fashion_mnist)"]
    assert list(line.get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert list(line.get_ydata()) == pytest.approx([100 * a for a in T0_ACCURACY])
    assert "task 0 (fashion_mnist)" in [t.get_text() for t in curves.get_legend().get_texts()]
    plain = draw("accuracy_curves").axes[0]
    assert not [ln for ln in plain.lines if ln.get_label().startswith("task 0")]
    assert min(min(ln.get_xdata()) for ln in plain.lines) == 1
