"""How config keys are declared: once, as the typed parameters of the code that reads them.

Every config node is built with `_target_` (Hydra's `instantiate`), so every key of it is a
parameter of that callable. Its type hint is the declaration: a plain type (`int`, `float`,
`bool`, `str`), `X | None`, `list[X]`, `tuple[X, Y]`, `Literal[...]`, or any of these wrapped
in `Annotated[X, Range(...)]` / `Annotated[X, Rule(...)]` for what the type alone cannot say.
`config.check_config` reads these hints; nothing else lists the keys.

This module imports nothing heavy: the command line's checks run before torch is loaded.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin


@dataclass(frozen=True)
class Rule:
    """A constraint beyond the type: `test(value)` must hold. `text` says what is allowed (it
    replaces the type's own words); `refused` is one value it refuses (tests use it)."""

    test: Callable[[Any], bool]
    text: str
    refused: Any = field(compare=False)  # may be unhashable (a list); hints are hashed


@dataclass(frozen=True)
class Range:
    """Bounds on a number; the words are added to the type's ("an integer" + " >= 1"), and
    `unit` names what it counts ("a number of degrees in (0, 360]")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    unit: str | None = None

    def test(self, value: float) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    @property
    def text(self) -> str:
        low = (
            f"[{self.ge:g}"
            if self.ge is not None
            else f"({self.gt:g}"
            if self.gt is not None
            else None
        )
        high = (
            f"{self.le:g}]"
            if self.le is not None
            else f"{self.lt:g})"
            if self.lt is not None
            else None
        )
        if low and high:
            return f" in {low}, {high}"
        if low:
            return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}"

    @property
    def refused(self) -> float:
        """A value just outside the range."""
        if self.ge is not None:
            return self.ge - 1
        if self.gt is not None:
            return self.gt
        return self.le + 1 if self.le is not None else self.lt


# the declarations used across the project
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(gt=0, le=1)]  # (0, 1]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


BASIC: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (_is_int, "an integer"),
    float: (_is_number, "a finite number"),
    str: (lambda v: isinstance(v, str), "a string"),
    type(None): (lambda v: v is None, "null"),
}


def _same(value: Any, option: Any) -> bool:
    return type(value) is type(option) and value == option


def allowed(declared: Any) -> tuple[Callable[[Any], bool], str]:
    """The test a value must pass for the type hint `declared`, and the words for it."""
    origin, args = get_origin(declared), get_args(declared)
    if origin is Annotated:
        test, text = allowed(args[0])
        for rule in args[1:]:
            if isinstance(rule, Range):
                number = f"a number of {rule.unit}" if rule.unit else "a number"
                text = text.replace("a finite number", number) + rule.text
            elif isinstance(rule, Rule):
                text = rule.text
            else:
                continue
            test = (lambda t, r: lambda v: t(v) and r.test(v))(test, rule)
        return test, text
    if origin is Literal:
        text = str(args[0]) if len(args) == 1 else "one of " + ", ".join(map(str, args))
        return (lambda v: any(_same(v, a) for a in args)), text
    if origin in (Union, types.UnionType):
        # null first, a list last: its "each ..." would otherwise swallow what follows it
        order = sorted(args, key=lambda a: (a is not type(None), get_origin(a) is list))
        parts = [allowed(a) for a in order]
        return (lambda v: any(t(v) for t, _ in parts)), " or ".join(text for _, text in parts)
    if origin is list:
        (item,) = args
        item_test, item_text = allowed(item)
        return (
            lambda v: isinstance(v, list) and all(item_test(x) for x in v)
        ), f"a list, each {item_text}"
    if origin is tuple:
        tests = [allowed(a) for a in args]
        return (
            lambda v: (
                isinstance(v, list | tuple)
                and len(v) == len(tests)
                and all(t(x) for (t, _), x in zip(tests, v, strict=True))
            )
        ), f"a list of {len(args)}: " + ", ".join(text for _, text in tests)
    if declared in BASIC:
        return BASIC[declared]
    if isinstance(declared, type):  # a component: given as a config node with its _target_
        return (lambda v: False), f"a config node with a _target_ ({declared.__name__})"
    raise TypeError(f"no rule for the type hint {declared!r}")
