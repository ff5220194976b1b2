"""The process executor: steps pipelined by shard over worker processes on this machine.

Each worker process (forked from a fork server that has imported torch once: ``forkserver.py``)
holds every step's worker object, built lazily, so stages are set up once per process. The
driver hands out (step, shard) tasks, later steps first like the Ray scheduler: shard s enters
step i+1 as soon as step i finished it. The cores are split among the workers per shard, as the
plan fixes it (``pipeline/core/threads.py``): one intra-op thread each when there are as many
shards as cores.
A worker that dies is replaced and its shard retried (``Step.worker_died``); the crash journal
narrows the culprit so a sample that kills the process costs one row. Workers ignore SIGINT:
the driver stops them.
"""
from __future__ import annotations

import os
import pickle
import signal
import traceback
import warnings
from collections import Counter, deque
from multiprocessing.connection import wait
from typing import Any, Callable

from pipeline.core import threads
from pipeline.core.forkserver import context as _context


def _worker_main(conn: Any, specs: list[tuple[type, tuple]], env: dict[str, str]) -> None:
    """A worker process: run (step, shard, threads) tasks until told to stop (None) or the pipe closes."""
    from pipeline.core.execute import ShardError

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(env)  # the driver's environment now, not the fork server's at its start
    built: dict[int, Any] = {}
    n_threads = 0
    while True:
        try:
            task = conn.recv()
        except EOFError:
            task = None
        if task is None:
            _exit_now()
        i, shard, n = task
        if n != n_threads:
            threads.configure(n)
            n_threads = n
        try:
            if i not in built:
                cls, args = specs[i]
                built[i] = cls(*args)
            reply: tuple[str, Any] = ("ok", built[i].run_shard(shard))
        except ShardError as exc:
            reply = ("shard_error", str(exc))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver
            reply = ("raise", _portable(exc))
        conn.send(reply)


def _exit_now() -> None:
    """End the worker without tearing down torch and mediapipe (~0.3 s): every reply was sent,
    every output renamed into place."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError carrying its text; with the
    worker's traceback as a note either way."""
    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    exc.add_note(f"in a worker process:\n{text}")
    return exc


class _Worker:
    def __init__(self, ctx: Any, specs: list):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, specs, dict(os.environ)),
                                daemon=True, name="faceweave-worker")
        self.proc.start()
        child.close()
        self.task: tuple[int, str] | None = None
        self.told = False

    def tell_stop(self) -> bool:
        """Ask the worker to end; False when the pipe is gone."""
        if not self.told:
            try:
                self.conn.send(None)
            except OSError:
                return False
            self.told = True
        return True

    def stop(self, hard: bool = False) -> None:
        if not hard and self.proc.is_alive():
            hard = not self.tell_stop()
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class ProcessPipeline:
    """The scheduling loop over worker processes."""

    def __init__(self, steps: list, shards: list[str], workers: int, cores: int, max_attempts: int,
                 poll: Callable[[], None] | None = None):
        self.steps, self.max_attempts, self.poll = steps, max_attempts, poll
        self.n_workers, self.cores = max(1, min(workers, len(shards))), cores
        self.threads = threads.shard_threads(shards, self.n_workers, cores)
        self.ready = [deque(shards)] + [deque() for _ in steps[1:]]
        self.deaths: Counter = Counter()
        self.failed: dict[str, str] = {}

    def layout(self) -> str:
        """Where the work runs, in words: "2 worker processes x 1 thread (the last shards: 2)"."""
        counts = list(self.threads.values())
        per, last = (counts[0], counts[-1]) if counts else (self.cores, self.cores)
        text = (f"{self.n_workers} worker process{'es' if self.n_workers > 1 else ''} x "
                f"{per} thread{'s' if per > 1 else ''}")
        return text + (f" (the last shards: {last})" if last != per else "")

    def run(self) -> None:
        ctx = _context()
        specs = [(s.worker_cls, s.args) for s in self.steps]
        start = lambda: _Worker(ctx, specs)  # noqa: E731
        pool = [start() for _ in range(self.n_workers)]
        try:
            while any(self.ready) or any(w.task for w in pool):
                for w in pool:
                    if w.task is None:
                        self._assign(w)
                running = [w for w in pool if w.task]
                ready = wait([w.conn for w in running] + [w.proc.sentinel for w in running], timeout=1.0)
                if not ready and self.poll is not None:
                    self.poll()
                for k, w in enumerate(pool):
                    if w.task and (w.conn in ready or w.proc.sentinel in ready):
                        if not self._collect(w):
                            w.stop(hard=True)
                            pool[k] = start()
        except BaseException:
            for w in pool:
                w.stop(hard=True)
            raise
        for w in pool:  # all told first: their exits overlap
            w.tell_stop()
        for w in pool:
            w.stop()

    def _assign(self, w: _Worker) -> None:
        for i in reversed(range(len(self.steps))):  # later steps first: drain the pipeline
            if self.ready[i]:
                w.task = (i, self.ready[i].popleft())
                try:
                    w.conn.send((*w.task, self.threads[w.task[1]]))
                except OSError:
                    pass  # it died idle: its sentinel is ready, and _collect queues the shard again
                return

    def _collect(self, w: _Worker) -> bool:
        """Take the worker's reply; False when it died (its shard is queued again)."""
        i, shard = w.task
        try:
            kind, value = w.conn.recv()
        except (EOFError, OSError):
            self._died(w, i, shard)
            return False
        w.task = None
        if kind == "raise":
            raise value
        if kind == "shard_error":
            self.failed[shard] = value
            warnings.warn(value, stacklevel=2)
            return True
        if i + 1 < len(self.steps):
            self.ready[i + 1].append(shard)
        self.steps[i].done(value)
        return True

    def _died(self, w: _Worker, i: int, shard: str) -> None:
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        self.deaths[(i, shard)] += 1
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self.steps[i].worker_died(shard, self.deaths[(i, shard)], self.max_attempts, how)
        w.task = None
        self.ready[i].appendleft(shard)
