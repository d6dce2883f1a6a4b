"""Train a task sequence with a continual-learning strategy: `python run.py strategy=ewc lambda=400`.

`python run.py --help` lists the config groups and every key.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ewcexp.config import ConfigError, check_config, check_group_choices
from ewcexp.data import DataUnavailable
from ewcexp.runner import run_experiment


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """One experiment; returns the final average accuracy, the objective of sweepers."""
    try:
        check_config(cfg)
        results = run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, DataUnavailable) as error:
        sys.exit(f"error: {error}")
    return results["avg_acc"]


if __name__ == "__main__":
    try:
        check_group_choices(sys.argv[1:], Path(__file__).parent / "conf")
    except ConfigError as error:
        sys.exit(f"error: {error}")
    main()
