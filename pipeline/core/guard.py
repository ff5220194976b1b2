"""Workers stop writing once their run is gone.

A worker process (a Ray actor) outlives a driver killed with SIGKILL by a few seconds. The
driver's lock names a token (``OUT/.lock``); every worker is told it, and

- before any output is renamed into place (``manifest.fsync_rename``) the worker checks that
  the lock still names its token and, on the same host, that the lock holder is alive;
- a daemon thread in every worker process that is not the driver checks the same every
  ``POLL_S`` and ends the process when the run is gone, so not even temp files keep growing.

A later run takes over the stale lock with a new token, so leftover workers can never write
beside it.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

POLL_S = 0.2
_run: tuple[Path, str] | None = None


class RunGoneError(RuntimeError):
    """The run this worker belongs to no longer holds the output folder."""


def _gone(out: Path, token: str) -> str:
    from pipeline.core.lock import _alive, read_holder

    holder = read_holder(out)
    if not holder or holder.get("token") != token:
        return "the output lock no longer names this run"
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return f"the driver (pid {pid}) is dead"
    return ""


def join(out: Path, token: str | None) -> None:
    """Called in every worker: remember the run; watch it when this process is not the driver."""
    global _run
    if not token:
        return
    _run = (Path(out), token)
    from pipeline.core.lock import read_holder

    holder = read_holder(out) or {}
    if holder.get("pid") != os.getpid():
        threading.Thread(target=_watch, args=(Path(out), token), daemon=True, name="run-guard").start()


def leave() -> None:
    """The driver's run is over (the next run in this process joins with its own token)."""
    global _run
    _run = None


def check() -> None:
    """Raise RunGoneError when this worker's run is gone (no-op outside a run)."""
    if _run is not None and (why := _gone(*_run)):
        raise RunGoneError(f"not writing to {_run[0]}: {why}")


def _watch(out: Path, token: str) -> None:
    import time

    while True:
        time.sleep(POLL_S)
        if _gone(out, token):
            os._exit(3)  # no cleanup: a later run removes temp files under its own lock
