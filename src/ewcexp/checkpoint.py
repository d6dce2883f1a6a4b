"""Checkpoints after each completed task, so an interrupted run continues where it stopped.

Written atomically (a temporary file renamed over the old one) and read with
`torch.load(weights_only=True)`, which cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

FILENAME = "checkpoint.pt"
# keys that do not change what a run computes: they may differ between a run and its resumption
IGNORED_KEYS = (
    "logger",
    "resume",
    "data.root",
    "data.download",
    "data.allow_fallback",
    "train.log_every",
    "hparams_search",
)


class CheckpointMismatch(RuntimeError):
    """The checkpoint in the run directory was written by a run with another config."""


def save(run_dir: Path, state: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / FILENAME
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def load(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in `run_dir`, if any, after checking it was written by this config."""
    path = run_dir / FILENAME
    if not path.exists():
        return None
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    difference = first_difference(comparable(saved), comparable(config))
    if difference:
        key, before, now = difference
        raise CheckpointMismatch(
            f"{path} was written with {key}={before}, this run has {key}={now}: "
            "use another run directory (hydra.run.dir=...) or resume=false to start over"
        )
    return state


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the keys that do not change what a run computes."""
    config = json.loads(json.dumps(config))
    for key in IGNORED_KEYS:
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return config


def first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)
