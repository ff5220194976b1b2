"""One run per output folder: a lock file naming the holder (pid, host, start time)."""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path


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


class OutputLock:
    """Context manager around ``OUT/.lock``; a stale lock from a dead process is taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            return self
        raise LockedError(f"could not take the lock {self.path}")

    def _handle_existing(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
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
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
