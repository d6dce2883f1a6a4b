"""The picture EWC is explained with, computed from real runs: the plane through θ*_A and two
runs' end points after task B, both tasks' loss and accuracy on a grid over it, each run's
path projected on it, the straight line from θ*_A to each end point, and each path's length
in plain and in Fisher-weighted distance. `ewcexp.app.landscape` is the command around it.

A = task 1, B = task 2 of runs that share their seed and first task (a multirun over
strategies), so θ*_A, the weights at the end of task 1, is one point for all of them.

The grid is evaluated batched over grid points. A network whose first layer with parameters
is an `nn.Linear` or `nn.Conv2d` layer, called once, on the images alone (ours: the MLP, the
CNN, the ResNet's stem), computes it once per axis: its output is affine in the plane's
coordinates, f(x; a + u·ê₁ + v·ê₂) = f(x; a) + u·f₀(x; ê₁) + v·f₀(x; ê₂) (f₀: the same layer
as a linear map of its weight and bias). The rest of the network runs for a chunk of grid
points at once (`torch.func.vmap` of `functional_call`). On the 784-400-400-10 MLP that
skips two thirds of the multiply-adds of every point.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ewcexp.config.seeds import generator
from ewcexp.data.scenarios import Task
from ewcexp.data.sequences import TaskSequence, build_sequence
from ewcexp.importance.contract import TaskData
from ewcexp.importance.fisher import Fisher
from ewcexp.training import snapshots
from ewcexp.training.runner import network
from ewcexp.training.snapshots import Snapshot

TASK_A, TASK_B = 0, 1
# task_sequence keys in which runs that share their first task may differ
SEQUENCE_KEYS_FREE = ("num_tasks",)
LOW = 1.5  # a task's loss is "low" within this factor of its lowest on the grid
MARGIN = 0.25  # the grid reaches this fraction of the paths' extent beyond them
METRICS = ("loss_a", "acc_a", "loss_b", "acc_b")


class LandscapeError(ValueError):
    """Runs the landscape cannot be drawn from; the message is the one line that says why."""


@dataclass
class Trajectory:
    """One run: its results, and its path through task B from θ*_A (its snapshots)."""

    run_dir: Path
    results: dict[str, Any]
    start: Snapshot  # θ*_A
    path: list[Snapshot]  # task B's, in step order, its end last

    @property
    def end(self) -> Snapshot:
        return self.path[-1]

    @property
    def strategy_label(self) -> str:
        """The strategy, its Kronecker blocks and its λ (none for those without one)."""
        strategy = self.results["strategy"]
        if self.results["config"].get("fisher", {}).get("structure") == "kfac":
            strategy += " kfac"
        if self.results["strategy"] in ("finetune", "joint"):
            return strategy
        return f"{strategy} λ={self.results['lambda']:g}"


def refused(run_dir: Path, why: str) -> LandscapeError:
    return LandscapeError(f"RUN_DIR={run_dir} is not allowed: {why}")


def load_trajectory(run_dir: Path) -> Trajectory:
    """A completed run of two tasks or more with snapshots, or the line that says what it lacks."""
    if not run_dir.is_dir():
        raise refused(run_dir, "expected a run directory (outputs/<date>/<time>, a job folder)")
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        raise refused(
            run_dir, "it holds no readable results.json: expected a finished run"
        ) from None
    if results.get("status", "completed") != "completed":
        raise refused(run_dir, f"the run {results['status']}: expected a completed run")
    if len(results["acc_matrix"]) < 2:
        raise refused(run_dir, "it learned one task: expected two or more (A, then B)")
    kept = snapshots.load(run_dir)
    if not kept:
        raise refused(run_dir, "it has no snapshots: run it with train.snapshot_every=N (e.g. 50)")
    ends = {s.task: s for s in kept if s.task_end}
    if TASK_A not in ends or TASK_B not in ends:
        raise refused(run_dir, "its snapshots lack the end of task 1 or 2")
    path = [s for s in kept if s.task == TASK_B and s.step <= ends[TASK_B].step]
    return Trajectory(run_dir, results, ends[TASK_A], path)


def load_trajectories(run_dirs: list[Path]) -> list[Trajectory]:
    """The runs, checked to share what makes θ*_A one point: seed, first task, network, and
    the weights at task 1's end themselves."""
    if len(run_dirs) < 2 or len(set(map(Path.resolve, run_dirs))) != len(run_dirs):
        raise LandscapeError(
            f"RUN_DIR={' '.join(map(str, run_dirs))} is not allowed: expected two runs or more, "
            "each once (the plane needs two end points beside θ*_A)"
        )
    runs = [load_trajectory(run_dir) for run_dir in run_dirs]
    first = runs[0]
    for run in runs[1:]:
        for key, mine, theirs in shared_settings(run, first):
            if mine != theirs:
                raise refused(
                    run.run_dir,
                    f"its {key}={mine} differs from {first.run_dir}'s {key}={theirs}: the runs "
                    "must share their seed and first task",
                )
        if not all(
            torch.equal(run.start.state[name], first.start.state[name])
            for name in first.start.state
        ):
            raise refused(
                run.run_dir,
                f"its weights at the end of task 1 differ from {first.run_dir}'s: the runs "
                "must share their seed and first task (and how it is trained)",
            )
    return runs


