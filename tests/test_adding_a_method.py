"""The README's "Adding a method" example, taken from the README itself, added from a folder
outside the package (one module, one YAML file) and run through the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY


def readme_example() -> tuple[str, str]:
    """The python and yaml blocks of the README's "Adding a method" section."""
    section = (
        (REPO / "README.md").read_text().split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    )
    (python,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (yaml,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return python, yaml


@pytest.mark.slow
def test_readme_example_runs_as_a_new_method_without_touching_the_runner(tmp_path, data_root):
    python, yaml = readme_example()
    (tmp_path / "mean_one_ewc.py").write_text(python)
    target = "ewcexp.strategy.mean_one_ewc.MeanOneEWC"
    assert target in yaml  # where the README puts it; here it lives outside the package
    options = tmp_path / "conf" / "strategy"
    options.mkdir(parents=True)
    (options / "mean_one_ewc.yaml").write_text(yaml.replace(target, "mean_one_ewc.MeanOneEWC"))
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            "--config-dir",
            str(tmp_path / "conf"),
            "strategy=mean_one_ewc",
            "lambda=1",
            "fisher=batched",
            *TINY,
            f"data.root={data_root}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["strategy"] == "mean_one_ewc" and results["fisher_estimator"] == "batched"
    # the running Fisher (γ = 1) holds one mean-1 Fisher per task: its mean is the task count
    sizes = {"layers.0.weight": 784 * 32, "layers.0.bias": 32, "layers.2.weight": 32 * 10}
    sizes["layers.2.bias"] = 10
    for task, stats in enumerate(results["fisher"], start=1):
        accumulated = stats["accumulated"]
        mean = sum(accumulated[n]["mean"] * size for n, size in sizes.items()) / sum(sizes.values())
        assert mean == pytest.approx(task, rel=1e-4)
        raw = stats["per_parameter"]  # the batched Fisher as estimated: far below 1
        assert sum(raw[n]["mean"] * size for n, size in sizes.items()) / sum(sizes.values()) < 0.1
