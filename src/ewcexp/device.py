"""The `device` config group: where to train."""

from __future__ import annotations

import torch

DEVICES = ("cpu", "cuda", "auto")


def unavailable_reason(kind: str) -> str | None:
    """Why `kind` cannot be used on this machine, or None if it can."""
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    return None


def resolve_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)
