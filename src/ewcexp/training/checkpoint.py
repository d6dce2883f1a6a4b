"""Checkpoints after each completed task, so an interrupted run continues where it stopped.

Written atomically (a temporary file, flushed to disk, renamed over the old one) and read
with `torch.load(weights_only=True)`, which cannot run code.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ewcexp.reporting.files import write_atomically

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


class CheckpointDamaged(CheckpointMismatch):
    """The checkpoint in the run directory cannot be read (cut short, overwritten, not ours).

    A subclass of `CheckpointMismatch` so that whoever reports that one (run.py) reports
    this one too, in the same single line."""


def save(run_dir: Path, state: dict[str, Any]) -> None:
    write_atomically(run_dir / FILENAME, lambda file: torch.save(state, file))


def load(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in `run_dir`, if any, after checking it was written by this config."""
    path = run_dir / FILENAME
    if not path.exists():
        return None
    state, saved = _read(path)
    difference = first_difference(comparable(saved), comparable(config))
    if difference:
        key, before, now = difference
        raise CheckpointMismatch(
            f"{path} was written with {key}={before}, this run has {key}={now}: "
            "use another run directory (hydra.run.dir=...) or resume=false to start over"
        )
    return state


def _read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at `path` and the config it was written with; any failure is one
    `CheckpointDamaged` line, not torch's multi-line error (a run killed by the file system,
    a copy cut short, another file under our name)."""
    # torch may warn about what it finds in a damaged file: noise beside the one line we give
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = torch.load(path, weights_only=True)
        except Exception as error:  # noqa: BLE001 - whatever torch raises, the file is unusable
            reason = _reason(path, error)
        else:
            saved = _saved_config(state)
            reason = None if saved is not None else "no config in it"
    if reason:
        raise CheckpointDamaged(
            f"{path} cannot be read (truncated or damaged: {reason}): delete it, "
            "or run with resume=false to start over (it is then replaced)"
        )
    for warning in caught:  # a readable checkpoint's warnings are shown as usual
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return state, saved


def _saved_config(state: Any) -> dict[str, Any] | None:
    """The config a checkpoint was written with (a JSON string in it), or None where it has none."""
    text = state.get("config") if isinstance(state, dict) else None
    try:
        saved = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return saved if isinstance(saved, dict) else None


def _reason(path: Path, error: BaseException) -> str:
    """Why torch could not read `path`, short: what the file's first bytes say when that is
    plainer, else the first sentence of torch's error (which runs to a paragraph)."""
    try:
        with path.open("rb") as file:
            start = file.read(4)
    except OSError as unreadable:
        return unreadable.strerror or type(unreadable).__name__
    if not start:
        return "empty file"
    if start != b"PK\x03\x04":  # torch.save writes a zip archive
        return "not a file written by torch.save"
    if not zipfile.is_zipfile(path):  # its directory, at the end, is missing
        return "zip archive cut short"
    first = " ".join(str(error).split()).split(". ")[0].rstrip(".")
    if len(first) > 120:
        first = first[:117] + "..."
    return first or type(error).__name__


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The config without the keys that do not change what a run computes, and each `_target_`
    as the name of what it builds, not the module it lives in: a checkpoint compares settings,
    so one written before a module moved still resumes."""
    config = json.loads(json.dumps(config), object_hook=_target_by_name)
    if config.get("replay", {}).get("size") == 0:  # no memory: as before the section existed
        config.pop("replay")
    for key in IGNORED_KEYS:
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent, {})
        node.pop(last, None)
    return config


def _target_by_name(node: dict[str, Any]) -> dict[str, Any]:
    target = node.get("_target_")
    if isinstance(target, str):
        node["_target_"] = target.rsplit(".", 1)[-1]
    return node


def first_difference(a: Any, b: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)
