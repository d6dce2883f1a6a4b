"""One schema for every key: every leaf key of every option in conf/ is declared (with its
type and range) by the code that reads it, and a bad value of each gets one line."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from omegaconf import DictConfig, OmegaConf

from ewcexp.config.checks import (
    HYDRA_KEYS,
    SECTION_KEYS,
    TOP_LEVEL_KEYS,
    ConfigError,
    check_config,
    declared_keys,
    show,
)
from ewcexp.config.schema import Range, Rule, allowed
from tests.conftest import REPO, compose_config, with_companions

CONF = REPO / "src" / "ewcexp" / "conf"
OPTIONS = [
    f"{group.name}={option.stem}"
    for group in sorted(CONF.iterdir())
    if group.is_dir() and group.name != "hydra"
    for option in sorted(group.glob("*.yaml"))
]


def declared_leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, type hint) of every key the config sets, in sections nested at any
    depth (`strategy.importance.num_samples`); a key without a declaration fails here, as
    the check itself refuses it."""
    for key in node:
        path = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key) and isinstance(node[key], DictConfig):
            continue  # `importance: ${fisher}`: the fisher node's keys are walked there
        if isinstance(node[key], DictConfig):
            yield from section_leaves(node[key], path)
        else:
            assert key in TOP_LEVEL_KEYS, f"{path} is not declared"
            yield path, TOP_LEVEL_KEYS[key]


def section_leaves(section: DictConfig, path: str) -> Iterator[tuple[str, Any]]:
    """The keys of one section with a _target_, declared by the code that target names."""
    _, parameters = declared_keys(section._target_)
    for inner in section:
        if (
            inner in HYDRA_KEYS
            or OmegaConf.is_interpolation(section, inner)
            and isinstance(section[inner], DictConfig)
        ):
            continue
        if isinstance(section[inner], DictConfig):
            yield from section_leaves(section[inner], f"{path}.{inner}")
            continue
        if inner in SECTION_KEYS.get(path, {}) and inner not in parameters:
            yield f"{path}.{inner}", SECTION_KEYS[path][inner]  # the runner's keys
            continue
        assert parameters.get(inner) is not None, f"{path}.{inner} is not declared"
        yield f"{path}.{inner}", parameters[inner]


def outside(declared: Any) -> list[Any]:
    """Values of the right type outside the declared bounds or options."""
    origin, args = get_origin(declared), get_args(declared)
    if origin is Annotated:
        return [r.refused for r in args[1:] if isinstance(r, Range | Rule)] + outside(args[0])
    if origin is Literal:
        return ["no_such_option"] if isinstance(args[0], str) else []
    if origin in (Union, types.UnionType):
        return [value for arg in args for value in outside(arg)]
    if origin is list:
        return [[value] for value in outside(args[0])]
    return []


def refused_values(declared: Any) -> list[Any]:
    """One value of a wrong type, then every value outside the bounds: all refused."""
    test, _ = allowed(declared)
    wrong_type = next(value for value in (2.5, "abc", [1, 2]) if not test(value))
    return [wrong_type, *(value for value in outside(declared) if not test(value))]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_key_refuses_a_wrong_type_and_a_value_out_of_range(option, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # device=cuda is a valid option
    cfg = compose_config(*with_companions(option))
    check_config(cfg)  # the option as shipped: every key declared and allowed
    checked = 0
    for path, declared in declared_leaves(cfg):
        for value in refused_values(declared):
            bad = cfg.copy()
            OmegaConf.update(bad, path, value, merge=False)
            with pytest.raises(ConfigError) as error:
                check_config(bad)
            message = str(error.value)
            assert message.startswith(f"{path}={show(value)} is not allowed: expected "), message
            assert "\n" not in message
            checked += 1
    assert checked >= 25  # the defaults alone have more keys than that


def test_an_undeclared_key_is_refused_wherever_it_is():
    for path in ("lamda", "train.log_evry", "strategy.strenght", "fisher.samples"):
        cfg = compose_config()
        OmegaConf.update(cfg, path, 1, force_add=True)
        with pytest.raises(ConfigError, match=rf"^{path}=1 is not allowed: there is no such key"):
            check_config(cfg)


def test_a_section_without_target_is_refused():
    cfg = compose_config()
    OmegaConf.update(cfg, "extra", {"a": 1}, force_add=True)
    with pytest.raises(
        ConfigError, match="^extra is not allowed: a config section needs a _target_"
    ):
        check_config(cfg)


@pytest.mark.parametrize(
    ("declared", "words"),
    [
        (Annotated[int, Range(ge=1)], "an integer >= 1"),
        (Annotated[float, Range(gt=0, le=1)], "a number in (0, 1]"),
        (Annotated[float, Range(ge=0, lt=1)], "a number in [0, 1)"),
        (Annotated[int, Range(ge=1)] | None, "null or an integer >= 1"),
        (Literal["a", "b"], "one of a, b"),
        (list[Annotated[int, Range(ge=1)]], "a list, each an integer >= 1"),
        (bool, "true or false"),
    ],
)
def test_declarations_say_what_is_allowed(declared, words):
    assert allowed(declared)[1] == words


def test_numbers_are_finite_and_booleans_are_not_numbers():
    test, _ = allowed(float)
    assert test(1) and test(0.5) and not test(float("inf")) and not test(float("nan"))
    assert not test(True) and not allowed(int)[0](False) and not allowed(int)[0](1.0)
