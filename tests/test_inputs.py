"""Read once, verify always: input changes between runs and during a run (real photos, plugin stages)."""
from __future__ import annotations

import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.core import refresh
from pipeline.core.runner import InputChangedError, run
from pipeline.sources.base import Source
from tests.conftest import LFW, make_casia_tree
from tests.test_runner import cfg_for

pytestmark = pytest.mark.usefixtures("plugins")


@pytest.fixture(scope="module")
def plugins():
    from tests import plugin_stages

    plugin_stages.register()


def rows(out: Path, stage: str) -> dict[str, dict]:
    return {r["key"]: r for p in sorted((out / "manifests" / stage).glob("*.parquet"))
            for r in pq.read_table(p).to_pylist()}


def shard_images(out: Path) -> dict[str, bytes]:
    got = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            got[s["__key__"]] = s["jpg"]
    return got


def other_photo(exclude: Path) -> Path:
    return next(p for p in sorted(LFW.rglob("*.jpg")) if p.read_bytes() != exclude.read_bytes())


@pytest.fixture()
def tree(tmp_path):
    return make_casia_tree(tmp_path / "in", n_people=3, n_photos=3)


def test_replaced_photo_is_refused_then_refreshed(tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(tree, out), quiet=True)
    before_src, before_colour = rows(out, "source"), rows(out, "colour")
    victim = tree / "0000002" / "002.jpg"
    shutil.copyfile(other_photo(victim), victim)
    with pytest.raises(InputChangedError, match=r"1 changed \(0000002_002\).*--refresh"):
        run(cfg_for(tree, out), quiet=True)
    summary = run(cfg_for(tree, out, refresh=True), quiet=True)
    assert {n: st["computed"] for n, st in summary["stages"].items()} == {"source": 1, "center": 1, "colour": 1}
    src, colour = rows(out, "source"), rows(out, "colour")
    new_sha = hashlib.sha256(victim.read_bytes()).hexdigest()
    assert src["0000002_002"]["sha256"] == new_sha != before_src["0000002_002"]["sha256"]
    assert colour["0000002_002"]["mean_rgb"] != before_colour["0000002_002"]["mean_rgb"]
    for key in before_colour:  # nothing else was touched: rows equal byte for byte, durations too
        if key != "0000002_002":
            assert colour[key] == before_colour[key] and src[key] == before_src[key], key
    assert not list((out / "plan" / "refresh").glob("*.json"))
    # The shard holds the new photo's frame, and the annotation came from the same bytes.
    assert "0000002_002" in shard_images(out)


def test_added_and_deleted_photos(tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(tree, out), quiet=True)
    (tree / "0000001" / "001.jpg").unlink()
    shutil.copyfile(other_photo(tree / "0000002" / "001.jpg"), tree / "0000002" / "009.jpg")
    with pytest.raises(InputChangedError, match=r"1 added \(0000002_009\); 1 deleted \(0000001_001\)"):
        run(cfg_for(tree, out), quiet=True)
    run(cfg_for(tree, out, refresh=True), quiet=True)
    for stage in ("source", "center", "colour"):
        keys = rows(out, stage)
        assert "0000001_001" not in keys and "0000002_009" in keys, stage
    images = shard_images(out)
    assert "0000001_001" not in images and "0000002_009" in images
    # A touched file (same bytes, new mtime) is noted, not redone, and the rerun is a no-op.
    before = rows(out, "colour")
    os.utime(tree / "0000003" / "001.jpg", ns=(1, 1))
    assert run(cfg_for(tree, out), quiet=True)["stages"]["colour"]["computed"] == 0
    assert rows(out, "colour") == before


def test_a_shard_whose_photos_are_all_deleted_leaves_nothing_behind(tree, tmp_path):
    """--refresh removes every output of a shard whose keys are all gone: manifests, payloads,
    markers, stats, the shard tar, and a crash journal an interrupted run left."""
    from pipeline import layout

    out = tmp_path / "out"
    run(cfg_for(tree, out), quiet=True)
    plan = pq.read_table(layout.plan_table(out), columns=["key", "location", "shard"]).to_pylist()
    shard = plan[0]["shard"]
    for row in plan:
        if row["shard"] == shard:
            (tree / row["location"]).unlink()
    stale = layout.journal(out, "colour") / f"{shard}.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"inflight": [], "suspects": [], "crashed": []}')
    run(cfg_for(tree, out, refresh=True), quiet=True)
    left = [p for p in out.rglob(f"{shard}.*") if p.is_file()]
    assert not left, left
    assert rows(out, "colour") and not any(r["key"] == plan[0]["key"] for r in rows(out, "colour").values())


def test_file_gone_or_escaping_after_the_start_check_is_an_error_row(tree, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = tree / "0000001" / "001.jpg"
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(tree / "0000001" / "002.jpg", outside)
    # Plan first, then change the files as if it happened after the run's start-of-run check
    # (the comparison is switched off here so the read step itself must notice).
    run(cfg_for(tree, out, stages="center"), quiet=True)
    shutil.rmtree(out / "manifests"), shutil.rmtree(out / "done")
    first.unlink()
    (tree / "0000001" / "002.jpg").unlink()
    (tree / "0000001" / "002.jpg").symlink_to(outside)
    monkeypatch.setattr(refresh, "compare", lambda *a, **k: refresh.InputChanges())
    summary = run(cfg_for(tree, out), quiet=True)
    src = rows(out, "source")
    assert src["0000001_001"]["error"].startswith("input_missing")
    assert src["0000001_002"]["error"] == "link_escapes_input"
    assert rows(out, "colour")["0000001_001"]["error"] == "upstream_failed: source"
    assert summary["packed"] == sum(1 for r in src.values() if r["status"] == "ok")


def test_each_input_is_read_once_per_run(tree, tmp_path, monkeypatch):
    reads: Counter = Counter()
    original = Source.read

    def counting(self, location):
        data = original(self, location)
        reads[location] += len(data)
        return data

    monkeypatch.setattr(Source, "read", counting)
    out = tmp_path / "out"
    run(cfg_for(tree, out), quiet=True)
    sizes = {str(p.relative_to(tree)): p.stat().st_size for p in tree.rglob("*.jpg")}
    assert reads == Counter(sizes)  # every byte of every file, exactly once
    reads.clear()
    run(cfg_for(tree, tmp_path / "frameless", stages="brightness"), quiet=True)
    assert reads == Counter(sizes)  # a frameless pack takes the verified bytes from the source step


def test_frameless_shard_image_is_the_verified_input(tree, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(tree, out, stages="brightness"), quiet=True)
    src = rows(out, "source")
    for key, data in shard_images(out).items():
        assert hashlib.sha256(data).hexdigest() == src[key]["sha256"], key
