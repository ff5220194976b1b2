"""Intra-op threads of a worker process: the cores split evenly among the workers.

Fixed for the whole run, never rebalanced as workers go idle: torch's results depend on its
thread count (reduction order), and an annotation must not depend on which shard happened to
run last. ``workers = min(cores, shards)``, so a one-shard run gets every core in one worker,
exactly like the in-process executor.
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
