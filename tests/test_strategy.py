"""The penalty strategies against the formulas of ewc-math.md."""

from __future__ import annotations

import pytest
import torch

from ewcexp.importance.penalty import QuadraticPenalty
from ewcexp.strategy.baselines import Finetune, Joint
from ewcexp.strategy.ewc import EWC, L2, EWCSum, OnlineEWC

SHAPES = [(4, 3), (3,), (2, 4)]


def random_tensors(generator, scale=1.0, zero_fraction=0.0):
    out = []
    for shape in SHAPES:
        t = torch.randn(shape, generator=generator) * scale
        if zero_fraction:
            t = t.abs() * (torch.rand(shape, generator=generator) >= zero_fraction)
        out.append(t)
    return out


def consolidate_tasks(strategy, num_tasks, seed=0):
    """Feed `num_tasks` random (θ*, F) pairs; F has exact zeros, as real Fishers do."""
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(num_tasks):
        anchor = random_tensors(generator)
        fisher = random_tensors(generator, zero_fraction=0.3)
        strategy.consolidate(anchor, fisher)
        history.append((anchor, fisher))
    return history


def explicit_penalty(params, history, strength):
    """(λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)², differentiable."""
    return (
        0.5
        * strength
        * sum(
            (f * (p - a) ** 2).sum()
            for anchor, fisher in history
            for p, a, f in zip(params, anchor, fisher, strict=True)
        )
    )


def penalty_gradient(strategy, params):
    leaves = [p.clone().requires_grad_() for p in params]
    for leaf in leaves:
        leaf.grad = torch.full_like(leaf, float("nan"))  # overwritten, never added to
    strategy.write_penalty_gradient(leaves)
    return [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]


def autograd_gradient(params, history, strength):
    leaves = [p.clone().requires_grad_() for p in params]
    return torch.autograd.grad(explicit_penalty(leaves, history, strength), leaves)


@pytest.mark.parametrize("num_tasks", [1, 3, 6])
def test_ewc_gradient_and_value_match_the_definition(num_tasks):
    strategy = EWC(strength=7.0)
    history = consolidate_tasks(strategy, num_tasks)
    params = random_tensors(torch.Generator().manual_seed(99))
    for got, want in zip(
        penalty_gradient(strategy, params), autograd_gradient(params, history, 7.0), strict=True
    ):
        torch.testing.assert_close(got, want)
    assert strategy.penalty_value(params) == pytest.approx(
        float(explicit_penalty(params, history, 7.0)), rel=1e-5
    )


