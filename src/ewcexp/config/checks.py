"""Checks on the composed config, run before any data is loaded or any training starts.

Each key is declared once, as a typed parameter of the callable its node's `_target_` names
(see `schema`); the top-level keys are declared in `TOP_LEVEL_KEYS` below. A key without a
declaration is refused like a bad value. Each failure is one line naming the key, the value
given and what is allowed. A component may add checks that span several of its keys (from the
values alone) as a static method `check_arguments(path, **keys)` returning the line or None;
what depends on the machine that trains (a GPU) is `check_machine`, asked by the job.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

from ewcexp.config.schema import BASIC, NonNegativeFloat, NonNegativeInt, Rule, allowed

# the config's keys outside any component (conf/config.yaml); every other key is declared by
# the code its section's _target_ names
TOP_LEVEL_KEYS: dict[str, Any] = {
    "seed": NonNegativeInt,
    "resume": bool,  # continue from <run dir>/checkpoint.pt if an earlier run there stopped
    "lambda": NonNegativeFloat,  # λ of every penalty strategy (their `strength: ${lambda}`)
}

# keys of the `model` section that the runner reads, whatever network `model._target_` names
# (conf/config.yaml sets both null); a network that takes a `weights` of its own (torchvision's
# builders) keeps it: then model.weights is theirs
MODEL_KEYS: dict[str, Any] = {
    "weights": str | None,  # a file of starting weights: an earlier run's model.pt, a state dict
    "trainable": Annotated[
        list[str], Rule(lambda v: len(v) > 0, "a non-empty list of parameter-name patterns", [])
    ]
    | None,  # e.g. ['head.*', 'net.layer4.*']: only matching parameters train; null: all
    "lora": DictConfig,  # low-rank adapters: a section of its own (its _target_ declares its keys)
}

# keys of the `task_sequence` section that the runner reads, whatever sequence it names
SEQUENCE_KEYS: dict[str, Any] = {
    # a data set whose classes the starting weights learned: task 0 (T0), consolidated at the
    # start and evaluated after every task through its own output units; null: none
    "pretrained_on": str | None,
}
SECTION_KEYS: dict[str, dict[str, Any]] = {"model": MODEL_KEYS, "task_sequence": SEQUENCE_KEYS}

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class ConfigError(ValueError):
    """A config value that is not allowed; the message is the whole explanation."""


def show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@functools.cache
def declared_keys(target: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable `target` names and the type hint of each of its parameters."""
    from hydra._internal.utils import _locate  # get_object, without its logged copy of the error

    built = _locate(target)
    function = built.__init__ if inspect.isclass(built) else built
    try:
        hints = get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - others' hints may name what only their type checker sees
        if is_ours(built):
            raise
        hints = {}
    names = inspect.signature(built).parameters
    return built, {name: hints.get(name) for name in names}


def is_ours(built: Callable[..., Any]) -> bool:
    """Whether `built` is ewcexp's code, which declares every key it takes."""
    return getattr(built, "__module__", "").partition(".")[0] == "ewcexp"


