"""Pack: merge a shard's source row, stage manifests and payload tars into one WebDataset tar.

Per sample that is ok in every stage of the run: ``<key>.jpg`` (the frame all annotations live
in), ``<key>.json`` (identity, source info and each stage's columns and provenance) and each
stage's payload files. Members are sorted by key so a sample's files are adjacent.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline import layout
from pipeline.core import refresh
from pipeline.core.execute import SOURCE, RunContext, ShardError, decode_frame
from pipeline.core.manifest import ShardOutputs, TarWriter, marker_valid, read_manifest, read_marker
from pipeline.core.manifest import stable_hash, write_done, write_json
from pipeline.core.read import SOURCE_IMAGE
from pipeline.core.store import StoredFiles, compact
from pipeline.core.wids_index import write_wids_index
from schemas.common import COMMON
from schemas.shard import IMAGE, META, meta_section

JPEG_QUALITY = 95
PROVENANCE = ("model", "weights_sha256", "weights_random", "frame", "stage_version")


def pack_lineage(ctx: RunContext, names: list[str], shard: str) -> str:
    """Config lineage plus the recorded checksums of the manifests: any recomputed stage repacks.

    Payload checksums are left out: compaction rewrites payloads after the pack (a stage that is
    recomputed always rewrites its manifest too)."""
    inputs = {}
    for n in [SOURCE, *names]:
        marker = read_marker(ShardOutputs(ctx.out, n, shard).marker) or {}
        inputs[n] = {rel: f["sha256"] for rel, f in marker.get("files", {}).items() if rel.startswith("manifests/")}
    return stable_hash({"source": ctx.source_lineage, "stages": [ctx.stage_runs[n].lineage for n in names],
                        "jpeg_quality": JPEG_QUALITY, "frames": ctx.frame_format, "inputs": inputs})


def shard_path(out: Path, shard: str) -> Path:
    return layout.shard_tar(out, shard)


def marker_path(out: Path, shard: str) -> Path:
    return layout.pack_marker(out, shard)


def is_packed(out: Path, shard: str, lineage: str) -> bool:
    return marker_valid(out, marker_path(out, shard), lineage)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _encode_jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def pack_shard(ctx: RunContext, names: list[str], shard: str) -> dict:
    """Write ``shards/<shard>.tar`` and its marker, then compact the payloads; returns the index entry."""
    lineage = pack_lineage(ctx, names, shard)
    path = shard_path(ctx.out, shard)
    if is_packed(ctx.out, shard, lineage):
        return json.loads(marker_path(ctx.out, shard).read_text())["index"]
    missing = [n for n in [SOURCE, *names] if not ShardOutputs(ctx.out, n, shard).marker.exists()]
    if missing:
        raise UpstreamMissingError(f"shard {shard}: the outputs of {', '.join(missing)} vanished during the run "
                                   f"(deleted, or removed by `pipeline verify`); rerun to redo them")
    source_rows = read_manifest(ShardOutputs(ctx.out, SOURCE, shard).manifest).to_pylist()
    manifests = {n: {r["key"]: r for r in read_manifest(ShardOutputs(ctx.out, n, shard).manifest).to_pylist()}
                 for n in names}
    frame_stage = next((n for n in reversed(names) if ctx.stage_runs[n].frame_name), None)
    frames = {n: f"{ctx.stage_runs[n].frame_name}.{ctx.frame_format}" if n in ctx.stage_runs and
              ctx.stage_runs[n].frame_name else (SOURCE_IMAGE if n == SOURCE else None) for n in [SOURCE, *names]}
    stores = {n: StoredFiles(ctx.out, n, shard, last=frames[n]) for n in [SOURCE, *names]}
    image_of = frame_stage or SOURCE
    writer, counts, packed = TarWriter(path, md5=True), Counter(), set()
    try:
        for src in source_rows:
            key = src["key"]
            if src["status"] != "ok" or any(manifests[n][key]["status"] != "ok" for n in names):
                counts["excluded"] += 1
                continue
            writer.add(f"{key}.{IMAGE}", _image_bytes(ctx, key, frame_stage, stores))
            meta = {"key": key, "identity": src["identity"],
                    "source": {k: v for k, v in src.items() if k not in COMMON.names or k == "key"}}
            meta["source"]["meta"] = json.loads(src["meta"] or "{}")
            for n in names:
                row = manifests[n][key]
                meta[meta_section(n)] = {k: _clean(v) for k, v in row.items() if k not in COMMON.names or k in PROVENANCE}
            members = {META: json.dumps(meta, sort_keys=True).encode()}
            for n, store in stores.items():
                for suffix, data in store.members(key):
                    if frames[n] is None or suffix != frames[n]:  # frames: only the last, as <key>.jpg
                        members[suffix] = data
            for suffix in sorted(members):
                writer.add(f"{key}.{suffix}", members[suffix])
            counts["samples"] += 1
            packed.add(key)
        writer.close()
        entry = {"samples": counts["samples"], "excluded": counts["excluded"], "sha256": writer.sha256,
                 "md5": writer.md5, "bytes": path.stat().st_size}
        if ctx.compact:
            for n, store in stores.items():
                mapping = {s: s for s in _stage_files(ctx, n)}
                if n == image_of and (n == SOURCE or ctx.frame_format == "jpg"):
                    mapping[frames[n]] = IMAGE
                compact(ctx.out, n, shard, store, packed, mapping, writer)
    except BaseException:
        writer.abort()
        raise
    finally:
        for store in stores.values():
            store.close()
    write_done(ctx.out, marker_path(ctx.out, shard), lineage, [path], [writer], index=entry)
    refresh.clear(ctx.out, shard)
    return entry


class UpstreamMissingError(ShardError):
    """A stage's outputs for a shard disappeared between its step and the pack."""


def _stage_files(ctx: RunContext, name: str) -> tuple[str, ...]:
    return ctx.source_files if name == SOURCE else ctx.stage_runs[name].files


def _image_bytes(ctx: RunContext, key: str, frame_stage: str | None, stores: dict[str, StoredFiles]) -> bytes:
    """The shard image from what the steps stored: the last frame's JPEG bytes as they are (the
    pixels every annotation was computed on), or the verified input image. Never the input folder."""
    if frame_stage is None:
        data = stores[SOURCE].get(key, SOURCE_IMAGE)
        if data is None:
            raise FileNotFoundError(f"the verified input image of {key} is missing from payloads/source")
        return data
    data = stores[frame_stage].get(key, f"{ctx.stage_runs[frame_stage].frame_name}.{ctx.frame_format}")
    if data is None:
        raise FileNotFoundError(f"the {frame_stage} frame of {key} is missing from payloads/{frame_stage}")
    return data if ctx.frame_format == "jpg" else _encode_jpeg(decode_frame(data))


def write_index(out: Path, entries: dict[str, dict]) -> None:
    write_json({"shards": dict(sorted(entries.items())),
                "samples": sum(e["samples"] for e in entries.values())}, layout.shard_index(out))
    write_wids_index(out, entries)  # the same shards for wids.ShardListDataset (random access)
