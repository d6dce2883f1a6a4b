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
    option, anything fancier (`+group=`, `choice(...)`, `group@pkg=`) is left to Hydra."""
    for override in overrides:
        match = SIMPLE.fullmatch(override)
        if not match or not (conf_dir / match[1]).is_dir():
            continue
        group, choices = match[1], match[2].split(",")
        options = sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))
        for choice in choices:
            if choice not in options:
                return f"{group}={choice} is not allowed: expected one of {', '.join(options)}"
    return None


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
