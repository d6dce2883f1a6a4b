"""`<run dir>/metrics.jsonl`: the run's own copy of its curves, written whatever the logger,
so that a run with `logger=none` keeps them too, and cut back on resume so that every event
is in it once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ewcexp.reporting.loggers import Logger

METRICS_FILE = "metrics.jsonl"


class MetricsFile(Logger):
    """`<run dir>/metrics.jsonl`: the training curves (`"event": "train"`, W&B's `train/*`
    keys), continual evaluations (`"continual"`), each task's accuracies (`"task"`) and the
    outcome (`"end"`), one JSON object a line, whatever the logger, so a run with
    `logger=none` keeps its curves too. Each line is flushed as it is written. A resumed run
    first cuts the file back to where its checkpoint was written (`position()`), so every
    event is in it once, as in a run never stopped."""

    def __init__(self, run_dir: Path, keep: int | None = 0) -> None:
        """`keep`: how many bytes of an existing file to keep (a checkpoint's `position()`;
        0, a fresh run: none; None: all), without a line a crash cut short."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        size = self.path.stat().st_size if self.path.exists() else 0
        end = _after_last_line(self.path, size if keep is None else min(keep, size))
        if end < size:
            os.truncate(self.path, end)
        self.file = self.path.open("ab")

    def position(self) -> int:
        """The file's length so far: what a checkpoint keeps."""
        self.file.flush()
        return os.fstat(self.file.fileno()).st_size

    def write(self, event: str, entries: dict[str, Any]) -> None:
        if not self.file.closed:
            line = json.dumps({"event": event, **entries}, default=str)
            self.file.write(line.encode() + b"\n")
            self.file.flush()

    def log_training(self, metrics: dict[str, float]) -> None:
        self.write("train", metrics)

    def log_continual(self, point: dict[str, Any]) -> None:
        self.write("continual", point)

    def log_task(self, task: int, metrics: dict[str, float | None]) -> None:
        self.write("task", {"task": task + 1, **metrics})

    def log_summary(self, results: dict[str, Any], images: dict[str, Path]) -> None:
        keys = ("status", "diverged", "avg_acc", "bwt", "forgetting", "fwt", "wall_time_s")
        self.write("end", {key: results[key] for key in keys if key in results})

    def finish(self, failed: bool = False, preempted: bool = False) -> None:
        self.file.close()


def _after_last_line(path: Path, end: int) -> int:
    """`end`, moved back to just after the last newline before it (0 if none)."""
    if end == 0:
        return 0
    with path.open("rb") as file:
        while end > 0:
            start = max(0, end - 65536)
            file.seek(start)
            newline = file.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0
