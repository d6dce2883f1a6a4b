"""The `device` config group: where to train."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Literal

import torch

from ewcexp.config.schema import NonNegativeInt


@dataclass(frozen=True)
class Device:
    """`type`: cpu, cuda, or auto (cuda where available). `gpus_per_node` is what
    hydra/launcher=slurm asks SLURM for (it reads ${device.gpus_per_node})."""

    type: Literal["cpu", "cuda", "auto"] = "cpu"
    gpus_per_node: NonNegativeInt | None = None

    @staticmethod
    def check_machine(path: str, type: str = "cpu", **_: object) -> str | None:
        """Asked by the job, on the machine that trains (not where a multirun is submitted
        from: a cluster's login node has no GPU)."""
        if type == "cuda" and not torch.cuda.is_available():
            return (
                f"{path}=cuda is not allowed: CUDA is not available on {platform.node()} "
                "(torch.cuda.is_available() is False); use device=cpu, or run where there is a GPU"
            )
        return None

    def resolve(self) -> torch.device:
        """The torch device. Inside a SLURM job, CPU work also gets only the CPUs the job was
        given: torch would otherwise start a thread per core of the shared node."""
        if cpus := os.environ.get("SLURM_CPUS_PER_TASK"):
            torch.set_num_threads(int(cpus))
        kind = self.type
        if kind == "auto":
            kind = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(kind)
