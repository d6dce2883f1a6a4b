"""Command-line checks, run before Hydra creates a directory or starts a job: first those that
must answer at once, before torch (seconds to import) is loaded, then every job's config.
Each check reads the command line and returns its one-line error; the configs it checks
against are composed by `ewcexp.app.compose`."""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ewcexp.app.compose import JobConfigs, added_config_dirs, hydra_configs
from ewcexp.config.folders import cannot_write

SIMPLE = re.compile(r"([A-Za-z_][\w/]*)=([\w.\-]+(?:,[\w.\-]+)*)")  # group=a or group=a,b
# flags after which Hydra prints something and runs nothing, or loads another primary config
PRINT_ONLY_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "-i", "--info"}
COMPLETION_FLAGS = {"-sc", "--shell-completion"}
OTHER_PRIMARY_FLAGS = {"-cp", "--config-path", "-cn", "--config-name"}
OTHER_CONFIG_FLAGS = {"-cd", "--config-dir", *OTHER_PRIMARY_FLAGS}


def command_line_problem(args: Sequence[str]) -> str | None:
    """The one-line error for a command that would be refused, or None: an option or key
    that does not exist, a run directory that cannot be written or is in use, or any job's
    value. Options are asked of Hydra's own search path, so `hydra.searchpath=[...]`,
    `pkg://` entries, search-path plugins and `--config-dir` add options as Hydra adds them."""
    flags = _flags(args)
    if flags & (PRINT_ONLY_FLAGS | COMPLETION_FLAGS | OTHER_PRIMARY_FLAGS):
        return None  # Hydra prints and runs nothing, or another primary config is composed
    if not all(directory.is_dir() for directory in added_config_dirs(args)):
        return None  # Hydra says which folder is missing
    with hydra_configs(args) as configs:
        return (
            unknown_group_choice(args, configs)
            or unknown_key(args, configs)
            or unwritable_run_dir(args)
            or refused_job(args, configs)
        )


def unknown_group_choice(overrides: Sequence[str], configs: JobConfigs) -> str | None:
    """The error for a `group=option` override naming an option Hydra cannot find, or None.

    Hydra would catch it too, in a dozen lines; sweeps `group=a,b` are checked option by
    option, anything fancier (`+group=`, `choice(...)`, `group@pkg=`) is left to Hydra."""
    for override in overrides:
        match = SIMPLE.fullmatch(override)
        if not match or match[1] == "hydra":
            continue
        options = configs.options(match[1])
        if not options:
            continue  # not a group: a key
        for choice in match[2].split(","):
            if choice not in options and choice != "null":
                return f"{match[1]}={choice} is not allowed: expected one of {', '.join(options)}"
    return None


