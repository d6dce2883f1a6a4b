"""The numbers a run reports about an importance or a Kronecker factor's spectrum: summary
statistics for results.json and the logs, and histograms of log10 values for both."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EPS = 1e-12  # histograms are of log10(|importance| + eps): exact zeros land at -12
HISTOGRAM_BINS = 64  # wandb.Histogram accepts at most 512
SMALL = 1e-8  # an importance below this leaves a parameter, in effect, unprotected


def importance_histogram(values: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of log10(|importance| + eps) (SI's can be negative)."""
    logs = torch.log10(values.detach().flatten().double().cpu().abs() + EPS).numpy()
    return np.histogram(logs, bins=HISTOGRAM_BINS)


def importance_statistics(values: Tensor) -> dict[str, float]:
    """Mean, max, and the fraction of parameters whose importance is below SMALL."""
    flat = values.detach().flatten()
    return {
        "mean": float(flat.mean()),
        "max": float(flat.max()),
        f"fraction_below_{SMALL:g}": float((flat < SMALL).float().mean()),
    }


def spectrum_statistics(eigenvalues: Tensor) -> dict[str, float]:
    """Largest and smallest eigenvalue, trace, and the effective rank (trace / largest): how
    many directions carry the factor's mass."""
    values = eigenvalues.detach().double()
    top = float(values.max())
    return {
        "max": top,
        "min": float(values.min()),
        "trace": float(values.sum()),
        "effective_rank": float(values.sum()) / top if top > 0 else 0.0,
    }
