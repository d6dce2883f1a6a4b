"""One run seed, independent random streams: weight initialisation, batch order, the task
sequence's draws (pixel permutations, rotation angles, a random class order) and the
importance estimators' sampling and the replay memory each get a generator of their own.

Seeding them all with the same integer would make them draw the same raw numbers (task 1's
Fisher samples would be the first samples of its first epoch). Each stream's seed is instead
the first 64-bit word of NumPy's `SeedSequence(seed, spawn_key=(k,))`, k the purpose's fixed
number below: the k-th child of `SeedSequence(seed).spawn(...)`, hashed so that nearby seeds
and purposes give unrelated streams. Same seed, same streams: runs stay deterministic.
"""

from __future__ import annotations

import numpy as np
import torch

# never renumber: seeds change
STREAMS = {"weights": 0, "batches": 1, "tasks": 2, "importance": 3, "replay": 4}


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of `purpose`'s stream for the run seed `seed`."""
    sequence = np.random.SeedSequence(seed, spawn_key=(STREAMS[purpose],))
    return int(sequence.generate_state(1, np.uint64)[0])


def generator(seed: int, purpose: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` for `purpose`'s stream."""
    return torch.Generator(device).manual_seed(stream_seed(seed, purpose))
