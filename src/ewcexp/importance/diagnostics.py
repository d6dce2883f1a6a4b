"""Fisher diagnostics (`fisher.diagnostics=true`): at each consolidation, every Fisher
estimator on the same samples, compared with `exact` parameter tensor by parameter tensor, and
the overlap between the tasks' Fishers (Kirkpatrick et al. 2017, Fig. 3B).

Against `exact` (E), per tensor and over the whole model, each estimator's F gets:
- `spearman`: the rank correlation of F and E (ties averaged): does it order the parameters'
  importance the same way, whatever its scale?
- `relative_error`: ‖F − E‖ / ‖E‖ (Frobenius);
- `scale_ratio`: ΣE / ΣF, the factor by which λ tuned for `exact` must be multiplied to give
  the same total stiffness with F (about the minibatch size for `batched`).
Overlap of two tasks' Fishers: normalised to unit trace, F̂ = F / tr F, then
1 − ½ Σ_i (√F̂₁ᵢ − √F̂₂ᵢ)² (one minus the squared Fréchet distance of the diagonals):
1 for identical Fishers, 0 for disjoint supports.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ewcexp.importance.contract import TaskData
from ewcexp.importance.fisher import ESTIMATORS, Fisher, estimate_fisher


def diagnose(
    model: nn.Module, data: TaskData, settings: Fisher, names: list[str], draws_before: Tensor
) -> tuple[int, dict[str, dict[str, dict[str, float | None]]], Tensor]:
    """Every Fisher estimator on the samples the consolidation drew (`data.generator` rewound
    to `draws_before`), compared with `exact`: (samples, the comparisons, exact flattened on
    the CPU). The generator is left where the consolidation left it, so the run's numbers do
    not depend on the diagnostics."""
    generator = data.generator
    draws_after = generator.get_state()
    generator.set_state(draws_before)
    try:
        images, labels = data.subset(settings.num_samples)
        fishers = {
            estimator: estimate_fisher(
                model, images, labels, estimator=estimator, active=data.active,
                chunk_size=settings.chunk_size, memory_mb=settings.memory_mb,
                batch_size=settings.batch_size,
                generator=generator,
            )
            for estimator in ESTIMATORS
        }  # fmt: skip
    finally:
        generator.set_state(draws_after)
    exact = torch.cat([f.flatten() for f in fishers["exact"]]).cpu()
    return len(labels), estimator_diagnostics(fishers, names), exact


def average_ranks(values: Tensor) -> Tensor:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = torch.argsort(values)
    _, group, counts = torch.unique_consecutive(
        values[order], return_inverse=True, return_counts=True
    )
    last = counts.cumsum(0).double()
    ranks = torch.empty(len(values), dtype=torch.float64, device=values.device)
    ranks[order] = (last - (counts.double() - 1) / 2)[group]
    return ranks


def spearman(first: Tensor, second: Tensor) -> float | None:
    """Spearman's rank correlation (None when either side is constant)."""
    a, b = average_ranks(first.flatten()), average_ranks(second.flatten())
    a, b = a - a.mean(), b - b.mean()
    scale = float(a.norm() * b.norm())
    return float(a @ b) / scale if scale > 0 else None


def compare(estimate: Tensor, exact: Tensor) -> dict[str, float | None]:
    estimate, exact = estimate.flatten().double(), exact.flatten().double()
    size, total = float(exact.norm()), float(estimate.sum())
    return {
        "spearman": spearman(estimate, exact),
        "relative_error": float((estimate - exact).norm()) / size if size > 0 else None,
        "scale_ratio": float(exact.sum()) / total if total > 0 else None,
    }


def estimator_diagnostics(
    fishers: dict[str, list[Tensor]], names: list[str]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """{tensor name or "all": {estimator: comparison with exact}}, for every estimator but
    `exact` in `fishers` (each one tensor per parameter, in `names`' order)."""
    exact = fishers["exact"]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for i, name in enumerate(names):
        out[name] = {e: compare(f[i], exact[i]) for e, f in fishers.items() if e != "exact"}
    flat_exact = torch.cat([t.flatten() for t in exact])
    out["all"] = {
        e: compare(torch.cat([t.flatten() for t in f]), flat_exact)
        for e, f in fishers.items()
        if e != "exact"
    }
    return out


def fisher_overlap(first: Tensor, second: Tensor) -> float:
    """1 − ½ Σ (√F̂₁ − √F̂₂)² for two flattened diagonal Fishers."""
    a, b = first.double().clamp_min(0), second.double().clamp_min(0)
    a, b = a / a.sum(), b / b.sum()
    return 1.0 - 0.5 * float(((a.sqrt() - b.sqrt()) ** 2).sum())


def overlap_row(fishers: list[Tensor]) -> list[float]:
    """The last task's overlap with each task so far, itself last (1)."""
    return [fisher_overlap(earlier, fishers[-1]) for earlier in fishers]


def overlap_matrix(rows: list[list[float]]) -> list[list[float]]:
    """Every pair of tasks' overlap from each task's `overlap_row` (the overlap is
    symmetric: row t holds tasks 1..t, the matrix mirrors it; 1 on the diagonal)."""
    return [[rows[max(i, j)][min(i, j)] for j in range(len(rows))] for i in range(len(rows))]
