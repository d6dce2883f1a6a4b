"""Learning without Forgetting (Li & Hoiem 2017): the model as it was at the end of the previous
task (the teacher) gives soft targets on each step's inputs, and the loss gains

    α · Σ_heads  mean_n  −Σ_k softmax(z_old/T)_k · log softmax(z/T)_k

over the output units each past task had in the teacher (one head per past task in the task
scenario; the shared head, or every unit learned so far, in the domain and class scenarios).
No T² factor: α = 1, T = 2 are the paper's λ_o and T. `lwf_ewc` adds EWC's penalty (λ, the
fisher group's estimator) to the same distillation; with `replay.size` > 0 the memory's
samples join the minibatch and are distilled too.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ewcexp.config.schema import NonNegativeFloat, PositiveFloat
from ewcexp.importance.contract import Importance, ImportanceEstimator, TaskData
from ewcexp.importance.penalty import Tensors
from ewcexp.strategy.ewc import EWC


def distillation(logits: Tensor, teacher: Tensor, heads: list[slice], temperature: float) -> Tensor:
    """Σ over `heads` of the mean cross-entropy of softmax(`logits`/T) against the soft
    targets softmax(`teacher`/T), each over the head's units."""
    total = logits.new_zeros(())
    for units in heads:
        targets = F.softmax(teacher[:, units] / temperature, dim=1)
        log_student = F.log_softmax(logits[:, units] / temperature, dim=1)
        total = total - (targets * log_student).sum(dim=1).mean()
    return total


def past_heads(actives: list[slice]) -> list[slice]:
    """The units the teacher answered each past task over, each once: the task scenario's
    separate heads; one slice where one covers the others (the domain and class scenarios)."""
    heads: list[slice] = []
    for units in actives:
        if any(h.start <= units.start and units.stop <= h.stop for h in heads):
            continue
        heads = [h for h in heads if not (units.start <= h.start and h.stop <= units.stop)]
        heads.append(units)
    return heads


class LwF(EWC):
    """Distillation from the previous task's model; a penalty only with an `importance`."""

    name = "lwf"

    def __init__(
        self,
        temperature: PositiveFloat = 2.0,
        alpha: NonNegativeFloat = 1.0,
        strength: NonNegativeFloat = 0.0,
        importance: ImportanceEstimator | None = None,
    ) -> None:
        super().__init__(strength, importance)
        self.temperature, self.alpha = temperature, alpha
        self.teacher: nn.Module | None = None
        self.teacher_state: dict[str, Tensor] | None = None  # restored, before the first step
        self.actives: list[slice] = []  # each consolidated task's units, when it was learned

    def end_task(self, model: nn.Module, params: Tensors, data: TaskData) -> Importance | None:
        importance = super().end_task(model, params, data)
        self.teacher = frozen_copy(model)
        self.actives.append(data.active)
        return importance

    def consolidate(self, params: Tensors, importance: Importance | None) -> None:
        if importance is not None:  # lwf_ewc: EWC's term for the task
            super().consolidate(params, importance)

    def extra_loss(self, model: nn.Module, inputs: Tensor, logits: Tensor) -> Tensor | None:
        if self.teacher_state is not None:  # a resumed run: the teacher as checkpointed
            self.teacher = frozen_copy(model)
            self.teacher.load_state_dict(self.teacher_state)
            self.teacher_state = None
        if self.teacher is None or self.alpha == 0:
            return None
        with torch.no_grad():
            teacher = self.teacher(inputs)
        heads = past_heads(self.actives)
        return self.alpha * distillation(logits, teacher, heads, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        state["actives"] = [(units.start, units.stop) for units in self.actives]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher, self.teacher_state = None, state.get("teacher")
        self.actives = [slice(int(start), int(stop)) for start, stop in state["actives"]]


class LwFEWC(LwF):
    """LwF's distillation and EWC's penalty together."""

    name = "lwf_ewc"

    def __init__(
        self,
        strength: NonNegativeFloat,
        importance: ImportanceEstimator,
        temperature: PositiveFloat = 2.0,
        alpha: NonNegativeFloat = 1.0,
    ) -> None:
        super().__init__(temperature, alpha, strength, importance)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in evaluation mode whose parameters take no gradient."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
