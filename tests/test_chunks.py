"""`chunk_size=auto`: the per-sample engine picks its chunk from a memory budget; the
result is the one any fixed chunk gives."""

from __future__ import annotations

import torch

from ewcexp.importance.fisher import estimate_fisher
from ewcexp.importance.per_sample import _saved_bytes, chunk_for, plan_for
from ewcexp.model.networks import CNN


def test_auto_chunks_grow_with_the_budget_and_give_the_same_fisher():
    torch.manual_seed(0)
    model = CNN((28, 28), out_features=10, channels=[8, 16], hidden_size=32)
    images = torch.randint(0, 255, (300, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    params = [p for p in model.parameters() if p.requires_grad]
    plan = plan_for(model, params, images[:1])
    chunks = [chunk_for(model, plan, images, "auto", 9, mb) for mb in (1, 8, 64, 512)]
    assert chunks == sorted(chunks) and chunks[0] >= 1 and chunks[-1] > chunks[0]
    # the measure it rests on: autograd's saved bytes grow linearly with the samples
    one, two, four = (_saved_bytes(model, images[:n]) for n in (1, 2, 4))
    assert four - two == 2 * (two - one) > 0
    fixed = estimate_fisher(model, images, labels, estimator="exact", active=slice(0, 10))
    for mb in (1, 64):
        auto = estimate_fisher(
            model, images, labels, estimator="exact", active=slice(0, 10),
            chunk_size="auto", memory_mb=mb,
        )  # fmt: skip
        for a, f in zip(auto, fixed, strict=True):
            assert torch.allclose(a, f, rtol=1e-4, atol=1e-9)
    assert chunk_for(model, plan, images, 32, 9, 1) == 32  # a number is taken as given


def test_exact_over_many_classes_is_warned_about_in_one_line():
    from ewcexp.importance.fisher import Fisher

    assert Fisher("exact").cost_warning(10) is None
    assert Fisher("sample").cost_warning(1000) is None
    line = Fisher("exact").cost_warning(1000)
    assert line is not None and "\n" not in line
    assert line.startswith("fisher.estimator=exact over 1000 active classes takes 999 backward")
