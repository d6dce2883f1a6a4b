"""Folders a run writes to: whether one can be written, and one live run per run directory.

`hold(dir)` takes an exclusive `flock` on `<dir>/.lock` for the whole run; a second run
started into the same folder (the same `hydra.run.dir`, a resubmitted job) is refused in one
line instead of interleaving its log and checkpoints with the first. A killed run leaves the
file but not the lock: flock belongs to the open file, which dies with the process.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
log = logging.getLogger(__name__)


class RunDirInUse(RuntimeError):
    """Another live process is running in this run directory."""


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process until the block ends; RunDirInUse if another holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirInUse(_in_use_message(run_dir, _holder(handle))) from None
        except OSError as error:  # a file system without flock (some Lustre mounts)
            log.warning(
                "cannot lock %s (%s): a second run there would not be refused",
                run_dir,
                error.strerror,
            )
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(handle)  # releases the lock


def in_use(run_dir: Path) -> str | None:
    """Why `run_dir` cannot take a new run now (a live run holds it), or None; takes nothing."""
    lock = run_dir / LOCK_FILE
    if not lock.is_file():
        return None
    try:
        handle = os.open(lock, os.O_RDONLY)
    except OSError:
        return None  # unreadable: the job's own `hold` reports it
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use_message(run_dir, _holder(handle))
    except OSError:
        return None  # no flock here: the job's own `hold` warns
    finally:
        os.close(handle)
    return None


def _holder(handle: int) -> str:
    """What the holder wrote in the lock file: its pid and host."""
    os.lseek(handle, 0, os.SEEK_SET)
    words = os.read(handle, 200).decode(errors="replace").split()
    return f"process {words[0]} on {words[1]}" if len(words) == 2 else "another process"


def _in_use_message(run_dir: Path, holder: str) -> str:
    return (
        f"run directory {run_dir} is in use by a live run ({holder}): wait for it to end, "
        "or choose another folder with hydra.run.dir=..."
    )


def cannot_write(directory: Path) -> str | None:
    """Why `directory` could not be created and written in, or None; the nearest of it and its
    parents that exists decides (a file there, a read-only file system, no permission, a
    file system such as /sys that takes no folder: a folder made there and removed tells)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    try:  # root passes os.access everywhere; /proc and /sys still refuse a new folder
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        return f"{existing} takes no new folder: {error.strerror}"
    return None
