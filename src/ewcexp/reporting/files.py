"""Files written whole or not at all: results, checkpoints and figures' readers (a resumed
run, the report, a user) never see part of one, whatever stops the writer."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """`write` into a file beside `path`, flushed to the disk, renamed over `path`, and the
    rename flushed too: whoever reads `path` (a resumed run, the report), even after a crash
    or a power cut, finds the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as error:
        partial.unlink(missing_ok=True)  # a full disk leaves no half file behind
        if isinstance(error, RuntimeError) and "errno 28" in str(error).lower():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise  # torch.save reports a full disk as a RuntimeError naming errno 28
    os.replace(partial, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    except (
        OSError
    ):  # a file system that cannot flush a folder (some network ones): the rename stands
        pass
    finally:
        os.close(folder)


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Written whole or not at all (`write_atomically`): a reader never sees part."""
    text = json.dumps(payload, indent=2)  # before the file is opened: a value JSON refuses
    write_atomically(path, lambda file: file.write(text.encode()))
