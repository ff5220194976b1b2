"""Fault matrix, part 3: a dead driver's workers, outputs vanishing mid-run, a corrupt manifest
(real photos, the model-free plugin stages)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.runner import PackWorker, run
from tests import plugin_stages
from tests.test_kill import cli, env
from tests.test_runner import cfg_for

plugin_stages.register()


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.fault("driver killed, Ray workers still alive", injection="killpg(SIGKILL) of the driver while Ray workers are mid-shard", behaviour="workers notice within 0.2 s that the lock no longer names a live run and exit; none renames a file into place", compared="every file under OUT (size, mtime) 1 s after the kill vs 5 s after")
def test_workers_stop_writing_when_the_driver_is_gone(casia_tree, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(cli(casia_tree, out, "--executor", "ray", "--num-cpus", "2"), env=env(sleep=0.3),
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "done" / "center").glob("*.json")):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)
    before = snapshot(out)
    time.sleep(4.0)
    assert snapshot(out) == before


@pytest.mark.fault("an upstream output vanishes before pack", injection="the colour done marker of one shard is removed (as a concurrent `pipeline verify` would) just before that shard is packed", behaviour="that shard is reported in one line and left unpacked, every other shard finishes; the rerun redoes the stage for that shard and packs it", compared="packed shards and samples after each run")
def test_pack_of_a_shard_with_missing_outputs_fails_alone(casia_tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    original = PackWorker.run_shard

    def vanishing(self, shard):
        if shard == "00001":
            (out / "done" / "colour" / f"{shard}.json").unlink()
        return original(self, shard)

    monkeypatch.setattr(PackWorker, "run_shard", vanishing)
    with pytest.warns(UserWarning, match="shard 00001: the outputs of colour vanished"):
        summary = run(cfg_for(casia_tree, out), quiet=True)
    assert list(summary["failed_shards"]) == ["00001"]
    shards = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert "00001.tar" not in shards and len(shards) >= 2
    monkeypatch.setattr(PackWorker, "run_shard", original)
    again = run(cfg_for(casia_tree, out), quiet=True)
    assert not again["failed_shards"] and again["stages"]["colour"]["computed"] == 4
    assert (out / "shards" / "00001.tar").exists()


@pytest.mark.fault("corrupt manifest, plain rerun", injection="one byte flipped in the middle of a finished manifest (size unchanged)", behaviour="the plain rerun notices (manifests are hashed on every run) and redoes that stage-shard (dependants keep their rows: their lineage names the config, not the bytes) and its pack", compared="the manifest reads again; only that stage-shard was recomputed")
def test_a_corrupt_manifest_is_redone_by_a_plain_rerun(casia_tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out), quiet=True)
    path = out / "manifests" / "center" / "00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    summary = run(cfg_for(casia_tree, out), quiet=True)
    assert summary["stages"]["center"]["computed"] == 4 and summary["stages"]["colour"]["computed"] == 0
    assert pq.read_table(path).num_rows == 4
