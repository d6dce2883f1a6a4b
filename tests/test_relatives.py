"""SI and MAS, EWC's relatives on the same penalty core, against their definitions
(ewc-math.md), end to end through the CLI, and through kill-and-resume."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import pytest
import torch

from ewcexp.importance.contract import TaskData
from ewcexp.importance.mas import MASImportance
from ewcexp.strategy.ewcpp import EWCPlusPlus
from ewcexp.strategy.mas import MAS
from ewcexp.strategy.si import SI
from tests.conftest import REPO, TINY, read_wandb_run, run_cli
from tests.test_fisher import models, warm_batchnorm
from tests.test_resume import KILLER
from tests.test_strategy import autograd_gradient, explicit_penalty, penalty_gradient

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # a two-parameter quadratic


def quadratic_loss(theta, b):
    return 0.5 * theta @ A @ theta - b @ theta


def train_si(si, theta, b, steps, lr):
    """Plain SGD on the quadratic with SI's hooks, as the training loop calls them."""
    optimizer = torch.optim.SGD([theta], lr=lr)
    for _ in range(steps):
        si.write_penalty_gradient([theta])
        quadratic_loss(theta, b).backward()
        optimizer.step()
        si.after_step([theta])


def test_si_path_integral_is_minus_the_sum_of_task_gradient_times_step():
    """ω = −Σ g·Δθ with g the task loss's gradient only: by hand, for two tasks, the second
    trained under the first one's penalty."""
    si, lr, xi, strength = SI(strength=2.0, xi=0.1), 0.1, 0.1, 2.0
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    b1, b2 = (
        torch.tensor([1.0, 0.5], dtype=torch.float64),
        torch.tensor([-1.0, 2.0], dtype=torch.float64),
    )

    # by hand: θ ← θ − lr·(Aθ − b + λΩ(θ − θ*)), ω += −(Aθ − b)·Δθ
    hand, omega_total, anchor, start = theta.detach().clone(), None, None, theta.detach().clone()
    for b, steps in ((b1, 7), (b2, 5)):
        omega = torch.zeros(2, dtype=torch.float64)
        for _ in range(steps):
            task_gradient = A @ hand - b
            penalty_gradient_ = 0 if anchor is None else strength * omega_total * (hand - anchor)
            step = -lr * (task_gradient + penalty_gradient_)
            omega += -task_gradient * step
            hand = hand + step
        added = omega / ((hand - start) ** 2 + xi)
        omega_total = added if omega_total is None else omega_total + added
        anchor, start = hand.clone(), hand.clone()

        train_si(si, theta, b, steps, lr)
        torch.testing.assert_close(si.omega[0], omega)  # before consolidation: the path integral
        si.end_task(None, [theta], None)
        torch.testing.assert_close(theta.detach(), hand)
        torch.testing.assert_close(si.accumulated_importance()[0], omega_total)
    # the penalty: (λ/2)·Σ Ω (θ − θ*)² around the latest parameters, value and gradient
    params = [torch.tensor([0.3, 0.7], dtype=torch.float64)]
    history = [([anchor], [omega_total])]
    torch.testing.assert_close(
        penalty_gradient(si, params)[0], autograd_gradient(params, history, strength)[0]
    )
    assert si.penalty_value(params) == pytest.approx(
        float(explicit_penalty(params, history, strength))
    )


def test_si_with_zero_steps_adds_nothing_and_survives_a_checkpoint():
    """A task ended before any step adds Ω = 0 (nothing moved, no path); a state restored
    mid-task (ω, θ before the step, θ(μ−1)) goes on exactly as the original, through the end
    of the task and the penalty's gradient."""
    idle = SI(strength=1.0)
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    idle.end_task(None, [theta], None)
    assert torch.equal(idle.accumulated_importance()[0], torch.zeros(2, dtype=torch.float64))
    assert idle.penalty_value([theta.detach() + 1]) == 0

    b = torch.ones(2, dtype=torch.float64)
    si = SI(strength=1.0)
    train_si(si, theta, b, 3, 0.05)
    saved = io.BytesIO()
    torch.save(si.state_dict(), saved)  # as the checkpoint does: a copy, not shared tensors
    restored = SI(strength=1.0)
    restored.load_state_dict(torch.load(io.BytesIO(saved.getvalue())))
    twin = theta.detach().clone().requires_grad_()
    for strategy, params in ((si, theta), (restored, twin)):
        train_si(strategy, params, b, 4, 0.05)
        strategy.end_task(None, [params], None)
        train_si(strategy, params, 2 * b, 2, 0.05)  # under the first task's penalty
    assert torch.equal(twin, theta)
    assert si.omega[0].abs().sum() > 0 and si.accumulated_importance()[0].abs().sum() > 0
    for name in ("omega", "before_step", "task_start", "importance_sum"):
        for a, b_ in zip(getattr(restored, name), getattr(si, name), strict=True):
            assert torch.equal(a, b_), name


