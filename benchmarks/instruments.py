"""What the instruments cost: a whole run with continual evaluation, and with Fisher
diagnostics, against the same run without, timed side by side in one process.

    uv run python benchmarks/instruments.py [--repeats 2] [OVERRIDE ...]

Default run: permuted Fashion-MNIST, 5 tasks, MLP 2×400, 500 steps of 128 per task, exact
Fisher on 1000 samples (as `python run.py` with those overrides). Each variant is run
`--repeats` times, the variants interleaved, and the median wall time of each is compared
with the plain run's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import machine, table
from hydra import compose, initialize_config_dir

from ewcexp.config.checks import check_config
from ewcexp.training.runner import run_experiment

CONF = Path(__file__).resolve().parents[1] / "src" / "ewcexp" / "conf"
BASE = [
    "task_sequence=permuted_fashion_mnist",
    "task_sequence.num_tasks=5",
    "fisher.num_samples=1000",
    "logger=none",
    "train.log_every=1000",
]
VARIANTS = {
    "plain": [],
    "train.eval_every=50 (1000 images per task)": ["train.eval_every=50"],
    "fisher.diagnostics=true": ["fisher.diagnostics=true"],
}


def run_seconds(overrides: list[str]) -> float:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    check_config(cfg)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_experiment(cfg, Path(folder))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, extra in VARIANTS.items():
            times[name].append(run_seconds([*BASE, *args.overrides, *extra]))
    plain = statistics.median(times["plain"])
    rows = [
        [name, f"{statistics.median(t):.1f}", f"{statistics.median(t) / plain:.2f}"]
        for name, t in times.items()
    ]
    print(f"{machine()}; overrides: {' '.join([*BASE, *args.overrides])}\n")
    print(table(["run", "wall s (median)", "× plain"], rows))


if __name__ == "__main__":
    main()
