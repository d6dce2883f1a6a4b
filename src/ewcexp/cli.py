"""Command-line checks that must answer at once, before torch (seconds to import) is loaded."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path


def unknown_group_choice(overrides: Sequence[str], conf_dir: Path) -> str | None:
    """The error for a `group=option` override naming an option that does not exist, or None.

    Hydra would catch it too, in a dozen lines; sweeps `group=a,b` are checked option by
    option, anything fancier (`+group=`, `choice(...)`, `group@pkg=`) is left to Hydra."""
    for override in overrides:
        match = re.fullmatch(r"([A-Za-z_]\w*)=([\w.\-]+(?:,[\w.\-]+)*)", override)
        if not match or not (conf_dir / match[1]).is_dir():
            continue
        group, choices = match[1], match[2].split(",")
        options = sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))
        for choice in choices:
            if choice not in options:
                return f"{group}={choice} is not allowed: expected one of {', '.join(options)}"
    return None
