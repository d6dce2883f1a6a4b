"""The experiment: learn the tasks one after another, consolidate each, evaluate every task."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from ewcexp.data import load_images
from ewcexp.device import resolve_device
from ewcexp.fisher import estimate_fisher
from ewcexp.metrics import average_accuracy, backward_transfer, forgetting
from ewcexp.strategy import Finetune
from ewcexp.task_sequence import Scenario, Task, TaskSequence

log = logging.getLogger(__name__)


def run_experiment(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train `cfg.task_sequence` with `cfg.strategy`; write `results.json` to `output_dir`."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device.type)
    images = load_images(cfg.task_sequence.dataset, **cfg.data)
    sequence: TaskSequence = instantiate(cfg.task_sequence, images=images)
    scenario, tasks = sequence.scenario, sequence.tasks
    model: nn.Module = instantiate(
        cfg.model, input_shape=sequence.input_shape, out_features=scenario.output_size
    ).to(device)
    strategy: Finetune = instantiate(cfg.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    batch_rng = torch.Generator().manual_seed(cfg.seed)
    fisher_rng = torch.Generator(device).manual_seed(cfg.seed)
    acc = torch.zeros(len(tasks), len(tasks))
    seconds = {"train": 0.0, "fisher": 0.0, "eval": 0.0}

    for t, task in enumerate(tasks):
        clock = time.perf_counter()
        data = training_set(
            strategy.training_tasks(tasks[: t + 1]), scenario, seen=t, device=device
        )
        steps = cfg.train.iterations or cfg.train.epochs * math.ceil(
            task.train_size / cfg.train.batch_size
        )
        optimizer = instantiate(cfg.optimizer)(params)  # fresh optimizer state for each task
        loss = train(
            model,
            optimizer,
            strategy,
            params,
            data,
            steps,
            cfg.train.batch_size,
            batch_rng,
            f"task {t + 1}/{len(tasks)} [{strategy.name}]",
        )
        seconds["train"] += time.perf_counter() - clock

        clock = time.perf_counter()
        fisher = None
        if strategy.needs_fisher:
            images, labels = fisher_samples(task, scenario, cfg.fisher.num_samples, fisher_rng)
            fisher = estimate_fisher(
                model,
                images.to(device),
                labels.to(device),
                estimator=cfg.fisher.estimator,
                active=scenario.active(t, seen=t),
                batch_size=cfg.fisher.batch_size,
                generator=fisher_rng,
            )
        strategy.consolidate(params, fisher)
        seconds["fisher"] += time.perf_counter() - clock

        clock = time.perf_counter()
        for j, other in enumerate(tasks):
            acc[t, j] = accuracy(
                model, other, scenario, seen=t, device=device, batch_size=cfg.train.eval_batch_size
            )
        seconds["eval"] += time.perf_counter() - clock
        log.info(
            "task %d/%d (%s): %d steps, loss %.3f, penalty %.4g, avg acc so far %.4f",
            t + 1,
            len(tasks),
            task.name,
            steps,
            loss,
            strategy.penalty_value(params),
            average_accuracy(acc, t),
        )

    last = len(tasks) - 1
    results = {
        "strategy": strategy.name,
        "lambda": cfg["lambda"],
        "seed": cfg.seed,
        "scenario": scenario.kind,
        "fisher_estimator": cfg.fisher.estimator if strategy.needs_fisher else None,
        "task_names": [task.name for task in tasks],
        "acc_matrix": acc.tolist(),
        "avg_acc": average_accuracy(acc, last),
        "avg_acc_seen": [average_accuracy(acc, i) for i in range(len(tasks))],
        "bwt": backward_transfer(acc, last),
        "forgetting": forgetting(acc, last),
        "data_source": sequence.source,
        "wall_time_s": time.perf_counter() - started,
        "phase_time_s": seconds,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_json_atomically(output_dir / "results.json", results)
    print(format_report(results))
    return results


def training_set(
    tasks: list[Task], scenario: Scenario, seen: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Images, target output units, and the [lo, hi) range of output units active per sample."""
    columns: list[list[Tensor]] = [[], [], [], []]
    for task in tasks:
        images, labels = task.train_set()
        active = scenario.active(task.index, seen)
        for column, part in zip(
            columns,
            (
                images,
                labels + scenario.offset(task.index),
                torch.full_like(labels, active.start),
                torch.full_like(labels, active.stop),
            ),
            strict=True,
        ):
            column.append(part)
    return tuple(torch.cat(column).to(device) for column in columns)  # type: ignore[return-value]


