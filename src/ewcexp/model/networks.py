"""Networks. Each takes raw uint8 images and scales them itself, so data stays uint8 in memory.

`build_model` builds whatever `model._target_` names: ours and a user's own take
`input_shape` and `out_features` (and uint8 images); any other network sized by
`num_classes`, such as torchvision's architectures, is fed [0, 1] float images through
`FloatImages`.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewcexp.config.checks import (
    MODEL_KEYS,
    ConfigError,
    declared_keys,
    show,
    takes_any_keyword,
    without_keys,
)
from ewcexp.config.schema import PositiveFloat, PositiveInt

if TYPE_CHECKING:
    from omegaconf import DictConfig

RUNNER_KEYS = ("input_shape", "out_features", "num_classes")  # what build_model fills in


def as_float(images: Tensor) -> Tensor:
    """uint8 pixels to [0, 1] floats; float input is taken as already scaled."""
    return images if images.is_floating_point() else images.float() / 255


def build_model(
    node: DictConfig,
    input_shape: tuple[int, ...],
    out_features: int,
    sample: Tensor,
    pretrained_units: int | None = None,
) -> nn.Module:
    """The network `node` names, for images of `input_shape` and `out_features` output units.
    `input_shape` and `out_features` go to a callable that takes them (then it takes uint8
    images); otherwise `num_classes=out_features` goes to one that takes it or **kwargs, and
    the network is wrapped in `FloatImages`. Its output on `sample` (a few training images)
    must be [N, out_features]: a mismatch is one line here, not a failure mid-training.
    Then `model.weights` (a file) is loaded (its output layer into the last
    `pretrained_units` units, for task_sequence.pretrained_on) and `model.trainable` freezes
    the rest (`ewcexp.model.weights`)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ewcexp.model.lora import LoRASettings, add_adapters
    from ewcexp.model.weights import freeze_all_but, holds_adapters, load_weights, output_layer

    if given := [key for key in RUNNER_KEYS if key in node]:
        raise ConfigError(
            f"model.{given[0]}={show(node[given[0]])} is not allowed: the runner sets it "
            "from the data and the scenario"
        )
    theirs = declared_keys(node._target_)[1]
    ours = {key: node[key] for key in MODEL_KEYS if key in node and key not in theirs}
    node = without_keys(node, ours)
    if pretrained_units and "weights" in theirs and node.get("weights") is not None:
        ours["weights"] = _run_weights_for_pretrained(node.weights)  # loaded here, head and all
        node = OmegaConf.merge(node, {"weights": None})
    # called here, not by Hydra, so that a ConfigError the model raises is not wrapped
    build = instantiate(node, _partial_=True)
    parameters = inspect.signature(build.func).parameters
    if "input_shape" in parameters or "out_features" in parameters:
        sizes = {"input_shape": input_shape, "out_features": out_features}
        model = build(**{key: value for key, value in sizes.items() if key in parameters})
    elif "num_classes" in parameters or takes_any_keyword(build.func):
        model = FloatImages(_passing_on(build, node, num_classes=out_features), input_shape)
    else:
        raise ConfigError(
            f"model._target_={node._target_} is not allowed: it takes none of input_shape, "
            "out_features, num_classes (or **kwargs), so its output layer cannot be sized"
        )
    _check_output(model, node._target_, sample, out_features)
    lora = LoRASettings(**_plain_keys(ours["lora"])) if "lora" in ours else LoRASettings()
    weights, trainable = ours.get("weights"), ours.get("trainable")
    later = weights is not None and lora.rank is not None and holds_adapters(weights)
    if weights and not later:  # a plain file: the network's own layers, before any adapter
        load_weights(model, weights, node._target_, pretrained_units)
    if lora.rank is not None:
        adapters = add_adapters(model, lora)
        trainable = adapters + (list(trainable) if trainable else output_layer(model))
    if later:  # a LoRA run's model.pt: adapters included
        load_weights(model, weights, node._target_, pretrained_units)
    if trainable:
        freeze_all_but(model, list(trainable))
    return model


def _run_weights_for_pretrained(weights: str) -> str:
    """A library network's `model.weights` under task_sequence.pretrained_on: only an ewcexp
    run's model.pt holds an output layer for the classes of that data set (the library's
    own weights have theirs for ImageNet's); one line otherwise."""
    from ewcexp.model.weights import FORMAT, read_weights

    if Path(weights).expanduser().is_file() and read_weights(weights)[0].get("format") == FORMAT:
        return weights
    raise ConfigError(
        f"model.weights={weights} is not allowed with task_sequence.pretrained_on: their "
        "output layer is not for that data set's classes; give the model.pt of an ewcexp run "
        "that learned it (any run writes <run dir>/model.pt)"
    )


def _plain_keys(section: DictConfig) -> dict[str, object]:
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(section, resolve=True)
    assert isinstance(values, dict)
    return {str(k): v for k, v in values.items() if k != "_target_"}


def _passing_on(build: Callable[..., nn.Module], node: DictConfig, **sizes: int) -> nn.Module:
    """`build(**sizes)`; a key the config check let through to **kwargs that the code it is
    passed on to does not take is one line, as an undeclared key is."""
    try:
        return build(**sizes)
    except TypeError as error:
        refused = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if refused is None or refused[1] not in node:
            raise _not_built(node, error) from None
        key = refused[1]
        raise ConfigError(f"model.{key}={show(node[key])} is not allowed: {error}") from None
    except (ValueError, KeyError, RuntimeError, OSError) as error:  # e.g. weights=bogus
        raise _not_built(node, error) from None


