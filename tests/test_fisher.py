"""Every Fisher estimator against its definition, computed one sample at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ewcexp.importance.fisher import ESTIMATORS, _signals, estimate_fisher, signal_count
from ewcexp.importance.per_sample import FLOATS_PER_CHUNK
from ewcexp.importance.per_sample import plan_for as _plan
from ewcexp.model.networks import CNN, MLP


def brute_force_fisher(model, images, labels, estimator, active, generator=None, batch_size=None):
    """The definitions of ewc-math.md, literally: a backward pass per sample (and per class)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]

    def add_squared_grad(scalar, weight=1.0):
        for t, g in zip(total, torch.autograd.grad(scalar, params, retain_graph=True), strict=True):
            t += weight * g * g

    if estimator == "batched":
        batches = range(0, len(images), batch_size)
        for start in batches:
            logits = model(images[start : start + batch_size])[:, active]
            add_squared_grad(F.cross_entropy(logits, labels[start : start + batch_size]))
        return [t / len(batches) for t in total]

    with torch.no_grad():
        probs = model(images)[:, active].softmax(-1)
    drawn = (
        torch.multinomial(probs, 1, generator=generator).squeeze(1)
        if estimator == "sample"
        else None
    )
    for n in range(len(images)):
        log_probs = model(images[n : n + 1])[0, active].log_softmax(-1)
        if estimator == "exact":
            for c in range(len(log_probs)):
                add_squared_grad(log_probs[c], probs[n, c].item())
        else:
            target = labels[n] if estimator == "empirical" else drawn[n]
            add_squared_grad(log_probs[target])
    return [t / len(images) for t in total]


class SharedLinear(nn.Module):
    """One Linear applied twice per sample: no closed form, so torch.func computes it."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(6, 6)
        self.out = nn.Linear(6, 5)

    def forward(self, x):
        return self.out(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


class WithBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        return self.net(x)


class Mixed(nn.Module):
    """All three paths in one model: a strided, dilated, bias-free conv and a plain conv
    (unfold), BatchNorm (torch.func), Linear layers (closed form)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=2, bias=False)
        self.norm = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 2)
        self.head = nn.Sequential(nn.Linear(4 * 3 * 3, 6), nn.Tanh(), nn.Linear(6, 5))

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.norm(self.conv1(x)))))
        return self.head(x.flatten(1))


def models():
    """name -> (model, shape of one input), built afresh with fixed weights."""
    torch.manual_seed(0)
    return {
        "mlp (closed form)": (MLP((6,), 5, hidden_sizes=[7, 4]), (6,)),
        "cnn (unfold + closed form)": (CNN((7, 7), 5, channels=[3], hidden_size=4), (7, 7)),
        "mixed (all three paths)": (Mixed(), (2, 8, 8)),
        "shared linear (torch.func)": (SharedLinear(), (6,)),
        "batchnorm (torch.func)": (WithBatchNorm(), (6,)),
    }


def warm_batchnorm(model, shape):
    """Give running statistics non-trivial values, so eval mode visibly differs from train mode."""
    model.train()
    model(torch.randn(64, *shape) * 3 + 1)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("active", [slice(0, 5), slice(2, 5)], ids=["all units", "one head"])
def test_estimator_equals_definition(estimator, name, active):
    model, shape = models()[name]
    warm_batchnorm(model, shape)
    images = torch.randn(23, *shape)
    labels = torch.randint(0, active.stop - active.start, (23,))
    fast = estimate_fisher(
        model,
        images,
        labels,
        estimator=estimator,
        active=active,
        chunk_size=64 if estimator == "sample" else 5,
        batch_size=5,
        generator=torch.Generator().manual_seed(7),
    )
    slow = brute_force_fisher(
        model,
        images,
        labels,
        estimator,
        active,
        generator=torch.Generator().manual_seed(7),
        batch_size=5,
    )
    for f, s in zip(fast, slow, strict=True):
        assert f.shape == s.shape and not f.requires_grad
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-7)
    assert sum(float(f.sum()) for f in fast) > 0


