"""A-GEM and LwF against their definitions: A-GEM's projection on hand-made gradients and on a
tiny model's, LwF's distillation gradient against its closed form, the heads it distills
over in each scenario; and both (with EWC, with replay) through the command line, a killed
LwF run resumed with its teacher."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from torch import nn

from ewcexp.strategy.agem import AGEM, agem_projection
from ewcexp.strategy.lwf import distillation, past_heads
from tests.conftest import TINY, read_wandb_run, run_cli
from tests.test_resume import killed_run, whole_run


def test_agem_projects_a_conflicting_gradient_and_leaves_an_agreeing_one():
    reference = torch.tensor([-1.0, 1.0])
    conflicting = torch.tensor([1.0, 0.0])  # gᵀg_ref = -1 < 0
    projected = agem_projection(conflicting, reference)
    assert torch.allclose(projected, torch.tensor([0.5, 0.5]))  # g − (−1/2)·g_ref
    assert float(projected @ reference) == pytest.approx(0.0)  # no longer raises the memory's loss
    agreeing = torch.tensor([1.0, 2.0])  # gᵀg_ref = 1 > 0
    assert torch.equal(agem_projection(agreeing, reference), agreeing)
    assert torch.equal(agem_projection(agreeing, torch.zeros(2)), agreeing)  # an empty reference


def test_agem_constrains_a_models_gradient_with_the_memorys_as_one_vector():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    params = list(model.parameters())
    x, y, xm, ym = (
        torch.randn(5, 3),
        torch.tensor([0, 1, 0, 1, 1]),
        torch.randn(4, 3),
        torch.tensor([1, 1, 0, 0]),
    )

    def loss_on(inputs, labels):
        return nn.functional.cross_entropy(model(inputs), labels)

    g = torch.cat([t.flatten() for t in torch.autograd.grad(loss_on(x, y), params)])
    g_ref = torch.cat([t.flatten() for t in torch.autograd.grad(loss_on(xm, ym), params)])
    expected = g if g @ g_ref >= 0 else g - (g @ g_ref) / (g_ref @ g_ref) * g_ref
    agem = AGEM()
    # twice with one instance (its buffers kept between steps; .grad then views into them),
    # after gradients set to None and after gradients zeroed in place
    for set_to_none in (True, False):
        model.zero_grad(set_to_none=set_to_none)
        loss_on(x, y).backward()
        agem.constrain_gradient(params, lambda: loss_on(xm, ym))
        got = torch.cat([p.grad.flatten() for p in params])
        assert torch.allclose(got, expected, atol=1e-6)
    for flipped in (False, True):  # both branches of the rule, on the model's own gradients
        reference = -g_ref if flipped else g_ref
        dot = float(g @ reference)
        result = agem_projection(g, reference)
        assert torch.allclose(result, g) == (dot >= 0)


def test_lwf_gradient_on_the_logits_is_its_closed_form():
    """∂/∂z of −(1/N) Σ_n Σ_k p_old,k log softmax(z/T)_k over a head is (softmax(z/T) − p_old)/(N·T)
    on the head's units and 0 elsewhere; through a linear layer, the chain rule's."""
    torch.manual_seed(1)
    layer = nn.Linear(6, 5)
    inputs, teacher = torch.randn(4, 6), torch.randn(4, 5)
    heads, temperature = [slice(0, 2), slice(2, 4)], 2.0
    logits = layer(inputs)
    (by_autograd,) = torch.autograd.grad(distillation(logits, teacher, heads, temperature), logits)
    closed = torch.zeros_like(logits)
    for units in heads:
        student = torch.softmax(logits[:, units].detach() / temperature, dim=1)
        target = torch.softmax(teacher[:, units] / temperature, dim=1)
        closed[:, units] = (student - target) / (len(inputs) * temperature)
    assert torch.allclose(by_autograd, closed, atol=1e-7)
    assert torch.all(by_autograd[:, 4] == 0)  # a unit in no head
    layer.zero_grad()
    distillation(layer(inputs), teacher, heads, temperature).backward()
    assert torch.allclose(layer.weight.grad, closed.T @ inputs, atol=1e-6)


def test_lwf_distills_over_each_past_tasks_units_once():
    assert past_heads([slice(0, 2), slice(2, 4), slice(4, 6)]) == [
        slice(0, 2),
        slice(2, 4),
        slice(4, 6),
    ]  # task scenario: one head per past task
    assert past_heads([slice(0, 10)] * 3) == [slice(0, 10)]  # domain: the shared head
    assert past_heads([slice(0, 2), slice(0, 4), slice(0, 6)]) == [slice(0, 6)]  # class


def results(run_dir) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "scenario"),
    [
        ("strategy=agem replay.size=60", "task"),
        ("strategy=agem replay.size=60", "class"),
        ("strategy=lwf", "task"),
        ("strategy=lwf", "domain"),
        ("strategy=lwf_ewc replay.size=60", "class"),
    ],
)
def test_agem_and_lwf_run_through_the_command_line_and_w_and_b_has_them(
    tmp_path, data_root, strategy, scenario
):
    quiet = [o for o in TINY if o != "logger=none"]
    done = run_cli(
        *quiet, "task_sequence=split_mnist", f"task_sequence.scenario={scenario}",
        *strategy.split(), cwd=tmp_path, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = results(tmp_path / "run")
    name = strategy.split()[0].removeprefix("strategy=")
    assert outcome["status"] == "completed" and outcome["strategy"] == name
    assert outcome["importance"] == ("fisher" if name == "lwf_ewc" else None)
    records = read_wandb_run(tmp_path / "run")
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    config = run["config"].get("update", run["config"])
    assert config["strategy"] == outcome["config"]["strategy"]
    assert config["replay"] == outcome["config"]["replay"]


@pytest.mark.slow
def test_a_killed_lwf_run_with_a_memory_resumes_with_its_teacher_to_the_same_numbers(
    tmp_path, data_root
):
    import torch as torch_

    base = [*TINY, "task_sequence.num_tasks=4", "strategy=lwf", "replay.size=30"]
    whole = whole_run(tmp_path, data_root, base=base)
    run_dir = tmp_path / "run"
    where = "ewcexp.training.loop.active_cross_entropy"
    stopped = killed_run(where, 40, run_dir, data_root, signal.SIGTERM, base=base)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    saved = torch_.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (saved["tasks_done"], saved["task_steps"]) == (1, 10)
    assert "teacher" in saved["strategy"] and saved["strategy"]["actives"] == [(0, 10)]
    resumed = run_cli(*base, cwd=tmp_path, data_root=data_root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for key in ("acc_matrix", "avg_acc", "bwt", "forgetting", "per_task"):
        assert results(run_dir)[key] == whole[key], key
