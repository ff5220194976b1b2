"""Intra-op threads of a worker process: the cores split evenly among the workers.

A shard's thread count is fixed by the plan, never by timing (``shard_threads``): torch's
results depend on its thread count (reduction order), and an annotation must not depend on
which worker happened to go idle first. ``workers = min(cores, shards)`` (one per shard in a run
of less than two rounds: ``worker_count``), so a one-shard run gets every core in one worker,
exactly like the in-process executor; in longer runs the last shards, which do not fill a round
of workers, share the cores among themselves.
"""
from __future__ import annotations

import os
import sys


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


WORKER_RUNTIME_MB = 400.0
"""A worker's own memory beside its models (python, torch, mediapipe, batches), measured ~350 MB
on the lite preset; pages shared with the fork server are not counted."""


def available_mb() -> float | None:
    """Memory available to new processes (Linux MemAvailable, else free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (AttributeError, ValueError, OSError):
        return None


def worker_count(cores: int, shards: int) -> int:
    """One worker process per core; in a run of less than two rounds (cores < shards < 2 x cores)
    one per shard, so the shards past the first round share the cores from the start rather than
    run last with a few threads each (torch used 2 threads at ~70%: 1.4x, not 2x): every core is
    busy until the end, all shards on one thread."""
    if cores < shards < 2 * cores:
        return shards
    return max(1, min(cores, shards))


def workers_for(cores: int, shards: int, models_mb: float, available: float | None) -> tuple[int, str]:
    """How many worker processes to start (``worker_count``), and why fewer when memory decides."""
    n = worker_count(cores, shards)
    need = WORKER_RUNTIME_MB + models_mb
    if available is None or n * need <= 0.8 * available:
        return n, ""
    fit = max(1, int(0.8 * available // need))
    return min(n, fit), (f"{min(n, fit)} worker processes, not {n}: each needs about {need / 1024:.1f} GB "
                         f"(its models) and {available / 1024:.1f} GB are available (--num-cpus sets the count)")


def shard_threads(shards: list[str], workers: int, cores: int) -> dict[str, int]:
    """Threads per shard: cores ÷ workers, and cores ÷ r for the last r = len % workers shards (in
    plan order, the order they are handed out), so the tail of a run keeps every core busy."""
    workers = max(1, min(workers, len(shards)))
    tail = len(shards) % workers
    return {s: max(1, cores // (tail if tail and i >= len(shards) - tail else workers))
            for i, s in enumerate(shards)}


def configure(n: int) -> None:
    """In a worker process: ``n`` intra-op threads for torch and OpenCV (imported or not yet)."""
    n = max(1, n)
    os.environ["OMP_NUM_THREADS"] = str(n)  # for libraries imported after this point
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setNumThreads(n)
