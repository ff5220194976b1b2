"""Live progress inside a shard: lines with samples done / total, img/s, errors and an ETA appear
while the shard is still running (real CLI, piped output; plugin stages that sleep per sample)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.test_kill import REPO


def test_progress_lines_appear_before_the_shard_ends(casia_tree, tmp_path):
    env = {**os.environ, "FACEWEAVE_PLUGINS": "tests.plugin_stages", "PYTHONPATH": str(REPO),
           "FACEWEAVE_TEST_SLEEP": "0.15", "FACEWEAVE_PROGRESS_EVERY_S": "0.3"}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--source", "casia-webface", "--input", str(casia_tree),
           "--out", str(tmp_path / "out"), "--stages", "colour", "--shard-size", "100", "--executor", "local"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if "samples" in ln and "img/s" in ln]
    total = int(re.search(r"/(\d+) samples", lines[-1]).group(1))
    partial = [ln for ln in lines if (m := re.search(r"(\d+)/\d+ samples", ln)) and 0 < int(m.group(1)) < total]
    assert partial, proc.stderr[-2000:]  # the only shard was still running when these were printed
    assert all("ETA" in ln and "errors" in ln for ln in partial)
    assert "\x1b[" not in proc.stderr + proc.stdout  # piped: no colour codes
    assert "img/s wall-clock" in proc.stdout and "compute img/s" in proc.stdout
