"""Continual evaluation (`train.eval_every`): every task seen so far, evaluated on a fixed
subset of its test images every few steps while training, and what the curves show at each
task switch: the stability gap (De Lange, van de Ven & Tuytelaars 2023), a dip in an old
task's accuracy right after the next task starts, and whether and when it recovers."""

from __future__ import annotations

from typing import Any


def stability_gaps(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each task j and the task after it: `before`, j's accuracy at the last evaluation
    while j itself trained; `min` and its `min_step` (steps into the next task), its lowest
    accuracy during the next task; `depth` = before − min; `steps_to_recover`, steps into the
    next task until an evaluation after the minimum is back at `before` or above (0: no dip
    at all; None: not back within that task). Tasks numbered from 1. `points`: {"step", "task", "task_step", "acc"}
    in the order taken, `acc` over tasks 1..task."""
    gaps = []
    tasks = sorted({p["task"] for p in points})
    for old, new in zip(tasks, tasks[1:], strict=False):
        own = [p for p in points if p["task"] == old]
        during = [p for p in points if p["task"] == new]
        if not own or not during or new != old + 1:
            continue
        before = own[-1]["acc"][old - 1]
        lowest = min(range(len(during)), key=lambda i: during[i]["acc"][old - 1])
        minimum = during[lowest]["acc"][old - 1]
        recovered = (
            0
            if minimum >= before
            else next(
                (p["task_step"] for p in during[lowest:] if p["acc"][old - 1] >= before), None
            )
        )
        gaps.append(
            {
                "task": old,
                "during": new,
                "before": before,
                "min": minimum,
                "min_step": during[lowest]["task_step"],
                "depth": before - minimum,
                "steps_to_recover": recovered,
            }
        )
    return gaps
