"""The `device` config group: where to train."""

from __future__ import annotations

import os

import torch

DEVICES = ("cpu", "cuda", "auto")


def unavailable_reason(kind: str) -> str | None:
    """Why `kind` cannot be used on this machine, or None if it can."""
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (torch.cuda.is_available() is False)"
    return None


def resolve_device(kind: str) -> torch.device:
    """The torch device for `kind`. Inside a SLURM job, CPU work also gets only the CPUs the
    job was given: torch would otherwise start a thread per core of the shared node."""
    if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
        torch.set_num_threads(int(cpus))
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(kind)
