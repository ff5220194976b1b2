"""A SIGKILLed driver leaves no half-finished output; the rerun completes it exactly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(tree: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(tree),
            "--out", str(out), "--stages", "colour", "--shard-size", "4", "-q", *extra]


def env(sleep: float = 0.0) -> dict[str, str]:
    return {**os.environ, "FACEWEAVE_PLUGINS": "tests.plugin_stages", "PYTHONPATH": str(REPO),
            "FACEWEAVE_TEST_SLEEP": str(sleep)}


def table_without_timing(path: Path):
    return pq.read_table(path).drop(["duration_s"])


def assert_same_outputs(out: Path, ref: Path) -> None:
    for sub in ("manifests", "payloads", "shards"):
        ref_files = sorted(p.relative_to(ref) for p in (ref / sub).rglob("*") if p.is_file())
        got_files = sorted(p.relative_to(out) for p in (out / sub).rglob("*") if p.is_file())
        assert got_files == ref_files, sub
        for rel in ref_files:
            if rel.suffix == ".parquet":
                got, want = table_without_timing(out / rel), table_without_timing(ref / rel)
                assert got.equals(want), rel
                keys = got.column("key").to_pylist()
                assert len(keys) == len(set(keys)), f"duplicate keys in {rel}"
            else:
                assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel


@pytest.mark.fault("SIGKILL of the driver mid-stage", injection="killpg(SIGKILL) once the first shard of the stage is done", behaviour="rerun completes the stage, packs, no temp files left", compared="manifests row by row (minus duration_s), payloads and shards byte for byte vs an uninterrupted run")
@pytest.mark.parametrize("executor", ["local", "processes", "ray"])
def test_sigkill_during_stage_then_rerun(casia_tree, tmp_path, executor):
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cli(casia_tree, ref, "--executor", "local"), env=env(), check=True, timeout=300)
    proc = subprocess.Popen(cli(casia_tree, out, "--executor", executor, "--num-cpus", "1"), env=env(sleep=0.4),
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "done" / "center").glob("*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait()
    assert not (out / "shards" / "index.json").exists()
    done = list((out / "done" / "center").glob("*.json"))
    assert 0 < len(done) < 4, "killed mid-stage"
    subprocess.run(cli(casia_tree, out, "--executor", executor, "--num-cpus", "1"), env=env(), check=True,
                   timeout=300)
    assert_same_outputs(out, ref)
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.fault("SIGKILL of the driver at random moments, several times", injection="three kills at seeded random delays (0.5-6 s) across source, stage and pack", behaviour="each rerun resumes; the last one completes", compared="manifests (minus duration_s), payloads and shards vs an uninterrupted run; no duplicate keys")
def test_repeated_random_kills(casia_tree, tmp_path):
    import random

    rng = random.Random(7)
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cli(casia_tree, ref, "--executor", "local"), env=env(), check=True, timeout=300)
    for _ in range(3):
        proc = subprocess.Popen(cli(casia_tree, out, "--executor", "local"), env=env(sleep=0.15),
                                start_new_session=True)
        time.sleep(rng.uniform(0.5, 6.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run(cli(casia_tree, out, "--executor", "local"), env=env(), check=True, timeout=300)
    assert_same_outputs(out, ref)
