"""Tables from runs' results.json files, for docs/results.md.

    python scripts/results_table.py best-lambda DIR   # the λ with the best mean avg_acc
    python scripts/results_table.py best KEY DIR      # the value of config KEY with the best mean avg_acc
    python scripts/results_table.py best-kept-and-learned KEY DIR  # ... by T0's and avg_acc's mean
    python scripts/results_table.py table OUT         # markdown, from fashion_mnist_results.sh's OUT
    python scripts/results_table.py relatives OUT     # the SI and MAS section alone (relatives_results.sh)
    python scripts/results_table.py kfac OUT          # the Kronecker-factored section (kfac_results.sh)
    python scripts/results_table.py comparisons OUT   # replay, A-GEM, LwF beside EWC (comparison_results.sh)
    python scripts/results_table.py pretrained OUT [PNG]  # fine-tuning with T0 (pretrained_results.sh)
    python scripts/results_table.py libraries OUT     # torchvision and timm end to end (library_results.sh)
    python scripts/results_table.py grouped DIR KEY...  # mean ± error per value of config KEYs

Accuracies are means over seeds ± the standard error of the mean (sd/√n).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

SETTINGS = {  # OUT sub-folder: (sequence, scenario) as the table names them
    "split_task": ("split Fashion-MNIST (5×2)", "task"),
    "split_class": ("split Fashion-MNIST (5×2)", "class"),
    "permuted_domain": ("permuted Fashion-MNIST (5)", "domain"),
}
STRATEGIES = ("finetune", "l2", "ewc", "ewc_sum", "online_ewc", "joint")


def runs_under(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]


def standard_error(values: list[float]) -> float:
    """sd/√n; 0 for a single value."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def mean_and_error(values: list[float]) -> str:
    """`mean ± standard error` in percent; the error is left out for a single run."""
    mean = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {100 * standard_error(values):.1f}"


def final_accuracy(run: dict[str, Any]) -> float:
    return run["avg_acc"]


def kept_and_learned(run: dict[str, Any]) -> float:
    """What a fine-tuning run kept and what it learned, weighed alike: the mean of the
    pretrained task's final accuracy and the new tasks' final average accuracy."""
    return (run["acc_pretrained"][-1] + run["avg_acc"]) / 2


def accuracy_by(
    folder: Path, key: str = "lambda", score: Callable[[dict[str, Any]], float] = final_accuracy
) -> dict[float, float]:
    """Mean `score` (final average accuracy) per value of config `key` of the runs under
    `folder`."""
    by_value: dict[float, list[float]] = defaultdict(list)
    for run in runs_under(folder):
        by_value[float(config_value(run, key))].append(score(run))
    return {value: statistics.fmean(values) for value, values in by_value.items()}


def best_lambda(folder: Path) -> float:
    return best_value(folder, "lambda")


def best_value(
    folder: Path, key: str, score: Callable[[dict[str, Any]], float] = final_accuracy
) -> float:
    """The value of config `key` (`lambda`, `strategy.alpha`) whose runs under `folder` have
    the best mean `score` (final average accuracy)."""
    accuracies = accuracy_by(folder, key, score)
    if not accuracies:
        raise SystemExit(f"error: no results.json under {folder}")
    return max(accuracies, key=accuracies.__getitem__)


def sweep_cell(folder: Path, key: str = "lambda") -> str:
    """`value: acc` for every value of `key` (λ) in a sweep, the chosen one in bold."""
    accuracies = accuracy_by(folder, key)
    if not accuracies:
        return "–"
    best = max(accuracies, key=accuracies.__getitem__)
    cells = [f"{strength:g}: {100 * accuracies[strength]:.1f}" for strength in sorted(accuracies)]
    return ", ".join(
        f"**{c}**" if strength == best else c
        for c, strength in zip(cells, sorted(accuracies), strict=True)
    )


