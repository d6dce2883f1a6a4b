"""The reduced ResNet-18: its shape and size, and the Fisher estimators on it (BatchNorm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ewcexp.importance.fisher import estimate_fisher
from ewcexp.importance.per_sample import plan_for as _plan
from ewcexp.model.networks import ResNet18
from tests.test_fisher import brute_force_fisher

CONFIG = Path(__file__).resolve().parents[1] / "src" / "ewcexp" / "conf" / "model" / "resnet18.yaml"
SHAPE = (3, 12, 12)  # every stage still has a 3x3 neighbourhood: 12, 6, 3, 2 pixels


def tiny_resnet() -> ResNet18:
    """Width 4: every block and path of the full model, small enough to loop over samples.
    BatchNorm's running statistics are warmed and its affine parameters randomised, so
    eval mode is a transform that a mix-up of statistics or parameters would change."""
    torch.manual_seed(0)
    model = ResNet18(SHAPE, 5, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        for _ in range(3):
            model(torch.randint(0, 256, (32, *SHAPE), dtype=torch.uint8))
    return model


def test_default_width_has_the_reduced_resnet18_size():
    """1,094,750 parameters on CIFAR with 10 outputs: the ~1.09M of GEM's reduced ResNet-18."""
    model = instantiate(OmegaConf.load(CONFIG), input_shape=(3, 32, 32), out_features=10)
    assert isinstance(model, ResNet18)
    assert sum(p.numel() for p in model.parameters()) == 1_094_750
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(set(widths)) == [20, 40, 80, 160] and model.head.in_features == 160


@pytest.mark.parametrize(
    ("input_shape", "batch_shape"),
    [((3, 32, 32), (3, 3, 32, 32)), ((28, 28), (3, 28, 28)), ((1, 28, 28), (3, 1, 28, 28))],
    ids=["cifar", "mnist grey", "mnist one channel"],
)
def test_output_shape(input_shape, batch_shape):
    model = ResNet18(input_shape, 10).eval()
    with torch.no_grad():
        logits = model(torch.randint(0, 256, batch_shape, dtype=torch.uint8))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32


def test_each_layer_takes_its_fisher_path():
    """Convolutions go through unfold, the output layer through the closed form, and only
    BatchNorm's parameters through torch.func."""
    model = tiny_resnet().eval()
    plan = _plan(model, list(model.parameters()), torch.zeros(1, *SHAPE, dtype=torch.uint8))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20 and plan.convs == convs and plan.linears == [model.head]
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert {n.rsplit(".", 1)[0] for n in plan.others} == norms
    assert len(plan.others) == 2 * len(norms)


@pytest.mark.parametrize("estimator", ["exact", "sample", "empirical"])
def test_fisher_equals_definition(estimator):
    model = tiny_resnet()
    assert not torch.equal(model.stem[1].running_var, torch.ones(4))  # warmed, not the default
    images = torch.randint(0, 256, (6, *SHAPE), dtype=torch.uint8)
    labels = torch.randint(0, 5, (6,))
    fast = estimate_fisher(
        model,
        images,
        labels,
        estimator=estimator,
        active=slice(0, 5),
        chunk_size=64 if estimator == "sample" else 4,  # one chunk: the same draws as below
        generator=torch.Generator().manual_seed(7),
    )
    slow = brute_force_fisher(
        model, images, labels, estimator, slice(0, 5), generator=torch.Generator().manual_seed(7)
    )
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-4, atol=1e-7)
    assert all(float(f.sum()) > 0 for f in fast)


@pytest.mark.parametrize("training", [True, False], ids=["train mode", "eval mode"])
def test_fisher_leaves_mode_and_batchnorm_statistics_alone(training):
    model = tiny_resnet().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimate_fisher(
        model,
        torch.randint(0, 256, (6, *SHAPE), dtype=torch.uint8),
        torch.randint(0, 5, (6,)),
        estimator="empirical",  # every estimator runs the same passes; this one runs fewest
        active=slice(0, 5),
        chunk_size=4,
    )
    assert model.training == training
    assert all(m.training == training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
