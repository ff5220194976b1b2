"""One run per output folder: a lock file naming the holder (pid, host, start time, token).

Taking the lock is atomic: the JSON is written to a temp file first and hard-linked into place
(``link`` fails when ``.lock`` exists), so a competitor never reads a half-written lock. The
decision "the holder is dead, take over" and the takeover itself run under an ``flock`` on the
output folder (released by the kernel if the process dies), so two takers can never both
remove a stale lock and both install their own; afterwards the taker re-reads ``.lock`` and
only proceeds when it names its own token.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

from pipeline import layout


class LockedError(RuntimeError):
    """Another live run holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(out: Path) -> dict[str, Any] | None:
    """The holder recorded in ``OUT/.lock`` ({} when unreadable), or None when there is none."""
    try:
        return json.loads(layout.lock(out).read_text()) or {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _folder_mutex(folder: Path) -> Iterator[None]:
    """Exclusive flock on the folder itself for a short critical section (no file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without flock: link() alone still makes taking atomic
            warnings.warn(f"no flock on {folder} ({exc}); a stale-lock takeover is not serialised", stacklevel=3)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class OutputLock:
    """Context manager around ``OUT/.lock``; a stale lock from a dead process is taken over."""

    def __init__(self, out: Path):
        self.path = layout.lock(out)
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                   "token": uuid.uuid4().hex}

    @property
    def token(self) -> str:
        """The token written into ``.lock``; whoever reads it back holds the lock."""
        return self.me["token"]

    def __enter__(self) -> "OutputLock":
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".lock.tmp-{os.getpid()}-{self.token[:8]}"
        tmp.write_text(json.dumps(self.me))
        try:
            with _folder_mutex(folder):
                if not self._link(tmp):
                    self._refuse_or_clear(read_holder(folder))
                    if not self._link(tmp):
                        raise LockedError(f"could not take the lock {self.path}")
                if (read_holder(folder) or {}).get("token") != self.token:  # re-check ownership
                    raise LockedError(f"lost the lock {self.path} to another run")
        finally:
            tmp.unlink(missing_ok=True)
        return self

    def _link(self, tmp: Path) -> bool:
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        return True

    def _refuse_or_clear(self, holder: dict[str, Any] | None) -> None:
        """Raise LockedError for a live holder; remove a stale lock (called under the mutex)."""
        if holder is None:  # released between our link and our read
            return
        pid, host = holder.get("pid"), holder.get("host")
        if host == self.me["host"] and isinstance(pid, int) and _alive(pid) and pid != os.getpid():
            raise LockedError(f"{self.path.parent} is in use by another run (pid {pid} on {host}, "
                              f"started {time.ctime(holder.get('started', 0))}); wait for it or use another --out")
        if host not in (None, self.me["host"]):
            raise LockedError(f"{self.path.parent} is locked by pid {pid} on host {host}; if that run is dead, "
                              f"delete {self.path}")
        warnings.warn(f"taking over a stale lock from dead pid {pid} on {host}", stacklevel=3)
        self.path.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        try:
            with _folder_mutex(self.path.parent):
                if (read_holder(self.path.parent) or {}).get("token") == self.token:
                    self.path.unlink()
        except OSError:
            pass
