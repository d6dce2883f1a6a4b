"""Snapshots (`train.snapshot_every`) and `python -m ewcexp.landscape`: the plane's geometry
against its definition, the batched grid against the model with each point's parameters
loaded, the paths and lines against the snapshots and the runs' recorded accuracies, the
command's refusals, and W&B read back."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from ewcexp.app.landscape import main as landscape
from ewcexp.config.checks import check_config
from ewcexp.model.networks import CNN, MLP, ResNet18
from ewcexp.training import snapshots
from ewcexp.training.landscape import (
    EvaluationData,
    Plane,
    choose_axes,
    evaluate_point,
    first_layer,
    grid_values,
    line_values,
)
from ewcexp.training.runner import run_experiment
from tests.conftest import TINY, compose_config, read_wandb_run, run_cli
from tests.test_resume import killed_run
from tests.test_wandb import summary as logged_summary

TWO_TASKS = [*TINY, "task_sequence.num_tasks=2", "train.snapshot_every=7"]


def test_the_planes_defining_points_have_exact_coordinates():
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(5000, generator=generator, dtype=torch.float64) for _ in range(3))
    plane = Plane.through(a, b, c)
    assert plane.coordinates(a) == (0.0, 0.0)
    x, y = plane.coordinates(b)
    assert x == pytest.approx(float((b - a).norm()), rel=1e-12)
    assert abs(y) < 1e-10
    x, y = plane.coordinates(c)
    offset = c - a
    along = offset @ (b - a) / (b - a).norm()
    assert x == pytest.approx(float(along), rel=1e-12)
    assert y == pytest.approx(float((offset.norm() ** 2 - along**2).sqrt()), rel=1e-10)
    assert all(plane.distance(p) < 1e-10 for p in (a, b, c))
    assert (plane.axes @ plane.axes.T - torch.eye(2, dtype=torch.float64)).abs().max() < 1e-12
    normal = torch.randn(5000, generator=generator, dtype=torch.float64)  # off the plane:
    normal -= plane.axes.T @ (plane.axes @ normal)
    assert plane.distance(a + 3 * normal / normal.norm()) == pytest.approx(3.0, rel=1e-9)


def test_the_plane_goes_through_the_furthest_end_and_the_one_most_across_it():
    origin = torch.zeros(3)
    ends = [torch.tensor([1.0, 0.1, 0]), torch.tensor([4.0, 0, 0]), torch.tensor([2.0, 2, 0])]
    assert choose_axes(origin, ends) == (1, 2)


def tiny_data(images: int = 40, shape: tuple[int, ...] = (28, 28)) -> EvaluationData:
    generator = torch.Generator().manual_seed(1)
    pictures = torch.randint(0, 256, (2 * images, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 2, (2 * images,), generator=generator)
    return EvaluationData(pictures, labels, images, (slice(0, 2), slice(2, 4)))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize(
    ("build", "shape", "first"),
    [
        (lambda: MLP((28, 28), 4, [16, 8]), (28, 28), "layers.0"),
        (lambda: CNN((12, 12), 4, [4], 8), (12, 12), "features.0"),
        (lambda: ResNet18((3, 8, 8), 4, width=2), (3, 8, 8), "stem.0"),  # BatchNorm: eval mode
        (lambda: nn.Sequential(nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 4)), (4, 4), None),
    ],
)
def test_the_loss_at_a_grid_point_is_the_models_with_those_parameters_loaded(build, shape, first):
    """Batched over points (the first layer's output combined per point where it is a Linear
    or Conv2d layer; else every parameter per point) against a model holding each point's
    parameters, evaluated the plain way."""
    torch.manual_seed(0)
    model = build().eval()
    if first is None:  # a float network: LayerNorm before any Linear
        data = tiny_data(shape=shape)
        data.images = data.images.float() / 255
    else:
        data = tiny_data(shape=shape)
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
    assert first_layer(model, data.images[:2]) == first
    a = flat(model)
    generator = torch.Generator().manual_seed(2)
    plane = Plane.through(a, *(a + 0.5 * torch.randn(a.shape, generator=generator) for _ in "bc"))
    xs, ys = (
        torch.linspace(-1, 2, 4, dtype=torch.float64),
        torch.linspace(-1, 1.5, 3, dtype=torch.float64),
    )
    values = grid_values(copy_of(model), plane, data, xs, ys, chunk=5)
    assert values.shape == (3, 4, 4)
    for i, y in enumerate(ys.tolist()):
        for j, x in enumerate(xs.tolist()):
            theta = (plane.origin + x * plane.axes[0] + y * plane.axes[1]).float()
            plain = evaluate_point(copy_of(model), theta, data)
            assert values[i, j, 0::2] == pytest.approx(plain[0::2].tolist(), rel=1e-4, abs=1e-5)
            assert values[i, j, 1::2].tolist() == plain[1::2].tolist()  # accuracies: exact


def copy_of(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_a_lines_ends_are_its_own_points_and_its_middle_is_batched():
    torch.manual_seed(0)
    model = MLP((28, 28), 4, [16]).eval()
    data = tiny_data()
    start = snapshot_of(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    end = snapshot_of(model)
    steps = torch.linspace(0, 1, 5, dtype=torch.float64)
    line = line_values(copy_of(model), start, end, data, steps, chunk=2)
    offset = end.vector.double() - start.vector.double()
    for s, values in zip(steps.tolist(), line, strict=True):
        point = start.vector if s == 0 else end.vector if s == 1 else start.vector + s * offset
        expected = evaluate_point(copy_of(model), point.float(), data).tolist()
        assert values.tolist() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert line[-1].tolist() == evaluate_point(copy_of(model), end.vector, data).tolist()


def snapshot_of(model: nn.Module) -> snapshots.Snapshot:
    """The model's state as a task end's snapshot holds it."""
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    return snapshots.Snapshot(0, 0, names, flat(model), state)


def test_snapshots_are_fp16_between_task_ends_fp32_at_them_and_discarded_beyond_a_step(tmp_path):
    torch.manual_seed(0)
    model = MLP((28, 28), 10, [400, 400])
    snapshots.save(tmp_path, 50, 0, model, task_end=False)
    snapshots.save(tmp_path, 500, 0, model, task_end=True)
    with torch.no_grad():
        model.layers[0].weight[0, 0] = 1e6  # beyond fp16: that tensor stays fp32
    snapshots.save(tmp_path, 550, 1, model, task_end=False)
    (tmp_path / "snapshots" / "step_00000600.pt.partial").write_bytes(b"cut short")
    kept = snapshots.load(tmp_path)
    assert [(s.step, s.task, s.task_end) for s in kept] == [
        (50, 0, False),
        (500, 0, True),
        (550, 1, False),
    ]
    exact = flat(model)
    assert torch.equal(kept[1].state["layers.0.weight"][1:], model.layers[0].weight[1:].detach())
    assert (kept[0].vector - kept[1].vector).abs().max() <= 2**-11 * kept[1].vector.abs().max()
    assert kept[2].vector[0] == 1e6 and torch.equal(kept[2].vector[: 784 * 400], exact[: 784 * 400])
    raw = torch.load(tmp_path / "snapshots" / "step_00000050.pt", weights_only=True)
    assert {t.dtype for t in raw["parameters"].values()} == {torch.float16}
    size = (tmp_path / "snapshots" / "step_00000050.pt").stat().st_size
    assert 2 * 478_410 < size < 2 * 478_410 + 20_000  # 20 of them: about 19 MB
    snapshots.discard_after(tmp_path, 500)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == [
        "step_00000050.pt",
        "step_00000500.pt",
    ]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, data_root) -> tuple[list[Path], dict]:
    """finetune and ewc on two tasks with snapshots, in this process; then the landscape."""
    root = tmp_path_factory.mktemp("landscape")
    dirs = []
    for strategy in ("finetune", "ewc"):
        cfg = compose_config(*TWO_TASKS, f"data.root={data_root}", f"strategy={strategy}")
        check_config(cfg)
        run_experiment(cfg, root / strategy)
        dirs.append(root / strategy)
    code = landscape(
        [*map(str, dirs), "--out", str(root / "out"), "--grid", "5", "--line-points", "5"]
    )
    assert code == 0
    return dirs, json.loads((root / "out" / "landscape.json").read_text())


def test_a_runs_snapshots_are_every_n_steps_and_each_task_end(two_runs):
    dirs, _ = two_runs
    kept = snapshots.load(dirs[0])
    assert [s.step for s in kept] == [7, 14, 21, 28, 30, 35, 42, 49, 56, 60]
    assert [s.step for s in kept if s.task_end] == [30, 60]
    final = torch.load(dirs[0] / "model.pt", weights_only=True)
    state = final.get("state_dict", final)
    assert all(torch.equal(kept[-1].state[n], t) for n, t in state.items() if n in kept[-1].state)


def test_each_path_passes_through_its_snapshots_projections(two_runs):
    dirs, result = two_runs
    origin = snapshots.load(dirs[0])[4].vector  # θ*_A: step 30, task 1's end
    ends = [snapshots.load(d)[-1].vector for d in dirs]
    first, second = choose_axes(origin, ends)
    plane = Plane.through(origin, ends[first], ends[second])
    for run_dir, entry in zip(dirs, result["runs"], strict=True):
        path = [s for s in snapshots.load(run_dir) if s.task == 1]
        assert entry["path"]["steps"] == [30, *(s.step for s in path)]
        expected = [plane.coordinates(origin), *(plane.coordinates(s.vector) for s in path)]
        assert entry["path"]["x"] == pytest.approx([x for x, _ in expected])
        assert entry["path"]["y"] == pytest.approx([y for _, y in expected], abs=1e-9)
        lengths = sum(
            float((b.vector.double() - a.vector.double()).norm())
            for a, b in zip([snapshots.load(dirs[0])[4], *path], path, strict=False)
        )
        assert entry["path_length"] == pytest.approx(lengths)
    assert (result["runs"][0]["path"]["x"][0], result["runs"][0]["path"]["y"][0]) == (0.0, 0.0)
    grid = result["grid"]
    for entry in result["runs"]:  # the grid holds every path
        assert grid["x"][0] < min(entry["path"]["x"]) and max(entry["path"]["x"]) < grid["x"][-1]
        assert grid["y"][0] < min(entry["path"]["y"]) and max(entry["path"]["y"]) < grid["y"][-1]


def test_each_lines_ends_are_the_runs_recorded_accuracies(two_runs):
    """All 100 test images per task (fewer than --images): the line starts at θ*_A with row 1
    of the accuracy matrix and ends at the run's end point with row 2."""
    dirs, result = two_runs
    for run_dir, entry in zip(dirs, result["runs"], strict=True):
        matrix = json.loads((run_dir / "results.json").read_text())["acc_matrix"]
        line = entry["line"]
        assert [line["acc_a"][0], line["acc_b"][0]] == matrix[0][:2]
        assert [line["acc_a"][-1], line["acc_b"][-1]] == matrix[1][:2]
    assert result["images_per_task"] == {"a": 100, "b": 100}


