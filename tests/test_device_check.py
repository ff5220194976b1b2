"""bench/device_check.py --cpu-smoke end to end: the one GPU command cannot rot before a GPU is lent.

Real code paths throughout: the real runner on real photos, the bench scripts' own functions, the
trainers' tiny SD components; tiny sizes and the bundled (or tiny random) models on the CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import device_check
from bench.device_check import BUDGETS, SECTION
from bench.device_parts import PARTS, Ctx, junit_counts
from bench.device_report import render, summary_rows

ROOT = Path(__file__).resolve().parents[1]
# Budgets are sized for an idle 2-core machine; a busy CI box may stretch them (FACEWEAVE_SMOKE_SCALE).
SCALE = float(os.environ.get("FACEWEAVE_SMOKE_SCALE", "4"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("device") / "out"
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    limit = sum(b.smoke for b in BUDGETS.values()) * SCALE + 120
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py"), str(out), "--cpu-smoke",
                           "--scale", str(SCALE)], capture_output=True, text=True, timeout=limit,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (ROOT / "docs" / "benchmarks.md").read_text() == docs, "smoke mode must not write the docs"
    return proc, out


@pytest.mark.slow
def test_every_part_produces_a_figure(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "cpu-smoke"
    assert list(report["parts"]) == list(PARTS)
    log = (out / "log.txt").read_text()[-4000:]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", (name, part["status"], log)
        assert part["figures"], name
    parts = report["parts"]
    assert parts["gpu_tests"]["figures"]["total"] >= 1
    for size in (250, 1024):
        e2e = parts[f"e2e_{size}"]["figures"]
        assert e2e["img_s"] > 0 and e2e["ok"]["detect"] == e2e["n"] and e2e["packed"] > 0, e2e
        assert set(e2e["per_stage_img_s"]) >= {"detect", "landmarks", "identity", "caption"}
    assert parts["naive"]["figures"]["img_s"] > 0 and parts["naive"]["figures"]["speedup"] > 0
    assert parts["stages"]["figures"]["combined_img_s"] > 0
    for name in ("dense_face", "portraitbooth"):
        assert all(isinstance(row.get("s_step", row.get("s_step_id")), float)
                   for row in parts[name]["figures"]["batches"].values()), name
    # The compact table closes the output, and report.md is the docs section.
    assert "figure" in proc.stdout and "speed-up over naive" in proc.stdout
    md = (out / "report.md").read_text()
    assert md.startswith(f"## {SECTION}") and "| figure | value | target | met? |" in md
    assert len([p for p in out.iterdir() if p.is_file()]) <= 8  # what comes back from a device run


def test_report_marks_failed_and_missing_parts():
    """A failed or slow part is a row with its status; targets are judged only on figures."""
    report = {"mode": "gpu", "started": "now", "machine": "m", "versions": {}, "parts": {
        "gpu_tests": {"status": "ok", "seconds": 1, "budget_s": 9,
                      "figures": {"total": 5, "passed": 3, "failed": 1, "errors": 0, "skipped": 1}},
        "e2e_250": {"status": "timeout after 90 s", "seconds": 90, "budget_s": 90},
        "naive": {"status": "ok", "seconds": 1, "budget_s": 9, "figures": {"img_s": 2.0, "speedup": 45.0}},
    }}
    rows = {r[0]: r for r in summary_rows(report)}
    assert rows["gpu tests passed / run"][1:] == ("3/4", "all", "NO")
    assert rows["e2e 250px img/s (wall, n=?)"][1] == "timeout after 90 s"
    assert rows["e2e 250px img/s (wall, n=?)"][3] == "no figure"
    assert rows["speed-up over naive"][1:] == ("45.0", "30.0", "yes")
    assert "timeout after 90 s" in render(report)


def _sleepy(ctx):
    ctx.part = "sleepy"
    ctx.save({"measured": 1.5})
    time.sleep(60)


def _broken(ctx):
    raise RuntimeError("no GPU here")


def test_slow_part_is_cut_and_keeps_its_figures_failed_part_is_recorded(tmp_path, monkeypatch):
    """A part past its budget is killed (its figures so far kept); one that raises is a status."""
    monkeypatch.setitem(device_check.PARTS, "sleepy", _sleepy)
    monkeypatch.setitem(device_check.PARTS, "broken", _broken)
    ctx = Ctx(out=tmp_path, work=tmp_path, smoke=True)
    t0 = time.perf_counter()
    slow = device_check.run_part("sleepy", ctx, tmp_path / "log.txt", budget=3)
    assert time.perf_counter() - t0 < 30
    assert slow["status"] == "timeout after 3 s" and slow["figures"] == {"measured": 1.5}
    broken = device_check.run_part("broken", ctx, tmp_path / "log.txt", budget=30)
    assert broken["status"] == "failed (exit 1)" and "figures" not in broken
    assert "no GPU here" in (tmp_path / "log.txt").read_text()


def test_junit_counts_keep_unimportable_modules_apart(tmp_path):
    junit = tmp_path / "j.xml"
    junit.write_text(
        '<testsuites><testsuite errors="1" failures="1" skipped="1" tests="4">'
        '<testcase classname="" name="tests.test_sql"><error message="collection failure">no duckdb</error></testcase>'
        '<testcase classname="tests.test_a" name="test_fails"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skips"><skipped/></testcase>'
        '<testcase classname="tests.test_a" name="test_ok"/></testsuite></testsuites>')
    figures, failing, uncollected = junit_counts(junit)
    assert figures == {"total": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1, "modules_not_importable": 1}
    assert failing == ["tests.test_a::test_fails"] and uncollected == ["tests.test_sql"]
