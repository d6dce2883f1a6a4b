"""The experiment: learn the tasks one after another, consolidate each, evaluate every task.

`run_experiment` wires the components the config names and owns the run's outcome (results,
a stop, a divergence, a crash); `learn_sequence` is the loop. The loop only says what
happened; the reporter (`ewcexp.reporting.reporter`) records it, logs it and writes it.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ewcexp.config.checks import ConfigError, settings_without_effect
from ewcexp.config.seeds import generator, stream_seed
from ewcexp.data import DataUnavailable
from ewcexp.data.replay import replay_memory
from ewcexp.data.scenarios import Task
from ewcexp.data.sequences import TaskSequence, build_sequence, pretrained_task
from ewcexp.importance.contract import TaskData, diagonal_of
from ewcexp.importance.diagnostics import diagnose
from ewcexp.model import build_model
from ewcexp.model.weights import model_file, parameter_counts
from ewcexp.reporting.files import write_atomically
from ewcexp.reporting.joblog import to_log_files
from ewcexp.reporting.metrics import average_accuracy
from ewcexp.reporting.record import Record
from ewcexp.reporting.reporter import PRETRAINED_TASK, Reporter
from ewcexp.reporting.results import format_report
from ewcexp.training import checkpoint, snapshots
from ewcexp.training.divergence import Diverged, first_non_finite
from ewcexp.training.evaluation import accuracy, accuracy_over
from ewcexp.training.loop import (
    MixedPrecision,
    Replay,
    TrainingLoop,
    training_set,
)
from ewcexp.training.preemption import StopRequest
from ewcexp.training.state import LoopState, Run

log = logging.getLogger(__name__)


def run_experiment(
    cfg: DictConfig, output_dir: Path, run_group: str | None = None, run_name: str | None = None
) -> dict[str, Any]:
    """Train `cfg.task_sequence` with `cfg.strategy`; write `results.json` and figures to
    `output_dir`; send metrics to `cfg.logger` (`run_group`/`run_name`: defaults for it) and
    to `<output_dir>/metrics.jsonl`. Returns the results, `status` "completed".

    A loss, penalty, parameter or importance that is not finite stops the run at once: one
    error line, then results with `status` "diverged" (the rows of the tasks finished, where
    it diverged, no figures), returned too; its checkpoint stays at the last task finished.
    On SIGTERM/SIGUSR1/SIGUSR2 it checkpoints, closes the logger and exits for a requeue."""
    config = OmegaConf.to_container(cfg, resolve=True)
    run: Run | None = None
    try:
        run, state, logger_run_id = prepare(cfg, config, output_dir)
        run.reporter.start(
            config, output_dir, run_group, run_name, logger_run_id, state.metrics_offset
        )
        results = learn_and_conclude(run, state, config)
    except Exception as error:
        # the job's log says why it ended, for the report: unless the command's own one line,
        # written there too, does (a refused value, missing data, another run's checkpoint)
        if not isinstance(
            error, ConfigError | DataUnavailable | checkpoint.CheckpointMismatch
        ) and (not isinstance(error, OSError) or error.errno not in (errno.ENOSPC, errno.EDQUOT)):
            where = "before training"
            if run is not None:
                where = f"in task {state.tasks_done + 1}/{len(run.sequence.tasks)}"
            what = (str(error).splitlines() or [""])[0]
            to_log_files(
                f"error: the run crashed {where}: {type(error).__name__}: {what}",
                with_traceback=True,
            )
        raise
    if results["status"] == "completed":
        log.info("%s", format_report(results))  # into the job's log file too, for SLURM users
    return results


def prepare(
    cfg: DictConfig, config: dict[str, Any], output_dir: Path
) -> tuple[Run, LoopState, str | None]:
    """The components `cfg` names, and the loop's state: fresh, or restored from the run
    directory's checkpoint written with the same `config` (with the logger's run id)."""
    started = time.perf_counter()
    for warning in settings_without_effect(cfg):
        log.warning(warning)
    torch.manual_seed(stream_seed(cfg.seed, "weights"))  # the model's initial weights
    device = instantiate(cfg.device).resolve()
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 is not allowed on {device.type}: its gradient scaler is for "
            "GPUs; use train.precision=bf16 (or fp32) here"
        )
    sequence = build_sequence(cfg.task_sequence, cfg.data)
    tasks = len(sequence.tasks)
    model, pretrained = network(cfg, sequence)
    model.to(device)
    record = Record(torch.zeros(tasks, tasks), started=started)
    run = Run(
        cfg, instantiate(cfg.train), sequence, model, instantiate(cfg.strategy),
        instantiate(cfg.optimizer), Reporter(record, instantiate(cfg.logger)), device,
        output_dir, instantiate(cfg.replay),
        instantiate(cfg.fisher) if cfg.fisher.diagnostics else None, pretrained,
    )  # fmt: skip
    actives = [sequence.scenario.active(t, seen=t) for t in range(tasks)]  # at consolidation
    widest = max(active.stop - active.start for active in actives)
    for importance in (run.strategy.importance, run.diagnostics):
        if (warning := getattr(importance, "cost_warning", lambda _: None)(widest)) is not None:
            log.warning(warning)
    state = LoopState(
        model,
        run.strategy,
        run.reporter,
        batch_rng=generator(cfg.seed, "batches"),
        fisher_rng=generator(cfg.seed, "importance", device),
        memory=replay_memory(run.replay, sequence.tasks, cfg.seed),
    )
    resumed = checkpoint.load(output_dir, config) if cfg.resume else None
    if resumed is None:
        snapshots.discard_after(output_dir, 0)  # an earlier run's, in this directory
        return run, state, None
    state.restore(resumed, output_dir)  # continue where the run stopped, in the same state
    snapshots.discard_after(output_dir, state.step + state.task_steps)  # written after it
    steps = f" and {state.task_steps} steps of the next" if state.task_steps else ""
    log.info("resuming after task %d/%d%s from %s", state.tasks_done, tasks, steps, output_dir)
    return run, state, resumed["logger_run_id"]


def network(cfg: DictConfig, sequence: TaskSequence) -> tuple[nn.Module, Task | None]:
    """The model `cfg` names, sized for `sequence`'s scenario and, with
    task_sequence.pretrained_on, T0's units after the scenario's (with that task)."""
    name = cfg.task_sequence.get("pretrained_on")
    pretrained = pretrained_task(name, cfg.data, sequence) if name else None
    known = len(pretrained.class_ids) if pretrained else 0
    model = build_model(
        cfg.model, sequence.input_shape, sequence.scenario.output_size + known,
        sample=sequence.images.train_images[:2], pretrained_units=known or None,
    )  # fmt: skip
    return model, pretrained


def learn_and_conclude(run: Run, state: LoopState, config: dict[str, Any]) -> dict[str, Any]:
    """Learn the tasks left, then conclude: results and figures, a divergence's results, or
    (on a stop) a checkpoint and the exit for a requeue. The one stop path."""
    results: dict[str, Any] | None = None
    with StopRequest() as stop:
        try:
            diverged = None
            try:
                learn_sequence(run, state, stop)
            except Diverged as error:
                log.error(divergence_line(run, error))
                diverged = error.record()
            if diverged is not None or state.tasks_done == len(run.sequence.tasks):
                if diverged is None:  # the final weights, for model.weights of a later run
                    contents = model_file(run.model, config["model"])
                    write_atomically(run.output_dir / "model.pt", partial(torch.save, contents))
                results = run.reporter.concluded(
                    run.strategy, config, run.sequence, run.output_dir,
                    parameter_counts(run.model), diverged=diverged,
                )  # fmt: skip
        finally:  # closed before a requeue can stop the logger's service
            run.reporter.finish(
                failed=results is None or results["status"] != "completed",
                preempted=stop.requested and results is None,
            )
        if results is None:
            stop.exit()
    return results


def divergence_line(run: Run, diverged: Diverged) -> str:
    """Where the run diverged, what was not finite, and the settings to try smaller."""
    hint = []
    if "lr" in run.cfg.optimizer:
        hint.append(f"optimizer.lr (now {run.cfg.optimizer.lr:g})")
    if run.strategy.penalty is not None:  # strategies with a penalty strength
        hint.append(f"lambda (now {run.strategy.penalty.strength:g})")
    return (
        f"diverged: task {diverged.task + 1}/{len(run.sequence.tasks)}, step {diverged.step}: "
        f"{diverged}" + (f"; try a smaller {' or '.join(hint)}" if hint else "")
    )


def learn_sequence(run: Run, state: LoopState, stop: StopRequest) -> LoopState:
    """The core loop: for each task left, train, consolidate, evaluate every task, checkpoint.
    When a stop is requested it returns early, its progress checkpointed."""
    tasks = run.sequence.tasks
    if run.pretrained is not None and not run.reporter.record.acc_pretrained:
        consolidate_pretrained(run, state)
    if state.tasks_done == state.task_steps == 0 and not run.reporter.record.acc_init:
        evaluate_at_start(run)
    for t in range(state.tasks_done, len(tasks)):
        trained = train_task(run, state, t, stop)
        if trained is None:  # stopped mid-task: its progress is in the checkpoint
            break
        loss, penalty = trained
        if run.train.snapshot_every:  # θ*_t, before the checkpoint that makes it final
            snapshots.save(run.output_dir, state.step, t, run.model, task_end=True)
        consolidate_task(run, state, t)
        evaluate_tasks(run, t)
        state.tasks_done = t + 1
        state.save(run.output_dir, run.cfg)
        log.info(
            "task %d/%d (%s): loss %.3f, penalty %.4g, avg acc so far %.4f",
            t + 1, len(tasks), tasks[t].name, loss, penalty,
            average_accuracy(run.reporter.record.acc, t),
        )  # fmt: skip
    return state


def train_task(run: Run, state: LoopState, t: int, stop: StopRequest) -> tuple[float, float] | None:
    """Train task `t` (the rest of it, for a task resumed mid-way); returns the last loss and
    the penalty at the end, or None when a stop was requested first, after checkpointing the
    steps done. `Diverged` when the loss, penalty or parameters are no longer finite: no
    checkpoint is written of such a state."""
    tasks = run.sequence.tasks
    task_start_rng = state.batch_rng.get_state()  # a resumed task replays its batches from here
    with run.reporter.timing("train"):
        seen = run.strategy.training_tasks(tasks[: t + 1])
        data = training_set(seen, run.sequence.scenario, t, run.device)
        steps = run.train.steps(tasks[t].train_size)
        optimizer = run.optimizer(run.params)
        if state.optimizer_state is not None:  # mid-task, or carried over (reset_per_task=false)
            optimizer.load_state_dict(state.optimizer_state)
        periodic = []
        if run.train.eval_every:
            periodic.append(
                (run.train.eval_every, partial(evaluate_continually, run, t, state.step))
            )
        if run.train.snapshot_every:
            end = state.step + steps  # the task's end writes its own, whole
            periodic.append((run.train.snapshot_every, partial(snapshot_within, run, t, end)))
        loop = TrainingLoop(
            run.model, optimizer, run.strategy, run.params, run.reporter, run.train.log_every,
            stop, periodic=tuple(periodic), replay=Replay.of(
                state.memory, run.replay.batch_size or run.train.batch_size,
                run.sequence.scenario, len(tasks), t,
                run.pretrained_units if run.pretrained is not None else None,
            ), precision=MixedPrecision(run.train.precision, run.device.type),
        )  # fmt: skip
        description = f"task {t + 1}/{len(tasks)} [{run.strategy.name}]"
        done, loss = loop.run(
            data, steps, run.train.batch_size, state.batch_rng, t, state.step, description,
            done=state.task_steps,
        )  # fmt: skip
    if (bad := first_non_finite(run.params)) is not None:
        raise Diverged("parameters", bad, t, done, state.step + done - 1)
    if done < steps:
        if done:  # with no step done, the checkpoint of the last task end is the state
            state.batch_rng.set_state(task_start_rng)
            state.task_steps, state.optimizer_state = done, optimizer.state_dict()
            state.save(run.output_dir, run.cfg)
            log.info(
                "checkpoint at task %d/%d, step %d/%d: exiting", t + 1, len(tasks), done, steps
            )
        return None
    penalty = run.strategy.penalty_value(run.params)  # at the end of training
    if not math.isfinite(penalty):
        raise Diverged("penalty", penalty, t, steps, state.step + steps - 1)
    state.step, state.task_steps = state.step + steps, 0
    state.optimizer_state = None if optimizer.reset_per_task else optimizer.state_dict()
    return loss, penalty


def snapshot_within(run: Run, t: int, task_end: int, step: int) -> None:
    """`train.snapshot_every`: the parameters at global `step` of task `t`, unless that is
    the task's last step, whose snapshot is the task end's."""
    if step != task_end:
        snapshots.save(run.output_dir, step, t, run.model, task_end=False)


def consolidate_task(run: Run, state: LoopState, t: int) -> None:
    """The strategy folds task `t` into its penalty; the importance it estimated is reported
    (and, with `fisher.diagnostics`, every Fisher estimator beside it)."""
    data = TaskData.of(run.sequence.tasks[t], run.sequence.scenario, run.device, state.fisher_rng)
    draws_before = state.fisher_rng.get_state()
    with run.reporter.timing("fisher"):
        importance = run.strategy.end_task(run.model, run.params, data)
    accumulated = run.strategy.accumulated_importance()
    if importance is not None:  # its statistics and histograms need finite values
        diagonal = diagonal_of(importance, run.params)
        if (bad := first_non_finite([*diagonal, *(accumulated or [])])) is not None:
            steps = run.train.steps(run.sequence.tasks[t].train_size)
            raise Diverged("importance", bad, t, steps, state.step - 1)
    if run.diagnostics is not None:
        names = [name for name, _ in run.named]
        with run.reporter.timing("diagnostics"):
            found = diagnose(run.model, data, run.diagnostics, names, draws_before)
            run.reporter.diagnosed(t, *found)
    if importance is not None:
        run.reporter.importance_estimated(
            t, run.strategy.importance_kind, importance, diagonal, accumulated,
            [name for name, _ in run.named],
        )  # fmt: skip


def consolidate_pretrained(run: Run, state: LoopState) -> None:
    """T0 (task_sequence.pretrained_on) before any training: its accuracy at the starting
    weights, then the strategy consolidates it there, on that data set's training images
    over its own output units (EWC "anchored at the pretrained model"); the importance it
    estimated is reported as a task's is, as task 0."""
    assert run.pretrained is not None
    run.reporter.pretrained_evaluated(evaluate_pretrained(run))
    units = run.pretrained_units
    data = TaskData(run.pretrained.train_set, units, run.device, state.fisher_rng)
    if run.strategy.importance_from_training:
        log.warning(
            "strategy=%s gives T0 (task_sequence.pretrained_on=%s) no importance: it weighs "
            "parameters along its own training path, and the starting weights come without "
            "one; only the new tasks are protected", run.strategy.name, run.pretrained.name,
        )  # fmt: skip
    with run.reporter.timing("fisher"):
        importance = run.strategy.end_task(run.model, run.params, data)
    accumulated = run.strategy.accumulated_importance()
    if importance is not None:
        diagonal = diagonal_of(importance, run.params)
        # not finite (weights that are not): no statistics; the first step's loss stops the run
        if first_non_finite([*diagonal, *(accumulated or [])]) is None:
            run.reporter.importance_estimated(
                PRETRAINED_TASK, run.strategy.importance_kind, importance, diagonal, accumulated,
                [name for name, _ in run.named],
            )  # fmt: skip
    if state.memory is not None:  # T0's samples join the stream first, as task len(tasks)
        images, labels = run.pretrained.train_set()
        order = torch.randperm(len(labels), generator=state.memory.generator, device="cpu")
        for chunk in order.split(run.train.eval_batch_size):
            offered = images[chunk].to(run.device), (labels[chunk] + units.start).to(run.device)
            state.memory.add(*offered, len(run.sequence.tasks))
    log.info(
        "T0 (%s): accuracy %.4f at the starting weights, consolidated%s",
        run.pretrained.name, run.reporter.record.acc_pretrained[0],
        f", {len(state.memory)} samples in the replay memory" if state.memory else "",
    )  # fmt: skip


