"""Checks on the composed config, run before any data is loaded or any training starts.

Each failure is one line naming the key, the value given and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ewcexp.data import NUM_CLASSES
from ewcexp.device import DEVICES, unavailable_reason
from ewcexp.fisher import ESTIMATORS
from ewcexp.task_sequence import ANGLE_SPACINGS, SCENARIOS


class ConfigError(ValueError):
    """A config value that is not allowed; the message is the whole explanation."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_at_least(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= minimum), f"an integer >= {minimum}"


def _one_of(options: Sequence[str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(options)


BOOLEAN = (lambda v: isinstance(v, bool)), "true or false"

# key -> (test, what is allowed); keys absent from the config are skipped
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int_at_least(0),
    "lambda": ((lambda v: _is_number(v) and v >= 0), "a number >= 0 (the penalty strength λ)"),
    "fisher.estimator": _one_of(ESTIMATORS),
    "fisher.num_samples": (
        (lambda v: _is_int(v) and (v == -1 or v >= 1)),
        "-1 (all) or an integer >= 1",
    ),
    "fisher.batch_size": _int_at_least(1),
    "train.epochs": _int_at_least(1),
    "train.iterations": (
        (lambda v: v is None or (_is_int(v) and v >= 1)),
        "null or an integer >= 1",
    ),
    "train.batch_size": _int_at_least(1),
    "train.eval_batch_size": _int_at_least(1),
    "optimizer.lr": ((lambda v: _is_number(v) and v > 0), "a number > 0"),
    "model.hidden_sizes": (
        (lambda v: isinstance(v, ListConfig) and all(_is_int(h) and h >= 1 for h in v)),
        "a list of integers >= 1, e.g. [400,400]",
    ),
    "task_sequence.dataset": _one_of(tuple(NUM_CLASSES)),
    "task_sequence.num_tasks": _int_at_least(1),
    "task_sequence.scenario": _one_of(SCENARIOS),
    "task_sequence.classes_per_task": _int_at_least(1),
    "task_sequence.max_angle": (
        (lambda v: _is_number(v) and 0 < v <= 360),
        "a number of degrees in (0, 360]",
    ),
    "task_sequence.angles": _one_of(ANGLE_SPACINGS),
    "strategy.gamma": ((lambda v: _is_number(v) and 0 < v <= 1), "a number in (0, 1]"),
    "device.type": _one_of(DEVICES),
    "resume": BOOLEAN,
    "data.download": BOOLEAN,
    "data.validation_size": _int_at_least(0),
    "data.allow_fallback": BOOLEAN,
}


def _show(value: Any) -> str:
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value)
    return "null" if value is None else str(value)


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first value that is not allowed."""
    for key, (test, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(value, str) and value == "<absent>":
            continue
        if not test(value):
            raise ConfigError(f"{key}={_show(value)} is not allowed: expected {allowed}")

    sequence = cfg.task_sequence
    if "classes_per_task" in sequence:
        total = NUM_CLASSES[sequence.dataset]
        most = total // sequence.classes_per_task
        if sequence.num_tasks > most:
            raise ConfigError(
                f"task_sequence.num_tasks={sequence.num_tasks} is not allowed: {sequence.dataset} "
                f"has {total} classes, so with classes_per_task={sequence.classes_per_task} "
                f"at most {most} tasks"
            )
        order = sequence.get("class_order")
        if order is not None and sorted(order) != list(range(total)):
            raise ConfigError(
                f"task_sequence.class_order={_show(order)} is not allowed: expected null or "
                f"a permutation of 0..{total - 1}"
            )
    reason = unavailable_reason(cfg.device.type)
    if reason:
        raise ConfigError(f"device={cfg.device.type} is not allowed: {reason}; use device=cpu")
