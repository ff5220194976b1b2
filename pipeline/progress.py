"""Terminal progress: one line per step (shards done/total, samples, img/s, errors) and a summary."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from rich.console import Console
from rich.table import Table


class Progress:
    """Prints a progress line per finished shard (stderr) and a final summary table (stdout)."""

    def __init__(self, quiet: bool = False, total_samples: int = 0):
        self.quiet = quiet
        self.console = Console(file=sys.stderr, highlight=False)
        self.total_samples = total_samples
        self.every_s = 2.0

    def step(self, label: str, total: int) -> Callable[[Any], None]:
        state = {"done": 0, "samples": 0, "errors": 0, "start": time.perf_counter(), "reused": 0, "shown": 0.0}

        def tick(result: Any) -> None:
            state["done"] += 1
            reports = [r for r in result if not r.reused] if isinstance(result, list) else None
            if reports is None:  # pack
                state["samples"] += result.index.get("samples", 0)
            elif not reports:
                state["reused"] += 1
            else:
                state["samples"] += reports[0].n
                state["errors"] += sum(r.status.get("error", 0) for r in reports)
            now = time.perf_counter()
            # A line every few seconds and at the end, not one per shard of a 500-shard run.
            if self.quiet or (state["done"] < total and now - state["shown"] < self.every_s):
                return
            state["shown"] = now
            dt = now - state["start"]
            rate = state["samples"] / dt if dt > 0 else 0.0
            reused = f", {state['reused']} already done" if state["reused"] else ""
            self.console.print(f"[bold]{label:<24}[/] shard {state['done']}/{total}  "
                               f"{state['samples']} samples  {rate:7.1f} img/s  "
                               f"errors {state['errors']}{reused}")
        return tick

    def nothing_to_do(self, samples: int, shards: int, names: list[str], out: Any) -> None:
        """The one line a no-op rerun prints (even with --quiet it is cheap to say nothing)."""
        if self.quiet:
            return
        print(f"nothing to do: all {samples} samples in {shards} shard(s) of {out} are up to date for "
              f"{', '.join(names)}. To redo a stage, change its config (--set STAGE.FIELD=VALUE) or delete "
              f"{out}/done/STAGE; to recompute error rows, --retry-errors STAGE", flush=True)

    def summary(self, summary: dict[str, Any]) -> None:
        if self.quiet:
            return
        table = Table(title=f"{summary['samples']} samples, {summary['packed']} packed, {summary['seconds']} s")
        for col in ("stage", "ok", "skipped", "error", "top reasons"):
            table.add_column(col)
        for name, st in summary["stages"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(st["reasons"].items(), key=lambda kv: -kv[1])[:3])
            table.add_row(name, *(str(st["status"].get(s, 0)) for s in ("ok", "skipped", "error")), reasons)
        Console(file=sys.stdout, highlight=False).print(table)  # a result: stdout; progress lines: stderr
