"""The process executor's fork server, started as soon as a run knows it will need one.

Light on purpose (multiprocessing only, not the runner package): the CLI starts the server
before importing the runner, so the server's ``import torch`` (~4 s on 2 cores, the longest
step before the first sample) runs beside everything the driver does before work. A fork server
rather than a plain fork because torch's OpenMP pool hangs in a child forked after it was used.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any

PRELOAD = ["pipeline.core.runner.server_preload"]
"""Imported once by the fork server: torch, the model packages and the stage modules
(``server_preload``), so a worker starts in milliseconds instead of importing them itself."""


def context() -> Any:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the fork server now (a no-op when it runs already)."""
    from multiprocessing import forkserver

    context()
    forkserver.ensure_running()


def stop() -> None:
    """Kill the fork server this process started, if any: called at the CLI's exit, when the
    workers are done, so that a server still importing torch (a run that failed early) does not
    hold the caller's stdout and stderr open for seconds."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError, PermissionError):
            pass


def skip_pandas_probe() -> None:
    """Called by the fork server: pyarrow imports pandas on its first array conversion (0.6-1.5 s
    in each worker, at its first manifest) only to ask whether the values are pandas objects. The
    workers never hand it one and never use pandas: let that one probe find no pandas, here."""
    import sys

    import pyarrow as pa

    if "pandas" in sys.modules:
        return
    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """A meta-path finder for which pandas does not exist (only inside ``skip_pandas_probe``)."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas: not imported by worker processes", name=name)
