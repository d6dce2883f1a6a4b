"""Draw the loss landscape of runs that share their seed and first task:
`python -m ewcexp.landscape RUN_DIR RUN_DIR... [--out DIR] [--grid 41] [--wandb offline]`.

The runs need `train.snapshot_every=N` (e.g. a multirun `-m strategy=finetune,l2,ewc
train.snapshot_every=50`). Writes `landscape.png` and `landscape.json` (every number of the
figure) to `--out` (default: the current folder); with `--wandb`, logs both to a W&B run.
The numbers are `ewcexp.training.landscape`'s, the figure `ewcexp.reporting.figures`'.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

GRID_LARGEST = 201  # 40,401 points: minutes for the MLP; beyond, hours
LINE_LARGEST = 101


def bounded(flag: str, low: int, high: int, value: int) -> str | None:
    """The one line for an integer option outside [low, high], or None."""
    if low <= value <= high:
        return None
    return f"{flag}={value} is not allowed: expected an integer in [{low}, {high}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ewcexp.landscape", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a run's folder")
    parser.add_argument("--out", type=Path, default=Path("."), help="where to write (default: .)")
    parser.add_argument("--grid", type=int, default=41, help="points along each axis (default 41)")
    parser.add_argument(
        "--images", type=int, default=1000, help="test images per task (default 1000)"
    )
    parser.add_argument(
        "--line-points", type=int, default=21, help="points on each straight line (default 21)"
    )
    parser.add_argument(
        "--chunk", type=int, default=8, help="grid points evaluated at once (default 8)"
    )
    parser.add_argument("--wandb", choices=("offline", "online"), help="also log to a W&B run")
    parser.add_argument("--project", default="ewcexp", help="W&B project (default: ewcexp)")
    args = parser.parse_args(argv)
    problems = [
        bounded("--grid", 2, GRID_LARGEST, args.grid),
        bounded("--images", 1, 10**6, args.images),
        bounded("--line-points", 2, LINE_LARGEST, args.line_points),
        bounded("--chunk", 1, 4096, args.chunk),
    ]
    if args.out.exists() and not args.out.is_dir():
        problems.append(f"--out={args.out} is not allowed: expected a folder (it is a file)")
    if problem := next((p for p in problems if p), None):
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from tqdm import tqdm  # after the checks: a refused command answers at once

    from ewcexp.reporting import figures
    from ewcexp.reporting.files import write_json_atomically
    from ewcexp.training.landscape import LandscapeError, measure, prepare

    try:
        prepared = prepare(args.run_dirs, args.images)
    except LandscapeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tqdm(total=args.grid**2, desc="landscape grid") as bar:
        result = measure(prepared, args.grid, args.line_points, args.chunk, bar.update)
    result["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    picture = figures.landscape(result, args.out / "landscape.png")
    write_json_atomically(args.out / "landscape.json", result)
    print(summary(result))
    print(f"wrote {picture} and {args.out / 'landscape.json'}")
    if args.wandb:
        log_to_wandb(result, picture, args.out, args.wandb, args.project)
    return 0


def summary(result: dict[str, Any]) -> str:
    """One line per run: its path's lengths, its end's distance to the plane, the barriers."""
    lines = [
        f"plane through θ*_A (step {result['theta_a_step']}) and the ends of "
        f"{result['plane']['e1_towards']} and {result['plane']['e2_towards']}; "
        f"grid {result['grid']['size']}x{result['grid']['size']} in {result['seconds']:.1f} s"
    ]
    for run in result["runs"]:
        acc = run["line"]
        lines.append(
            f"{run['label']:>18}: path {run['path_length']:.2f} (Fisher {run['path_length_fisher']:.3f}), "
            f"straight {run['straight_distance']:.2f}, off the plane {run['end_distance_to_plane']:.2f}, "
            f"barrier A {run['barrier']['loss_a']:.3f} B {run['barrier']['loss_b']:.3f}, "
            f"end acc A {100 * acc['acc_a'][-1]:.1f} B {100 * acc['acc_b'][-1]:.1f}"
        )
    return "\n".join(lines)


def log_to_wandb(result: dict[str, Any], picture: Path, out: Path, mode: str, project: str) -> None:
    """One W&B run: the figure, a table of the runs' numbers, and those numbers in its summary."""
    import wandb

    columns = [
        "label", "path_length", "path_length_fisher", "straight_distance",
        "straight_distance_fisher", "end_distance_to_plane", "barrier_loss_a", "barrier_loss_b",
    ]  # fmt: skip

    def row(run: dict[str, Any]) -> list[Any]:
        barriers = {f"barrier_{k}": v for k, v in run["barrier"].items()}
        return [{**run, **barriers}[c] for c in columns]

    run = wandb.init(
        project=project, job_type="landscape", name="landscape", mode=mode, dir=str(out)
    )
    try:
        run.log(
            {
                "landscape": wandb.Image(str(picture)),
                "landscape_runs": wandb.Table(
                    columns=columns, data=[row(r) for r in result["runs"]]
                ),
            }
        )
        for entry in result["runs"]:
            for column, value in zip(columns[1:], row(entry)[1:], strict=True):
                run.summary[f"{entry['label']}/{column}"] = value
        run.summary["grid_size"] = result["grid"]["size"]
        run.summary["seconds"] = result["seconds"]
    finally:
        run.finish()