def test_ewcpp_running_fisher_is_the_moving_average_of_squared_task_gradients():
    """F ← α·g² + (1−α)·F every `update_every` steps (g: the task loss's gradient alone), by
    hand over two tasks, the second under the first one's penalty; then the penalty."""
    alpha, every, lr, strength = 0.3, 2, 0.1, 5.0
    ewcpp = EWCPlusPlus(strength=strength, alpha=alpha, update_every=every)
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    hand, running, anchor, fisher, step = theta.detach().clone(), None, None, None, 0
    for b, steps in ((torch.tensor([1.0, 0.5]), 7), (torch.tensor([-1.0, 2.0]), 6)):
        b = b.double()
        for _ in range(steps):
            task_gradient = A @ hand - b
            penalty = 0 if anchor is None else strength * fisher * (hand - anchor)
            hand = hand - lr * (task_gradient + penalty)
            step += 1
            if step % every == 0:
                new = task_gradient**2
                running = new if running is None else alpha * new + (1 - alpha) * running
        fisher, anchor = running.clone(), hand.clone()
        train_si(ewcpp, theta, b, steps, lr)  # the same hooks as SI's loop
        ewcpp.end_task(None, [theta], None)
        torch.testing.assert_close(theta.detach(), hand)
        torch.testing.assert_close(ewcpp.running[0], running)
    params = [torch.tensor([0.3, 0.7], dtype=torch.float64)]
    history = [([anchor], [fisher])]
    torch.testing.assert_close(
        penalty_gradient(ewcpp, params)[0], autograd_gradient(params, history, strength)[0]
    )
    assert ewcpp.penalty_value(params) == pytest.approx(
        float(explicit_penalty(params, history, strength))
    )