def shared_settings(run: Trajectory, other: Trajectory) -> Iterable[tuple[str, Any, Any]]:
    """(key, this run's value, the other's) for what runs that share θ*_A must share."""
    mine, theirs = run.results["config"], other.results["config"]
    yield "seed", mine["seed"], theirs["seed"]
    for key in sorted(set(mine["task_sequence"]) | set(theirs["task_sequence"])):
        if key not in SEQUENCE_KEYS_FREE:
            yield (
                f"task_sequence.{key}",
                mine["task_sequence"].get(key),
                theirs["task_sequence"].get(key),
            )
    yield "model", mine["model"], theirs["model"]
    yield "data.validation_size", mine["data"]["validation_size"], theirs["data"]["validation_size"]
    yield "state dict keys", sorted(run.start.state), sorted(other.start.state)


# ---------------------------------------------------------------- the plane


@dataclass(frozen=True)
class Plane:
    """origin + x·ê₁ + y·ê₂ with ê₁, ê₂ orthonormal: coordinates are distances in parameter
    space, so lengths and angles within the plane are drawn true. float64 throughout."""

    origin: Tensor
    axes: Tensor  # [2, P]

    @classmethod
    def through(cls, a: Tensor, b: Tensor, c: Tensor) -> Plane:
        """Through a, b and c (Gram–Schmidt): ê₁ along b − a, ê₂ along what of c − a is
        orthogonal to it."""
        a, b, c = (t.double() for t in (a, b, c))
        first = (b - a) / (b - a).norm()
        rest = (c - a) - ((c - a) @ first) * first
        rest = rest - (rest @ first) * first  # once more: orthogonal to rounding
        return cls(a, torch.stack([first, rest / rest.norm()]))

    def coordinates(self, theta: Tensor) -> tuple[float, float]:
        x, y = self.axes @ (theta.double() - self.origin)
        return float(x), float(y)

    def distance(self, theta: Tensor) -> float:
        """How far `theta` is from the plane (0 for a point in it)."""
        offset = theta.double() - self.origin
        return float((offset - self.axes.T @ (self.axes @ offset)).norm())


def choose_axes(origin: Tensor, ends: list[Tensor]) -> tuple[int, int]:
    """The two end points the plane goes through: the one furthest from θ*_A (ê₁ points at
    it), then the one with the largest part orthogonal to that direction (ê₂), so that the
    plane holds as much of every path as two directions can and no path is seen edge-on."""
    offsets = [end.double() - origin.double() for end in ends]
    first = max(range(len(ends)), key=lambda i: float(offsets[i].norm()))
    direction = offsets[first] / offsets[first].norm().clamp_min(1e-300)

    def across(i: int) -> float:
        return float((offsets[i] - (offsets[i] @ direction) * direction).norm())

    second = max((i for i in range(len(ends)) if i != first), key=across)
    if across(second) == 0:  # also when no run moved from θ*_A at all
        raise LandscapeError(
            "every end point lies on one line through θ*_A, so they span no plane: add a run "
            "that ends elsewhere"
        )
    return first, second


