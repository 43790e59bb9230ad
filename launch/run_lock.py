"""One run per run folder. A second train_distributed.py writing into the same folder would
interleave metrics.jsonl and overwrite checkpoints and final/, so each run holds an exclusive
lock on `RUN_FOLDER/.lock` (flock) for its whole life; the file names the holder (pid, host,
start time). The kernel drops the lock when its process dies, however it dies, so a lock left
by a dead run is taken over (and said so) rather than blocking the folder for ever."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import IO

from distrl.config import ConfigError

_held: dict[str, IO] = {}  # folder -> open lock file, for this process's life (or release())


def hold(folder: str) -> None:
    """Lock `folder` for this process, or ConfigError naming the run that holds it."""
    folder = os.path.abspath(folder)
    if folder in _held:
        return
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(f)
        f.close()
        raise ConfigError(f"run folder {folder} is in use by another run (pid {holder.get('pid', '?')} on "
                          f"{holder.get('host', '?')}, started {holder.get('started', '?')}): pick another "
                          "--run_name or --output_dir, or wait for that run to end") from None
    previous = _read(f)
    if previous:
        print(f"run folder {folder}: took over the lock of pid {previous.get('pid')} on {previous.get('host')} "
              "(that run is no longer running)", file=sys.stderr, flush=True)
    f.seek(0)
    f.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
    f.flush()
    _held[folder] = f


def release(folder: str) -> None:
    """Unlock `folder` and clear its holder (a run that ended normally leaves no holder behind)."""
    f = _held.pop(os.path.abspath(folder), None)
    if f is not None:
        f.seek(0)
        f.truncate()
        f.close()


def _read(f: IO) -> dict:
    f.seek(0)
    try:
        return json.loads(f.read() or "{}")
    except ValueError:
        return {}
