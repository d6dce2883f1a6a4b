"""What the landscape's grid costs: both tasks' loss and accuracy at every point of a grid over
a plane of the MLP 784-400-400-10's parameters, batched over grid points (the first layer's
output affine in the plane's coordinates, the rest `vmap`ped over a chunk of points) against
one point at a time (its parameters loaded into the model, a plain forward pass), timed side
by side in one process.

    uv run python benchmarks/landscape.py [--grid 41] [--images 1000] [--chunks 8 16 32]

Random weights and images (the time does not depend on their values), `--images` per task for
two tasks; the one-point-at-a-time way is timed on `--plain-points` points of the same grid
and scaled to the whole grid.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, mnist_like, table

from ewcexp.model.networks import MLP
from ewcexp.training.landscape import EvaluationData, Plane, evaluate_point, grid_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=41, help="points along each axis")
    parser.add_argument("--images", type=int, default=1000, help="test images per task")
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--plain-points", type=int, default=41)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MLP((28, 28), 10, [400, 400]).eval()
    images, labels = mnist_like(2 * args.images)
    data = EvaluationData(images, labels, args.images, (slice(0, 10), slice(0, 10)))
    origin = torch.cat([p.detach().flatten() for p in model.parameters()])
    ends = [origin + 0.05 * torch.randn_like(origin) for _ in range(2)]
    plane = Plane.through(origin, *ends)
    xs = ys = torch.linspace(-0.5, 1.5, args.grid, dtype=torch.float64)
    points = args.grid**2
    rows, batched = [], {}
    for chunk in args.chunks:
        start = time.perf_counter()
        grid_values(model, plane, data, xs, ys, chunk)
        batched[chunk] = time.perf_counter() - start
    best = min(batched.values())
    plain_points = torch.cartesian_prod(ys, xs).flip(1)[: args.plain_points]
    start = time.perf_counter()
    for x, y in plain_points.tolist():
        evaluate_point(model, (plane.origin + x * plane.axes[0] + y * plane.axes[1]).float(), data)
    per_point = (time.perf_counter() - start) / len(plain_points)
    for chunk, seconds in batched.items():
        rows.append(
            [f"batched, {chunk} points at a time", points, f"{seconds:.1f}",
             f"{1e3 * seconds / points:.1f}", f"{seconds / best:.2f}"]
        )  # fmt: skip
    rows.append(
        [f"one point at a time ({len(plain_points)} timed)", points, f"{per_point * points:.1f}",
         f"{1e3 * per_point:.1f}", f"{per_point * points / best:.2f}"]
    )  # fmt: skip
    print(
        f"{machine()}; MLP 784-400-400-10, {args.grid}x{args.grid} grid, "
        f"{args.images} images per task, two tasks\n"
    )
    print(table(["way", "grid points", "s (grid)", "ms per point", "× the fastest"], rows))


if __name__ == "__main__":
    main()