def takes_any_keyword(built: Callable[..., Any]) -> bool:
    """Whether `built` has **kwargs (torchvision's models pass them on to their class)."""
    parameters = inspect.signature(built).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def checkable(hint: Any) -> bool:
    """Whether `schema.allowed` judges a value against `hint` alone: plain types, Literal,
    and unions, lists and tuples of them (not an enum or a class of others' code)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return checkable(args[0])
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType, list, tuple):
        return bool(args) and all(checkable(arg) for arg in args)
    return hint in BASIC


def without_keys(node: DictConfig, keys: Any) -> DictConfig:
    """`node` resolved (its interpolations, `${seed}`, read where it stands in the config)
    and without `keys`: what a section's `_target_` is called with, the runner's keys left
    out."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return OmegaConf.create({k: v for k, v in values.items() if k not in keys})


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key that is undeclared or whose value is not allowed."""
    sections = [key for key in cfg if isinstance(cfg[key], DictConfig)]
    for key in cfg:  # first: components interpolate some of them (`strength: ${lambda}`)
        if key in sections:
            continue
        if key not in TOP_LEVEL_KEYS:
            raise undeclared(
                str(key), cfg[key], f"the top-level keys are {', '.join(TOP_LEVEL_KEYS)}"
            )
        check_value(str(key), cfg[key], TOP_LEVEL_KEYS[key])
    for key in sections:
        check_component(str(key), cfg[key])
    if (refused := memory_refused(cfg)) is not None:
        raise ConfigError(refused)


def memory_refused(cfg: DictConfig) -> str | None:
    """A memory for a strategy that refuses one (joint), or none for one that needs it."""
    replay, strategy = cfg.get("replay"), cfg.get("strategy")
    if not isinstance(replay, DictConfig) or not isinstance(strategy, DictConfig):
        return None
    method = declared_keys(strategy._target_)[0]
    use, name = getattr(method, "memory_use", "batch"), getattr(method, "name", strategy._target_)
    if use == "none" and replay.size:
        return (
            f"replay.size={replay.size} is not allowed with strategy={name}: it trains on "
            "every task's data already; use replay.size=0"
        )
    if use == "constraint" and not replay.size:
        return (
            f"replay.size={replay.size} is not allowed with strategy={name}: it needs a "
            "memory, e.g. replay.size=500"
        )
    return None


def check_component(path: str, node: DictConfig) -> None:
    """Every key of a `_target_` node against the parameters of its target, nested ones too.
    A target outside ewcexp (a user's, torchvision's) may leave keys unchecked: those it takes
    through **kwargs (it passes them on, where to only it knows) and those whose type hint is
    missing or beyond `schema.allowed`; every other key is checked as ours are."""
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ConfigError(
            f"{path} is not allowed: a config section needs a _target_ naming the code that "
            "reads its keys (their types are declared there)"
        )
    try:
        built, parameters = declared_keys(target)
    except Exception as error:  # noqa: BLE001 - an import error, a typo: one line either way
        why = " ".join(str(error).split())  # Hydra's import errors span several lines
        raise ConfigError(f"{path}._target_={target} is not allowed: {why}") from None
    ours = is_ours(built)
    passed_on = not ours and takes_any_keyword(built)
    values = {}
    for key in node:
        if key in HYDRA_KEYS:
            continue
        runner_keys = SECTION_KEYS.get(path, {})
        if key in runner_keys and key not in parameters:
            if isinstance(node[key], DictConfig):
                check_component(f"{path}.{key}", node[key])
            else:
                check_value(f"{path}.{key}", node[key], runner_keys[key])
            continue
        if key not in parameters and not passed_on:
            raise undeclared(f"{path}.{key}", node[key], f"{target} takes {', '.join(parameters)}")
        if isinstance(node[key], DictConfig):  # a component: its keys seen by check_arguments
            if not OmegaConf.is_interpolation(node, key):  # else checked where it is defined
                check_component(f"{path}.{key}", node[key])
            values[key] = OmegaConf.to_container(node[key], resolve=True)
            continue
        declared = parameters.get(key)
        if ours or checkable(declared):  # else theirs to check
            if declared is None:
                raise ConfigError(f"{path}.{key}: {target} does not declare its type")
            check_value(f"{path}.{key}", node[key], declared)
        values[key] = (
            OmegaConf.to_container(node[key]) if isinstance(node[key], ListConfig) else node[key]
        )
    check = getattr(built, "check_arguments", None)
    if check is not None and (message := check(path, **values)):
        raise ConfigError(message)


def check_machine(cfg: DictConfig) -> None:
    """Raise ConfigError for what this machine cannot do (no GPU for `device=cuda`): asked by
    the job where it runs, never where a multirun is submitted from. A component declares its
    checks as a static method `check_machine(path, **keys)` returning the line or None."""
    for key in cfg:
        node = cfg[key]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not isinstance(target, str):
            continue
        check = getattr(declared_keys(target)[0], "check_machine", None)
        if check is not None and (message := check(str(key), **_plain(node))):
            raise ConfigError(message)


def _plain(node: DictConfig) -> dict[str, Any]:
    """A section's own keys and values, without Hydra's."""
    values = OmegaConf.to_container(node, resolve=True)
    return {key: value for key, value in values.items() if key not in HYDRA_KEYS}


def check_value(path: str, value: Any, declared: Any) -> None:
    if isinstance(value, ListConfig):
        value = OmegaConf.to_container(value)
    test, text = allowed(declared)
    if not test(value):
        raise ConfigError(f"{path}={show(value)} is not allowed: expected {text}")


def undeclared(path: str, value: Any, known: str) -> ConfigError:
    return ConfigError(f"{path}={show(value)} is not allowed: there is no such key ({known})")


def settings_without_effect(cfg: DictConfig) -> list[str]:
    """Settings this run will not use, to warn about rather than refuse (a sweep such as
    `-m strategy=finetune,si,ewc fisher.structure=kfac` shares them across strategies): the
    fisher section's structure with a strategy that never consolidates with its Fisher, and
    damping, which only the Kronecker factors take."""
    unused = []
    importance = cfg.strategy.get("importance")
    uses_fisher = isinstance(importance, DictConfig) and importance.get("_target_") == (
        cfg.fisher._target_
    )
    if cfg.fisher.get("structure", "diagonal") != "diagonal" and not uses_fisher:
        strategy = getattr(declared_keys(cfg.strategy._target_)[0], "name", cfg.strategy._target_)
        unused.append(
            f"fisher.structure={cfg.fisher.structure} has no effect with strategy={strategy}: "
            "it does not consolidate with the fisher section's Fisher"
        )
    if cfg.fisher.get("damping") and cfg.fisher.get("structure", "diagonal") == "diagonal":
        unused.append(
            f"fisher.damping={cfg.fisher.damping:g} has no effect with "
            "fisher.structure=diagonal: it damps the Kronecker factors only"
        )
    return unused
