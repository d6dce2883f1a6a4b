"""The Python API, for notebooks and scripts: `ewcexp.run([...])` runs one experiment in this
process exactly as the `ewcexp` command would (the same configs, checks and files) and
returns its results instead of printing them."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def run(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run one experiment: `run(["strategy=ewc", "lambda=400"])` is `ewcexp strategy=ewc
    lambda=400`. Returns the dict `results.json` holds (`status` "completed" or "diverged").

    `output_dir` is the run directory (default: the command's, `outputs/<date>/<time>` under
    the working directory); `hydra.searchpath=[file://DIR]` among the overrides adds your own
    config folders. A value the command would refuse raises `ewcexp.config.checks.ConfigError` (a
    ValueError) with the same one line, before anything is written; a sweep (`a,b`) is one
    `run` per value."""
    from hydra import compose
    from omegaconf import OmegaConf, open_dict

    from ewcexp.app.command_line import command_line_problem
    from ewcexp.app.compose import hydra_configs
    from ewcexp.config.checks import ConfigError, check_machine
    from ewcexp.config.folders import hold
    from ewcexp.training.runner import run_experiment

    args = [str(override) for override in overrides]
    if flags := [arg for arg in args if arg.startswith("-")]:
        raise ConfigError(f"{flags[0]} is not allowed: run() takes overrides (key=value) only")
    search = [a for a in args if a.startswith(("hparams_search=", "hydra/sweeper="))]
    if search and not search[-1].endswith("=null"):
        raise ConfigError(
            f"{search[-1]} is not allowed: run() runs one experiment; a search is "
            "`ewcexp -m ...` (or one run() per value)"
        )
    if output_dir is not None:
        args.append(f"hydra.run.dir={Path(output_dir).expanduser().resolve()}")
    if problem := command_line_problem(args):
        raise ConfigError(problem)
    with hydra_configs(args):
        cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
    run_dir = Path(cfg.hydra.run.dir)
    ours = [arg for arg in args if not arg.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with open_dict(cfg):
        del cfg["hydra"]
    check_machine(cfg)
    with hold(run_dir), _log_file(run_dir / "ewcexp.log"):
        saved = run_dir / ".hydra"  # as a command's run keeps them: the report reads them
        saved.mkdir(exist_ok=True)
        OmegaConf.save(cfg, saved / "config.yaml")
        OmegaConf.save(OmegaConf.create(ours), saved / "overrides.yaml")
        return run_experiment(cfg, run_dir)


@contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """The run's log file, as the command writes it (ewcexp's INFO records and everything
    above, in Hydra's format), for this run only; the caller's own logging is left as it is."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    ours = logging.getLogger("ewcexp")
    level = ours.level
    if ours.getEffectiveLevel() > logging.INFO:
        ours.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)  # root: where the job-log lines look for it
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        ours.setLevel(level)
