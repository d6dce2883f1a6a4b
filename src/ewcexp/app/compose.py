"""Hydra's configs as a command's jobs will see them, composed before Hydra runs anything:
the search path (ewcexp's configs, search-path plugins, `--config-dir`, `hydra.searchpath`)
and `JobConfigs`, which composes once per choice of group options so that checking every
job of a large sweep costs little. Hydra is imported inside the functions: this module is
loaded at every start, before the command line is known to need it."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONFIG_MODULE = "pkg://ewcexp.conf"


@contextmanager
def hydra_configs(args: Sequence[str]) -> Iterator[JobConfigs]:
    """Hydra over the search path the command's jobs will have: ewcexp's configs, search-path
    plugins, `--config-dir` (placed as Hydra places it) and the command's `hydra.searchpath`;
    the compose API works inside. Yields the command's `JobConfigs`."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = create_config_search_path(CONFIG_MODULE)
    for directory in added_config_dirs(args):
        search_path.prepend(
            provider="command-line",
            path=f"file://{directory.resolve()}",
            anchor=SearchPathQuery(provider="schema"),
        )
    hydra_now = GlobalHydra.instance()
    theirs = hydra_now.hydra if hydra_now.is_initialized() else None  # a notebook's own
    hydra_now.clear()
    Hydra.create_main_hydra2(task_name="ewcexp", config_search_path=search_path)
    try:
        yield JobConfigs([a for a in args if a.lstrip("+").startswith("hydra.searchpath=")])
    finally:
        hydra_now.clear()
        if theirs is not None:
            hydra_now.initialize(theirs)


def added_config_dirs(overrides: Sequence[str]) -> list[Path]:
    """The folders `--config-dir DIR`, `--config-dir=DIR` or `-cd DIR` add to Hydra's search."""
    dirs = []
    for flag, value in zip(overrides, [*overrides[1:], ""], strict=True):
        if flag in ("-cd", "--config-dir"):
            dirs.append(Path(value))
        elif flag.startswith("--config-dir="):
            dirs.append(Path(flag.split("=", 1)[1]))
    return dirs


class JobConfigs:
    """The command's configs as Hydra composes them, with what is costly done once: the
    options of each group (one scan of the search path), and each distinct choice of group
    options (~0.1 s a composition); a job's values are then applied by Hydra's own override
    code. A 100-value λ sweep composes once."""

    def __init__(self, searchpath: Sequence[str]) -> None:
        from hydra.core.global_hydra import GlobalHydra

        self.searchpath = list(searchpath)
        loader = GlobalHydra.instance().config_loader()
        # the search path with the command's hydra.searchpath, as each composition builds it
        _, self.repository = loader._parse_overrides_and_create_caching_repo(
            "config", self.searchpath
        )
        self.composed: dict[tuple[str, ...], Any] = {}
        self.groups: dict[str, list[str]] = {}

    def options(self, group: str) -> list[str]:
        """The options of config group `group` on the search path (none: not a group)."""
        from hydra.core.object_type import ObjectType

        if group not in self.groups:
            self.groups[group] = sorted(
                self.repository.get_group_options(group, results_filter=ObjectType.CONFIG)
            )
        return self.groups[group]

    def composition(self, picks: tuple[str, ...]) -> Any:
        """The config with these group choices and nothing else (shared: copy to change it)."""
        from hydra import compose

        if picks not in self.composed:
            self.composed[picks] = compose(
                config_name="config", overrides=[*picks, *self.searchpath]
            )
        return self.composed[picks]

    def run_dir(self, overrides: Sequence[str]) -> Path | None:
        """The run directory an interpolated `hydra.run.dir` (`runs/${seed}`) resolves to
        for these overrides, or None where only the running job could resolve it."""
        from hydra import compose
        from omegaconf import OmegaConf

        try:
            cfg = compose(
                config_name="config",
                overrides=[*overrides, *self.searchpath],
                return_hydra_config=True,
            )
            return Path(OmegaConf.select(cfg, "hydra.run.dir"))
        except Exception:  # noqa: BLE001 - ${hydra:...} and the like: the job's own lock says
            return None

    def of(self, job: Sequence[str]) -> Any:
        """Job `job`'s config: its group choices composed, then its values applied."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(list(job))
        picks = tuple(o.input_line for o in parsed if self.options(o.key_or_group))
        cfg = copy.deepcopy(self.composition(picks))
        values = [o for o in parsed if o.input_line not in picks]
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg
