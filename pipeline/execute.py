"""Per-shard work, shared by every executor: the source step and a group of stages.

A group is a run of consecutive stages executed on one worker, batch by batch: the image is
decoded once and each stage's frame (detect's aligned crop, restore's output) is handed to the
next stage in memory. Each stage still writes its own manifest, payload tar and done marker, so
the output is the same whether stages run fused or one group each.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline import imaging
from pipeline.manifest import ShardOutputs, TarReader, TarWriter, read_manifest, validate_columns
from pipeline.manifest import write_json, write_marker, write_table
from schemas import source as source_schema
from schemas.common import manifest_schema
from stages.base import ERROR, OK, Result, Sample, Stage
from stages.jpeg import jpeg_quality_from_bytes

SOURCE = "source"


@dataclass(frozen=True)
class StageRun:
    """A stage as scheduled in a run (picklable: config values, not the instance)."""

    name: str
    values: dict[str, Any]
    lineage: str
    frame_from: str | None = None
    """The stage whose frame this one sees (None: the decoded source image)."""
    reads: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    """Optional upstream stages present in this run (used if ok, never blocking)."""
    frame_name: str | None = None
    """Set when this stage produces a frame (``aligned`` / ``restored``)."""
    gpus: float = 0.0
    module: str = ""
    """Module defining the stage, so workers in other processes find registered plugins."""


@dataclass
class RunContext:
    """What a worker needs to do shard work (picklable)."""

    out: Path
    source_name: str
    input: str | None
    max_pixels: int
    min_side: int
    source_lineage: str
    stage_runs: dict[str, StageRun] = field(default_factory=dict)
    retry: tuple[str, ...] = ()
    """Stages whose error rows this run recomputes (--retry-errors)."""
    decode_device: str = "cpu"
    """Where source JPEGs are decoded for stages that see the source frame."""
    max_decode_mb: int = imaging.DEFAULT_MAX_DECODE_MB
    """Decode-memory guard (see ``imaging.decode_mb``)."""


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def reason_code(error: str) -> str:
    return error.split(":", 1)[0].strip() if error else ""


def write_stats(outs: ShardOutputs, statuses: list[str], errors: list[str], seconds: float,
                extra: dict | None = None, started: float | None = None) -> dict:
    stats = {
        "stage": outs.stage,
        "shard": outs.shard,
        "n": len(statuses),
        "status": dict(sorted(Counter(statuses).items())),
        "reasons": dict(sorted(Counter(reason_code(e) for e in errors if e).items())),
        "seconds": round(seconds, 3),
        "img_per_s": round(len(statuses) / seconds, 2) if seconds > 0 else None,
        # wall-clock span of the shard's work in this step (shows how steps overlap)
        "started": round(started, 3) if started is not None else None,
        "finished": round(time.time(), 3),
    }
    if extra:
        stats["extra"] = extra
    write_json(stats, outs.stats)
    return stats


def run_source_shard(ctx: RunContext, source: Any, rows: list[dict[str, Any]], shard: str) -> dict:
    """Hash and probe every file of the shard; write the source manifest (no decode kept)."""
    outs = ShardOutputs(ctx.out, SOURCE, shard)
    if outs.is_done(ctx.source_lineage):
        return {"stage": SOURCE, "shard": shard, "skipped": True}
    start, wall_start, records = time.perf_counter(), time.time(), []
    tar = TarWriter(outs.payload) if source.files else None
    for row in rows:
        t0 = time.perf_counter()
        rec = {"key": row["key"], "identity": row["identity"], "location": row["location"],
               "meta": row["meta"], "sha256": None, "bytes": None, "width": None, "height": None,
               "format": None, "mode": None, "note": None, "jpeg_quality": None, "status": OK,
               "error": row["error"]}
        if not rec["error"]:
            try:
                data = source.read(row["location"])
            except OSError as exc:
                data, rec["error"] = None, f"unreadable: {type(exc).__name__}"
            if data is not None:
                import hashlib

                rec["sha256"], rec["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
                _, probe, reason = imaging.decode_rgb(data, ctx.max_pixels, ctx.min_side, ctx.max_decode_mb)
                if probe is not None:
                    rec.update(width=probe.width, height=probe.height, format=probe.format,
                               mode=probe.mode, note=probe.note)
                    if probe.format == "JPEG":
                        rec["jpeg_quality"] = jpeg_quality_from_bytes(data)
                rec["error"] = reason
            if tar is not None and not rec["error"]:
                try:
                    extra = source.extra_files(row["location"], json.loads(row["meta"] or "{}"))
                except (OSError, ValueError) as exc:
                    rec["error"] = f"extra_files_failed: {type(exc).__name__}: {exc}"[:300]
                else:
                    for suffix, blob in sorted(extra.items()):
                        tar.add(f"{row['key']}.{suffix}", blob)
        rec["status"] = ERROR if rec["error"] else OK
        rec.update(duration_s=time.perf_counter() - t0, stage=SOURCE, stage_version="1", frame=None,
                   model=None, weights_sha256=None, weights_random=None, config_hash=ctx.source_lineage)
        records.append(rec)
    table = validate_columns(records, manifest_schema(source_schema.SCHEMA))
    if tar is not None:
        tar.close()
    write_table(table, outs.manifest)
    counts = dict(Counter(r["status"] for r in records))
    write_marker(outs, ctx.source_lineage, counts)
    return write_stats(outs, [r["status"] for r in records], [r["error"] for r in records],
                       time.perf_counter() - start, started=wall_start)


class UpstreamStore:
    """Read access to a finished stage's results for one shard (manifest rows, files, frames)."""

    def __init__(self, ctx: RunContext, run: StageRun, shard: str, files: tuple[str, ...]):
        outs = ShardOutputs(ctx.out, run.name, shard)
        table = read_manifest(outs.manifest)
        self.rows = {row["key"]: row for row in table.to_pylist()}
        self.files, self.frame_name = files, run.frame_name
        self.tar = TarReader(outs.payload) if outs.payload.exists() else None
        self._members: dict[str, list[str]] = {}
        for name in self.tar.names() if self.tar is not None else ():
            self._members.setdefault(name.partition(".")[0], []).append(name)

    def members(self, key: str) -> list[tuple[str, bytes]]:
        """The stored payload members of ``key`` as (suffix, bytes), in their stored order."""
        return [(n.partition(".")[2], self.tar.get(n)) for n in self._members.get(key, [])]

    def result(self, key: str, frame: bool = True) -> Result | None:
        """The stored result of ``key``; ``frame=False`` skips decoding the frame PNG."""
        row = self.rows.get(key)
        if row is None:
            return None
        res = Result(status=row["status"], error=row["error"], columns=row)
        if res.status == OK and self.tar is not None:
            res.files = {s: d for s in self.files if (d := self.tar.get(f"{key}.{s}")) is not None}
            if self.frame_name and frame:
                data = self.tar.get(f"{key}.{self.frame_name}.png")
                res.frame = decode_png(data) if data is not None else None
        return res

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, without importing torch here."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()[:300]


def _free_accelerator_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def process_isolated(stage: Stage, samples: list[Sample]) -> list[Result]:
    """Run a batch, degrading instead of failing.

    Out of memory: halve the batch and retry both halves, and keep the smaller batch size for the
    rest of the run (one sample that still does not fit becomes an ``out_of_memory`` row). Any
    other exception: run the samples one by one so one bad sample costs one row.
    """
    try:
        results = stage.process(samples)
    except Exception as exc:  # noqa: BLE001 - a model failure on data becomes error rows
        if is_out_of_memory(exc):
            _free_accelerator_cache()
            if len(samples) == 1:
                return [Result.fail(f"out_of_memory: {type(exc).__name__}")]
            half = (len(samples) + 1) // 2
            if getattr(stage, "batch_size", 0) > half:
                stage.batch_size = half  # later batches start small enough
            return process_isolated(stage, samples[:half]) + process_isolated(stage, samples[half:])
        if len(samples) == 1:
            return [Result.fail(f"stage_exception: {type(exc).__name__}: {exc}"[:500])]
        return [r for s in samples for r in process_isolated(stage, [s])]
    if len(results) != len(samples):
        raise RuntimeError(f"stage '{stage.name}' returned {len(results)} results for {len(samples)} samples")
    return results