@pytest.mark.parametrize("num_tasks", [3, 5])
def test_ewc_sum_equals_separate_penalties(num_tasks):
    separate, merged = EWC(strength=3.0), EWCSum(strength=3.0)
    consolidate_tasks(separate, num_tasks)
    consolidate_tasks(merged, num_tasks)
    assert len(separate.penalty.terms) == num_tasks and len(merged.penalty.terms) == 1
    for seed in range(3):
        params = random_tensors(torch.Generator().manual_seed(100 + seed), scale=2.0)
        for a, b in zip(
            penalty_gradient(separate, params), penalty_gradient(merged, params), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        # the kept constant makes the logged value equal too
        assert merged.penalty_value(params) == pytest.approx(
            separate.penalty_value(params), rel=1e-5
        )


def test_ewc_sum_anchor_is_precision_weighted_mean_and_latest_where_no_precision():
    strategy = EWCSum(strength=1.0)
    strategy.consolidate([torch.tensor([1.0, 5.0, 2.0])], [torch.tensor([1.0, 0.0, 0.0])])
    strategy.consolidate([torch.tensor([4.0, 7.0, 3.0])], [torch.tensor([2.0, 0.0, 0.0])])
    (term,) = strategy.penalty.terms
    anchor = term.anchor
    torch.testing.assert_close(strategy.accumulated_importance()[0], torch.tensor([3.0, 0.0, 0.0]))
    torch.testing.assert_close(anchor[0], torch.tensor([3.0, 7.0, 3.0]))  # (1·1+2·4)/3 = 3


def test_online_ewc_with_gamma_one_accumulates_the_summed_fisher_anchored_at_the_latest():
    online, summed = OnlineEWC(strength=1.0, gamma=1.0), EWCSum(strength=1.0)
    history = consolidate_tasks(online, 4)
    consolidate_tasks(summed, 4)
    (term,) = online.penalty.terms
    online_anchor = term.anchor
    for a, b in zip(online.accumulated_importance(), summed.accumulated_importance(), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(online_anchor, history[-1][0], strict=True):
        torch.testing.assert_close(a, b)


def test_online_ewc_decays_the_running_fisher_once_per_task():
    online = OnlineEWC(strength=2.0, gamma=0.5)
    history = consolidate_tasks(online, 3)
    precision = online.accumulated_importance()
    for i, got in enumerate(precision):
        f = [fisher[i] for _, fisher in history]
        torch.testing.assert_close(got, 0.25 * f[0] + 0.5 * f[1] + f[2])
    params = random_tensors(torch.Generator().manual_seed(5))
    decayed = [(history[-1][0], precision)]
    for got, want in zip(
        penalty_gradient(online, params), autograd_gradient(params, decayed, 2.0), strict=True
    ):
        torch.testing.assert_close(got, want)


def test_l2_is_the_penalty_with_unit_fisher():
    l2, ewc = L2(strength=4.0), EWC(strength=4.0)
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        anchor = random_tensors(generator)
        l2.consolidate(anchor, None)
        ewc.consolidate(anchor, [torch.ones_like(a) for a in anchor])
    params = random_tensors(generator)
    for a, b in zip(penalty_gradient(l2, params), penalty_gradient(ewc, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert l2.penalty_value(params) == pytest.approx(ewc.penalty_value(params), rel=1e-5)


def test_baselines_have_no_penalty_and_joint_trains_on_everything_seen():
    for strategy in (Finetune(), Joint()):
        consolidate_tasks(strategy, 2)
        params = random_tensors(torch.Generator().manual_seed(1))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in penalty_gradient(strategy, params))
        assert strategy.penalty_value(params) == 0.0
    assert Finetune().training_tasks(["a", "b", "c"]) == ["c"]
    assert Joint().training_tasks(["a", "b", "c"]) == ["a", "b", "c"]


def test_penalty_gradient_creates_missing_grads():
    penalty = QuadraticPenalty(strength=2.0)
    penalty.add([torch.ones(3)], [torch.zeros(3)])
    param = torch.full((3,), 2.0, requires_grad=True)
    penalty.write_gradient([param])
    torch.testing.assert_close(param.grad, torch.full((3,), 4.0))  # λ·F·(θ−θ*) = 2·1·2


def test_penalty_gradient_keeps_its_precision_when_theta_is_close_to_the_anchor():
    """A stiff penalty (λ = 1e9, as in the class-incremental preset) near its anchor: the
    gradient must match float64 to float32 rounding, not lose digits to cancellation."""
    anchor = torch.linspace(-0.1, 0.1, 101)
    params = anchor + 1e-6 * torch.randn(101, generator=torch.Generator().manual_seed(0))
    fisher = torch.rand(101, generator=torch.Generator().manual_seed(1)) * 1e-4
    strategy = EWCSum(strength=1e9)
    strategy.consolidate([anchor], [fisher])
    (got,) = penalty_gradient(strategy, [params])
    want = 1e9 * fisher.double() * (params.double() - anchor.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_zero_strength_gives_a_zero_gradient_and_logs_no_accumulated_importance():
    strategy = EWCSum(strength=0.0)
    consolidate_tasks(strategy, 2)
    params = random_tensors(torch.Generator().manual_seed(2))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in penalty_gradient(strategy, params))
    assert strategy.penalty_value(params) == 0.0
    assert strategy.accumulated_importance() is None