def test_each_layer_takes_its_path():
    mixed = Mixed()
    plan = _plan(mixed, list(mixed.parameters()), torch.randn(1, 2, 8, 8))
    assert len(plan.linears) == 2 and len(plan.convs) == 2
    assert sorted(plan.others) == ["norm.bias", "norm.weight"]
    shared = SharedLinear()
    plan = _plan(shared, list(shared.parameters()), torch.randn(1, 6))
    assert plan.linears == [shared.out] and sorted(plan.others) == ["inner.bias", "inner.weight"]


def test_chunks_stay_within_the_memory_budget():
    model = CNN((28, 28), 10)
    plan = _plan(model, list(model.parameters()), torch.randn(1, 28, 28))
    per_sample = 32 * 28 * 28 + 64 * 14 * 14 + 128 + 10  # output gradients of every fast layer
    assert plan.floats_per_sample == per_sample
    assert plan.max_chunk(10) * per_sample * 10 <= FLOATS_PER_CHUNK


def test_chunking_does_not_change_per_sample_estimates():
    model, _ = models()["mlp (closed form)"]
    images, labels = torch.randn(50, 6), torch.randint(0, 5, (50,))
    whole = estimate_fisher(
        model, images, labels, estimator="exact", active=slice(0, 5), chunk_size=50
    )
    chunked = estimate_fisher(
        model, images, labels, estimator="exact", active=slice(0, 5), chunk_size=7
    )
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_fisher_leaves_model_mode_and_batchnorm_statistics_alone():
    model, shape = models()["mixed (all three paths)"]
    warm_batchnorm(model, shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_fisher(
        model,
        torch.randn(10, *shape),
        torch.randint(0, 5, (10,)),
        estimator="exact",
        active=slice(0, 5),
    )
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_batched_estimate_shrinks_with_batch_size():
    """The minibatch estimator is not per sample: larger batches average gradients out."""
    model, _ = models()["mlp (closed form)"]
    images, labels = torch.randn(256, 6), torch.randint(0, 5, (256,))

    def total(batch_size):
        return sum(
            float(f.sum())
            for f in estimate_fisher(
                model,
                images,
                labels,
                estimator="batched",
                active=slice(0, 5),
                batch_size=batch_size,
            )
        )

    assert total(1) > 5 * total(64)


def test_single_sample_batches_equal_empirical():
    model, _ = models()["mlp (closed form)"]
    images, labels = torch.randn(12, 6), torch.randint(0, 5, (12,))
    batched = estimate_fisher(
        model, images, labels, estimator="batched", active=slice(0, 5), batch_size=1
    )
    empirical = estimate_fisher(model, images, labels, estimator="empirical", active=slice(0, 5))
    for a, b in zip(batched, empirical, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="estimator='foo'"):
        estimate_fisher(
            MLP((6,), 5, [4]),
            torch.randn(2, 6),
            torch.zeros(2, dtype=torch.long),
            estimator="foo",
            active=slice(0, 5),
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("classes", [1, 2, 3, 10])
def test_exact_signals_sum_to_the_softmax_curvature(classes, dtype):
    """`exact` uses C − 1 signals l_j in place of the C terms √p_c (onehot(c) − p): their
    outer products must sum to Σ_c p_c (onehot(c) − p)(onehot(c) − p)ᵀ, confident rows too."""
    logits = torch.randn(50, classes, dtype=dtype) * 4
    logits[0, -1], logits[1, 0] = 60.0, 60.0  # p ≈ onehot(last) and p ≈ onehot(first)
    probs = logits.softmax(-1)
    signals = _signals(probs, None, "exact", None)
    assert signals.shape == (signal_count("exact", slice(0, classes)), 50, classes)
    found = torch.einsum("snc,snd->ncd", signals, signals)
    defined = 0
    for c in range(classes):
        centred = F.one_hot(torch.tensor(c), classes).to(dtype) - probs
        defined = defined + probs[:, c, None, None] * centred[:, :, None] * centred[:, None, :]
    tolerance = 1e-15 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(found, defined, rtol=0, atol=tolerance)