def _not_built(node: DictConfig, error: Exception) -> ConfigError:
    """Others' code refused its arguments (a `weights` it does not know, pretrained weights
    for another number of classes): one line with the keys given and its own words."""
    keys = ", ".join(f"{key}={show(node[key])}" for key in node if key != "_target_")
    why = " ".join(str(error).split()) or type(error).__name__
    return ConfigError(
        f"model._target_={node._target_} is not allowed with {keys or 'no keys'}: "
        f"{type(error).__name__}: {why}"
    )


def _check_output(model: nn.Module, target: str, sample: Tensor, out_features: int) -> None:
    """One forward pass in eval mode (nothing learned, nothing drawn): [N, out_features].
    torch's shape errors (images too small for its pooling, too few channels) are one line."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(sample)
    except RuntimeError as error:
        message = " ".join(str(error).split())
        raise ConfigError(
            f"model._target_={target} is not allowed on images {list(sample.shape)}: {message}"
        ) from None
    finally:
        model.train(was_training)
    shape = list(output.shape) if isinstance(output, Tensor) else type(output).__name__
    if shape != [len(sample), out_features]:
        raise ConfigError(
            f"model._target_={target} is not allowed: on images {list(sample.shape)} it "
            f"returned {shape}; expected [{len(sample)}, {out_features}] (a logit per output unit)"
        )


class FloatImages(nn.Module):
    """A network written for float images, [N, C, H, W] in [0, 1] (torchvision's models), fed
    ours: uint8 scaled, grey images given their channel dimension, and repeated to the
    channels the network's first convolution takes (3 for ImageNet architectures)."""

    def __init__(self, net: nn.Module, input_shape: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
        channels = 1 if len(input_shape) == 2 else input_shape[0]
        wanted = first.in_channels if first is not None else channels
        self.repeat = wanted if channels == 1 and wanted > 1 else 1

    def forward(self, images: Tensor) -> Tensor:
        x = as_float(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.net(x.expand(-1, self.repeat, -1, -1) if self.repeat > 1 else x)


class MLP(nn.Module):
    """Fully connected ReLU network; in the task scenario its output layer holds every task's head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        hidden_sizes: list[PositiveInt] = (400, 400),
    ) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden_sizes]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(as_float(images).flatten(1))


class CNN(nn.Module):
    """Small convolutional network: [conv 3x3, ReLU, max-pool 2] per entry of `channels`, then a
    hidden fully connected layer and the output layer. Grey images [N, H, W] or [N, C, H, W]."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        channels: list[PositiveInt] = (32, 64),
        hidden_size: PositiveInt = 128,
    ) -> None:
        super().__init__()
        in_channels, height, width = (1, *input_shape) if len(input_shape) == 2 else input_shape
        layers: list[nn.Module] = []
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * height * width, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, out_features),
        )

    def forward(self, images: Tensor) -> Tensor:
        x = as_float(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BatchNorm layers around a residual connection; the shortcut is a 1x1
    conv-BatchNorm where the block changes the shape. Convolutions have no bias: BatchNorm's
    shift makes it redundant."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, final_relu: bool = True
    ) -> None:
        super().__init__()
        self.final_relu = final_relu
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ResNet18(nn.Module):
    """The reduced ResNet-18 of continual-learning papers on CIFAR (Lopez-Paz & Ranzato 2017,
    GEM): a 3x3 stride-1 stem, BasicBlocks [2, 2, 2, 2] of widths `width`·[1, 2, 4, 8] with
    strides [1, 2, 2, 2], global average pooling, one output layer. Small images keep their
    resolution in the stem, unlike ImageNet's 7x7 stride-2 stem and max-pooling.
    Grey images [N, H, W] or [N, C, H, W]. `pixel_mean` and `pixel_std` (one per channel, of
    the [0, 1] pixels) standardise the input first, as some reference code does for CIFAR;
    `stem_bias` gives the stem convolution a bias and `last_relu=false` leaves out the ReLU
    after the last block, as van de Ven's code has them."""

    def __init__(
        self,
        input_shape: Sequence[int],
        out_features: int,
        width: PositiveInt = 20,
        pixel_mean: list[float] | None = None,
        pixel_std: list[PositiveFloat] | None = None,
        stem_bias: bool = False,
        last_relu: bool = True,
    ) -> None:
        super().__init__()
        in_channels = 1 if len(input_shape) == 2 else input_shape[0]
        for name, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
            if values is not None and len(values) != in_channels:
                raise ConfigError(
                    f"model.{name}={list(values)} is not allowed: the images have "
                    f"{in_channels} channel(s); expected null or {in_channels} numbers"
                )
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean or [0.0] * in_channels).view(-1, 1, 1)
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std or [1.0] * in_channels).view(-1, 1, 1)
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=stem_bias),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            for block_stride in (stride, 1):
                last = stage == 3 and block_stride == 1
                blocks.append(
                    BasicBlock(channels, width * 2**stage, block_stride, last_relu or not last)
                )
                channels = width * 2**stage
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, out_features)

    @staticmethod
    def check_arguments(
        path: str, pixel_mean: list | None = None, pixel_std: list | None = None, **_: object
    ) -> str | None:
        """Both or neither, one number per channel each (the channels are checked once the
        data is loaded)."""
        if (pixel_mean is None) != (pixel_std is None) or (
            pixel_mean is not None and len(pixel_mean) != len(pixel_std)
        ):
            return (
                f"{path}.pixel_mean={pixel_mean} with {path}.pixel_std={pixel_std} is not "
                "allowed: expected both null, or one number per channel in each"
            )
        return None

    def forward(self, images: Tensor) -> Tensor:
        x = as_float(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = (x - self.pixel_mean) / self.pixel_std
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))
