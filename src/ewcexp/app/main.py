"""The `ewcexp` command (also `python -m ewcexp` and the repository's `run.py`): the command
line's checks, then Hydra's app over the configs that ship inside the package (`ewcexp/conf`).

Hydra finds the configs through its search path, so a user's own folders join them the usual
ways: `hydra.searchpath=[file://DIR]`, `pkg://package.conf`, or `--config-dir DIR`.
"""

from __future__ import annotations

import atexit
import errno
import gc
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ewcexp.app.command_line import command_line_problem
from ewcexp.reporting.joblog import to_log_files

DIVERGED_EXIT = 3  # a run that diverged: a result, not a crash, but not a success either


@hydra.main(config_path="pkg://ewcexp.conf", config_name="config", version_base="1.3")
def experiment(cfg: DictConfig) -> float:
    """One experiment, as Hydra's job; returns the final average accuracy (the objective of
    sweepers). A job that is refused (no GPU on its node) or diverges says so in one line, in
    its log file and on stderr; alone it exits non-zero, in a multirun it returns NaN so that
    the other jobs run on, and the launching process lists it at the end (`SweepOutcome`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    _collect_garbage_less()
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        results = run_job(
            cfg,
            Path(hydra_cfg.runtime.output_dir),
            # a multirun's jobs share a logger group named after the sweep, each named by its overrides
            run_group="multirun-" + "-".join(Path(hydra_cfg.sweep.dir).parts[-2:])
            if multirun
            else None,
            run_name=hydra_cfg.job.override_dirname or None,
        )
    except JobRefused as error:
        line = f"error: {error}"
        to_log_files(line)  # the job's log file, which SLURM users read
        if not multirun:
            sys.exit(line)  # the terminal, once
        print(line, file=sys.stderr)  # SLURM: the job's .err file
        return float("nan")
    if results.get("status") == "diverged":
        if not multirun:
            sys.exit(DIVERGED_EXIT)
        return float("nan")
    return results["avg_acc"]


class JobRefused(Exception):
    """A job that cannot run here: its config, its machine, its data or its folder."""


def run_job(cfg: DictConfig, output_dir: Path, **names: Any) -> dict[str, Any]:
    """Check what only the job's machine can know, hold the run directory, run."""
    from ewcexp.config.checks import ConfigError, check_config, check_machine
    from ewcexp.config.folders import RunDirInUse, hold
    from ewcexp.data.image_data import DataUnavailable
    from ewcexp.training.checkpoint import CheckpointMismatch
    from ewcexp.training.runner import run_experiment

    try:
        check_config(cfg)
        check_machine(cfg)
        with hold(output_dir):
            return run_experiment(cfg, output_dir, **names)
    except (ConfigError, DataUnavailable, CheckpointMismatch, RunDirInUse) as error:
        raise JobRefused(str(error)) from None
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise JobRefused(
            f"no space left to write in {output_dir} ({error.strerror}): free some, or choose "
            "another folder with hydra.run.dir=... (the run's last checkpoint, if any, is intact)"
        ) from None


def _collect_garbage_less() -> None:
    """Keep the objects that live as long as the process (torch's and the like, imported by
    now) out of every garbage collection: the first job of a process freezes them once.
    Where an extension built with nanobind is among them (triton's, which a user module
    importing torchvision.datasets brings in), they are unfrozen at exit, so that nanobind
    finds its objects collected, not leaked; that last collection costs ~0.6 s, so only then."""
    if not gc.isenabled():
        gc.freeze()
        if _nanobind_loaded():
            atexit.register(gc.unfreeze)
        gc.enable()


def _nanobind_loaded() -> bool:
    """Whether a loaded module holds a nanobind class (its metaclass's type is nb_meta)."""
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if type(type(value)).__name__ == "nb_meta":  # type(): no attribute lookups
                return True
    return False


def main(argv: list[str] | None = None) -> None:
    """The command line: refuse a bad command in one line before Hydra writes or starts
    anything, then hand it to Hydra; a multirun with diverged jobs ends with their list."""
    args = sys.argv[1:] if argv is None else argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    gc.disable()  # until the first job: imports create objects that live as long as the process
    if error := command_line_problem(args):
        sys.exit(f"error: {error}")
    SweepOutcome.failed = None
    experiment()
    if SweepOutcome.failed:
        message, only_diverged = SweepOutcome.failed
        print(message, file=sys.stderr)
        sys.exit(DIVERGED_EXIT if only_diverged else 1)


class SweepOutcome(Callback):
    """Hydra callback, in the process that launched a multirun: once every job has ended
    (under any launcher: it reads the sweep folder), one line for the jobs that diverged,
    crashed or never finished, and the command's exit status says so."""

    failed: tuple[str, bool] | None = None  # the line, and whether every failure diverged

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from ewcexp.reporting.report import job_statuses, logged_error

        sweep_dir = Path(config.hydra.sweep.dir)
        statuses = job_statuses(sweep_dir)
        failed = {job: status for job, status in statuses.items() if status != "completed"}
        if not failed:
            return
        kinds = {
            status: [job.name for job in failed if failed[job] == status]
            for status in set(failed.values())
        }
        counts = "; ".join(
            f"{len(jobs)} {status} ({', '.join(jobs)})" for status, jobs in sorted(kinds.items())
        )
        first = next(iter(failed))
        why = logged_error(first)
        line = (
            f"error: of {len(statuses)} jobs in {sweep_dir}, {counts}"
            + (f"; job {first.name}: {why}" if why else "")
            + f"; the report: ewcexp-report {sweep_dir}"
        )
        type(self).failed = (line, set(kinds) == {"diverged"})
