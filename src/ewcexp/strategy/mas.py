"""Memory Aware Synapses (Aljundi et al. 2018) as a strategy: the importances of the tasks
(`ewcexp.importance.mas`) summed, with the penalty (λ/2)·Σ_i Ω_i (θ_i − θ*_i)² around the
latest parameters. The paper writes λ_MAS·Σ Ω (θ − θ*)² (no ½): its λ_MAS is our λ/2.
"""

from __future__ import annotations

from ewcexp.config.schema import NonNegativeFloat
from ewcexp.importance.contract import ImportanceEstimator
from ewcexp.strategy.ewc import OnlineEWC


class MAS(OnlineEWC):
    """MAS: the importances of the tasks summed, anchored at the latest parameters."""

    name = "mas"

    def __init__(self, strength: NonNegativeFloat, importance: ImportanceEstimator) -> None:
        super().__init__(strength, importance, gamma=1.0)
