"""Command-line checks that must answer at once, before torch (seconds to import) is loaded."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

SIMPLE = re.compile(r"([A-Za-z_]\w*)=([\w.\-]+(?:,[\w.\-]+)*)")  # group=a or group=a,b


def unknown_group_choice(overrides: Sequence[str], conf_dir: Path) -> str | None:
    """The error for a `group=option` override naming an option that does not exist, or None.

    Hydra would catch it too, in a dozen lines; sweeps `group=a,b` are checked option by
    option, anything fancier (`+group=`, `choice(...)`, `group@pkg=`) is left to Hydra.
    Options in a config dir added with `--config-dir`/`-cd` count too."""
    dirs = [conf_dir, *added_config_dirs(overrides)]
    for override in overrides:
        match = SIMPLE.fullmatch(override)
        if not match or not (conf_dir / match[1]).is_dir():
            continue
        group, choices = match[1], match[2].split(",")
        options = sorted({path.stem for d in dirs for path in (d / group).glob("*.yaml")})
        for choice in choices:
            if choice not in options:
                return f"{group}={choice} is not allowed: expected one of {', '.join(options)}"
    return None


def added_config_dirs(overrides: Sequence[str]) -> list[Path]:
    """The folders `--config-dir DIR`, `--config-dir=DIR` or `-cd DIR` add to Hydra's search."""
    dirs = []
    for flag, value in zip(overrides, [*overrides[1:], ""], strict=True):
        if flag in ("-cd", "--config-dir"):
            dirs.append(Path(value))
        elif flag.startswith("--config-dir="):
            dirs.append(Path(flag.split("=", 1)[1]))
    return dirs


def unknown_key(overrides: Sequence[str], conf_dir: Path) -> str | None:
    """The error for a `key=value` override naming a key the config does not have, or None.

    Keys are looked up in the config composed with the overrides' group choices (the first of
    a sweep), so `model.hidden_sizes` is known with the MLP only. `+key=` (refused later by
    `config.check_config`, as every undeclared key), `hydra.*` and any override Hydra's own
    config dirs (`-cd`) could change are left to Hydra."""
    if any(arg in ("-cd", "--config-dir") or arg.startswith("--config-dir=") for arg in overrides):
        return None
    keys, groups = [], []
    for override in overrides:
        match = re.fullmatch(r"([A-Za-z_][\w.]*)=(.*)", override)
        if not match or match[1] == "hydra" or match[1].startswith("hydra."):
            continue
        if (conf_dir / match[1]).is_dir():
            if simple := SIMPLE.fullmatch(override):
                groups.append(f"{simple[1]}={simple[2].split(',')[0]}")
        else:
            keys.append((match[1], match[2]))
    if not keys:
        return None
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=groups)
    except Exception:  # noqa: BLE001 - whatever it is, Hydra will report it properly
        return None
    for key, value in keys:
        found = OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False)
        if found is KeyError:
            close = difflib.get_close_matches(key, _key_paths(OmegaConf.to_container(cfg)), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            return (
                f"{key}={value} is not allowed: the config has no key {key} ({hint}"
                "`python run.py --help` lists them)"
            )
    return None


def _key_paths(node: dict, prefix: str = "") -> list[str]:
    """Every dotted key path of a nested dict."""
    paths = []
    for key, value in node.items():
        paths.append(f"{prefix}{key}")
        if isinstance(value, dict):
            paths += _key_paths(value, f"{prefix}{key}.")
    return paths


# Hydra's defaults (conf/config.yaml keeps them); ${now:...} is filled in as Hydra fills it
HYDRA_DIRS = {
    "hydra.run.dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}",
    "hydra.sweep.dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}",
}
# flags after which Hydra prints something and runs nothing, or loads another config
PRINT_ONLY_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info"}
COMPLETION_FLAGS = {"-sc", "--shell-completion"}
OTHER_CONFIG_FLAGS = {"-cd", "--config-dir", "-cp", "--config-path", "-cn", "--config-name"}


def unwritable_run_dir(args: Sequence[str]) -> str | None:
    """The error for a run directory that cannot be written, or None.

    Hydra creates it and writes `.hydra/` there before our code runs, and reports a failure
    as a traceback. The directory is the command line's `hydra.run.dir` (`hydra.sweep.dir` for
    a multirun: `-m`, `hydra.mode=MULTIRUN` or an `hparams_search=` preset), else Hydra's
    default; nothing is created, the nearest folder that exists is checked. No config is
    composed (80 ms more at every start): a config file that moved the directory would go
    unseen (none does)."""
    flags = {arg.split("=")[0] for arg in args if arg.startswith("-")}
    if flags & (PRINT_ONLY_FLAGS | COMPLETION_FLAGS):
        return None
    multirun = (
        bool(flags & {"-m", "--multirun"})
        or "hydra.mode=MULTIRUN" in args
        # the hparams_search presets set hydra.mode=MULTIRUN
        or any(arg.startswith("hparams_search=") and arg != "hparams_search=null" for arg in args)
    )
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [arg.split("=", 1)[1] for arg in args if arg.lstrip("+").startswith(f"{key}=")]
    if not given and flags & OTHER_CONFIG_FLAGS:
        return None  # another config may set it
    directory = _fill_in_now(given[-1] if given else HYDRA_DIRS[key])
    if problem := _cannot_write(Path(directory)):
        kind = "sweep" if multirun else "run"
        return f"cannot write the {kind} directory {directory} ({problem}): choose another with {key}=..."
    return None


def _fill_in_now(value: str) -> str:
    """`value` unquoted, with `${now:FORMAT}` filled in as Hydra's resolver does; anything after
    another interpolation dropped (its folder is checked instead)."""
    from datetime import datetime

    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    value = re.sub(r"\$\{now:([^}]*)\}", lambda match: datetime.now().strftime(match[1]), value)
    if "${" not in value:
        return value
    prefix = value.split("${")[0]
    return prefix.rpartition("/")[0] or ("/" if prefix.startswith("/") else ".")


def _cannot_write(directory: Path) -> str | None:
    """Why `directory` could not be created and written in, or None; the nearest of it and its
    parents that exists decides (a file there, a read-only file system, no permission)."""
    import os

    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    return f"no permission to write in {existing}"
