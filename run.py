"""Train a task sequence with a continual-learning strategy: `python run.py strategy=ewc lambda=400`.

`python run.py --help` lists the config groups and every key.
"""

import gc
import sys
from pathlib import Path

gc.disable()  # until the imports are done: they create objects that live as long as the process

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ewcexp.cli import (  # noqa: E402
    refused_job,
    unknown_group_choice,
    unknown_key,
    unwritable_run_dir,
)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One experiment; returns the final average accuracy, the objective of sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from ewcexp.checkpoint import CheckpointMismatch
    from ewcexp.config import ConfigError, check_config
    from ewcexp.data import DataUnavailable
    from ewcexp.runner import run_experiment

    if not gc.isenabled():  # the first job of this process: torch & co. are imported now
        gc.freeze()  # their objects never need collecting: keep them out of every collection
        gc.enable()
    hydra = HydraConfig.get()
    multirun = hydra.mode == RunMode.MULTIRUN
    try:
        check_config(cfg)
        results = run_experiment(
            cfg,
            Path(hydra.runtime.output_dir),
            # a multirun's jobs share a logger group named after the sweep, each named by its overrides
            run_group="multirun-" + "-".join(Path(hydra.sweep.dir).parts[-2:])
            if multirun
            else None,
            run_name=hydra.job.override_dirname or None,
        )
    except (ConfigError, DataUnavailable, CheckpointMismatch) as error:
        sys.exit(f"error: {error}")
    return results["avg_acc"]


if __name__ == "__main__":
    conf_dir = Path(__file__).parent / "conf"
    args = sys.argv[1:]
    if error := (
        unknown_group_choice(args, conf_dir)
        or unknown_key(args, conf_dir)
        or unwritable_run_dir(args)
        or refused_job(args, conf_dir)
    ):
        sys.exit(f"error: {error}")
    main()
