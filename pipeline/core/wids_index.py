"""``shards/wids-index.json``: the shard index that ``wids.ShardListDataset`` opens for random access.

Written beside our own ``shards/index.json`` after every pack, from the same entries: one
record per shard with samples, ``url`` relative to the index file (the folder can be moved or
mounted elsewhere), ``nsamples``, ``filesize`` and ``md5sum`` (wids checks it when it opens a
shard). Pack hashes the md5 while it writes the shard (its index entry's ``md5``), so the
driver never rereads the shards at the end of a run (CASIA-WebFace: ~90 GB); for a shard packed
before entries carried it, the md5 of an unchanged sha256 comes from the last index, else the
file. Shards in which no sample was packed are left out.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.core.manifest import write_json

KIND = "wids-shard-index-v1"
FILE_NAME = layout.wids_index("").name
CHUNK = 1 << 20


def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _known_md5(path: Path) -> dict[str, str]:
    """sha256 -> md5 from an earlier index at ``path`` (empty when absent or unreadable)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {s["sha256"]: s["md5sum"] for s in old.get("shardlist", [])
            if isinstance(s, dict) and s.get("sha256") and s.get("md5sum")}


def build(shards_dir: Path, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The wids descriptor for ``entries`` (shard -> our index entry: samples, bytes, sha256)."""
    known = _known_md5(shards_dir / FILE_NAME)
    shardlist = []
    for shard, entry in sorted(entries.items()):
        if not entry["samples"]:
            continue
        tar = shards_dir / f"{shard}.tar"
        md5 = entry.get("md5") or known.get(entry["sha256"]) or md5_file(tar)
        shardlist.append({"url": tar.name, "nsamples": entry["samples"], "filesize": entry["bytes"],
                          "md5sum": md5, "sha256": entry["sha256"]})
    # No "name": two outputs of the same data get byte-identical indexes (wids hashes the path instead).
    return {"__kind__": KIND, "wids_version": 1, "shardlist": shardlist}


def write_wids_index(out: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Write ``OUT/shards/wids-index.json``; returns its path."""
    shards_dir = layout.shards(out)
    path = layout.wids_index(out)
    write_json(build(shards_dir, entries), path)
    return path