def brute_force_mas(model, images, active):
    """(1/N) Σ_n |∂‖f(x_n)‖²/∂θ|, literally: a backward pass per sample."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for n in range(len(images)):
        squared_norm = (model(images[n : n + 1])[0, active] ** 2).sum()
        for t, g in zip(total, torch.autograd.grad(squared_norm, params), strict=True):
            t += g.abs()
    return [t / len(images) for t in total]


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("active", [slice(0, 5), slice(2, 5)], ids=["all units", "one head"])
def test_mas_importance_equals_its_definition(name, active):
    model, shape = models()[name]
    warm_batchnorm(model, shape)
    images = torch.randn(23, *shape)
    unlabelled = (images, torch.zeros(23, dtype=torch.long))
    data = TaskData(lambda: unlabelled, active, torch.device("cpu"), torch.Generator())
    fast = MASImportance(chunk_size=5)(model, data)
    slow = brute_force_mas(model, images, active)
    for f, s in zip(fast, slow, strict=True):
        assert f.shape == s.shape and not f.requires_grad
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-7)
    assert all(float(f.sum()) > 0 for f in fast)


def test_mas_sums_importances_over_tasks_around_the_latest_parameters():
    mas = MAS(strength=3.0, importance=MASImportance())
    generator = torch.Generator().manual_seed(0)
    anchors, importances = [], []
    for _ in range(3):
        anchors.append(
            [torch.randn(4, 3, generator=generator), torch.randn(3, generator=generator)]
        )
        importances.append(
            [torch.rand(4, 3, generator=generator), torch.rand(3, generator=generator)]
        )
        mas.consolidate(anchors[-1], importances[-1])
    summed = [sum(parts) for parts in zip(*importances, strict=True)]
    params = [torch.randn(4, 3, generator=generator), torch.randn(3, generator=generator)]
    history = [(anchors[-1], summed)]
    for got, want in zip(
        penalty_gradient(mas, params), autograd_gradient(params, history, 3.0), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert mas.penalty_value(params) == pytest.approx(
        float(explicit_penalty(params, history, 3.0)), rel=1e-5
    )


@pytest.mark.slow
def test_si_mas_ewcpp_run_through_the_cli_in_every_scenario_and_log_their_importance(
    tmp_path, data_root
):
    done = run_cli(
        "-m",
        "strategy=si,mas,ewcpp",
        "task_sequence=split_mnist",
        "task_sequence.scenario=task,domain,class",
        "lambda=1",
        *[o for o in TINY if o != "logger=none"],
        cwd=tmp_path,
        data_root=data_root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p.parent for p in (tmp_path / "multirun").glob("*/results.json"))
    seen = set()
    for job in jobs:
        results = json.loads((job / "results.json").read_text())
        kind = {"ewcpp": "fisher"}.get(results["strategy"], results["strategy"])
        seen.add((results["strategy"], results["scenario"]))
        assert results["importance"] == kind and results["fisher_estimator"] is None
        assert len(results[kind]) == 3  # one entry per task
        assert "fisher" not in results or kind == "fisher"
        if kind != "fisher":
            assert results[kind][2]["accumulated"] is not None
        assert min(results["acc_matrix"][t][t] for t in range(3)) > 0.6  # every task learned
        for png in (f"{kind}_task1", f"{kind}_accumulated_task3")[: 1 if kind == "fisher" else 2]:
            assert (job / f"{png}.png").stat().st_size > 1000
    assert seen == {(s, c) for s in ("si", "mas", "ewcpp") for c in ("task", "domain", "class")}
    # the importance in W&B under its own name, equal to results.json's statistics
    job = next(j for j in jobs if json.loads((j / "results.json").read_text())["strategy"] == "mas")
    results = json.loads((job / "results.json").read_text())
    rows = [r["history"]["item"] for r in read_wandb_run(job) if r["type"] == "history"]
    logged = {row["task"]: row for row in rows if any(k.startswith("mas/") for k in row)}
    assert sorted(logged) == [1, 2, 3]
    name = "layers.0.weight"
    assert logged[1][f"mas/task/{name}._type"] == "histogram"
    assert logged[3][f"mas_stats/accumulated/{name}/mean"] == pytest.approx(
        results["mas"][2]["accumulated"][name]["mean"]
    )
    assert not any(k.startswith("fisher") for row in rows for k in row)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "state", "kind"), [("si", "omega", "si"), ("ewcpp", "running", "fisher")]
)
def test_killed_mid_task_resumes_to_the_uninterrupted_numbers(
    tmp_path, data_root, strategy, state, kind
):
    """SI's running ω (and θ before the step), EWC++'s running Fisher and step count are in
    the mid-task checkpoint."""
    args = [*TINY, f"strategy={strategy}", "lambda=1", f"data.root={data_root}"]
    for folder in ("whole", "cut"):
        (tmp_path / folder).mkdir()
    whole = run_cli(*args, cwd=tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    run_dir = tmp_path / "cut" / "run"
    for signum, when in ((signal.SIGTERM, 30 + 12), (signal.SIGKILL, 12)):
        cut = subprocess.run(
            [sys.executable, "-c", KILLER, "ewcexp.training.loop.active_cross_entropy", str(when),
             signum.name, str(REPO / "run.py"), *args, f"hydra.run.dir={run_dir}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert cut.returncode in (128 + signal.SIGTERM, -signal.SIGKILL), cut.stderr[-2000:]
        saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        assert (saved["tasks_done"], saved["task_steps"]) == (1, 12)
        assert saved["strategy"][state] is not None
    resumed = run_cli(*args, cwd=tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def numbers(folder):
        results = json.loads((folder / "run" / "results.json").read_text())
        return [results[k] for k in ("acc_matrix", "avg_acc", kind)]

    assert numbers(tmp_path / "cut") == numbers(tmp_path / "whole")