def grid_axes(points: list[tuple[float, float]], size: int) -> tuple[Tensor, Tensor]:
    """`size` values along each axis, reaching beyond every point by MARGIN of their extent
    (the y range at least half the x range, so that a flat set of paths still shows)."""
    xs, ys = zip(*points, strict=True)
    width = max(max(xs) - min(xs), max(ys) - min(ys))
    spans = []
    for values, least in ((xs, 0.0), (ys, width / 2)):
        low, high = min(values) - MARGIN * width, max(values) + MARGIN * width
        if high - low < least:
            middle = (low + high) / 2
            low, high = middle - least / 2, middle + least / 2
        spans.append(torch.linspace(low, high, size, dtype=torch.float64))
    return spans[0], spans[1]


# ---------------------------------------------------------------- evaluation


@dataclass
class EvaluationData:
    """Both tasks' first `images` test images, in one batch: task A's then task B's, each with
    its targets among its active output units (those active once B is learned)."""

    images: Tensor
    targets: Tensor
    split: int  # where task B's images start
    active: tuple[slice, slice]

    @classmethod
    def of(cls, sequence: TaskSequence, images: int) -> EvaluationData:
        parts, targets, active = [], [], []
        for task in (sequence.tasks[TASK_A], sequence.tasks[TASK_B]):
            pictures, labels = task.test_set()
            units = sequence.scenario.active(task.index, seen=TASK_B)
            parts.append(pictures[:images])
            targets.append(labels[:images] + sequence.scenario.offset(task.index) - units.start)
            active.append(units)
        return cls(torch.cat(parts), torch.cat(targets), len(targets[0]), tuple(active))

    def scores(self, logits: Tensor) -> Tensor:
        """Loss and accuracy of task A, then of B, from the logits of `images` (vmap-able)."""
        values = []
        for part, units in zip(
            (slice(0, self.split), slice(self.split, None)), self.active, strict=True
        ):
            scores, targets = logits[part, units], self.targets[part]
            values.append(F.cross_entropy(scores, targets))
            values.append((scores.argmax(1) == targets).float().mean())
        return torch.stack(values)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def as_tensors(model: nn.Module, vector: Tensor) -> dict[str, Tensor]:
    """A flat vector of the trainable parameters as {name: tensor} shaped like the model's."""
    shapes = [(n, p.shape) for n, p in model.named_parameters() if p.requires_grad]
    sizes = [math.prod(shape) for _, shape in shapes]
    pieces = vector.split(sizes, dim=-1)
    lead = vector.shape[:-1]
    return {n: t.reshape(*lead, *s) for (n, s), t in zip(shapes, pieces, strict=True)}


@torch.inference_mode()
def evaluate_point(
    model: nn.Module, vector: Tensor, data: EvaluationData, batch_size: int = 1024
) -> Tensor:
    """One point the plain way: its parameters loaded into `model`, the images in batches.
    Loss and accuracy of A, then of B."""
    params = dict(model.named_parameters())
    for name, tensor in as_tensors(model, vector.float()).items():
        params[name].copy_(tensor)
    logits = torch.cat(
        [model(data.images[i : i + batch_size]) for i in range(0, len(data.images), batch_size)]
    )
    return data.scores(logits)


def first_layer(model: nn.Module, sample: Tensor) -> str | None:
    """The name of the network's first layer with parameters if it is an `nn.Linear` or
    `nn.Conv2d` called once on inputs no parameter has touched (see the module's note), else
    None. Every module owning parameters must be called, once the first, so that no parameter
    is used outside its module before it."""
    owners = {
        name: module
        for name, module in model.named_modules()
        if next(module.parameters(recurse=False), None) is not None
    }
    calls: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name))
        for name, module in owners.items()
    ]
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    if not calls or calls.count(calls[0]) != 1 or set(calls) != set(owners):
        return None
    return calls[0] if type(owners[calls[0]]) in (nn.Linear, nn.Conv2d) else None


