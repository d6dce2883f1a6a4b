"""LoRA adapters against their definition: W·x + (α/r)·B·A·x, the network unchanged at the
start, only adapters and the output layer training, the exact Fisher of an adapted network
equal to the per-sample brute force; `model.lora` through the command line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ewcexp.config.checks import ConfigError
from ewcexp.importance.fisher import estimate_fisher
from ewcexp.model.lora import LoRAConv2d, LoRALinear, LoRASettings, add_adapters
from ewcexp.model.networks import CNN, MLP
from ewcexp.model.weights import output_layer
from tests.conftest import TINY, run_cli
from tests.test_fisher import brute_force_fisher


def test_an_adapted_layer_is_its_base_plus_the_scaled_low_rank_product():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, rank=2, scale=0.5)
    x = torch.randn(3, 6)
    assert torch.equal(layer(x), base(x))  # B = 0 at the start: the network as it was
    nn.init.normal_(layer.up.weight)
    a, b = layer.down.weight, layer.up.weight
    assert torch.allclose(layer(x), base(x) + 0.5 * x @ a.T @ b.T, atol=1e-6)
    conv = LoRAConv2d(nn.Conv2d(3, 5, 3, padding=1), rank=2, scale=1.0)
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(conv(images), conv.base(images))
    assert conv.down.weight.shape == (2, 3, 3, 3) and conv.up.weight.shape == (5, 2, 1, 1)


def test_adapters_wrap_every_layer_but_the_output_one_and_only_they_and_the_head_train():
    torch.manual_seed(0)
    model = CNN((28, 28), out_features=10, channels=[4, 8], hidden_size=16)
    images = torch.randint(0, 255, (5, 28, 28), dtype=torch.uint8)
    before = model(images)
    adapters = add_adapters(model, LoRASettings(rank=2))
    assert torch.equal(model(images), before)
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear | LoRAConv2d)}
    linear_or_conv = {n.removesuffix(".base") for n, m in model.named_modules()
                      if isinstance(m, nn.Linear | nn.Conv2d) and n.endswith(".base")}  # fmt: skip
    assert wrapped == linear_or_conv and len(wrapped) == 3  # two convolutions, the hidden layer
    assert len(adapters) == 6 and all(n.endswith((".down.weight", ".up.weight")) for n in adapters)
    assert output_layer(model) == [n for n, _ in model.named_parameters() if n.startswith(
        [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1] + ".")]  # fmt: skip
    with pytest.raises(ConfigError, match=r"'head\*' matches no linear or convolutional layer"):
        add_adapters(MLP((28, 28), 10), LoRASettings(rank=2, targets=["head*"]))


def test_the_exact_fisher_of_an_adapted_network_is_the_per_sample_brute_force():
    """Only adapters (and the output layer) are trainable: the Fisher has their entries, as a
    backward pass per sample and class gives them."""
    torch.manual_seed(0)
    model = MLP((6, 6), out_features=4, hidden_sizes=[8])
    adapters = add_adapters(model, LoRASettings(rank=3))
    for n, p in model.named_parameters():
        p.requires_grad_(n in adapters + output_layer(model))
        if n.endswith("up.weight"):
            nn.init.normal_(p)  # away from B = 0, where A's gradient vanishes
    images = torch.randint(0, 255, (7, 6, 6), dtype=torch.uint8)
    labels = torch.randint(0, 4, (7,))
    fast = estimate_fisher(model, images, labels, estimator="exact", active=slice(0, 4))
    slow = brute_force_fisher(model, images, labels, "exact", slice(0, 4))
    assert len(fast) == len(adapters) + 2
    for f, s in zip(fast, slow, strict=True):
        assert torch.allclose(f, s, rtol=1e-4, atol=1e-8)


@pytest.mark.slow
def test_lora_through_the_command_line_trains_adapters_and_head_and_resumes_from_model_pt(
    tmp_path, data_root
):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    done = run_cli(*TINY, "strategy=ewc", "model.lora.rank=4", cwd=first, data_root=data_root)
    assert done.returncode == 0, done.stderr
    results = json.loads((first / "run" / "results.json").read_text())
    hidden = 784 * 4 + 4 * 32  # the one hidden layer's adapter: A is 4×784, B is 32×4
    assert results["parameters"]["trainable"] == hidden + 32 * 10 + 10
    assert set(results["fisher"][0]["per_parameter"]) == {
        "layers.0.down.weight", "layers.0.up.weight", "layers.2.weight", "layers.2.bias"
    }  # fmt: skip
    saved = torch.load(first / "run" / "model.pt", weights_only=True)["state_dict"]
    done = run_cli(
        *TINY, "strategy=ewc", "model.lora.rank=4", f"model.weights={first / 'run' / 'model.pt'}",
        "train.iterations=1", cwd=second, data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = torch.load(second / "run" / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(again["layers.0.base.weight"], saved["layers.0.base.weight"])
    done = run_cli(*TINY, "model.lora.rank=0", cwd=tmp_path, data_root=data_root)
    assert done.returncode != 0
    assert (
        "error: model.lora.rank=0 is not allowed: expected null or an integer >= 1" in done.stderr
    )
