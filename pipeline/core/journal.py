"""Crash journal: which samples a worker was processing, so a native crash costs one row.

Before each ``process()`` call a worker records the keys in flight for (stage, shard). When the
driver sees a worker die (a native crash, the OOM killer, a kill), it reads the journal: a batch
in flight becomes *suspects*, processed one at a time on the retry; a single key in flight is
*crashed*, recorded as an error row without being processed again. Only the driver's observation
of a death marks anything, so killing the driver itself never blames a sample.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import layout

CRASHED = "worker_crashed: the worker process died while processing this sample"


def journal_path(out: Path, stage: str, shard: str) -> Path:
    return layout.journal(out, stage) / f"{shard}.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    # No fsync: the journal must survive the worker process, not the machine.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


class Journal:
    """The worker side for one stage of one shard."""

    def __init__(self, out: Path, stage: str, shard: str):
        self.path = journal_path(out, stage, shard)
        data = _read(self.path)
        self.suspects: set[str] = set(data.get("suspects", []))
        self.crashed: set[str] = set(data.get("crashed", []))

    def begin(self, keys: list[str]) -> None:
        _write(self.path, {"inflight": keys, "suspects": sorted(self.suspects), "crashed": sorted(self.crashed)})

    def end(self) -> None:
        _write(self.path, {"inflight": [], "suspects": sorted(self.suspects), "crashed": sorted(self.crashed)})

    def close(self) -> None:
        """The shard is done: its journal is no longer needed."""
        self.path.unlink(missing_ok=True)


def note_crash(out: Path, stages: list[str], shard: str) -> list[str]:
    """Driver side, after a worker died on ``shard``: narrow down the culprit. Returns crashed keys."""
    blamed: list[str] = []
    for stage in stages:
        path = journal_path(out, stage, shard)
        data = _read(path)
        inflight = data.get("inflight", [])
        if not inflight:
            continue
        suspects, crashed = set(data.get("suspects", [])), set(data.get("crashed", []))
        if len(inflight) == 1:
            crashed.update(inflight)
            suspects.difference_update(inflight)
            blamed.extend(inflight)
        else:
            suspects.update(inflight)
        _write(path, {"inflight": [], "suspects": sorted(suspects), "crashed": sorted(crashed)})
    return blamed