def unknown_key(overrides: Sequence[str], configs: JobConfigs) -> str | None:
    """The error for a `key=value` override naming a key the config does not have, or None.

    Keys are looked up in the config composed with the overrides' group choices (the first of
    a sweep), so `model.hidden_sizes` is known with the MLP only. `+key=` (refused later by
    `config.check_config`, as every undeclared key) and `hydra.*` are left to Hydra."""
    keys, groups = [], []
    for override in overrides:
        match = re.fullmatch(r"([A-Za-z_][\w.]*)=(.*)", override)
        if not match or match[1] == "hydra" or match[1].startswith("hydra."):
            continue
        if configs.options(match[1]):
            if simple := SIMPLE.fullmatch(override):
                groups.append(f"{simple[1]}={simple[2].split(',')[0]}")
        else:
            keys.append((match[1], match[2]))
    if not keys:
        return None
    from omegaconf import OmegaConf

    try:
        cfg = configs.composition(tuple(groups))
    except Exception:  # noqa: BLE001 - whatever it is, Hydra will report it properly
        return None
    for key, value in keys:
        found = OmegaConf.select(cfg, key, default=KeyError, throw_on_resolution_failure=False)
        if found is KeyError:
            close = difflib.get_close_matches(key, _key_paths(OmegaConf.to_container(cfg)), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            return (
                f"{key}={value} is not allowed: the config has no key {key} ({hint}"
                "`ewcexp --help` lists them)"
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
    "hydra.run.dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}",
    "hydra.sweep.dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}",
}


def unwritable_run_dir(args: Sequence[str]) -> str | None:
    """The error for a run directory that cannot be written, or None.

    Hydra creates it and writes `.hydra/` there before our code runs, and reports a failure
    as a traceback. The directory is the command line's `hydra.run.dir` (`hydra.sweep.dir` for
    a multirun: `-m`, `hydra.mode=MULTIRUN` or an `hparams_search=` preset), else Hydra's
    default; the nearest folder that exists is checked (nothing is left in it). No config is
    composed (80 ms more at every start): a config file that moved the directory would go
    unseen (none does)."""
    flags = _flags(args)
    if flags & (PRINT_ONLY_FLAGS | COMPLETION_FLAGS):
        return None
    multirun = _is_multirun(args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = _given_dir(args, key)
    if not given and flags & OTHER_CONFIG_FLAGS:
        return None  # another config may set it
    directory = _fill_in_now(given or HYDRA_DIRS[key])
    if problem := cannot_write(Path(directory)):
        kind = "sweep" if multirun else "run"
        return f"cannot write the {kind} directory {directory} ({problem}): choose another with {key}=..."
    return None


def _flags(args: Sequence[str]) -> set[str]:
    return {arg.split("=")[0] for arg in args if arg.startswith("-")}


def _is_multirun(args: Sequence[str]) -> bool:
    """`-m`, `hydra.mode=MULTIRUN`, or an `hparams_search=` preset (they set that mode)."""
    return (
        bool(_flags(args) & {"-m", "--multirun"})
        or "hydra.mode=MULTIRUN" in args
        or any(arg.startswith("hparams_search=") and arg != "hparams_search=null" for arg in args)
    )


def _given_dir(args: Sequence[str], key: str) -> str | None:
    """The last `key=DIR` of the command line (`hydra.run.dir`, `hydra.sweep.dir`), or None."""
    given = [arg.split("=", 1)[1] for arg in args if arg.lstrip("+").startswith(f"{key}=")]
    return given[-1] if given else None


def refused_job(args: Sequence[str], configs: JobConfigs) -> str | None:
    """The error for the first job of this command that would be refused, or None.

    Each job's config is composed (a multirun's jobs as Hydra's basic sweeper makes them) and
    checked as the job checks it (`config.check_config`); where the command names a run or
    sweep directory plainly, a checkpoint in a job's folder is checked against its config. So
    a sweep with one bad value starts no job, and a refused run leaves no `.hydra/` over an
    earlier run's. An Optuna search (`hparams_search=`) picks its jobs' values itself: the
    command's values are checked, one by one, but no job folder. Whatever Hydra reports
    itself (a syntax error, `glob()`, an interpolation only a running job resolves) is left
    to it, and each job still checks its own config when it starts. Runs inside
    `hydra_configs`, which gives `configs`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    given = [a for a in args if not a.startswith("-") and a not in _flag_values(args)]
    ours = [a for a in given if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    searching = any(  # a sweeper other than the basic one draws the values
        a.startswith(("hparams_search=", "hydra/sweeper=")) and not a.endswith("=null")
        for a in given
    )
    try:
        parsed = OverridesParser.create().parse_overrides(ours)
        if not _is_multirun(args):
            if sweep := next((o for o in parsed if o.is_sweep_override()), None):
                return f"{sweep.input_line} is not allowed: a sweep of values needs -m (a job each)"
            jobs = [ours]
        elif searching:
            jobs = [
                [o.input_line] if not o.is_sweep_override() else list(_values(o))
                for o in parsed
                if not o.is_sweep_override() or o.is_discrete_sweep()
            ]
            jobs = [list(job) for job in itertools.product(*jobs)]
        else:
            (jobs,) = BasicSweeper.split_arguments(parsed, None)
    except HydraException:
        return None  # Hydra's own message says what is wrong
    for number, job in enumerate(jobs):
        try:
            cfg = configs.of(job)
        except HydraException:
            return None  # Hydra reports it when it composes the job
        folder = None if searching else _job_folder(args, number)
        if folder is None and not _is_multirun(args) and _given_dir(args, "hydra.run.dir"):
            folder = configs.run_dir([*job, f"hydra.run.dir={_given_dir(args, 'hydra.run.dir')}"])
        if problem := _job_problem(cfg, folder, job, ours):
            return problem
    return None


def _values(override: Any) -> list[str]:
    key = override.get_key_element()
    return [f"{key}={value}" for value in override.sweep_string_iterator()]


def _job_folder(args: Sequence[str], number: int) -> Path | None:
    """Job `number`'s folder where the command names it plainly (no interpolation but
    `${now:}`, Hydra's own sweep subfolder), else None: a new folder, or one only Hydra can
    name."""
    if _is_multirun(args):
        sweep = _given_dir(args, "hydra.sweep.dir")
        if sweep is None or _given_dir(args, "hydra.sweep.subdir") is not None:
            return None
        folder = _fill_in_now(sweep, plain=True)
        return None if folder is None else Path(folder) / str(number)
    run = _given_dir(args, "hydra.run.dir")
    folder = None if run is None else _fill_in_now(run, plain=True)
    return None if folder is None else Path(folder)


def _flag_values(args: Sequence[str]) -> set[str]:
    """The arguments that are a flag's value (`-cd DIR`), not overrides."""
    return {
        value for flag, value in zip(args, args[1:], strict=False) if flag in OTHER_CONFIG_FLAGS
    }


def _job_problem(
    cfg: Any, folder: Path | None, job: Sequence[str], typed: Sequence[str]
) -> str | None:
    """Why one composed job would be refused: a value, its folder in use by a live run, or
    its folder's checkpoint."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ewcexp.config.checks import ConfigError, check_config
    from ewcexp.config.folders import in_use
    from ewcexp.training import checkpoint

    try:
        check_config(cfg)
        if folder and (user := in_use(folder)):
            return user
        if folder and cfg.resume:
            checkpoint.load(folder, OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as error:
        return str(error) + _preset_hint(str(error), job, typed)
    except checkpoint.CheckpointMismatch as error:
        return str(error)
    except OmegaConfBaseException:
        return None  # e.g. ${hydra:...}, which only a running job resolves: the job says
    return None


def _preset_hint(message: str, job: Sequence[str], typed: Sequence[str]) -> str:
    """For a key no option takes, set by an `experiment=` preset for the option it picks
    (`model.hidden_sizes` with `model=cnn`), not on the command line: how to drop it."""
    presets = [o for o in job if o.startswith("experiment=")]
    if not presets or ": there is no such key" not in message:
        return ""
    key = message.split("=", 1)[0]
    if any(o.lstrip("+").startswith(f"{key}=") for o in typed):
        return ""
    return f"; {presets[-1]} sets it for the option it picks: drop it with ~{key}"


def _fill_in_now(value: str, plain: bool = False) -> str | None:
    """`value` unquoted, with `${now:FORMAT}` filled in as Hydra's resolver does; anything after
    another interpolation dropped (its folder is checked instead), or, with `plain`, None."""
    from datetime import datetime

    if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    value = re.sub(r"\$\{now:([^}]*)\}", lambda match: datetime.now().strftime(match[1]), value)
    if "${" not in value:
        return value
    if plain:
        return None
    prefix = value.split("${")[0]
    return prefix.rpartition("/")[0] or ("/" if prefix.startswith("/") else ".")