def evaluate_pretrained(run: Run) -> float:
    """T0's test accuracy through its own output units."""
    assert run.pretrained is not None
    images, labels = run.pretrained.test_set()
    return accuracy_over(
        run.model, images, labels, run.pretrained_units, run.device, run.train.eval_batch_size
    )


def evaluate_continually(run: Run, t: int, task_start: int, step: int) -> None:
    """Continual evaluation at global `step` while task `t` trains: every task seen so far on
    its first `train.eval_subset` test images (its time counts as training's)."""
    acc = [
        task_accuracy(run, task, seen=t, limit=run.train.eval_subset)
        for task in run.sequence.tasks[: t + 1]
    ]
    run.reporter.probed(step, t, step - task_start, acc)


def task_accuracy(run: Run, task: Task, seen: int, limit: int | None = None) -> float:
    """`task`'s test accuracy over the units active once tasks 0..`seen` are learned."""
    return accuracy(
        run.model, task, run.sequence.scenario, seen=seen, device=run.device,
        batch_size=run.train.eval_batch_size, limit=limit,
    )  # fmt: skip


def evaluate_at_start(run: Run) -> None:
    """b_j of forward transfer: every task at the weights training starts from (the seed's
    initialisation, or model.weights), over the units R[j−1][j] is evaluated on (those active
    once task j−1 is learned), so that FWT compares like with like."""
    with run.reporter.timing("eval"):
        row = [task_accuracy(run, task, seen=max(task.index - 1, 0)) for task in run.sequence.tasks]
    run.reporter.evaluated_at_start(row)


def evaluate_tasks(run: Run, t: int) -> None:
    """Row t of the accuracy matrix: every task, learned or not yet, after learning task `t`."""
    with run.reporter.timing("eval"):
        if run.pretrained is not None:
            run.reporter.pretrained_evaluated(evaluate_pretrained(run))
        row = [task_accuracy(run, other, seen=t) for other in run.sequence.tasks]
    run.reporter.evaluated(t, row)
