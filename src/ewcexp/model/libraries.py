"""torchvision's and timm's architectures by name (`model=torchvision model.arch=resnet18`,
`model=timm model.arch=vit_tiny_patch16_224`), with their pretrained weights.

`weights` is what the library calls a set of weights: a name its own download fetches
(torchvision: `DEFAULT`, `IMAGENET1K_V1`, ...; timm: `pretrained` or a tag such as
`augreg_in21k_ft_in1k`), or the PATH of such a file (what that download writes; this is the
way in on a machine without internet), or an earlier ewcexp run's `model.pt` of the same
architecture. Every tensor is loaded but the output layer, which the runner sizes for the
scenario (a new head); any other tensor that is missing or of another shape is one line.

The data stays as it is held (uint8, its own size): `Adapted` scales, repeats grey to three
channels, resizes and normalises each batch on the device, as the weights expect.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewcexp.config.checks import ConfigError
from ewcexp.config.schema import PositiveInt
from ewcexp.model.networks import as_float
from ewcexp.model.weights import FORMAT, first_misfit, load_weights, output_layer_name, read_weights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Adapted(nn.Module):
    """A library network fed the data set's own images: per batch, on the device, uint8 to
    [0, 1], grey repeated to the network's channels, resized to `image_size` (bilinear),
    normalised with the weights' mean and standard deviation. Parameters: `net.<name>`."""

    def __init__(
        self,
        net: nn.Module,
        channels: int,
        image_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.net, self.channels, self.image_size = net, channels, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = as_float(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[1] == 1 and self.channels > 1:
            x = x.expand(-1, self.channels, -1, -1)
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def torchvision_network(
    arch: str,
    input_shape: tuple[int, ...],
    out_features: int,
    weights: str | None = None,
    image_size: PositiveInt | None = 224,
) -> nn.Module:
    """torchvision's `arch` with `out_features` outputs; `weights`: see the module."""
    import torchvision

    names = torchvision.models.list_models()
    if arch not in names:
        raise ConfigError(_unknown("torchvision", arch, names))
    net = torchvision.models.get_model(arch, weights=None, num_classes=out_features)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None and not _is_file(weights):
        try:
            chosen = torchvision.models.get_model_weights(arch)[weights]
        except KeyError:
            options = list(torchvision.models.get_model_weights(arch).__members__)
            raise ConfigError(
                f"model.weights={weights} is not allowed: {arch}'s weights are "
                f"{', '.join(options)}, or the path of a file of them"
            ) from None
        try:  # the library's download (cached under $TORCH_HOME)
            library = torchvision.models.get_model(arch, weights=chosen)
        except OSError as error:  # no network here: one line, and the way round it
            raise ConfigError(
                f"model.weights={weights} is not allowed: torchvision could not fetch {chosen} "
                f"({' '.join(str(error).split())[:200]}); on a machine without internet give "
                f"the path of the file ({chosen.url.rsplit('/', 1)[-1]}) instead"
            ) from None
        _transfer(library.state_dict(), net, f"model.weights={weights}", arch)
        mean, std = chosen.transforms().mean, chosen.transforms().std
    return _adapted(net, arch, input_shape, weights, image_size, mean, std)


def timm_network(
    arch: str,
    input_shape: tuple[int, ...],
    out_features: int,
    weights: str | None = None,
    image_size: PositiveInt | None = None,
) -> nn.Module:
    """timm's `arch` with `out_features` outputs; `weights`: see the module; `image_size`
    None: the architecture's own input size."""
    import timm

    names = timm.list_models()
    if arch not in names:
        raise ConfigError(_unknown("timm", arch, names))
    sized = {"img_size": image_size} if image_size is not None else {}
    if weights is not None and not _is_file(weights):
        tag = "" if weights == "pretrained" else f".{weights}"
        try:  # the library's download, its head replaced by one of out_features
            net = _timm_model(arch + tag, True, out_features, sized)
        except Exception as error:  # noqa: BLE001 - no network, an unknown tag: one line
            why = " ".join(str(error).split())[:300]
            raise ConfigError(
                f"model.weights={weights} is not allowed: timm could not fetch {arch}{tag} "
                f"({type(error).__name__}: {why}); on a machine without internet give the "
                "path of the weights file instead"
            ) from None
    else:
        net = _timm_model(arch, False, out_features, sized)
    config = net.pretrained_cfg
    size = image_size or config.get("input_size", (3, 224, 224))[-1]
    return _adapted(
        net, arch, input_shape, weights, size,
        config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD),
    )  # fmt: skip


def _timm_model(name: str, pretrained: bool, out_features: int, sized: dict) -> nn.Module:
    """timm's `name`, built for `model.image_size` where its layers depend on the input size
    (a ViT's position embeddings take `img_size`); the other architectures take any size."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=out_features, **sized)
    except TypeError:  # an architecture without `img_size`: its input is only resized
        return timm.create_model(name, pretrained=pretrained, num_classes=out_features)


def _adapted(
    net: nn.Module,
    arch: str,
    input_shape: tuple[int, ...],
    weights: str | None,
    image_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
) -> Adapted:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    model = Adapted(net, channels, image_size, mean, std)
    if weights is not None and _is_file(weights):
        contents, state = read_weights(weights)
        if contents.get("format") == FORMAT:  # an earlier ewcexp run's model.pt: the whole model
            load_weights(model, weights, arch)
        else:
            _transfer(state, net, f"model.weights={weights}", arch)
    return model


def _transfer(state: dict[str, Tensor], net: nn.Module, where: str, arch: str) -> None:
    """Every tensor of `state` into `net`, but the output layer (the last `nn.Linear`, which
    the runner sized): any other tensor missing or of another shape is one line."""
    new = tuple(f"{name}." for name in [output_layer_name(net)] if name)
    own = net.state_dict()
    if (misfit := first_misfit(state, own, new)) is not None:
        raise ConfigError(f"{where} does not fit {arch}: {misfit}")
    kept = {n: t for n, t in state.items() if n in own and not n.startswith(new)}
    kept |= {n: t for n, t in own.items() if n.startswith(new)}  # the new head as initialised
    net.load_state_dict(kept)


def _is_file(weights: str) -> bool:
    return (
        Path(weights).expanduser().is_file()
        or "/" in weights
        or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def _unknown(library: Literal["torchvision", "timm"], arch: str, names: list[str]) -> str:
    close = difflib.get_close_matches(arch, names, n=4, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"{len(names)} names, none close"
    return f"model.arch={arch} is not allowed: {library} has no such architecture ({hint})"
