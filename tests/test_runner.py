"""The runner end to end with two model-free plugin stages (in-process executor, real photos)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.config import ConfigError, resolve
from pipeline.core.lock import LockedError, OutputLock
from pipeline.core.plan import PlanError
from pipeline.core.runner import run
from tests import plugin_stages

plugin_stages.register()


def cfg_for(tree: Path, out: Path, *sets: str, **flags):
    flags = {"source": "casia-webface", "input": str(tree), "out": str(out), "stages": "colour",
             "executor": "local", "shard_size": 4, **flags}
    return resolve(flags=flags, sets=list(sets))


def digest_outputs(out: Path) -> dict[str, str]:
    """sha256 of every output file except the per-run log (run.json)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name not in ("run.json",)}


def manifest_keys(out: Path, stage: str) -> list[str]:
    return [k for p in sorted((out / "manifests" / stage).glob("*.parquet"))
            for k in pq.read_table(p).column("key").to_pylist()]


@pytest.fixture(scope="module")
def first_run(casia_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = run(cfg_for(casia_tree, out), quiet=True)
    return out, summary


def test_every_key_once_in_every_manifest(first_run, casia_tree):
    out, _ = first_run
    plan_keys = pq.read_table(out / "plan" / "plan.parquet").column("key").to_pylist()
    assert len(plan_keys) == len(set(plan_keys))
    for stage in ("source", "center", "colour"):
        keys = manifest_keys(out, stage)
        assert sorted(keys) == sorted(plan_keys), stage
    assert all("." not in k for k in plan_keys)


def test_error_rows_carry_reasons(first_run):
    out, summary = first_run
    src = pq.read_table(out / "manifests" / "source").to_pylist()
    for row in src:
        assert (row["status"] == "ok") == (row["error"] == ""), row
    bad = [r for r in src if r["status"] == "error"]
    assert bad, "the odd files must produce error rows"
    colour = {r["key"]: r for r in pq.read_table(out / "manifests" / "colour").to_pylist()}
    for row in bad:
        assert colour[row["key"]]["status"] == "skipped"
        assert colour[row["key"]]["error"] == "upstream_failed: source"
    assert summary["stages"]["source"]["status"]["error"] == len(bad)


def test_shards_hold_every_ok_key(first_run):
    out, summary = first_run
    ok = {r["key"] for r in pq.read_table(out / "manifests" / "colour").to_pylist() if r["status"] == "ok"}
    shards = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert {s["__key__"] for s in samples} == ok
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["colour"]["crop_side"] == meta["center"]["crop_side"]
        assert "mean.npy" in s and s["jpg"][:2] == b"\xff\xd8"
        assert meta["center"]["model"] == "center-crop"
    index = json.loads((out / "shards" / "index.json").read_text())
    assert index["samples"] == len(ok) == summary["packed"]


def test_rerun_is_a_noop(first_run, casia_tree):
    out, _ = first_run
    before = digest_outputs(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    run(cfg_for(casia_tree, out), quiet=True)
    assert digest_outputs(out) == before
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == mtimes


def test_config_change_recomputes_only_that_stage(casia_tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out), quiet=True)
    center = {p: p.stat().st_mtime_ns for p in (out / "manifests" / "center").iterdir()}
    colour = {p: p.stat().st_mtime_ns for p in (out / "manifests" / "colour").iterdir()}
    run(cfg_for(casia_tree, out, "colour.min_mean=300"), quiet=True)
    assert {p: p.stat().st_mtime_ns for p in (out / "manifests" / "center").iterdir()} == center
    assert all(p.stat().st_mtime_ns != t for p, t in colour.items() if p.suffix == ".parquet")
    rows = pq.read_table(out / "manifests" / "colour").to_pylist()
    assert {r["error"] for r in rows if r["status"] == "error"} == {"too_dark"}
    assert json.loads((out / "shards" / "index.json").read_text())["samples"] == 0


def test_deleted_stage_output_is_recomputed(casia_tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out), quiet=True)
    before = digest_outputs(out)
    before_rows = pq.read_table(out / "manifests" / "colour" / "00000.parquet").drop(["duration_s"])
    (out / "manifests" / "colour" / "00000.parquet").unlink()
    (out / "done" / "colour" / "00000.json").unlink()
    run(cfg_for(casia_tree, out), quiet=True)
    after = digest_outputs(out)
    changed = {k for k in before if before[k] != after.get(k)}
    # Only files holding timings may differ; the rows apart from duration_s are equal.
    assert changed <= {"stats/colour/00000.json", "manifests/colour/00000.parquet", "done/colour/00000.json",
                       "done/pack/00000.json"}  # the shard is repacked from the new manifest: same bytes
    assert not any(k.startswith(("shards/", "payloads/")) for k in changed)
    rows = pq.read_table(out / "manifests" / "colour" / "00000.parquet").drop(["duration_s"])
    assert rows.equals(before_rows)


def test_shard_size_change_is_refused(first_run, casia_tree):
    out, _ = first_run
    with pytest.raises(PlanError, match="shard size"):
        run(cfg_for(casia_tree, out, shard_size=7), quiet=True)


def test_exception_in_one_sample_is_isolated(casia_tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(casia_tree, out, "center.fail_key=0000002_002"), quiet=True)
    rows = {r["key"]: r for r in pq.read_table(out / "manifests" / "center").to_pylist()}
    assert rows["0000002_002"]["status"] == "error"
    assert rows["0000002_002"]["error"].startswith("stage_exception: RuntimeError")
    assert rows["0000002_001"]["status"] == "ok" and rows["0000002_003"]["status"] == "ok"


def test_bad_requests_fail_before_work(casia_tree, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown stage"):
        run(cfg_for(casia_tree, out, stages="colour,nonsense"), quiet=True)
    with pytest.raises(ValueError, match="unknown source"):
        run(cfg_for(casia_tree, out, source="imagenet"), quiet=True)
    with pytest.raises((FileNotFoundError, ValueError)):
        run(cfg_for(tmp_path / "missing", out), quiet=True)
    with pytest.raises(ConfigError, match="no field"):
        run(cfg_for(casia_tree, out, "colour.nope=1"), quiet=True)
    with pytest.raises(ConfigError, match="must be float"):
        run(cfg_for(casia_tree, out, "colour.min_mean=dark"), quiet=True)
    assert not out.exists()


@pytest.mark.fault("two runs on one output folder", injection="a lock file held by a live pid, then by a dead one", behaviour="refused with a message naming pid and host; a stale lock is taken over with a warning", compared="error message, lock removed at the end")
def test_second_run_is_refused_and_stale_lock_taken_over(casia_tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": 0}
    (out / ".lock").write_text(json.dumps(holder))
    with pytest.raises(LockedError, match=f"pid {os.getppid()}"):
        run(cfg_for(casia_tree, out), quiet=True)
    holder["pid"] = 2**22 + 12345  # no such process
    (out / ".lock").write_text(json.dumps(holder))
    with pytest.warns(UserWarning, match="stale lock"):
        run(cfg_for(casia_tree, out), quiet=True)
    assert not (out / ".lock").exists()
    with OutputLock(out):
        assert (out / ".lock").exists()


def test_resolved_config_saved(first_run):
    out, _ = first_run
    text = (out / "config.yaml").read_text()
    assert "colour:" in text and "min_mean" in text and "shard_size: 4" in text
