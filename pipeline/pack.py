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

from pipeline import refresh
from pipeline.execute import SOURCE, RunContext, decode_frame, frame_member
from pipeline.manifest import ShardOutputs, TarReader, TarWriter, marker_valid, read_manifest, read_marker
from pipeline.manifest import sha256_file
from pipeline.manifest import stable_hash, write_done, write_json
from pipeline.read import SOURCE_IMAGE
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
                        "jpeg_quality": JPEG_QUALITY, "frames": ctx.frame_format, "inputs": inputs})


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
        frame_file = f"{ctx.stage_runs[n].frame_name}.{ctx.frame_format}" if n in ctx.stage_runs else SOURCE_IMAGE
        for name in tar.names():
            k, _, suffix = name.partition(".")
            if suffix != frame_file:
                members_of.setdefault(k, []).append((n, name))
    frame_stage = next((n for n in reversed(names) if ctx.stage_runs[n].frame_name), None)
    writer, counts = TarWriter(path), Counter()
    try:
        for src in source_rows:
            key = src["key"]
            if src["status"] != "ok" or any(manifests[n][key]["status"] != "ok" for n in names):
                counts["excluded"] += 1
                continue
            writer.add(f"{key}.{IMAGE}", _image_bytes(ctx, key, frame_stage, payloads))
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
    refresh.clear(ctx.out, shard)
    return entry


def _image_bytes(ctx: RunContext, key: str, frame_stage: str | None, payloads: dict[str, TarReader]) -> bytes:
    """The shard image from what the steps stored: the last frame's JPEG bytes as they are (the
    pixels every annotation was computed on), or the verified input image. Never the input folder."""
    if frame_stage is None:
        data = payloads[SOURCE].get(f"{key}.{SOURCE_IMAGE}") if SOURCE in payloads else None
        if data is None:
            raise FileNotFoundError(f"the verified input image of {key} is missing from payloads/source")
        return data
    data = payloads[frame_stage].get(frame_member(key, ctx.stage_runs[frame_stage].frame_name, ctx.frame_format))
    if data is None:
        raise FileNotFoundError(f"the {frame_stage} frame of {key} is missing from payloads/{frame_stage}")
    return data if ctx.frame_format == "jpg" else _encode_jpeg(decode_frame(data))


def write_index(out: Path, entries: dict[str, dict]) -> None:
    write_json({"shards": dict(sorted(entries.items())),
                "samples": sum(e["samples"] for e in entries.values())}, out / "shards" / "index.json")