def batch_indices(size: int, batch_size: int, steps: int, rng: torch.Generator) -> Iterator[Tensor]:
    """`steps` minibatches of indices, reshuffled at every pass over the data."""
    while True:
        for batch in torch.randperm(size, generator=rng).split(batch_size):
            if steps == 0:
                return
            steps -= 1
            yield batch


def active_cross_entropy(logits: Tensor, targets: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Cross-entropy over each sample's active output units [lo, hi) only."""
    units = torch.arange(logits.shape[1], device=logits.device)
    inactive = (units < lo[:, None]) | (units >= hi[:, None])
    return F.cross_entropy(logits.masked_fill(inactive, float("-inf")), targets)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    strategy: Finetune,
    params: list[Tensor],
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    steps: int,
    batch_size: int,
    rng: torch.Generator,
    description: str,
    report_every: int = 50,
) -> float:
    """Minibatch training with the strategy's penalty gradient; returns the last reported loss."""
    images, targets, lo, hi = data
    model.train()
    loss_value = float("nan")
    # disable=None: a progress bar on a terminal, none in log files
    with tqdm(
        total=steps, desc=description, leave=False, dynamic_ncols=True, disable=None
    ) as progress:
        for step, batch in enumerate(batch_indices(len(targets), batch_size, steps, rng)):
            batch = batch.to(images.device)
            loss = active_cross_entropy(model(images[batch]), targets[batch], lo[batch], hi[batch])
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            strategy.add_penalty_gradient(params)
            optimizer.step()
            if step % report_every == 0 or step == steps - 1:
                loss_value = loss.item()
                progress.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            progress.update()
    return loss_value


def fisher_samples(
    task: Task, scenario: Scenario, num_samples: int, rng: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The task's training images (all, or a random `num_samples`) with labels indexing the
    output units active for it."""
    images, labels = task.train_set()
    if 0 < num_samples < len(labels):
        chosen = torch.randperm(len(labels), generator=rng, device=rng.device)[:num_samples].cpu()
        images, labels = images[chosen], labels[chosen]
    active = scenario.active(task.index, seen=task.index)
    return images, labels + scenario.offset(task.index) - active.start


@torch.inference_mode()
def accuracy(
    model: nn.Module,
    task: Task,
    scenario: Scenario,
    seen: int,
    device: torch.device,
    batch_size: int,
) -> float:
    """Test accuracy on `task`, the prediction restricted to the units active for it."""
    was_training = model.training
    model.eval()
    images, labels = task.test_set()
    active = scenario.active(task.index, seen)
    targets = (labels + scenario.offset(task.index) - active.start).to(device)
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start : start + batch_size].to(device))[:, active]
        correct += int((logits.argmax(1) == targets[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / len(labels)


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write then rename, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2))
    os.replace(partial, path)


def format_report(results: dict[str, Any]) -> str:
    """The accuracy matrix (rows: after training task i; columns: task j) and the metrics."""
    matrix = results["acc_matrix"]
    header = "after \\ on  " + " ".join(f"{f'T{j + 1}':>6}" for j in range(len(matrix)))
    lines = [
        f"Accuracy matrix ({results['strategy']}, λ={results['lambda']}, "
        f"{results['scenario']}-incremental, data: {results['data_source']})",
        header,
    ]
    for i, row in enumerate(matrix):
        cells = " ".join(f"{100 * a:6.1f}" if j <= i else f"{'·':>6}" for j, a in enumerate(row))
        lines.append(f"{f'T{i + 1}':>11} {cells}   ACC {100 * results['avg_acc_seen'][i]:5.1f}")

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:+.1f}"

    lines.append(
        f"average accuracy {100 * results['avg_acc']:.2f} %   BWT {percent(results['bwt'])}"
        f"   forgetting {percent(results['forgetting'])}   "
        f"wall time {results['wall_time_s']:.1f} s"
    )
    return "\n".join(lines)
