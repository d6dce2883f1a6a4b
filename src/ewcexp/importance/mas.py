"""Memory Aware Synapses (Aljundi et al. 2018): importance from how much each parameter
moves the network's output, measured without labels.

    Ω_i = (1/N) Σ_n |∂‖f(x_n)‖²₂ / ∂θ_i|        f: the logits of the task's active units

(`ewcexp.strategy.mas` sums them over tasks into the penalty.)

∂‖f‖²/∂θ is the gradient of s · f with the backward signal s = 2f, so the per-sample engine
that computes the Fisher's squares computes these absolute values too: for a Linear layer
|δ_n a_nᵀ| = |δ_n| |a_n|ᵀ, so the sum over samples is one matmul, |δ|ᵀ|a|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ewcexp.config.schema import PositiveInt
from ewcexp.importance.contract import SampleCount, TaskData
from ewcexp.importance.per_sample import ChunkSize, per_sample_sum


@dataclass(frozen=True)
class MASImportance:
    """Mean absolute gradient of the squared L2 norm of the active logits, over `num_samples`
    of the task's training samples (-1: all); labels are not used. `chunk_size`: samples held
    at once (memory only; "auto": as many as `memory_mb` megabytes hold)."""

    num_samples: SampleCount = -1
    chunk_size: ChunkSize = 256
    memory_mb: PositiveInt = 2048  # chunk_size=auto: what the per-sample pass may hold
    kind: ClassVar[str] = "mas"
    name: ClassVar[str] = "mas"

    def __call__(self, model: nn.Module, data: TaskData) -> list[Tensor]:
        images, _ = data.subset(self.num_samples)

        def signals_for(logits: Tensor, rows: slice) -> Tensor:
            return 2 * logits[None]  # ∂‖f‖²/∂f

        total = per_sample_sum(
            model,
            images,
            signals_for,
            active=data.active,
            signals_per_sample=1,
            power=1,
            chunk_size=self.chunk_size,
            memory_mb=self.memory_mb,
        )
        return [t / len(images) for t in total]
