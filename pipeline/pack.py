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

from pipeline import imaging
from pipeline.execute import SOURCE, RunContext, decode_png
from pipeline.manifest import ShardOutputs, TarReader, TarWriter, marker_valid, read_manifest, read_marker
from pipeline.manifest import sha256_file
from pipeline.manifest import stable_hash, write_done, write_json
from pipeline.sources import get_source
from schemas.common import COMMON
from schemas.shard import IMAGE, META, meta_section

PACK = "pack"
JPEG_QUALITY = 95
PROVENANCE = ("model", "weights_sha256", "weights_random", "frame", "stage_version")


def pack_lineage(ctx: RunContext, names: list[str], shard: str) -> str:
    """Config lineage plus the recorded checksums of the inputs: any rewritten manifest repacks."""
    inputs = {}
    for n in [SOURCE, *names]:
        marker = read_marker(ShardOutputs(ctx.out, n, shard).marker) or {}
        inputs[n] = {rel: f["sha256"] for rel, f in marker.get("files", {}).items()}
    return stable_hash({"source": ctx.source_lineage, "stages": [ctx.stage_runs[n].lineage for n in names],
                        "jpeg_quality": JPEG_QUALITY, "inputs": inputs})


def shard_path(out: Path, shard: str) -> Path:
    return out / "shards" / f"{shard}.tar"


def marker_path(out: Path, shard: str) -> Path:
    return out / "done" / PACK / f"{shard}.json"


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
    """Write ``shards/<shard>.tar`` and its marker; returns the shard's index entry."""
    lineage = pack_lineage(ctx, names, shard)
    path = shard_path(ctx.out, shard)
    if is_packed(ctx.out, shard, lineage):
        return json.loads(marker_path(ctx.out, shard).read_text())["index"]
    source_rows = read_manifest(ShardOutputs(ctx.out, SOURCE, shard).manifest).to_pylist()
    manifests = {n: {r["key"]: r for r in read_manifest(ShardOutputs(ctx.out, n, shard).manifest).to_pylist()}
                 for n in names}
    payloads = {n: TarReader(p) for n in [SOURCE, *names] if (p := ShardOutputs(ctx.out, n, shard).payload).exists()}
    members_of: dict[str, list[tuple[str, str]]] = {}  # key -> [(stage, member name)]
    for n, tar in payloads.items():
        frame_file = f"{ctx.stage_runs[n].frame_name}.png" if n in ctx.stage_runs else None
        for name in tar.names():
            k, _, suffix = name.partition(".")
            if suffix != frame_file:
                members_of.setdefault(k, []).append((n, name))
    frame_stage = next((n for n in reversed(names) if ctx.stage_runs[n].frame_name), None)
    source = get_source(ctx.source_name)(ctx.input)
    writer, counts = TarWriter(path), Counter()
    try:
        for src in source_rows:
            key = src["key"]
            if src["status"] != "ok" or any(manifests[n][key]["status"] != "ok" for n in names):
                counts["excluded"] += 1
                continue
            writer.add(f"{key}.{IMAGE}", _image_bytes(ctx, source, src, frame_stage, payloads))
            meta = {"key": key, "identity": src["identity"],
                    "source": {k: v for k, v in src.items() if k not in COMMON.names or k == "key"}}
            meta["source"]["meta"] = json.loads(src["meta"] or "{}")
            for n in names:
                row = manifests[n][key]
                meta[meta_section(n)] = {k: _clean(v) for k, v in row.items() if k not in COMMON.names or k in PROVENANCE}
            members = {META: json.dumps(meta, sort_keys=True).encode()}
            for n, name in members_of.get(key, []):
                members[name.partition(".")[2]] = payloads[n].get(name)
            for suffix in sorted(members):
                writer.add(f"{key}.{suffix}", members[suffix])
            counts["samples"] += 1
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        for tar in payloads.values():
            tar.close()
    entry = {"samples": counts["samples"], "excluded": counts["excluded"], "sha256": sha256_file(path),
             "bytes": path.stat().st_size}
    write_done(ctx.out, marker_path(ctx.out, shard), lineage, [path], index=entry)
    return entry


def _image_bytes(ctx: RunContext, source: Any, src: dict, frame_stage: str | None,
                 payloads: dict[str, TarReader]) -> bytes:
    if frame_stage is not None:
        data = payloads[frame_stage].get(f"{src['key']}.{ctx.stage_runs[frame_stage].frame_name}.png")
        return _encode_jpeg(decode_png(data))
    data = source.read(src["location"])
    if src["format"] == "JPEG" and not src["note"]:
        return data  # the original bytes: no second JPEG generation loss
    image, _, _ = imaging.decode_rgb(data, ctx.max_pixels, ctx.min_side, ctx.max_decode_mb)
    return _encode_jpeg(image)


def write_index(out: Path, entries: dict[str, dict]) -> None:
    write_json({"shards": dict(sorted(entries.items())),
                "samples": sum(e["samples"] for e in entries.values())}, out / "shards" / "index.json")
