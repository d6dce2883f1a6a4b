"""Training-step cost of each penalty strategy after T tasks, against fine-tuning's step.

    uv run python benchmarks/penalty.py [--tasks 2 5 10 20] [--repeats 9] [--compiled]

A step is what the runner does per minibatch: forward, the strategy writes its penalty's
gradient into `.grad` (fine-tuning sets it to None), backward adds the loss's, optimizer step
(MLP 784-400-400-10, batch 128, fused Adam).
Also the memory of the state each strategy keeps (Fishers and anchors).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, median_seconds, mnist_like, step_ms, table

from ewcexp.importance.penalty import gradient_buffers
from ewcexp.model.networks import MLP
from ewcexp.strategy.base import Strategy
from ewcexp.strategy.baselines import Finetune
from ewcexp.strategy.ewc import EWC, L2, EWCSum, OnlineEWC

STRATEGIES = {"ewc": EWC, "ewc_sum": EWCSum, "online_ewc": OnlineEWC, "l2": L2}


class ZeroingFinetune(Finetune):
    """Fine-tuning that zeroes `.grad` instead of leaving it None: the backward pass then adds
    its gradient to something, as it must when a penalty's gradient is already there."""

    def write_penalty_gradient(self, params: list[torch.Tensor]) -> None:
        torch._foreach_zero_(gradient_buffers(params))


def stored_tensors(strategy: Strategy) -> list[torch.Tensor]:
    """Every tensor the penalty keeps (stiffnesses and anchors)."""
    if strategy.penalty is None:
        return []
    return [t for term in strategy.penalty.terms for t in (*term.stiffness, *term.anchor)]


def read_once_ms(tensors: list[torch.Tensor], repeats: int) -> float:
    """Time to stream the stored state from memory once (a sum over each tensor): no step that
    uses every stored number can cost less than this on top of fine-tuning."""
    return median_seconds(lambda: [t.sum() for t in tensors], repeats * 10) * 1e3


def compare_compiled(params: list[torch.Tensor], repeats: int) -> str:
    """The merged penalty's gradient alone, as the two eager passes the strategies use and as
    one kernel fused by torch.compile: whether fewer passes would make the penalty cheaper."""
    strategy = EWCSum(1.0)
    strategy.consolidate(
        [p.detach() + 0.01 * torch.randn_like(p) for p in params],
        [torch.rand_like(p) for p in params],
    )
    (term,), grads = strategy.penalty.terms, [torch.empty_like(p) for p in params]
    stiffness, anchor = term.stiffness, term.anchor

    @torch.compile(fullgraph=True, dynamic=False)
    def fused(grads, params, anchor, stiffness):
        for grad, param, a, k in zip(grads, params, anchor, stiffness, strict=True):
            grad.copy_((param - a) * k)

    def eager() -> None:
        for grad, param, a, k in zip(grads, params, anchor, stiffness, strict=True):
            torch.sub(param, a, out=grad).mul_(k)

    with torch.no_grad():
        start = time.perf_counter()
        fused(grads, params, anchor, stiffness)
        compile_s = time.perf_counter() - start
        eager_ms = median_seconds(eager, repeats * 100) * 1e3
        fused_ms = median_seconds(lambda: fused(grads, params, anchor, stiffness), repeats * 100)
    return (
        f"Penalty gradient alone: two eager passes {eager_ms:.3f} ms, one fused torch.compile "
        f"kernel {fused_ms * 1e3:.3f} ms (compiled in {compile_s:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="*", default=[2, 5, 10, 20])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=9, help="alternating pairs of blocks")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="also time the penalty gradient as one torch.compile kernel (needs a C++ compiler)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MLP((28, 28), 10, [400, 400])
    params = list(model.parameters())
    parameter_bytes = sum(p.numel() * p.element_size() for p in params)
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    images, labels = mnist_like(128 * args.steps)
    batches = list(zip(images.split(128), labels.split(128), strict=True))

    def block_ms(strategy: Strategy) -> float:
        return step_ms(model, params, optimizer, batches, strategy)

    def paired(strategy: Strategy) -> tuple[float, float, float]:
        """Median step times of `strategy` and of fine-tuning, timed in alternating blocks,
        and the median of the per-pair ratios (the machine's drift cancels within a pair)."""
        block_ms(strategy)  # warm-up
        pairs = [(block_ms(strategy), block_ms(Finetune())) for _ in range(args.repeats)]
        return (
            statistics.median(p[0] for p in pairs),
            statistics.median(p[1] for p in pairs),
            statistics.median(p[0] / p[1] for p in pairs),
        )

    rows = []
    for name, control in (
        ("finetune (control)", Finetune()),
        ("finetune, zeroing .grad", ZeroingFinetune()),
    ):
        ms, base, ratio = paired(control)
        rows.append([name, "-", f"{ms:.2f}", f"{base:.2f}", f"{ratio:.3f}", "0", "0", "0"])
    for tasks in args.tasks:
        for name, cls in STRATEGIES.items():
            strategy = cls(1.0)
            for _ in range(tasks):
                strategy.consolidate(
                    [p.detach() + 0.01 * torch.randn_like(p) for p in params],
                    [torch.rand_like(p) for p in params],
                )
            ms, base, ratio = paired(strategy)
            state = stored_tensors(strategy)
            memory = sum(t.numel() * t.element_size() for t in state)
            rows.append(
                [
                    name,
                    tasks,
                    f"{ms:.2f}",
                    f"{base:.2f}",
                    f"{ratio:.3f}",
                    f"{read_once_ms(state, args.repeats) / base:.3f}",
                    f"{memory / 2**20:.1f}",
                    f"{memory / parameter_bytes:.0f}",
                ]
            )
    print(
        f"Training step, MLP 784-400-400-10 ({parameter_bytes / 2**20:.1f} MiB of parameters), "
        f"batch 128; medians over {args.repeats} alternating pairs of {args.steps}-step blocks; "
        f"{machine()}\n"
    )
    print(
        table(
            [
                "strategy",
                "tasks",
                "step ms",
                "finetune ms",
                "× finetune (median of pairs)",
                "reading the state once, × finetune",
                "state MiB",
                "parameter-sized buffers",
            ],
            rows,
        )
    )
    if args.compiled:
        print("\n" + compare_compiled(params, args.repeats))


if __name__ == "__main__":
    main()
