"""The experiment: learn the tasks one after another, consolidate each, evaluate every task."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from ewcexp import checkpoint, plots
from ewcexp.data import load_images
from ewcexp.device import resolve_device
from ewcexp.fisher import estimate_fisher
from ewcexp.logger import NoLogger, fisher_histogram, fisher_statistics
from ewcexp.metrics import average_accuracy, backward_transfer, forgetting
from ewcexp.preemption import StopRequest
from ewcexp.strategy import Finetune
from ewcexp.task_sequence import Scenario, Task, TaskSequence

log = logging.getLogger(__name__)


def run_experiment(
    cfg: DictConfig, output_dir: Path, run_group: str | None = None, run_name: str | None = None
) -> dict[str, Any]:
    """Train `cfg.task_sequence` with `cfg.strategy`; write `results.json` and figures to
    `output_dir`; send metrics to `cfg.logger` (`run_group`/`run_name`: defaults for it)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device.type)
    images = load_images(cfg.task_sequence.dataset, **cfg.data)
    sequence: TaskSequence = instantiate(cfg.task_sequence, images=images)
    model: nn.Module = instantiate(
        cfg.model, input_shape=sequence.input_shape, out_features=sequence.scenario.output_size
    ).to(device)
    strategy: Finetune = instantiate(cfg.strategy)
    config = OmegaConf.to_container(cfg, resolve=True)
    resumed = checkpoint.load(output_dir, config) if cfg.resume else None
    logger: NoLogger = instantiate(cfg.logger)
    logger.start(
        config,
        output_dir,
        group=run_group,
        name=run_name,
        run_id=resumed["logger_run_id"] if resumed else None,
    )
    failed = True
    with StopRequest() as stop:
        try:
            record = learn_sequence(
                cfg, sequence, model, strategy, logger, device, output_dir, resumed, stop
            )
            results = summarize(record, cfg, sequence, strategy, config, started)
            figures = save_figures(results, record.fisher_histograms, output_dir)
            write_json_atomically(output_dir / "results.json", results)
            logger.log_summary(results, figures)
            failed = False
        finally:
            logger.finish(failed, preempted=stop.requested)
    print(format_report(results))
    return results