class FirstLayerOutput(nn.Module):
    """Stands in for the first layer on the evaluation images: its output at
    origin + Σ_k c_k·axis_k, from its output at the origin and its linear part along each
    axis (stacked, so that a chunk of points is one matrix product, not a pass over the
    output per axis). The coefficients c are a buffer, so `functional_call` sets them per
    point."""

    def __init__(self, at_origin: Tensor, along: list[Tensor]) -> None:
        super().__init__()
        self.shape = at_origin.shape
        self.register_buffer("outputs", torch.stack([at_origin, *along]).flatten(1))
        self.register_buffer("coefficients", torch.zeros(len(along)))

    def forward(self, _inputs: Tensor) -> Tensor:
        weights = torch.cat([torch.ones_like(self.coefficients[:1]), self.coefficients])
        return (weights @ self.outputs).view(self.shape)


class AffineEvaluator:
    """Loss and accuracy of both tasks at points origin + Σ_k c_k·axis_k of an affine subspace
    (the plane, a straight line), `chunk` points at a time."""

    def __init__(
        self, model: nn.Module, origin: Tensor, axes: Tensor, data: EvaluationData, chunk: int
    ) -> None:
        self.data, self.chunk = data, chunk
        self.origin = as_tensors(model, origin.float())
        self.axes = [as_tensors(model, axis.float()) for axis in axes]
        self.model = copy.deepcopy(model).eval()
        self.stub = first_layer(self.model, data.images[:2])
        if self.stub is not None:
            self._replace_first_layer(self.stub)

    def _replace_first_layer(self, name: str) -> None:
        """The first layer becomes a `FirstLayerOutput`; its parameters leave the points'."""
        layer = self.model.get_submodule(name)
        captured: list[Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        with torch.inference_mode():
            self.model(self.data.images)
        handle.remove()
        own = dict(layer.named_parameters())

        def output(values: dict[str, Tensor]) -> Tensor:
            with torch.inference_mode():
                return functional_call(layer, values, (captured[0],))

        def along(axis: dict[str, Tensor]) -> Tensor:  # the layer's linear part along an axis
            return output({k: axis.get(f"{name}.{k}", torch.zeros_like(p)) for k, p in own.items()})

        at_origin = output({k: self.origin.get(f"{name}.{k}", p) for k, p in own.items()})
        stub = FirstLayerOutput(at_origin, [along(axis) for axis in self.axes])
        parent, _, child = name.rpartition(".")
        setattr(self.model.get_submodule(parent), child, stub)
        for mapping in (self.origin, *self.axes):
            for key in [k for k in mapping if k.startswith(f"{name}.")]:
                del mapping[key]

    def __call__(self, coefficients: Tensor) -> Tensor:
        """[K, axes] coefficients → [K, 4]: loss and accuracy of A, then of B."""
        coefficients = coefficients.float()
        params = {}
        for name, at_origin in self.origin.items():
            along = torch.stack([axis[name] for axis in self.axes]).flatten(1)
            params[name] = at_origin + (coefficients @ along).view(-1, *at_origin.shape)

        def scores(values: dict[str, Tensor], point: Tensor) -> Tensor:
            if self.stub is not None:
                values = {**values, f"{self.stub}.coefficients": point}
            return self.data.scores(functional_call(self.model, values, (self.data.images,)))

        with torch.inference_mode():
            return vmap(scores)(params, coefficients)

    def over(self, points: Tensor, progress: Callable[[int], None] = lambda _: None) -> Tensor:
        """[K, 4] over any number of points, `chunk` at a time; `progress(n)` after each."""
        values = []
        for chunk in points.split(self.chunk):
            values.append(self(chunk))
            progress(len(chunk))
        return torch.cat(values)


def grid_values(
    model: nn.Module,
    plane: Plane,
    data: EvaluationData,
    xs: Tensor,
    ys: Tensor,
    chunk: int = 8,
    progress: Callable[[int], None] = lambda _: None,
) -> Tensor:
    """[len(ys), len(xs), 4]: both tasks' loss and accuracy over the grid, x fastest."""
    points = torch.cartesian_prod(ys, xs).flip(1)
    evaluator = AffineEvaluator(model, plane.origin, plane.axes, data, chunk)
    return evaluator.over(points, progress).view(len(ys), len(xs), 4)


def line_values(
    model: nn.Module,
    start: Snapshot,
    end: Snapshot,
    data: EvaluationData,
    steps: Tensor,
    chunk: int,
) -> Tensor:
    """[len(steps), 4] along start + s·(end − start), `model` holding `start`'s state: the
    points between batched (with `start`'s buffers), the two ends (s = 0 and 1) the plain way
    with their own whole state, as the run evaluated them. `model` is left at `start`."""
    offset = end.vector.double() - start.vector.double()
    between = AffineEvaluator(model, start.vector, offset[None], data, chunk).over(
        steps[1:-1, None]
    )
    ends = []
    for point in (start, end):
        model.load_state_dict(point.state)
        ends.append(evaluate_point(model, point.vector, data))
    model.load_state_dict(start.state)
    return torch.cat([ends[0][None], between, ends[1][None]])


# ---------------------------------------------------------------- lengths and the line


def path_lengths(points: list[Tensor], fisher: Tensor) -> tuple[float, float]:
    """Σ_k ‖Δθ_k‖ and Σ_k sqrt(Δθ_kᵀ F_A Δθ_k) over consecutive points."""
    plain = fisher_weighted = 0.0
    for before, after in zip(points, points[1:], strict=False):
        step = after.double() - before.double()
        plain += float(step.norm())
        fisher_weighted += float((fisher.double() * step * step).sum().sqrt())
    return plain, fisher_weighted


def barrier(values: list[float], steps: Tensor) -> float:
    """The largest rise of the line's loss above the straight line between its ends' losses
    (0 when the path is linearly mode-connected)."""
    straight = [(1 - s) * values[0] + s * values[-1] for s in steps.tolist()]
    return max(v - line for v, line in zip(values, straight, strict=True))


def first_task_fisher(model: nn.Module, sequence: TaskSequence, config: dict[str, Any]) -> Tensor:
    """F_A at θ*_A (loaded in `model`): the run's own diagonal estimator (its `fisher`
    section, Kronecker blocks read as the diagonal Fisher of the same estimator) on task A's
    training images, drawn from the run's own importance stream: the F_A a diagonal EWC run
    of these runs consolidated."""
    settings = {k: v for k, v in config["fisher"].items() if k != "_target_"}
    settings.update(structure="diagonal", diagnostics=False, damping=0.0)
    if settings["estimator"] == "batched":  # not a per-sample Fisher: its scale is the batch's
        settings["estimator"] = "exact"
    task: Task = sequence.tasks[TASK_A]
    data = TaskData.of(task, sequence.scenario, torch.device("cpu"), generator(config["seed"], "importance"))  # fmt: skip
    return torch.cat([f.flatten() for f in Fisher(**settings)(model, data)])


# ---------------------------------------------------------------- all of it


@dataclass
class Prepared:
    """What the grid and the lines are computed from."""

    runs: list[Trajectory]
    model: nn.Module  # θ*_A loaded, eval mode
    sequence: TaskSequence
    data: EvaluationData
    plane: Plane
    axes_from: tuple[int, int]  # the runs whose end points span the plane


def prepare(run_dirs: list[Path], images: int) -> Prepared:
    """The runs and their plane (checked before any data loads), the network with θ*_A, and
    the evaluation images."""
    runs = load_trajectories(run_dirs)
    origin = runs[0].start.vector
    try:
        first, second = choose_axes(origin, [run.end.vector for run in runs])
    except LandscapeError as error:
        raise LandscapeError(
            f"RUN_DIR={' '.join(map(str, run_dirs))} is not allowed: {error}"
        ) from None
    plane = Plane.through(origin, runs[first].end.vector, runs[second].end.vector)
    cfg = OmegaConf.create(runs[0].results["config"])
    cfg.model.weights = None  # θ*_A's whole state is loaded below
    sequence = build_sequence(cfg.task_sequence, cfg.data)
    model, _ = network(cfg, sequence)
    model.load_state_dict(runs[0].start.state)
    model.eval()
    data = EvaluationData.of(sequence, images)
    return Prepared(runs, model, sequence, data, plane, (first, second))


def measure(
    prepared: Prepared,
    grid_size: int,
    line_points: int,
    chunk: int = 8,
    progress: Callable[[int], None] = lambda _: None,
) -> dict[str, Any]:
    """Every number of the landscape (what `landscape.json` holds)."""
    runs, plane, model, data = prepared.runs, prepared.plane, prepared.model, prepared.data
    origin = runs[0].start.vector
    fisher = first_task_fisher(model, prepared.sequence, runs[0].results["config"])
    paths = [[origin, *(s.vector for s in run.path)] for run in runs]
    projected = [[plane.coordinates(p) for p in path] for path in paths]
    xs, ys = grid_axes([point for path in projected for point in path], grid_size)
    values = grid_values(model, plane, data, xs, ys, chunk, progress)
    steps = torch.linspace(0, 1, line_points, dtype=torch.float64)
    lowest = [float(values[..., k].min()) for k in (0, 2)]
    labels = [run.strategy_label for run in runs]
    labels = [
        f"{label} ({run.run_dir.name})" if labels.count(label) > 1 else label
        for label, run in zip(labels, runs, strict=True)
    ]  # two runs of one strategy and λ differ in something else: named by their folders
    entries = []
    for run, label, path, points in zip(runs, labels, paths, projected, strict=True):
        line = line_values(model, run.start, run.end, data, steps, chunk)
        columns = {name: line[:, k].tolist() for k, name in enumerate(METRICS)}
        plain, weighted = path_lengths(path, fisher)
        straight, straight_weighted = path_lengths([origin, run.end.vector], fisher)
        entries.append(
            {
                "run_dir": str(run.run_dir),
                "label": label,
                "strategy": run.results["strategy"],
                "lambda": run.results["lambda"],
                "recorded_accuracy": {
                    "theta_a": run.results["acc_matrix"][TASK_A][:2],
                    "end": run.results["acc_matrix"][TASK_B][:2],
                },
                "path": {
                    "steps": [runs[0].start.step, *(s.step for s in run.path)],
                    "x": [x for x, _ in points],
                    "y": [y for _, y in points],
                    "distance_to_plane": [plane.distance(p) for p in path],
                },
                "path_length": plain,
                "path_length_fisher": weighted,
                "straight_distance": straight,
                "straight_distance_fisher": straight_weighted,
                "end_distance_to_plane": plane.distance(run.end.vector),
                "line": {"s": steps.tolist(), **columns},
                "barrier": {
                    "loss_a": barrier(columns["loss_a"], steps),
                    "loss_b": barrier(columns["loss_b"], steps),
                },
            }
        )
    first, second = prepared.axes_from
    names = [task.name for task in prepared.sequence.tasks[:2]]
    return {
        "tasks": {"a": names[0], "b": names[1]},
        "seed": runs[0].results["seed"],
        "theta_a_step": runs[0].start.step,
        "parameters": int(origin.numel()),
        "images_per_task": {"a": data.split, "b": len(data.targets) - data.split},
        "output_units": "those active once task B is learned (row 2 of the accuracy matrix)",
        "batch_norm": "every point is evaluated in eval mode, the grid's and the lines' points "
        "between their ends with θ*_A's buffers (BatchNorm's running statistics, if any: a "
        "point off a trajectory has none of its own), the lines' ends with their own",
        "plane": {
            "origin": "theta_a",
            "e1_towards": entries[first]["label"],
            "e2_towards": entries[second]["label"],
            "how": "ê₁ points from θ*_A to the end point furthest from it; ê₂ to the end point "
            "with the largest part orthogonal to ê₁ (Gram–Schmidt); coordinates are distances "
            "in parameter space along ê₁ and ê₂",
        },
        "fisher": {
            "of": "task A at θ*_A, diagonal",
            "estimator": "exact"
            if runs[0].results["config"]["fisher"]["estimator"] == "batched"
            else runs[0].results["config"]["fisher"]["estimator"],
            "num_samples": runs[0].results["config"]["fisher"]["num_samples"],
            "trace": float(fisher.sum()),
        },
        "grid": {
            "size": grid_size,
            "x": xs.tolist(),
            "y": ys.tolist(),
            **{name: values[..., k].tolist() for k, name in enumerate(METRICS)},
            "low": {
                "factor": LOW,
                "loss_a": LOW * lowest[0],
                "loss_b": LOW * lowest[1],
            },
        },
        "runs": entries,
    }
