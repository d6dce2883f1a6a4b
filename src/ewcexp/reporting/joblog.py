"""Lines for the job's log file only (Hydra's `<run dir>/ewcexp.log`, which SLURM users read),
where the terminal gets the same news another way (a plain `error:` line, a traceback)."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("ewcexp")


def to_log_files(line: str, with_traceback: bool = False) -> None:
    """`line` at ERROR into every file handler of the root logger, not to the terminal;
    `with_traceback`: the exception being handled under it."""
    exc_info = sys.exc_info() if with_traceback else None
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