def strategy_table(out: Path) -> list[str]:
    header = ["sequence", "scenario", *STRATEGIES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for folder, (sequence, scenario) in SETTINGS.items():
        if not (out / folder).is_dir():
            continue
        by_strategy: dict[str, list[float]] = defaultdict(list)
        lambdas: dict[str, float] = {}
        for sub in ("baselines", "ewc", "l2"):
            for run in runs_under(out / folder / sub):
                by_strategy[run["strategy"]].append(run["avg_acc"])
                lambdas[run["strategy"]] = float(run["lambda"])
        cells = []
        for strategy in STRATEGIES:
            values = by_strategy.get(strategy)
            cell = mean_and_error(values) if values else "–"
            if values and strategy not in ("finetune", "joint"):
                cell += f" (λ={lambdas[strategy]:g})"
            cells.append(cell)
        lines.append(f"| {sequence} | {scenario} | " + " | ".join(cells) + " |")
    return lines


def sweep_table(out: Path) -> list[str]:
    lines = [
        "| sequence | scenario | ewc: λ → avg acc (%) | l2: λ → avg acc (%) |",
        "|---|---|---|---|",
    ]
    for folder, (sequence, scenario) in SETTINGS.items():
        if (out / folder / "sweep_ewc").is_dir():
            ewc, l2 = (sweep_cell(out / folder / f"sweep_{s}") for s in ("ewc", "l2"))
            lines.append(f"| {sequence} | {scenario} | {ewc} | {l2} |")
    return lines


def estimator_table(out: Path) -> list[str]:
    lines = ["| Fisher estimator | λ | avg acc (%) | BWT (%) |", "|---|---|---|---|"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for folder in (out / "permuted_domain" / "ewc", out / "estimators", out / "estimators_batched"):
        for run in runs_under(folder):
            if run["strategy"] == "ewc":
                groups[(run["fisher_estimator"], float(run["lambda"]))].append(run)
    for (estimator, strength), runs in sorted(groups.items()):
        accuracy = mean_and_error([run["avg_acc"] for run in runs])
        transfer = mean_and_error([run["bwt"] for run in runs])
        lines.append(f"| {estimator} | {strength:g} | {accuracy} | {transfer} |")
    return lines


RELATIVES = ("si", "mas")
KFAC = ("ewc_diagonal", "ewc_kfac", "online_ewc_diagonal", "online_ewc_kfac")


def relatives_section(out: Path) -> list[str]:
    """SI and MAS per setting (λ chosen on the validation split), and their λ sweeps."""
    return validated_section(
        out,
        RELATIVES,
        [
            "## SI and MAS",
            "",
            "SI and MAS on the same settings (`bash scripts/relatives_results.sh`), their λ",
            "chosen by a sweep at seed 0 on 10,000 held-out training images",
            "(`data.validation_size=10000`, the test set unseen), then seeds 0, 1, 2 on the test",
            "set; MAS on 5,000 samples per task like the Fisher. Final average accuracy (%),",
            "mean ± standard error:",
        ],
    )


def kfac_section(out: Path) -> list[str]:
    """Kronecker-factored EWC beside the diagonal, all λ chosen on the validation split."""
    return validated_section(
        out,
        KFAC,
        [
            "## Kronecker-factored EWC",
            "",
            "`fisher.structure=kfac` beside the diagonal Fisher, for `ewc` (one term per task)",
            "and `online_ewc` (one merged term), on the settings above (`bash",
            "scripts/kfac_results.sh`); every λ chosen by a sweep at seed 0 on 10,000 held-out",
            "training images, then seeds 0, 1, 2 on the test set. Final average accuracy (%),",
            "mean ± standard error:",
        ],
    )


def validated_section(out: Path, methods: tuple[str, ...], intro: list[str]) -> list[str]:
    """A row per setting: each method's runs under OUT/<setting>/<method> (λ in brackets),
    and its sweep under OUT/<setting>/sweep_<method>."""
    lines = [
        *intro,
        "",
        "| sequence | scenario | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    sweeps = [
        "| sequence | scenario | "
        + " | ".join(f"{m}: λ → validation acc (%)" for m in methods)
        + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for folder, (sequence, scenario) in SETTINGS.items():
        cells, sweep_cells = [], []
        for method in methods:
            runs = runs_under(out / folder / method)
            cell = mean_and_error([r["avg_acc"] for r in runs]) if runs else "–"
            if runs:
                cell += f" (λ={float(runs[0]['lambda']):g})"
            cells.append(cell)
            sweep_cells.append(sweep_cell(out / folder / f"sweep_{method}"))
        if any(c != "–" for c in cells):
            lines.append(f"| {sequence} | {scenario} | " + " | ".join(cells) + " |")
            sweeps.append(f"| {sequence} | {scenario} | " + " | ".join(sweep_cells) + " |")
    return [
        *lines,
        "",
        "λ sweeps on the validation split (seed 0; bold: the λ used above):",
        "",
        *sweeps,
    ]


def ewc_gains(out: Path) -> list[str]:
    """How far each EWC variant lands above fine-tuning, per setting: the pattern to check."""
    lines = []
    for folder, (sequence, scenario) in SETTINGS.items():
        by_strategy: dict[str, list[float]] = defaultdict(list)
        for sub in ("baselines", "ewc"):
            for run in runs_under(out / folder / sub):
                by_strategy[run["strategy"]].append(run["avg_acc"])
        if "finetune" not in by_strategy:
            continue
        base = statistics.fmean(by_strategy["finetune"])
        gains = ", ".join(
            f"{name} {100 * (statistics.fmean(by_strategy[name]) - base):+.1f}"
            for name in ("ewc", "ewc_sum", "online_ewc")
            if by_strategy.get(name)
        )
        lines.append(f"- {sequence}, {scenario}-incremental: {gains} points over fine-tuning")
    return lines


COMPARED = (  # row label, folder under OUT/<setting>, replay.size the rows are filtered on
    ("fine-tuning", "finetune", None),
    ("ER, M=100", "er", 100),
    ("ER, M=500", "er", 500),
    ("ER, M=2000", "er", 2000),
    ("A-GEM, M=500", "agem", None),
    ("LwF", "lwf", None),
    ("EWC", "ewc", None),
    ("online EWC", "online_ewc", None),
    ("SI", "si", None),
    ("EWC + ER, M=500", "ewc_er", None),
    ("LwF + EWC", "lwf_ewc", None),
)
PAIRS = (  # (first, second): first − second, seed by seed
    ("EWC", "fine-tuning"),
    ("ER, M=500", "fine-tuning"),
    ("EWC + ER, M=500", "ER, M=500"),
    ("EWC + ER, M=500", "EWC"),
    ("A-GEM, M=500", "ER, M=500"),
    ("LwF", "fine-tuning"),
    ("LwF + EWC", "LwF"),
    ("LwF + EWC", "EWC"),
)
SWEEPS = (  # sweep folder, the key it varies, the rows that use its choice
    ("sweep_ewc", "lambda", "EWC, LwF + EWC"),
    ("sweep_online_ewc", "lambda", "online EWC"),
    ("sweep_si", "lambda", "SI"),
    ("sweep_ewc_er", "lambda", "EWC + ER"),
    ("sweep_lwf", "strategy.alpha", "LwF, LwF + EWC"),
)


def compared_runs(out: Path) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """(setting folder, row label) → the row's runs by seed."""
    found: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for setting in SETTINGS:
        for label, folder, memory in COMPARED:
            runs = runs_under(out / setting / folder)
            if memory is not None:
                runs = [r for r in runs if config_value(r, "replay.size") == memory]
            if runs:
                found[(setting, label)] = {r["seed"]: r for r in runs}
    return found


def chosen(run: dict[str, Any]) -> str:
    """The swept settings a row's runs used: λ for a penalty, α for LwF."""
    parts = []
    if run["strategy"] in ("ewc", "online_ewc", "si", "lwf_ewc"):
        parts.append(f"λ={float(run['lambda']):g}")
    if run["strategy"] in ("lwf", "lwf_ewc"):
        parts.append(f"α={float(config_value(run, 'strategy.alpha')):g}")
    return f" ({', '.join(parts)})" if parts else ""


def comparisons_section(out: Path) -> list[str]:
    """Every compared row per setting (mean ± standard error over seeds), the paired
    differences with the report's 95% t-interval, and the sweeps that chose λ and α."""
    from ewcexp.reporting.sweep_table import interval

    runs = compared_runs(out)
    settings = [s for s in SETTINGS if any((s, label) in runs for label, _, _ in COMPARED)]
    header = "| method | " + " | ".join(" ".join(SETTINGS[s]) for s in settings) + " |"
    rule = "|---|" + "---|" * len(settings)
    lines = [header, rule]
    for label, _, _ in COMPARED:
        cells = []
        for setting in settings:
            by_seed = runs.get((setting, label))
            if not by_seed:
                cells.append("–")
                continue
            accuracy = mean_and_error([r["avg_acc"] for r in by_seed.values()])
            cells.append(accuracy + chosen(next(iter(by_seed.values()))))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences in final average accuracy (points; mean over the seeds both",
              "ran, 95% t-interval as `ewcexp.report` computes it):", "", header, rule]  # fmt: skip
    for first, second in PAIRS:
        cells = []
        for setting in settings:
            a, b = runs.get((setting, first)), runs.get((setting, second))
            seeds = sorted(set(a or {}) & set(b or {}))
            if not seeds:
                cells.append("–")
                continue
            assert a is not None and b is not None
            d = interval([100 * (a[s]["avg_acc"] - b[s]["avg_acc"]) for s in seeds])
            span = "" if d["se"] is None else f" [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]"
            cells.append(f"{d['mean']:+.1f}{span}")
        lines.append(f"| {first} − {second} | " + " | ".join(cells) + " |")
    lines += ["", "Sweeps at seed 0 on the validation split (bold: the value used above):", "",
              "| sweep | " + " | ".join(" ".join(SETTINGS[s]) for s in settings) + " |", rule]  # fmt: skip
    for folder, key, used_by in SWEEPS:
        name = "α" if key == "strategy.alpha" else "λ"
        cells = [sweep_cell(out / s / folder, key) for s in settings]
        lines.append(
            f"| {folder[len('sweep_') :]}: {name} (for {used_by}) | " + " | ".join(cells) + " |"
        )
    return lines


PAPERS = """\
## The papers' setups (MNIST, CIFAR-10)

MNIST and CIFAR cannot be downloaded on the machine these numbers were measured on, so the
presets are given with the published numbers (van de Ven, Tuytelaars & Tolias 2022; the
README of their code) to compare against on a machine with internet
(`uv run python -m ewcexp.data download mnist cifar10` first):

| command | published average accuracy |
|---|---|
| `uv run python run.py -m experiment=split_mnist_task strategy=finetune,ewc seed=0,1,2` | EWC 98.6–99.1 %, no penalty 85–87 % |
| `uv run python run.py -m experiment=split_mnist_class strategy=finetune,ewc seed=0,1,2` | EWC ≈ no penalty ≈ 20 % |
| `uv run python run.py -m experiment=permuted_mnist_domain strategy=finetune,ewc,online_ewc seed=0,1,2` | EWC ≈ 94 %, online EWC ≈ 94 %, no penalty ≈ 78 % |
| `uv run python run.py -m experiment=split_cifar10_task strategy=finetune,ewc device=cuda seed=0,1,2` | (reduced ResNet-18; no number in the notes, meant for a GPU) |

**Hsu et al. 2018** ("Re-evaluating continual learning scenarios": split MNIST, MLP 2×400,
Adam 1e-3, batch 128, 4 epochs per task; average accuracy over 10 runs, %). The presets
`hsu_split_mnist_{task,domain,class}` set this up; their λ is each method's `reg_coef` from
that paper's scripts times 2 (their loss adds `reg_coef·ΣΩ(θ−θ*)²`, without our ½). Their EWC
Fisher and MAS importance are minibatch estimates on another scale than ours, so for EWC and
MAS those λ are a starting point for a sweep rather than the same setting:

| method | task | domain | class | command (task-incremental; the others alike) |
|---|---|---|---|---|
| EWC | 97.70 | 58.85 | 19.80 | `uv run python run.py -m experiment=hsu_split_mnist_task strategy=ewc lambda=200 seed=0,1,2` |
| online EWC | 98.04 | 57.33 | 19.77 | `... strategy=online_ewc lambda=800` (domain 1400, class 200) |
| SI | 98.56 | 64.76 | 19.67 | `... strategy=si lambda=600` (domain 6000, class 1200) |
| MAS | 99.22 | 68.57 | 19.52 | `... strategy=mas lambda=2` (domain 20000, class 2) |
| Adam (no penalty) | 93.46 | 55.16 | 19.71 | `... strategy=finetune` |

Summarise any of them with `uv run python -m ewcexp.report multirun/<date>/<time>`.
"""


PRETRAINED = (  # row label, folder under OUT, its sweep (None: nothing swept)
    ("fine-tuning", "finetune", None),
    ("L2 (around the start)", "l2", "sweep_l2"),
    ("EWC", "ewc", "sweep_ewc"),
    ("online EWC", "online_ewc", "sweep_online_ewc"),
    ("SI", "si", "sweep_si"),
    ("LoRA (rank 4)", "lora", None),
    ("EWC + LoRA", "ewc_lora", "sweep_ewc_lora"),
)


def pretrained_rows(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Row label → the row's runs by seed: those of the λ its sweep chose, where it has one."""
    rows = {}
    for label, folder, sweep in PRETRAINED:
        runs = runs_under(out / folder)
        if sweep is not None and runs and (out / sweep).is_dir():
            chosen_lambda = best_value(out / sweep, "lambda", kept_and_learned)
            runs = [r for r in runs if float(r["lambda"]) == chosen_lambda]
        if runs:
            rows[label] = {r["seed"]: r for r in runs}
    return rows


def pretrained_section(out: Path) -> list[str]:
    """T0's accuracy at the start and at the end, the new tasks' final average accuracy
    (mean ± standard error over seeds), paired differences against fine-tuning with the
    report's t-interval, and the validation sweeps."""
    from ewcexp.reporting.sweep_table import interval

    rows = pretrained_rows(out)
    lines = ["| method | T0 at the start (%) | T0 at the end (%) | new tasks, avg acc (%) |",
             "|---|---|---|---|"]  # fmt: skip
    for label, by_seed in rows.items():
        runs = list(by_seed.values())
        start = mean_and_error([r["acc_pretrained"][0] for r in runs])
        end = mean_and_error([r["acc_pretrained"][-1] for r in runs])
        learned = mean_and_error([r["avg_acc"] for r in runs])
        lam = (
            f" (λ={float(runs[0]['lambda']):g})"
            if label not in ("fine-tuning", "LoRA (rank 4)")
            else ""
        )
        lines.append(f"| {label}{lam} | {start} | {end} | {learned} |")
    lines += ["", "Paired differences against fine-tuning (points, seed by seed; 95% t-interval as",
              "`ewcexp.report` computes it):", "",
              "| method − fine-tuning | T0 at the end | new tasks, avg acc |", "|---|---|---|"]  # fmt: skip
    base = rows.get("fine-tuning", {})
    for label, by_seed in rows.items():
        seeds = sorted(set(by_seed) & set(base))
        if label == "fine-tuning" or not seeds:
            continue
        cells = []
        for value in (lambda r: r["acc_pretrained"][-1], lambda r: r["avg_acc"]):
            d = interval([100 * (value(by_seed[s]) - value(base[s])) for s in seeds])
            span = "" if d["se"] is None else f" [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]"
            cells.append(f"{d['mean']:+.1f}{span}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "λ sweeps at seed 0 on the validation split: λ → T0 at the end / new tasks (%);",
              "bold: the λ chosen (best mean of the two):", "", "| sweep | λ: T0 / new |",
              "|---|---|"]  # fmt: skip
    for label, _, sweep in PRETRAINED:
        runs = runs_under(out / sweep) if sweep else []
        if not runs:
            continue
        chosen_lambda = best_value(out / sweep, "lambda", kept_and_learned)
        cells = []
        for run in sorted(runs, key=lambda r: float(r["lambda"])):
            cell = (f"{float(run['lambda']):g}: {100 * run['acc_pretrained'][-1]:.1f} / "
                    f"{100 * run['avg_acc']:.1f}")  # fmt: skip
            cells.append(f"**{cell}**" if float(run["lambda"]) == chosen_lambda else cell)
        lines.append(f"| {label} | " + ", ".join(cells) + " |")
    return lines


def pretrained_figure(out: Path, path: Path) -> None:
    """What is kept (T0 at the end) against what is learned (the new tasks' average), mean
    ± standard error over seeds: EWC's and L2's curves over λ, the other methods as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def point(runs: list[dict[str, Any]]) -> tuple[float, float, float, float]:
        learned = [100 * r["avg_acc"] for r in runs]
        kept = [100 * r["acc_pretrained"][-1] for r in runs]
        return (
            statistics.fmean(learned),
            statistics.fmean(kept),
            standard_error(learned),
            standard_error(kept),
        )

    figure, axes = plt.subplots(figsize=(7.5, 5.5), constrained_layout=True)
    for label, folder, colour in (("EWC", "ewc", "tab:blue"), ("L2", "l2", "tab:orange")):
        by_lambda: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for run in runs_under(out / folder):
            by_lambda[float(run["lambda"])].append(run)
        strengths = sorted(by_lambda)
        if not strengths:
            continue
        points = [point(by_lambda[lam]) for lam in strengths]
        axes.errorbar([p[0] for p in points], [p[1] for p in points], xerr=[p[2] for p in points],
                      yerr=[p[3] for p in points], marker="o", color=colour,
                      label=f"{label}, λ = {strengths[0]:g} … {strengths[-1]:g}")  # fmt: skip
        for lam, p in zip(strengths, points, strict=True):
            axes.annotate(f"λ={lam:g}", p[:2], textcoords="offset points", xytext=(5, 4),
                          fontsize=8, color=colour)  # fmt: skip
    markers = {  # label: (marker, colour), apart from the curves' blue and orange
        "fine-tuning": ("s", "black"), "online EWC": ("^", "tab:purple"),
        "SI": ("v", "tab:green"), "LoRA (rank 4)": ("D", "tab:red"),
        "EWC + LoRA": ("P", "tab:brown"),
    }  # fmt: skip
    starts = []
    for label, by_seed in pretrained_rows(out).items():
        runs = list(by_seed.values())
        starts += [100 * r["acc_pretrained"][0] for r in runs]
        if label in markers:
            x, y, dx, dy = point(runs)
            lam = (
                f" (λ={float(runs[0]['lambda']):g})"
                if label in ("online EWC", "SI", "EWC + LoRA")
                else ""
            )
            axes.errorbar(x, y, xerr=dx, yerr=dy, marker=markers[label][0], color=markers[label][1], linestyle="none",
                          markersize=8, label=label + lam)  # fmt: skip
    if starts:
        axes.axhline(statistics.fmean(starts), color="grey", linestyle="--",
                     label="T0 at the start (the pretrained network)")  # fmt: skip
    axes.set_xlabel("learned: the new tasks' final average accuracy (%)")
    axes.set_ylabel("kept: T0's final accuracy (%)")
    axes.set_title("Fine-tuning a CNN trained on Fashion-MNIST (T0) on MNIST's digits\n"
                   "what is kept against what is learned (3 seeds, ± standard error)")  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def libraries_section(out: Path) -> list[str]:
    """library_results.sh's runs: per architecture, what it learned of Fashion-MNIST, then
    T0 at the start and end and the digits' accuracy for each fine-tuning run, with the
    parameters that trained and the wall time."""
    lines = ["| network | run | trainable / total parameters | T0 at the start (%) | "
             "T0 at the end (%) | digits, avg acc (%) | wall time (s) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arch in sorted(p.name for p in out.iterdir() if p.is_dir()):
        for run_name in ("pretrain", "finetune", "ewc_lora"):
            found = runs_under(out / arch / run_name)
            if not found:
                continue
            run = found[0]
            counts = run["parameters"]
            share = f"{counts['trainable']:,} / {counts['total']:,}"
            if run_name == "pretrain":
                cells = ["–", f"{100 * run['avg_acc']:.1f} (learned)", "–"]
            else:
                start, end = run["acc_pretrained"][0], run["acc_pretrained"][-1]
                cells = [f"{100 * start:.1f}", f"{100 * end:.1f}", f"{100 * run['avg_acc']:.1f}"]
            label = {"pretrain": "learns Fashion-MNIST", "finetune": "fine-tuning",
                     "ewc_lora": f"EWC λ={float(run['lambda']):g} on LoRA (rank 4)"}[run_name]  # fmt: skip
            lines.append(f"| {arch} | {label} | {share} | " + " | ".join(cells)
                         + f" | {run['wall_time_s']:.0f} |")  # fmt: skip
    return lines


def table(out: Path) -> str:
    count = len(runs_under(out))
    parts = [
        "# Results",
        "",
        "Measured with this repository on full Fashion-MNIST (60,000 training images; the Debian",
        "package `dataset-fashion-mnist`), on a 2-core CPU. Regenerate with",
        "",
        "```bash",
        "bash scripts/fashion_mnist_results.sh results/fashion_mnist",
        "uv run python scripts/results_table.py table results/fashion_mnist > docs/results.md",
        "```",
        "",
        "Every run: MLP 2×400, Adam 1e-3, batch 128, 500 iterations per task, exact Fisher on",
        "5,000 training samples per task (`fisher.num_samples=5000`), online EWC with γ=1. Split:",
        "5 tasks of 2 classes; permuted: 5 permutations.",
        "",
        "## Every strategy",
        "",
        "Final average accuracy (%) over all tasks after the last one, mean ± standard error "
        "over seeds 0, 1, 2. The λ of each penalty (in brackets) was chosen by the sweep below, "
        "on the same test sets: a small, optimistic search, as in most papers "
        "(`data.validation_size=N` now gives a held-out set to choose λ on instead; "
        "these runs predate it).",
        "",
        *strategy_table(out),
        "",
        "EWC against fine-tuning (expected: far above it in the task- and domain-incremental",
        "scenarios, close to it in the class-incremental one, where EWC is known to fail):",
        "",
        *ewc_gains(out),
        "",
        "λ sweeps (seed 0; bold: the λ used above; where it is the largest tried, a larger λ",
        "might do better still):",
        "",
        *sweep_table(out),
        "",
        *relatives_section(out),
        "",
        "## Fisher estimators",
        "",
        "EWC on permuted Fashion-MNIST with each estimator (`exact`: seeds 0, 1, 2; the others:",
        "seeds 0 and 1). `batched` (the squared gradient of a minibatch's mean loss) is shown at",
        "the λ chosen for `exact` and at 256 times it, since its estimate shrinks roughly with",
        "the minibatch size:",
        "",
        *estimator_table(out),
        "",
        f"{count} runs in all.",
        "",
        PAPERS,
    ]
    return "\n".join(parts)


def config_value(run: dict[str, Any], key: str) -> Any:
    """A dotted key of the run's resolved config (`task_sequence.pad_to`), or a top-level
    results key (`strategy`)."""
    if key in run:
        return run[key]
    value: Any = run["config"]
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def grouped_table(folder: Path, keys: list[str]) -> list[str]:
    """Mean ± standard error of the final average accuracy and BWT per combination of the
    config `keys`' values, with the seeds each row has."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run in runs_under(folder):
        groups[tuple(str(config_value(run, k)) for k in keys)].append(run)
    lines = [
        "| " + " | ".join(keys) + " | seeds | avg acc (%) | BWT (%) |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for values, runs in sorted(groups.items()):
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r in runs))
        accuracy = mean_and_error([r["avg_acc"] for r in runs])
        transfer = mean_and_error([r["bwt"] for r in runs])
        lines.append("| " + " | ".join(values) + f" | {seeds} | {accuracy} | {transfer} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command",
        choices=(
            "best-lambda",
            "best",
            "best-kept-and-learned",
            "pretrained",
            "libraries",
            "table",
            "relatives",
            "kfac",
            "comparisons",
            "grouped",
        ),
    )
    parser.add_argument("folder", help="best: the config KEY, then the folder")
    parser.add_argument("keys", nargs="*", help="grouped: config keys to group the runs by")
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.command == "best-lambda":
        print(f"{best_lambda(folder):g}")
    elif args.command == "best":
        print(f"{best_value(Path(args.keys[0]), args.folder):g}")
    elif args.command == "best-kept-and-learned":
        print(f"{best_value(Path(args.keys[0]), args.folder, kept_and_learned):g}")
    elif args.command == "pretrained":
        print("\n".join(pretrained_section(folder)))
        if args.keys:  # the trade-off figure's path
            pretrained_figure(folder, Path(args.keys[0]))
    elif args.command == "libraries":
        print("\n".join(libraries_section(folder)))
    elif args.command == "relatives":
        print("\n".join(relatives_section(folder)))
    elif args.command == "kfac":
        print("\n".join(kfac_section(folder)))
    elif args.command == "comparisons":
        print("\n".join(comparisons_section(folder)))
    elif args.command == "grouped":
        print("\n".join(grouped_table(folder, args.keys)))
    else:
        print(table(folder))


if __name__ == "__main__":
    main()
