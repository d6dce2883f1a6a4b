"""`train.precision`: bf16 and fp16 autocast against fp32 on a small network; the weights,
their gradients and every importance stay fp32; fp16's scaler keeps the penalty's gradient
unscaled and skips a step that overflowed; fp16 on a CPU is one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ewcexp.training.loop import MixedPrecision
from tests.conftest import TINY, run_cli


def small() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    return model, torch.randn(64, 20), torch.randint(5, (64,))


def gradients(model: nn.Module, precision: MixedPrecision, x, y) -> list[torch.Tensor]:
    params = list(model.parameters())
    for p in params:
        p.grad = None
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    precision.backward(loss, params)
    if precision.scaler is not None:
        precision.scaler.unscale_(torch.optim.SGD(params, lr=0.0))
    return [p.grad.clone() for p in params]


@pytest.mark.parametrize("low", ["bf16", "fp16"])
def test_autocast_gradients_are_fp32_and_match_fp32_to_the_rounding_of_the_format(low):
    model, x, y = small()
    exact = gradients(model, MixedPrecision("fp32", "cpu"), x, y)
    rough = gradients(model, MixedPrecision(low, "cpu"), x, y)
    assert all(g.dtype == torch.float32 for g in rough)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tolerance = 3e-2 if low == "bf16" else 5e-3  # 8 and 11 bits of mantissa
    for e, r in zip(exact, rough, strict=True):
        assert (r - e).norm() <= tolerance * e.norm()
        assert not torch.equal(r, e)  # the format did act


def test_fp16_scaler_leaves_the_penalty_gradient_written_first_unscaled():
    """The penalty's gradient is in `.grad` before backward (the loop writes it there): the
    scaler multiplies it with the loss, and unscaling gives penalty + loss gradient."""
    model, x, y = small()
    params = list(model.parameters())
    loss_gradients = gradients(model, MixedPrecision("fp16", "cpu"), x, y)
    penalty = [torch.full_like(p, 0.5) for p in params]
    precision = MixedPrecision("fp16", "cpu")
    for p, g in zip(params, penalty, strict=True):
        p.grad = g.clone()
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    precision.backward(loss, params)
    precision.scaler.unscale_(torch.optim.SGD(params, lr=0.0))
    for p, g, lg in zip(params, penalty, loss_gradients, strict=True):
        assert torch.allclose(p.grad, g + lg, atol=1e-6)


def test_fp16_skips_a_step_whose_gradients_overflowed_and_says_so():
    model, x, y = small()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    precision = MixedPrecision("fp16", "cpu")
    optimizer = torch.optim.SGD(params, lr=0.1)
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(x), y) * float("inf")
    precision.backward(loss, params)
    assert precision.step(optimizer) is False
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    for p in params:
        p.grad = None
    precision.backward(loss, params)
    assert precision.step(optimizer) is True
    assert not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ewc", "si"])
def test_a_bf16_run_lands_beside_the_fp32_run_with_fp32_importances(tmp_path, data_root, strategy):
    """The same run in fp32 and bf16 through the command line: both complete, their final
    accuracies within 3 points, their importance statistics finite and of the same order
    (the trajectories differ by bf16's rounding, so not equal)."""
    found = {}
    for precision in ("fp32", "bf16"):
        folder = tmp_path / precision
        folder.mkdir()
        done = run_cli(
            *TINY, f"strategy={strategy}", f"train.precision={precision}", cwd=folder,
            data_root=data_root,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        found[precision] = json.loads((folder / "run" / "results.json").read_text())
        saved = torch.load(folder / "run" / "checkpoint.pt", weights_only=True)
        stored = [t for t in _tensors(saved["strategy"]) if t.is_floating_point()]
        assert stored and all(t.dtype == torch.float32 for t in stored)
    assert found["bf16"]["config"]["train"]["precision"] == "bf16"
    assert abs(found["bf16"]["avg_acc"] - found["fp32"]["avg_acc"]) < 0.03
    kind = found["fp32"]["importance"]
    for fp32, bf16 in zip(found["fp32"][kind], found["bf16"][kind], strict=True):
        for name, stats in fp32["per_parameter"].items():
            ratio = bf16["per_parameter"][name]["mean"] / stats["mean"]
            assert 0.5 < ratio < 2, (name, ratio)


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, list | tuple):
        return [t for value in state for t in _tensors(value)]
    return []


@pytest.mark.slow
def test_fp16_on_a_cpu_is_one_line_and_nothing_is_written(tmp_path, data_root):
    done = run_cli(*TINY, "train.precision=fp16", cwd=tmp_path, data_root=data_root)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert (
        "error: train.precision=fp16 is not allowed on cpu: its gradient scaler is for GPUs"
        in done.stderr
    )
    assert not (tmp_path / "run" / "results.json").exists()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
