"""Starting weights and which parameters train: `model.weights` (a file, e.g. the `model.pt`
an earlier ewcexp run wrote) and `model.trainable` (patterns of parameter names).

A frozen parameter has `requires_grad=False`: the runner's parameter list leaves it out, so
it gets no gradient, no optimizer state, no importance and no penalty, and the stored
importances scale with the trainable parameters only.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ewcexp.config.checks import ConfigError, show

FORMAT = "ewcexp.model/1"  # what `model.pt` holds: {"format", "state_dict", "model", "parameters"}


def model_file(model: nn.Module, model_config: dict[str, Any]) -> dict[str, Any]:
    """What a run writes as `<run dir>/model.pt`: the final weights (every tensor of the
    state, frozen ones and buffers too), the `model` config that built them, the counts."""
    return {
        "format": FORMAT,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "model": model_config,
        "parameters": parameter_counts(model),
    }


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Scalars in all parameters and in those that train."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def load_weights(
    model: nn.Module, path: str, target: str, pretrained_units: int | None = None
) -> None:
    """Load the file at `path` (a `model.pt` of ewcexp, or a plain state dict) into `model`,
    built from `model._target_=target`. Every tensor must be there with its shape: the first
    one missing, extra or of another shape is one line naming the file and the tensor. With
    `pretrained_units` (task_sequence.pretrained_on), the file's output layer of that many
    units becomes the last units of the model's, the new tasks' units before them fresh."""
    where = f"model.weights={path}"
    state = read_weights(path)[1]
    if pretrained_units:
        state = _extended_head(model, dict(state), pretrained_units)
    if (misfit := first_misfit(state, model.state_dict())) is not None:
        raise ConfigError(f"{where} does not fit model._target_={target}: {misfit}")
    model.load_state_dict(state)


def read_weights(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The file at `path` (`model.weights`): what it holds and its state dict (a run's
    model.pt keeps it under "state_dict"). No such file, not a torch file, or no
    name → tensor mapping: one line."""
    file, where = Path(path).expanduser(), f"model.weights={path}"
    if not file.is_file():
        raise ConfigError(f"{where} is not allowed: there is no such file")
    try:
        contents = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - not a torch file, or pickled code: one line
        why = " ".join(str(error).split())[:200]
        raise ConfigError(f"{where} is not allowed: not a file of weights ({why})") from None
    state = contents.get("state_dict", contents) if isinstance(contents, dict) else None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConfigError(
            f"{where} is not allowed: it holds no state dict (name → tensor), as a run's "
            "model.pt or torch.save(model.state_dict()) does"
        )
    return contents, state


def output_layer_name(model: nn.Module) -> str | None:
    """The module name of the output layer: the last `nn.Linear` outside a LoRA adapter."""
    names = [
        name for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not name.endswith((".down", ".up"))
    ]  # fmt: skip
    return names[-1] if names else None


def output_layer(model: nn.Module) -> list[str]:
    """The parameter names of the output layer: new for a pretrained network, so it trains
    beside LoRA adapters by default, and it holds task 0's units with pretrained_on."""
    last = output_layer_name(model)
    return [n for n, _ in model.named_parameters() if last and n.startswith(f"{last}.")]


def _extended_head(
    model: nn.Module, state: dict[str, torch.Tensor], units: int
) -> dict[str, torch.Tensor]:
    """`state` with its output layer's `units` rows moved to the end of the model's (larger)
    output layer, the rows before them as the model initialised them."""
    own = model.state_dict()
    for name in output_layer(model):
        theirs, ours = state.get(name), own[name]
        fits = theirs is not None and theirs.shape[1:] == ours.shape[1:]
        if fits and theirs.shape[0] == units and ours.shape[0] > units:
            extended = ours.detach().clone()
            extended[-units:] = theirs
            state[name] = extended
    return state


def holds_adapters(path: str) -> bool:
    """Whether the file at `path` is of a network with LoRA adapters (`<layer>.down.weight`)."""
    try:
        state = read_weights(path)[1]
    except ConfigError:  # load_weights says what is wrong with it
        return False
    return any(str(n).endswith(".down.weight") for n in state)


def first_misfit(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], new: tuple[str, ...] = ()
) -> str | None:
    """Why the file's `state` cannot be loaded into a model whose state is `own` (the first
    tensor missing, of another shape, or extra), or None; names starting with one of `new`
    (a new output layer) are left out on both sides."""
    for name, tensor in own.items():
        if new and name.startswith(new):
            continue
        if name not in state:
            return f"the file has no tensor {name!r} ({_shape(tensor)} in the model)"
        if state[name].shape != tensor.shape:
            return (
                f"tensor {name!r} is {_shape(state[name])} in the file, "
                f"{_shape(tensor)} in the model"
            )
    extra = [n for n in state if n not in own and not (new and n.startswith(new))]
    if extra:
        return f"the model has no tensor {extra[0]!r} ({_shape(state[extra[0]])} in the file)"
    return None


def freeze_all_but(model: nn.Module, patterns: list[str]) -> None:
    """Only the parameters whose names match one of `patterns` (shell-style: `head.*`,
    `net.layer4.*`, `*.bias`) keep training; a pattern that matches nothing is refused."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            raise ConfigError(
                f"model.trainable={show(patterns)} is not allowed: {pattern!r} matches no "
                f"parameter; the model's are {', '.join(names[:12])}"
                + (f" and {len(names) - 12} more" if len(names) > 12 else "")
            )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))


def _shape(tensor: torch.Tensor) -> str:
    return str(list(tensor.shape))
