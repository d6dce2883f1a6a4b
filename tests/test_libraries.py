"""torchvision's and timm's architectures by name: each batch adapted on the way in (uint8 →
[0, 1], grey → RGB, resized, normalised) while the data stays as held; weights from a file
of the library's, all but the new head; an unknown name or a misfit file is one line."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from ewcexp.config.checks import ConfigError
from ewcexp.model.libraries import Adapted, timm_network, torchvision_network
from tests.conftest import TINY, run_cli


class Seen(nn.Module):
    """Records what the wrapped network is fed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.inputs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs = x
        return self.conv(x).mean(dim=(2, 3))


def test_each_batch_is_scaled_repeated_to_rgb_resized_and_normalised_in_the_forward_pass():
    seen = Seen()
    model = Adapted(seen, channels=3, image_size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    images = torch.full((2, 4, 4), 255, dtype=torch.uint8)  # grey, 4×4, as a data set holds it
    images[:, :2] = 0
    model(images)
    x = seen.inputs
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    expected_top, expected_bottom = (0 - 0.5) / 0.2, (1 - 0.5) / 0.2
    assert x[0, 0, 0, 0].item() == pytest.approx(expected_top)
    assert x[0, 0, -1, -1].item() == pytest.approx(expected_bottom)
    assert x[0, 2, -1, -1].item() == pytest.approx((1 - 0.3) / 0.5)  # per channel
    assert images.dtype == torch.uint8 and images.shape == (2, 4, 4)  # the batch untouched
    assert not [n for n, _ in model.state_dict().items() if n in ("mean", "std")]


def test_a_torchvision_file_loads_all_but_the_new_head_and_a_misfit_names_its_tensor(tmp_path):
    torch.manual_seed(0)
    library = torchvision.models.resnet18()  # 1000 ImageNet classes, as the download has
    torch.save(library.state_dict(), tmp_path / "resnet18.pth")
    model = torchvision_network("resnet18", (28, 28), 10, weights=str(tmp_path / "resnet18.pth"))
    state = model.state_dict()
    for name, tensor in library.state_dict().items():
        if name.startswith("fc."):
            assert state[f"net.{name}"].shape[0] == 10  # the runner's head
        else:
            assert torch.equal(state[f"net.{name}"], tensor), name
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(
        ConfigError, match=r"does not fit resnet18: the model has no tensor 'layer1.2"
    ):
        torchvision_network("resnet18", (28, 28), 10, weights=str(tmp_path / "resnet34.pth"))
    with pytest.raises(ConfigError, match=r"model.arch=resnet19 .* \(close names: resnet18"):
        torchvision_network("resnet19", (28, 28), 10)
    with pytest.raises(ConfigError, match=r"resnet18's weights are IMAGENET1K_V1, DEFAULT"):
        torchvision_network("resnet18", (28, 28), 10, weights="IMAGENET")


def test_a_timm_file_loads_all_but_the_new_head_with_the_architectures_normalisation(tmp_path):
    torch.manual_seed(0)
    library = timm.create_model("resnet10t", pretrained=False)
    torch.save(library.state_dict(), tmp_path / "resnet10t.pth")
    model = timm_network("resnet10t", (3, 32, 32), 4, weights=str(tmp_path / "resnet10t.pth"))
    state = model.state_dict()
    assert torch.equal(state["net.conv1.0.weight"], library.state_dict()["conv1.0.weight"])
    assert state["net.fc.weight"].shape == (4, 512)
    assert model.image_size == library.pretrained_cfg["input_size"][-1]
    assert model.mean.flatten().tolist() == pytest.approx(list(library.pretrained_cfg["mean"]))
    with pytest.raises(ConfigError, match=r"timm has no such architecture \(close names: vit_tiny"):
        timm_network("vit_tiny_patch16_24", (28, 28), 10)


@pytest.mark.slow
def test_torchvision_and_timm_architectures_run_end_to_end_frozen_and_in_bf16(tmp_path, data_root):
    """A resnet18 from a file of its weights, only its last block and head training, in bf16;
    a ViT at its own 160×160 from the 28×28 digits (timm's `test_vit`: vit_tiny_patch16_224
    takes minutes on this CPU; docs/results.md has its run): both complete through the command line,
    the run's model.pt is accepted back as weights."""
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    short = [*(o for o in TINY if not o.startswith("model.")), "train.iterations=3", "train.batch_size=8", "fisher.num_samples=8",
             "task_sequence.num_tasks=2", "task_sequence.first_unpermuted=true"]  # fmt: skip
    runs = {
        "torchvision": ["model=torchvision", "model.arch=resnet18", "model.image_size=32",
                        f"model.weights={weights}", "model.trainable=[net.layer4.*,net.fc.*]",
                        "train.precision=bf16"],
        "timm": ["model=timm", "model.arch=test_vit"],  # timm's small ViT for tests, 160×160
    }  # fmt: skip
    for name, overrides in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        done = run_cli(*short, *overrides, cwd=folder, data_root=data_root)
        assert done.returncode == 0, done.stderr
        results = json.loads((folder / "run" / "results.json").read_text())
        assert results["status"] == "completed"
        counts = results["parameters"]
        assert (counts["trainable"] < counts["total"]) == (name == "torchvision")
    again = tmp_path / "again"
    again.mkdir()
    done = run_cli(
        *short, *runs["torchvision"][:3],
        f"model.weights={tmp_path / 'torchvision' / 'run' / 'model.pt'}", cwd=again,
        data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    # T0 from a library network: an ewcexp run's model.pt has an output layer for the classes
    # it learned (loaded into T0's units); the library's own weights file has none for them
    learned = json.loads((tmp_path / "torchvision" / "run" / "results.json").read_text())
    t0 = ["task_sequence.pretrained_on=mnist"]
    (again / "t0").mkdir()
    (again / "no").mkdir()
    done = run_cli(
        *short, *runs["torchvision"][:3], *t0,
        f"model.weights={tmp_path / 'torchvision' / 'run' / 'model.pt'}", cwd=again / "t0",
        data_root=data_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((again / "t0" / "run" / "results.json").read_text())
    assert results["acc_pretrained"][0] == pytest.approx(learned["acc_matrix"][-1][0], abs=1e-6)
    refused = run_cli(*short, *runs["torchvision"][:4], *t0, cwd=again / "no", data_root=data_root)
    errors = [row for row in refused.stderr.splitlines() if row.startswith("error:")]
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert len(errors) == 1 and f"model.weights={weights}" in errors[0], refused.stderr
    assert "pretrained_on" in errors[0]
    assert not any((again / "no" / "run" / name).exists() for name in ("checkpoint.pt", "model.pt"))


def test_a_vit_given_an_image_size_is_built_for_it_and_a_convnet_only_resizes():
    """timm's ViT takes `img_size` (its position embeddings depend on it): at model.image_size=32
    it has 2×2 patches; a ResNet has no such argument and runs at any size."""
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    vit = timm_network("vit_tiny_patch16_224", (1, 28, 28), 10, image_size=32)
    assert vit.net.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # the class token and 4 patches
    assert vit(images).shape == (2, 10)
    resnet = timm_network("resnet18", (1, 28, 28), 10, image_size=32)
    assert resnet.image_size == 32 and resnet(images).shape == (2, 10)
