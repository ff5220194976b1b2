"""Live progress: per step, samples done / total, img/s over the last interval, errors, ETA.

Workers report after every chunk (``report``): in-process to the driver's listener, and into a
tiny file under ``OUT/.progress/`` that the driver polls while Ray workers run. The driver
prints a line every ``every_s`` seconds (stderr; plain text off a terminal) and, at the end, a
summary table (stdout) with the wall-clock throughput and each stage's compute throughput.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from pipeline import layout

_listener: Callable[[str, str, int, int], None] | None = None
EVERY_S_TTY, EVERY_S_PIPE = 2.0, 10.0


def progress_dir(out: Path) -> Path:
    return layout.progress(out)


def report(out: Path, step: str, shard: str, done: int, errors: int) -> None:
    """Worker side: ``done`` samples of ``shard`` finished in ``step`` so far (``errors`` of them)."""
    if _listener is not None:  # the driver's own process (local executor)
        _listener(step, shard, done, errors)
        return
    path = progress_dir(out) / f"{step}.{shard}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps([done, errors]))
        os.replace(tmp, path)
    except OSError:
        pass  # progress is best effort


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _Step:
    def __init__(self, label: str, total_shards: int, total_samples: int):
        self.label, self.total_shards, self.total_samples = label, total_shards, total_samples
        self.shards_done = self.samples = self.errors = self.reused = 0
        self.partial: dict[str, tuple[int, int]] = {}
        self.last_t, self.last_n = time.perf_counter(), 0

    def now(self) -> tuple[int, int]:
        return (self.samples + sum(d for d, _ in self.partial.values()),
                self.errors + sum(e for _, e in self.partial.values()))


class Progress:
    """Driver side: per-step state, lines every few seconds, the summary."""

    def __init__(self, quiet: bool = False, total_samples: int = 0, out: Path | None = None):
        global _listener
        self.quiet = quiet
        self.console = Console(file=sys.stderr, highlight=False)
        self.total_samples = total_samples
        self.out = out
        self.every_s = float(os.environ.get("FACEWEAVE_PROGRESS_EVERY_S") or
                             (EVERY_S_TTY if sys.stderr.isatty() else EVERY_S_PIPE))
        self.steps: dict[str, _Step] = {}
        self.started = time.perf_counter()
        if out is not None:
            _listener = self.live

    def close(self) -> None:
        global _listener
        _listener = None
        if self.out is not None:
            import shutil

            shutil.rmtree(progress_dir(self.out), ignore_errors=True)

    def step(self, label: str, total: int) -> Callable[[Any], None]:
        st = self.steps.setdefault(label, _Step(label, total, self.total_samples))

        def tick(result: Any) -> None:
            st.shards_done += 1
            reports = [r for r in result if not r.reused] if isinstance(result, list) else None
            shard = result.shard if reports is None else (result[0].shard if result else "")
            st.partial.pop(shard, None)
            if self.out is not None:
                (progress_dir(self.out) / f"{label}.{shard}.json").unlink(missing_ok=True)
            if reports is None:  # pack
                st.samples += result.index.get("samples", 0) + result.index.get("excluded", 0)
            elif not reports:
                st.reused += 1
                st.samples += max((r.n for r in result), default=0)
            else:
                st.samples += reports[0].n
                st.errors += sum(r.status.get("error", 0) for r in reports)
            self._show(st, final=st.shards_done == st.total_shards)
        return tick

    def live(self, label: str, shard: str, done: int, errors: int) -> None:
        """A worker finished a chunk (called in-process, or from ``poll``)."""
        st = self.steps.get(label)
        if st is not None:
            st.partial[shard] = (done, errors)
            self._show(st)

    def poll(self) -> None:
        """Read what Ray workers reported into OUT/.progress/ (called while waiting on them)."""
        root = progress_dir(self.out) if self.out is not None else None
        if root is None or not root.is_dir():
            return
        for path in root.glob("*.json"):
            label, _, shard = path.stem.rpartition(".")
            try:
                done, errors = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if label in self.steps:
                self.steps[label].partial[shard] = (done, errors)
        for st in self.steps.values():
            if st.partial:
                self._show(st)

    def _show(self, st: _Step, final: bool = False) -> None:
        t = time.perf_counter()
        if self.quiet or (not final and t - st.last_t < self.every_s):
            return
        n, errors = st.now()
        rate = (n - st.last_n) / (t - st.last_t) if t > st.last_t else 0.0
        st.last_t, st.last_n = t, n
        eta = (st.total_samples - n) / rate if rate > 0 else float("nan")
        reused = f", {st.reused} shard(s) already done" if st.reused else ""
        tail = "done" if final else f"ETA {_fmt_eta(eta)}"
        self.console.print(f"[bold]{st.label}[/] shard {st.shards_done}/{st.total_shards}  "
                           f"{n}/{st.total_samples} samples  {rate:.1f} img/s  errors {errors}{reused}  {tail}")

    def nothing_to_do(self, samples: int, shards: int, names: list[str], out: Any) -> None:
        """The one line a no-op rerun prints."""
        if self.quiet:
            return
        print(f"nothing to do: all {samples} samples in {shards} shard(s) of {out} are up to date for "
              f"{', '.join(names)}. To redo a stage, change its config (--set STAGE.FIELD=VALUE) or delete "
              f"{out}/done/STAGE; to recompute error rows, --retry-errors STAGE", flush=True)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        wall = summary["seconds"]
        table = Table(title=f"{summary['samples']} samples, {summary['packed']} packed, {wall} s wall "
                            f"({summary['samples'] / wall if wall else 0:.1f} img/s wall-clock, start-up included; "
                            f"{summary.get('workers', summary.get('executor', ''))})")
        for col in ("stage", "ok", "skipped", "error", "compute img/s", "top reasons"):
            table.add_column(col)
        for name, st in summary["stages"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(st["reasons"].items(), key=lambda kv: -kv[1])[:3])
            rate = f"{st['computed'] / st['seconds']:.1f}" if st.get("seconds") else "-"
            table.add_row(name, *(str(st["status"].get(s, 0)) for s in ("ok", "skipped", "error")), rate, reasons)
        Console(file=sys.stdout, highlight=False).print(table)  # a result: stdout; progress lines: stderr
        print("compute img/s: samples a stage computed in this run / seconds inside its model calls "
              "(one worker); wall-clock: all samples / the run's elapsed time", file=sys.stdout)
