"""The output lock under contention: many processes take it at once, over a free or a stale lock."""
from __future__ import annotations

import json
import multiprocessing as mp
import socket
import subprocess
import warnings

import pytest

from pipeline.core.lock import LockedError, OutputLock, read_holder

TAKERS = 8
ROUNDS = 50


def _taker(out, barrier, held, index: int) -> None:
    """Each round: take the lock at the same moment as the others, hold it until all tried."""
    warnings.simplefilter("ignore")  # the stale-takeover warning, once per round
    for rnd in range(ROUNDS):
        barrier.wait()
        lock = OutputLock(out)
        try:
            lock.__enter__()
            got = True
        except LockedError:
            got = False
        if got:
            held[rnd * TAKERS + index] = 1
            holder = read_holder(out) or {}
            if holder.get("token") != lock.token:
                held[rnd * TAKERS + index] = 2  # a "holder" that does not own the file
        barrier.wait()  # everybody has tried
        if got:
            lock.__exit__(None, None, None)
        barrier.wait()  # released; the parent may set up the next round


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.fault("concurrent takers of the output lock", injection=f"{TAKERS} processes take OUT/.lock at one barrier, {ROUNDS} rounds over a free lock and {ROUNDS} over a stale one (dead pid)", behaviour="exactly one holder per round; it reads its own token back; the lock is gone after release", compared="holders per round; lock file content")
@pytest.mark.parametrize("start", ["free", "stale"])
def test_exactly_one_holder_every_round(tmp_path, start):
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")  # no fork of a test process that may hold threads (Ray)
    barrier = ctx.Barrier(TAKERS + 1, timeout=60)
    held = ctx.Array("b", TAKERS * ROUNDS, lock=False)
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}
    procs = [ctx.Process(target=_taker, args=(out, barrier, held, i)) for i in range(TAKERS)]
    for p in procs:
        p.start()
    try:
        for _ in range(ROUNDS):
            if start == "stale":
                (out / ".lock").write_text(json.dumps(stale))
            barrier.wait()
            barrier.wait()
            barrier.wait()
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    per_round = [list(held[r * TAKERS:(r + 1) * TAKERS]) for r in range(ROUNDS)]
    assert all(2 not in row for row in per_round), "a taker proceeded without owning the lock file"
    counts = [sum(row) for row in per_round]
    assert counts == [1] * ROUNDS, f"holders per round: {counts}"
    assert not (out / ".lock").exists()
    assert sorted(p.name for p in out.iterdir()) == []  # no temp file left behind


def test_lock_file_is_never_seen_empty(tmp_path):
    """The content is linked into place whole: a reader sees no lock or a complete one."""
    out = tmp_path / "out"
    out.mkdir()
    for _ in range(200):
        with OutputLock(out) as lock:
            assert read_holder(out)["token"] == lock.token
        assert read_holder(out) is None


def test_unreadable_lock_is_taken_over_with_a_warning(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("")
    with pytest.warns(UserWarning, match="stale lock"):
        with OutputLock(out) as lock:
            assert read_holder(out)["token"] == lock.token
    assert not (out / ".lock").exists()
