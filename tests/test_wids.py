"""``shards/wids-index.json`` opens in ``wids.ShardListDataset`` and reads samples by index."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from pipeline.core.runner import run
from pipeline.core.wids_index import FILE_NAME, KIND, build
from tests.test_runner import cfg_for, plugin_stages  # noqa: F401  (registers the plugin stages)

wids = pytest.importorskip("wids")


@pytest.fixture(scope="module")
def out(casia_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("wids") / "out"
    run(cfg_for(casia_tree, out), quiet=True)  # 3 shards of 4 samples, some rows errors
    return out


def test_index_lists_every_shard_with_samples(out):
    ours = json.loads((out / "shards" / "index.json").read_text())
    desc = json.loads((out / "shards" / FILE_NAME).read_text())
    assert desc["__kind__"] == KIND and desc["wids_version"] == 1
    packed = {s: e for s, e in ours["shards"].items() if e["samples"]}
    assert [s["url"] for s in desc["shardlist"]] == [f"{s}.tar" for s in sorted(packed)]  # relative
    for s in desc["shardlist"]:
        tar = out / "shards" / s["url"]
        entry = packed[tar.stem]
        assert s["nsamples"] == entry["samples"] and s["filesize"] == tar.stat().st_size == entry["bytes"]
        assert s["md5sum"] == hashlib.md5(tar.read_bytes()).hexdigest()
    assert sum(s["nsamples"] for s in desc["shardlist"]) == ours["samples"]


def test_wids_reads_samples_by_index_from_a_moved_folder(out, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(out / "shards", moved)  # urls are relative to the index: the folder travels
    ds = wids.ShardListDataset(str(moved / FILE_NAME), cache_dir=str(tmp_path / "cache"))
    ours = json.loads((moved / "index.json").read_text())
    assert len(ds) == ours["samples"]
    keys = set()
    for i in (len(ds) - 1, 0, len(ds) // 2):  # out of order: random access
        sample = ds[i]
        meta = sample[".json"]
        assert meta["key"] == sample["__key__"]
        assert sample[".jpg"].size[0] > 0  # decoded by wids' default decoder
        keys.add(sample["__key__"])
    assert len(keys) == 3


def _no_reading(path):
    raise AssertionError(f"reread {path}")


def test_pack_hashes_each_shards_md5_so_the_index_rereads_none(out, tmp_path, monkeypatch):
    entries = json.loads((out / "shards" / "index.json").read_text())["shards"]
    for shard, entry in entries.items():
        if entry["samples"]:
            assert entry["md5"] == hashlib.md5((out / "shards" / f"{shard}.tar").read_bytes()).hexdigest()
    fresh = tmp_path / "shards"
    shutil.copytree(out / "shards", fresh)
    (fresh / FILE_NAME).unlink()  # no earlier index to take md5s from: a first run's end
    monkeypatch.setattr("pipeline.core.wids_index.md5_file", _no_reading)
    assert build(fresh, entries) == json.loads((out / "shards" / FILE_NAME).read_text())


def test_entries_without_md5_reuse_the_last_index_or_read_the_shard(out, tmp_path, monkeypatch):
    """Shards packed before index entries carried their md5 (an older output folder)."""
    entries = json.loads((out / "shards" / "index.json").read_text())["shards"]
    old = {s: {k: v for k, v in e.items() if k != "md5"} for s, e in entries.items()}
    expected = json.loads((out / "shards" / FILE_NAME).read_text())
    with monkeypatch.context() as m:
        m.setattr("pipeline.core.wids_index.md5_file", _no_reading)
        assert build(out / "shards", old) == expected  # unchanged sha256: the last index's md5
    fresh = tmp_path / "shards"
    shutil.copytree(out / "shards", fresh)
    (fresh / FILE_NAME).unlink()
    assert build(fresh, old) == expected  # nothing to reuse: read from the shard itself


def test_raw_members_are_the_shard_bytes(out, tmp_path):
    ds = wids.ShardListDataset(str(out / "shards" / FILE_NAME), cache_dir=str(tmp_path / "cache"),
                               transformations=[])  # no decoding: the member bytes themselves
    desc = json.loads((out / "shards" / FILE_NAME).read_text())
    last = sum(s["nsamples"] for s in desc["shardlist"]) - 1
    sample = ds[last]
    with tarfile.open(out / "shards" / desc["shardlist"][-1]["url"]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    key = sample["__key__"]
    for suffix in (".jpg", ".json", ".mean.npy"):
        assert sample[suffix].read() == members[key + suffix], suffix
    assert np.load(io.BytesIO(members[key + ".mean.npy"])).shape == (3,)
