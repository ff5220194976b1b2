"""Every GPU figure from one command, each part in its own time budget, results written as they come.

    bash bench/device_check.sh OUT                  # on the GPU machine: install from local files, then this
    python bench/device_check.py OUT                # the check alone (venv ready)
    python bench/device_check.py OUT --cpu-smoke    # tiny sizes and models on the CPU (the test suite runs it)

Parts, in order of value (``--parts`` picks some): ``gpu_tests`` (pytest -m gpu), ``prep`` (synthetic
JPEG trees, caption models), ``e2e_250`` and ``e2e_1024`` (every default stage through the real
runner, random weights where the real file is absent, GPU busy % and peak memory), ``naive`` (the
per-image composition of bench/naive.py, for the speed-up), ``stages`` (bench/stages_gpu.py at two
batch sizes), ``dense_face`` and ``portraitbooth`` (bench/train_*.py step time and memory).

Each part runs in a forked child process under its budget (``--part`` runs one in-process); the child saves its figures to a
JSON file as soon as it has them, so a part killed at its budget keeps what it measured. After
every part the parent rewrites OUT/report.json and OUT/report.md (the docs/benchmarks.md section,
also written there unless ``--cpu-smoke`` or ``--no-docs``). A failed or slow part is recorded and
the next one starts. The parent prints a compact table (figure, value, target, met?) and exits 0
whenever it wrote a report. OUT ends up with at most 5 files: report.json, report.md, log.txt,
gpu_tests.txt, setup.txt (the last written by device_setup.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.device_parts import PARTS, Ctx, machine, versions  # noqa: E402
from bench.device_report import render, summary_rows  # noqa: E402

SECTION = "GPU check (bench/device_check.py)"


@dataclass(frozen=True)
class Budget:
    """Seconds a part may take on the GPU machine and in --cpu-smoke."""

    gpu: float
    smoke: float


# The GPU budgets sum to 405 s: with the install (device_setup.sh, ~60 s) under 8 minutes.
BUDGETS = {
    "gpu_tests": Budget(50, 25), "prep": Budget(40, 20), "e2e_250": Budget(120, 40), "e2e_1024": Budget(50, 30),
    "naive": Budget(35, 25), "stages": Budget(40, 30), "dense_face": Budget(35, 30),
    "portraitbooth": Budget(35, 30),
}
assert list(BUDGETS) == list(PARTS)


PRELOAD = ("torch", "numpy", "PIL.Image", "transformers", "pyarrow.parquet", "pipeline.config", "pipeline.core.runner",
           "stages", "stages.base", "training.sd")
"""Imported once by the parent, before it forks each part: a part then starts in milliseconds, not the
seconds of importing torch again. Nothing here touches CUDA (a forked child could not use it then)."""


def preload() -> None:
    for mod in PRELOAD:
        try:
            __import__(mod)
        except Exception:  # a part that needs it reports the error itself
            pass


def run_part(name: str, ctx: Ctx, log_path: Path, budget: float) -> dict:
    """Run one part in a forked child (its own session) under ``budget`` s; returns its record, never raises."""
    result = ctx.work / f"{name}.json"
    result.unlink(missing_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n===== {name} (budget {budget:.0f} s) =====\n")
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the part
        code = 1
        try:
            os.setsid()
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # Python-level writers too, wherever the parent's sys.stdout/err pointed (pytest's capture...)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            PARTS[name](ctx)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    status = None
    while status is None:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(wait_status)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        elif time.perf_counter() - t0 > budget:
            status = f"timeout after {budget:.0f} s"
            kill_group(pid)
        else:
            time.sleep(0.1)
    seconds = time.perf_counter() - t0
    record = json.loads(result.read_text()) if result.exists() else {}
    if status == "ok" and not record.get("figures"):
        status = "failed (no figures)"
    return {"status": status, "seconds": round(seconds, 1), "budget_s": budget, **record}


def kill_group(pid: int) -> None:
    """End the part's own process group (its pytest, Ray workers) and reap the part."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < grace:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)


def write_report(args: argparse.Namespace, report: dict) -> None:
    out = Path(args.out)
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))  # part order kept: the order of value
    tmp.replace(out / "report.json")
    body = render(report)
    (out / "report.md").write_text(f"## {SECTION}\n\n{body}\n")
    if not (args.cpu_smoke or args.no_docs):
        from bench.report import write_section

        write_section(SECTION, body, "bash bench/device_check.sh OUT")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for report.json, report.md, log.txt, gpu_tests.txt")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes and models on the CPU, seconds per part")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset, run in the fixed order")
    ap.add_argument("--total", type=float, default=None, help="seconds for all parts (default: sum of budgets)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every budget (a slow or busy machine)")
    ap.add_argument("--executor", default=None, help="ray, processes or local (default: ray where importable, else processes; processes in smoke)")
    ap.add_argument("--faces", default=None, help="folder of face JPEGs (default ../shared/faces/lfw10, else the "
                                                    "bundled sample photos)")
    ap.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md section")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.work"  # outside OUT: only the report files come back from a device run
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(out=out, work=work, smoke=args.cpu_smoke, executor=args.executor, faces=args.faces)
    if args.part:  # one part in this process (for debugging a part)
        PARTS[args.part](ctx)
        return 0
    if unknown := set(args.parts.split(",")) - set(PARTS):
        ap.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    names = [n for n in PARTS if n in args.parts.split(",")]
    budgets = {n: (BUDGETS[n].smoke if args.cpu_smoke else BUDGETS[n].gpu) * args.scale for n in names}
    deadline = time.perf_counter() + (args.total or sum(budgets.values()))
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "started": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime()), "machine": machine(), "versions": versions(), "parts": {}}
    preload()
    for name in names:
        left = deadline - time.perf_counter()
        if left < 5:
            report["parts"][name] = {"status": "skipped (no time left)", "seconds": 0, "budget_s": 0}
        else:
            report["parts"][name] = run_part(name, ctx, out / "log.txt", min(budgets[name], left))
        print(f"{name}: {report['parts'][name]['status']} in {report['parts'][name]['seconds']} s", flush=True)
        write_report(args, report)
    rows = summary_rows(report)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'value':>14}  {'target':>10}  met?")
    for figure, value, target, met in rows:
        print(f"{figure:<{width}}  {value:>14}  {target:>10}  {met}")
    print(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
