"""SLURM's warning signals turned into a clean stop: checkpoint, then exit so the job is requeued.

Before a time limit SLURM sends the signal the job asked for (submitit asks for
`--signal=USR2@<signal_delay_s>`), and before a preemption or `scancel` it sends
SIGTERM, then SIGKILL after a grace time. Saving inside the signal handler could
catch the training loop between two updates, so the handler only notes the
signal; the runner finishes the current step, writes a checkpoint, and calls
`exit()`, which hands the signal on to whoever handled it before us. Under
submitit that is its own handler, which requeues the job; the requeued job runs
the same Hydra job directory again and resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, NoReturn

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequest:
    """While entered, SIGTERM, SIGUSR1 and SIGUSR2 set `requested` instead of acting at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach only that one
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        log.warning(
            "received %s: stopping after the current step, with a checkpoint to resume from",
            signal.Signals(signum).name,
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def exit(self) -> NoReturn:
        """Hand the signal to its previous handler (submitit's requeues the job and exits);
        otherwise exit with status 128 + the signal number, as a process killed by it would."""
        assert self.signum is not None
        previous = self._previous.get(self.signum)
        self._restore()
        if callable(previous):
            previous(self.signum, None)
        raise SystemExit(128 + self.signum)