@dataclass
class Record:
    """What learning the sequence leaves behind, besides the trained model."""

    acc: Tensor  # R[i][j]
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    fisher_stats: list[dict[str, Any]] = field(default_factory=list)
    fisher_histograms: dict[str, dict[str, tuple]] = field(default_factory=dict)
    earlier_wall_s: float = 0.0  # earlier processes of a resumed run, to their last checkpoint
    started: float = field(default_factory=time.perf_counter)  # this process

    def state_dict(self) -> dict[str, Any]:
        return {
            "acc": self.acc,
            "seconds": self.seconds,
            "fisher_stats": self.fisher_stats,
            "fisher_histograms": self.fisher_histograms,
            "wall_s": self.earlier_wall_s + time.perf_counter() - self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.acc, self.seconds, self.earlier_wall_s = (
            state["acc"],
            state["seconds"],
            state["wall_s"],
        )
        self.fisher_stats, self.fisher_histograms = (
            state["fisher_stats"],
            state["fisher_histograms"],
        )

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - start


PHASES = ("train", "fisher", "eval")


@dataclass
class LoopState:
    """Everything a checkpoint restores so that a resumed run continues exactly as if never
    stopped: parameters, the strategy's penalty, results so far, random generators, position."""

    model: nn.Module
    strategy: Finetune
    record: Record
    logger: NoLogger
    batch_rng: torch.Generator
    fisher_rng: torch.Generator
    tasks_done: int = 0
    step: int = 0  # global training step at the start of the current task
    task_steps: int = 0  # steps of the current task done when a stop was requested mid-task

    def state_dict(self) -> dict[str, Any]:
        return {
            "tasks_done": self.tasks_done,
            "step": self.step,
            "task_steps": self.task_steps,
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "record": self.record.state_dict(),
            "batch_rng": self.batch_rng.get_state(),
            "fisher_rng": self.fisher_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "logger_run_id": self.logger.run_id,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.record.load_state_dict(state["record"])
        self.batch_rng.set_state(state["batch_rng"])
        self.fisher_rng.set_state(state["fisher_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.tasks_done, self.step = state["tasks_done"], state["step"]
        self.task_steps = state["task_steps"]


def learn_sequence(
    cfg: DictConfig,
    sequence: TaskSequence,
    model: nn.Module,
    strategy: Finetune,
    logger: NoLogger,
    device: torch.device,
    run_dir: Path,
    resumed: dict[str, Any] | None = None,
    stop: StopRequest | None = None,
) -> Record:
    """The core loop: for each task, train, consolidate, evaluate every task, checkpoint.
    When `stop` is requested (SLURM's warning signal), checkpoint mid-task and exit."""
    stop = stop or StopRequest()
    scenario, tasks = sequence.scenario, sequence.tasks
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    record = Record(acc=torch.zeros(len(tasks), len(tasks)))
    state = LoopState(
        model,
        strategy,
        record,
        logger,
        torch.Generator().manual_seed(cfg.seed),
        torch.Generator(device).manual_seed(cfg.seed),
    )
    if resumed is not None:  # continue where the run stopped, in the same state
        state.load_state_dict(resumed)
        log.info(
            "resuming after task %d/%d%s from %s",
            state.tasks_done,
            len(tasks),
            f" and {state.task_steps} steps of the next" if state.task_steps else "",
            run_dir,
        )
    batch_rng, fisher_rng = state.batch_rng, state.fisher_rng
    for t, task in enumerate(tasks):
        if t < state.tasks_done:
            continue
        task_start_rng = batch_rng.get_state()  # a resumed task replays its batches from here
        with record.timing("train"):
            data = training_set(strategy.training_tasks(tasks[: t + 1]), scenario, t, device)
            steps = cfg.train.iterations or cfg.train.epochs * math.ceil(
                task.train_size / cfg.train.batch_size
            )
            optimizer = instantiate(cfg.optimizer)(params)  # fresh optimizer state per task
            if state.task_steps:
                optimizer.load_state_dict(resumed["optimizer"])
            loop = TrainingLoop(
                model, optimizer, strategy, params, logger, cfg.train.log_every, stop
            )
            done, loss = loop.run(
                data,
                steps,
                cfg.train.batch_size,
                batch_rng,
                t,
                state.step,
                f"task {t + 1}/{len(tasks)} [{strategy.name}]",
                done=state.task_steps,
            )
        if done < steps:  # stopped by a signal: save this task's progress, then leave
            batch_rng.set_state(task_start_rng)
            state.task_steps = done
            save_checkpoint(run_dir, state, cfg, optimizer)
            log.info(
                "checkpoint at task %d/%d, step %d/%d: exiting", t + 1, len(tasks), done, steps
            )
            logger.finish(failed=True, preempted=True)  # before a requeue stops its service
            stop.exit()
        state.step, state.task_steps = state.step + steps, 0

        penalty = strategy.penalty_value(params)  # at the end of training, before consolidating
        with record.timing("fisher"):
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
        if fisher is not None:
            accumulated = strategy.accumulated_fisher()
            record_fisher(
                record,
                logger,
                t,
                dict(zip(names, fisher, strict=True)),
                dict(zip(names, accumulated, strict=True)) if accumulated else None,
            )

        with record.timing("eval"):
            for j, other in enumerate(tasks):
                record.acc[t, j] = accuracy(
                    model,
                    other,
                    scenario,
                    seen=t,
                    device=device,
                    batch_size=cfg.train.eval_batch_size,
                )
        logger.log_task(t, task_metrics(record.acc, t))
        state.tasks_done = t + 1
        save_checkpoint(run_dir, state, cfg)
        log.info(
            "task %d/%d (%s): %d steps, loss %.3f, penalty %.4g, avg acc so far %.4f",
            t + 1,
            len(tasks),
            task.name,
            steps,
            loss,
            penalty,
            average_accuracy(record.acc, t),
        )
        if stop.requested:  # the signal came during the Fisher or evaluation: nothing is lost
            logger.finish(failed=True, preempted=True)
            stop.exit()
    return record


def save_checkpoint(
    run_dir: Path, state: LoopState, cfg: DictConfig, optimizer: torch.optim.Optimizer | None = None
) -> None:
    """The loop's state, the config it belongs to, and mid-task the optimizer's state (a new
    task starts with a fresh optimizer, so a task-end checkpoint leaves it out)."""
    payload = {
        **state.state_dict(),
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True)),
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    checkpoint.save(run_dir, payload)


def task_metrics(acc: Tensor, after: int) -> dict[str, float | None]:
    """The metrics logged after task `after` (0-based): the row R[after][·] as acc/task_1..T,
    and the averages, BWT and forgetting so far."""
    row = {f"acc/task_{j + 1}": float(a) for j, a in enumerate(acc[after])}
    return {
        **row,
        "acc/avg_seen": average_accuracy(acc, after),
        "acc/avg_all": float(acc[after].mean()),
        "bwt": backward_transfer(acc, after),
        "forgetting": forgetting(acc, after),
    }


def record_fisher(
    record: Record,
    logger: NoLogger,
    task: int,
    fisher: dict[str, Tensor],
    accumulated: dict[str, Tensor] | None,
) -> None:
    """Statistics to results.json, histograms to the figures, everything to the logger."""
    record.fisher_stats.append(
        {
            "task": task + 1,
            "per_parameter": {n: fisher_statistics(f) for n, f in fisher.items()},
            "accumulated": {n: fisher_statistics(f) for n, f in accumulated.items()}
            if accumulated
            else None,
        }
    )

    def histograms(tensors: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        # tensors, not numpy arrays: checkpoints are read with weights_only=True
        return {
            n: tuple(torch.from_numpy(a) for a in fisher_histogram(f)) for n, f in tensors.items()
        }

    record.fisher_histograms[f"fisher_task{task + 1}"] = histograms(fisher)
    if accumulated:
        record.fisher_histograms[f"fisher_accumulated_task{task + 1}"] = histograms(accumulated)
    logger.log_fisher(task, fisher, accumulated)


def summarize(
    record: Record,
    cfg: DictConfig,
    sequence: TaskSequence,
    strategy: Finetune,
    config: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    """The contents of results.json."""
    acc, last = record.acc, len(record.acc) - 1
    return {
        "strategy": strategy.name,
        "lambda": cfg["lambda"],
        "seed": cfg.seed,
        "scenario": sequence.scenario.kind,
        "fisher_estimator": cfg.fisher.estimator if strategy.needs_fisher else None,
        "task_names": [task.name for task in sequence.tasks],
        "acc_matrix": acc.tolist(),
        "avg_acc": average_accuracy(acc, last),
        "avg_acc_seen": [average_accuracy(acc, i) for i in range(len(acc))],
        "bwt": backward_transfer(acc, last),
        "forgetting": forgetting(acc, last),
        "per_task": [task_metrics(acc, t) for t in range(len(acc))],  # as logged after each task
        "data_source": sequence.source,
        "wall_time_s": record.earlier_wall_s + time.perf_counter() - started,
        "phase_time_s": record.seconds,
        "fisher": record.fisher_stats,
        "config": config,
    }


def save_figures(
    results: dict[str, Any], fisher_histograms: dict[str, dict[str, tuple]], output_dir: Path
) -> dict[str, Path]:
    """The run's PNGs: accuracy matrix, accuracy curves, a Fisher histogram per consolidation."""
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{results['strategy']}, λ={results['lambda']}, {results['scenario']}-incremental"
    figures = {
        "accuracy_matrix": plots.accuracy_heatmap(
            results["acc_matrix"], title, output_dir / "accuracy_matrix.png"
        ),
        "accuracy_curves": plots.accuracy_curves(
            results["acc_matrix"], title, output_dir / "accuracy_curves.png"
        ),
    }
    for key, histograms in fisher_histograms.items():
        figures[key] = plots.fisher_histograms(
            histograms, f"{title}: {key.replace('_', ' ')}", output_dir / f"{key}.png"
        )
    return figures


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


def active_cross_entropy(
    logits: Tensor, targets: Tensor, lo: Tensor | int, hi: Tensor | int
) -> Tensor:
    """Cross-entropy over each sample's active output units [lo, hi) only; `targets` index the
    whole output. With the same range for every sample (int bounds), a plain slice."""
    if isinstance(lo, int) and isinstance(hi, int):
        return F.cross_entropy(logits[:, lo:hi], targets - lo)
    units = torch.arange(logits.shape[1], device=logits.device)
    inactive = (units < lo[:, None]) | (units >= hi[:, None])
    return F.cross_entropy(logits.masked_fill(inactive, float("-inf")), targets)


@dataclass
class TrainingLoop:
    """Minibatch steps with the strategy's penalty gradient, reporting every `log_every` steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    strategy: Finetune
    params: list[Tensor]
    logger: NoLogger
    log_every: int
    stop: StopRequest

    def run(
        self,
        data: tuple[Tensor, Tensor, Tensor, Tensor],
        steps: int,
        batch_size: int,
        rng: torch.Generator,
        task: int,
        first_step: int,
        description: str,
        done: int = 0,
    ) -> tuple[int, float]:
        """Train the task's minibatches `done`..`steps`-1 (`rng` as at the task's start, so a
        resumed task draws the same batches); `first_step` is the global step at the task's
        start. Returns the steps done (fewer when a stop is requested) and the last loss reported."""
        images, targets, lo, hi = data
        shared = bool((lo == lo[0]).all() and (hi == hi[0]).all())  # all but task-incremental joint
        if shared:
            lo, hi = int(lo[0]), int(hi[0])
        self.model.train()
        loss_value, since, clock = float("nan"), 0, time.perf_counter()
        # disable=None: a progress bar on a terminal, none in log files
        batches = itertools.islice(batch_indices(len(targets), batch_size, steps, rng), done, None)
        with tqdm(
            total=steps,
            initial=done,
            desc=description,
            leave=False,
            dynamic_ncols=True,
            disable=None,
        ) as progress:
            for step, batch in enumerate(batches, start=done):
                if self.stop.requested:
                    return step, loss_value
                batch = batch.to(images.device)
                logits = self.model(images[batch])
                loss = (
                    active_cross_entropy(logits, targets[batch], lo, hi)
                    if shared
                    else active_cross_entropy(logits, targets[batch], lo[batch], hi[batch])
                )
                self.strategy.start_gradient(self.params)  # the penalty's gradient, or None
                loss.backward()
                self.optimizer.step()
                since += len(batch)
                if step % self.log_every == 0 or step == steps - 1:
                    loss_value = loss.item()
                    elapsed, clock = time.perf_counter() - clock, time.perf_counter()
                    self.report(first_step + step, task, loss_value, since / elapsed)
                    since = 0
                    progress.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                progress.update()
        return steps, loss_value

    def report(self, step: int, task: int, loss: float, samples_per_s: float) -> None:
        penalty = self.strategy.penalty_value(self.params)
        self.logger.log_training(
            {
                "train/step": step,
                "train/task": task + 1,
                "train/loss": loss,
                "train/penalty": penalty,
                "train/penalty_share": penalty / (loss + penalty or 1.0),
                "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/samples_per_s": samples_per_s,
            }
        )


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
