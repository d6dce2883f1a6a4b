"""The per-sample engine for large networks: `chunk_size=auto` picks its chunk from a memory
budget (the result is the one any fixed chunk gives); linear layers on token sequences (a
transformer's) take the shared-weight path, checked against brute force; `exact` over many
classes is warned about."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ewcexp.importance.fisher import estimate_fisher
from ewcexp.importance.per_sample import _saved_bytes, chunk_for, plan_for
from ewcexp.model.networks import CNN
from tests.test_fisher import brute_force_fisher


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


class Tokens(nn.Module):
    """A tiny transformer-like network: rows of the image as tokens, a linear layer and a
    LayerNorm on every token, attention-like mixing within a sample, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(torch.tanh(self.embed(images.float() / 255)))  # [N, 6 rows, 8]
        weights = (tokens @ tokens.transpose(1, 2)).softmax(-1)
        return self.head(torch.tanh(self.mix(weights @ tokens)).mean(1))


@pytest.mark.parametrize("estimator", ["exact", "empirical"])
def test_linear_layers_on_token_sequences_take_the_shared_weight_path_and_match_brute_force(
    estimator,
):
    torch.manual_seed(0)
    model = Tokens()
    images = torch.randint(0, 255, (9, 6, 6), dtype=torch.uint8)
    labels = torch.randint(0, 4, (9,))
    params = [p for p in model.parameters() if p.requires_grad]
    plan = plan_for(model, params, images[:1])
    assert plan.sequences == [model.embed, model.mix] and plan.linears == [model.head]
    assert set(plan.others) == {"norm.weight", "norm.bias"}
    fast = estimate_fisher(model, images, labels, estimator=estimator, active=slice(0, 4))
    slow = brute_force_fisher(model, images, labels, estimator, slice(0, 4))
    for f, s in zip(fast, slow, strict=True):
        assert torch.allclose(f, s, rtol=1e-4, atol=1e-9)
