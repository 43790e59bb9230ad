"""A clean stop on SIGTERM (what `kill`, a cloud preemption notice or a scheduler sends) and
SIGINT (Ctrl-C). The first signal lets the current step finish and checkpoints it, within
--stop_grace_s seconds of the signal; then the run ends with one line saying where it stopped
and how to resume, and the exit code of the convention (128 + the signal: 143, 130). A second
signal, or the grace running out, stops at once: the last checkpoint on disk is the one to
resume from. Ray's own handler (which aborts the driver with a stack dump, exit 134) is
replaced for the run's life."""

from __future__ import annotations

import _thread
import signal
import sys
import threading
from typing import Any


class Interrupted(BaseException):
    """The run was stopped by a signal; `code` is the exit code (128 + the signal's number). A
    BaseException, like KeyboardInterrupt: no `except Exception` on the way may swallow it."""

    def __init__(self, message: str, signum: int, at_once: bool = False) -> None:
        super().__init__(message)
        self.code, self.at_once = 128 + signum, at_once


class StopSignals:
    """Installed for one run: `requested` is the first signal's number (0: none yet)."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s, self.requested = grace_s, 0
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (e.g. a run inside a test's thread)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested:  # a second signal, or the grace is over: now
            raise Interrupted(f"stopped at once by {name}", self.requested, at_once=True)
        self.requested = signum
        print(f"{name} received: finishing the current step and checkpointing it (at most "
              f"--stop_grace_s {self.grace_s:g}s); a second signal stops at once", file=sys.stderr, flush=True)
        self._timer = threading.Timer(self.grace_s, _thread.interrupt_main, args=(signum,))
        self._timer.daemon = True
        self._timer.start()

    def stopped(self, step: int, checkpoint_path: str | None, at_once: bool = False) -> Interrupted:
        """The error that ends the run: after `step` was finished (and checkpointed), or at once
        (a second signal, or the grace ran out) with the last checkpoint on disk."""
        name = signal.Signals(self.requested).name
        how = "at once (a second signal, or --stop_grace_s ran out)" if at_once else f"after step {step}"
        where = ((f"last checkpoint {checkpoint_path}" if at_once else f"checkpoint {checkpoint_path}")
                 + "; resume with --resume auto (same --output_dir and --run_name)"
                 if checkpoint_path else "no checkpoint was written: start again")
        return Interrupted(f"stopped by {name} {how}: {where}", self.requested, at_once)
