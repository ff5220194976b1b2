"""The README's quickstart, exactly as written: its command through pipes, then its Python snippet.

Also what a user sees from that run: no third-party noise, no ANSI codes, the results on stdout
and the progress on stderr (Ray executor, the real lite models).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
pytestmark = pytest.mark.slow  # one real lite run on the embedded Ray (~45 s on 2 cores)


def quickstart_section() -> str:
    start = README.index("## Quickstart")
    return README[start:README.index("\n## ", start + 1)]


def quickstart_command() -> list[str]:
    (line,) = [ln.strip() for ln in quickstart_section().splitlines() if ln.strip().startswith("pipeline run ")]
    return shlex.split(line)


def quickstart_snippet() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", quickstart_section(), re.S)
    return code


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("readme")
    cmd = quickstart_command()
    assert cmd[:2] == ["pipeline", "run"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *cmd[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_the_readme_snippet_runs_on_the_quickstart_output(quickstart):
    cwd, _ = quickstart
    proc = subprocess.run([sys.executable, "-c", quickstart_snippet()], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 9 and all("'jpg'" in ln and "'lmk.npy'" in ln for ln in lines)


def test_the_run_prints_no_noise_and_no_ansi(quickstart):
    _, proc = quickstart
    both = proc.stdout + proc.stderr
    assert "\x1b[" not in both
    for noise in ("Token authentication", "TensorFlow Lite", "absl::InitializeLog", "W0000", "pid="):
        assert noise not in both, noise
    assert "done: 9 of 9 samples packed" in proc.stdout and "packed" in proc.stdout.splitlines()[0]
    assert "done:" not in proc.stderr and re.search(r"^pack\s+shard 1/1", proc.stderr, re.M)


def test_the_wids_index_is_beside_index_json(quickstart):
    cwd, _ = quickstart
    wids = pytest.importorskip("wids")
    ds = wids.ShardListDataset(str(cwd / "out" / "shards" / "wids-index.json"), cache_dir=str(cwd / "c"))
    assert len(ds) == 9 and ds[8][".lmk.npy"].shape[1] >= 2