def test_the_figure_and_every_number_are_written(two_runs, tmp_path):
    dirs, result = two_runs
    out = dirs[0].parent / "out"
    assert (out / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    assert len(result["grid"]["loss_a"]) == 5 and len(result["grid"]["loss_a"][0]) == 5
    for entry in result["runs"]:
        assert entry["path_length"] >= entry["straight_distance"] > 0
        assert entry["path_length_fisher"] > 0 and entry["end_distance_to_plane"] < 1e-6
        assert set(entry["barrier"]) == {"loss_a", "loss_b"}
    assert result["plane"]["e1_towards"] in {"finetune", "ewc λ=400"}


def fabricated_run(folder: Path, seed: int = 0, with_snapshots: bool = True) -> Path:
    """A completed run's files, written by hand: results.json and two task ends."""
    torch.manual_seed(seed)
    model = MLP((28, 28), 10, [8])
    config = {
        "seed": seed, "model": {"hidden_sizes": [8]}, "data": {"validation_size": 0},
        "task_sequence": {"num_tasks": 2, "scenario": "domain"}, "fisher": {},
    }  # fmt: skip
    results = {
        "status": "completed", "strategy": "finetune", "lambda": 0, "seed": seed,
        "acc_matrix": [[0.9, 0.1], [0.5, 0.9]], "config": config,
    }  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    if with_snapshots:
        snapshots.save(folder, 30, 0, model, task_end=True)
        snapshots.save(folder, 60, 1, model, task_end=True)
    return folder


@pytest.mark.parametrize(
    ("make", "options", "line"),
    [
        (lambda d: [fabricated_run(d / "a"), fabricated_run(d / "b", seed=1)], [],
         r"RUN_DIR=.*b is not allowed: its seed=1 differs from .*a's seed=0: the runs must share their seed and first task"),
        (lambda d: [fabricated_run(d / "a"), fabricated_run(d / "b", with_snapshots=False)], [],
         r"RUN_DIR=.*b is not allowed: it has no snapshots: run it with train.snapshot_every=N"),
        (lambda d: [fabricated_run(d / "a"), d / "missing"], [], r"RUN_DIR=.*missing is not allowed: expected a run directory"),
        (lambda d: [fabricated_run(d / "a")], [], r"RUN_DIR=.*a is not allowed: expected two runs or more"),
        (lambda d: [fabricated_run(d / "a"), fabricated_run(d / "b")], ["--grid", "0"], r"^--grid=0 is not allowed: expected an integer in \[2, 201\]$"),
        (lambda d: [fabricated_run(d / "a"), fabricated_run(d / "b")], ["--grid", "1000"], r"^--grid=1000 is not allowed: expected an integer in \[2, 201\]$"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, capsys, make, options, line):
    import re

    dirs = make(tmp_path)
    out = tmp_path / "out"
    assert landscape([*map(str, dirs), "--out", str(out), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: "), error
    assert re.search(line, error.removeprefix("error: ")), error
    assert not out.exists()


def test_runs_whose_first_task_ended_elsewhere_are_refused(tmp_path, capsys):
    a, b = fabricated_run(tmp_path / "a"), fabricated_run(tmp_path / "b")
    torch.manual_seed(5)
    snapshots.save(b, 30, 0, MLP((28, 28), 10, [8]), task_end=True)  # another θ*_A
    assert landscape([str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    assert "its weights at the end of task 1 differ from" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_runs_whose_ends_span_no_plane_are_refused(tmp_path, capsys):
    """Both runs end where task 1 ended (fabricated so): no two directions to draw."""
    dirs = [fabricated_run(tmp_path / name) for name in "ab"]
    assert landscape([*map(str, dirs), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("so they span no plane: add a run that ends elsewhere"), error
    assert len(error.splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_with_the_snapshots_of_one_never_stopped(tmp_path, data_root):
    """Killed (no cleanup) in task 2 after snapshots beyond its checkpoint were written,
    then preempted mid-task 3 and resumed: the same files, tensor for tensor."""
    base = [*TINY, "train.snapshot_every=7", "strategy=ewc"]
    whole = tmp_path / "whole"
    whole.mkdir()
    assert run_cli(*base, cwd=whole, data_root=data_root).returncode == 0
    run_dir = tmp_path / "run"
    for when, signum in ((50, signal.SIGKILL), (75, signal.SIGTERM)):
        killed_run(
            "ewcexp.training.loop.active_cross_entropy", when, run_dir, data_root, signum, base=base
        )
    assert run_cli(*base, cwd=tmp_path, data_root=data_root).returncode == 0
    expected, resumed = snapshots.load(whole / "run"), snapshots.load(run_dir)
    assert [s.step for s in resumed] == [s.step for s in expected]
    for mine, theirs in zip(resumed, expected, strict=True):
        assert torch.equal(mine.vector, theirs.vector)
    assert not list((run_dir / "snapshots").glob("*.partial"))


@pytest.mark.slow
def test_a_three_strategy_multirun_and_one_command_give_the_figure_logged_to_wandb(
    tmp_path, data_root
):
    done = run_cli("-m", "strategy=finetune,l2,ewc", *TWO_TASKS, cwd=tmp_path, data_root=data_root)
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p.parent for p in (tmp_path / "multirun").glob("*/results.json"))
    import subprocess
    import sys

    drawn = subprocess.run(
        [sys.executable, "-m", "ewcexp.landscape", *map(str, jobs), "--out", str(tmp_path / "out"),
         "--grid", "6", "--wandb", "offline"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "landscape.json").read_text())
    assert [r["strategy"] for r in result["runs"]] == ["finetune", "l2", "ewc"]
    records = read_wandb_run(tmp_path / "out")
    summary = logged_summary(records)
    for entry in result["runs"]:
        assert summary[f"{entry['label']}/path_length"] == pytest.approx(entry["path_length"])
        assert summary[f"{entry['label']}/barrier_loss_b"] == pytest.approx(
            entry["barrier"]["loss_b"]
        )
    assert summary["landscape._type"] == "image-file"
