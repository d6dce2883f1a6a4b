"""The parameters along a run (`train.snapshot_every`): the paths `python -m ewcexp.landscape`
draws through parameter space.

One file per snapshot, `<run dir>/snapshots/step_<global step>.pt`, written atomically like
the checkpoint, so a kill never leaves half of one. Between task ends only the trainable
parameters are kept, in fp16: half of fp32's size, and its 10-bit mantissa rounds a weight
by at most 2⁻¹¹ of itself (bf16's 7 bits: 2⁻⁸), plenty for a path's shape and length; a
tensor beyond fp16's range (|θ| > 65504) is kept in fp32 instead. At each task's end the
whole state dict (buffers too, e.g. BatchNorm's statistics) is kept in fp32: those points
define the landscape's plane and its lines' end points, which must be the run's own weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ewcexp.reporting.files import write_atomically

FOLDER = "snapshots"
NAME = re.compile(r"step_(\d+)\.pt")
FP16_LARGEST = torch.finfo(torch.float16).max


@dataclass(frozen=True)
class Snapshot:
    """The trainable parameters at global step `step`, in task `task` (0-based), as one
    fp32 vector in `names`' order; `state`, the model's whole state dict, at a task's end."""

    step: int
    task: int
    names: tuple[str, ...]
    vector: Tensor
    state: dict[str, Tensor] | None

    @property
    def task_end(self) -> bool:
        return self.state is not None


def path_of(run_dir: Path, step: int) -> Path:
    return run_dir / FOLDER / f"step_{step:08d}.pt"


def compact(tensor: Tensor) -> Tensor:
    """fp16 where it holds the values, else fp32 (see the module's note)."""
    values = tensor.detach().float().cpu()
    return values.half() if values.abs().max() <= FP16_LARGEST else values


def save(run_dir: Path, step: int, task: int, model: nn.Module, task_end: bool) -> None:
    """The trainable parameters at global `step` of `task` (all of the state at a task's end)."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    contents = {
        "step": step,
        "task": task,
        "names": list(trainable),
        "parameters": {n: compact(p) for n, p in trainable.items()} if not task_end else {},
    }
    if task_end:
        contents["state"] = {n: t.detach().cpu().clone() for n, t in model.state_dict().items()}
    write_atomically(path_of(run_dir, step), lambda file: torch.save(contents, file))


def discard_after(run_dir: Path, step: int) -> None:
    """Remove the snapshots beyond global `step`: a resumed run (from its checkpoint at `step`)
    writes them again, and a fresh one (`step` 0) keeps none of an earlier run's."""
    folder = run_dir / FOLDER
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        found = NAME.fullmatch(path.name)
        if found is None or int(found[1]) > step:
            path.unlink()


def load(run_dir: Path) -> list[Snapshot]:
    """Every snapshot in `run_dir`, in step order (none: an empty list)."""
    folder = run_dir / FOLDER
    paths = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
    snapshots = []
    for path in paths:
        contents = torch.load(path, weights_only=True)
        names = tuple(contents["names"])
        state = contents.get("state")
        tensors = state if state is not None else contents["parameters"]
        vector = torch.cat([tensors[n].float().flatten() for n in names])
        snapshots.append(Snapshot(contents["step"], contents["task"], names, vector, state))
    return snapshots
