"""Per-shard work shared by every executor: run context, frames, upstream reads, isolation.

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

from pipeline.core import imaging
from pipeline.core.manifest import ShardOutputs, read_manifest, write_json
from pipeline.core.read import SOURCE
from stages.base import OK, Result, Sample, Stage


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
    files: tuple[str, ...] = ()
    """The per-sample file suffixes the stage declares."""


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
    frame_format: str = "jpg"
    """How frames are stored between steps: jpg (compact, the shard image) or png (lossless)."""
    lock_token: str | None = None
    """The output lock's token: workers stop writing when the lock no longer names it."""
    source_files: tuple[str, ...] = ()
    """Per-sample files the source carries along (e.g. ground-truth label maps)."""
    compact: bool = True
    """After packing, drop from payloads/ what the shard holds byte for byte."""
    store_source_image: bool = False
    """Keep the verified input image in the source payload (runs where no stage makes a frame)."""
    max_decode_mb: int = imaging.DEFAULT_MAX_DECODE_MB
    """Decode-memory guard (see ``imaging.decode_mb``)."""


FRAME_FORMATS = ("jpg", "png")
FRAME_JPEG_QUALITY = 95


def encode_frame(image: np.ndarray, fmt: str) -> bytes:
    """A frame's stored bytes: JPEG (compact; these exact bytes become the shard image) or PNG
    (lossless, for byte-identical re-runs of later stages from a stored frame)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, FRAME_JPEG_QUALITY] if fmt == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, buf = cv2.imencode(f".{fmt}", bgr, params)
    if not ok:
        raise RuntimeError(f"{fmt} encoding failed")
    return buf.tobytes()


def decode_frame(data: bytes) -> np.ndarray:
    """The pixels every downstream stage sees, fused or not: always decoded from the stored bytes."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def frame_member(key: str, frame_name: str, fmt: str) -> str:
    return f"{key}.{frame_name}.{fmt}"


def reason_code(error: str) -> str:
    return error.split(":", 1)[0].strip() if error else ""


@dataclass
class ShardReport:
    """What a step did for one stage of one shard (the run summary is built from these)."""

    stage: str
    shard: str
    n: int = 0
    status: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    """Seconds inside the stage's model calls (its compute time)."""
    cpu_seconds: float = 0.0
    """CPU seconds of the worker process inside those calls (all its threads; not inflated when
    more processes than cores share the machine, unlike ``seconds``)."""
    reused: bool = False
    """Done by an earlier run: nothing was computed now."""
    computed: int | None = None
    """Rows computed now (None: all ``n``; fewer in a partial redo, --retry-errors or --refresh)."""

    @property
    def n_computed(self) -> int:
        return 0 if self.reused else self.n if self.computed is None else self.computed

    @classmethod
    def from_stats(cls, stats: dict, reused: bool = False) -> "ShardReport":
        return cls(stats["stage"], stats["shard"], stats["n"], dict(stats["status"]), dict(stats["reasons"]),
                   float(stats.get("seconds") or 0.0), float(stats.get("cpu_seconds") or 0.0), reused)

    @classmethod
    def load(cls, outs: ShardOutputs, counts: dict[str, int] | None = None) -> "ShardReport":
        """The report of a shard done by an earlier run (its stats file, else the marker's counts)."""
        try:
            return cls.from_stats(json.loads(outs.stats.read_text()), reused=True)
        except (OSError, ValueError, KeyError):
            counts = counts or {}
            return cls(outs.stage, outs.shard, sum(counts.values()), dict(counts), reused=True)


def write_stats(outs: ShardOutputs, statuses: list[str], errors: list[str], seconds: float,
                extra: dict | None = None, started: float | None = None, cpu_seconds: float = 0.0) -> ShardReport:
    stats = {
        "stage": outs.stage,
        "shard": outs.shard,
        "n": len(statuses),
        "status": dict(sorted(Counter(statuses).items())),
        "reasons": dict(sorted(Counter(reason_code(e) for e in errors if e).items())),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),
        "img_per_s": round(len(statuses) / seconds, 2) if seconds > 0 else None,
        # wall-clock span of the shard's work in this step (shows how steps overlap)
        "started": round(started, 3) if started is not None else None,
        "finished": round(time.time(), 3),
    }
    if extra:
        stats["extra"] = extra
    write_json(stats, outs.stats)
    return ShardReport.from_stats(stats)


class ShardError(RuntimeError):
    """This shard cannot go on in this run (an upstream output vanished or is unreadable); the
    other shards finish, and the next run redoes what is missing."""


class UpstreamStore:
    """Read access to a finished stage's results for one shard (manifest rows, files, frames)."""

    def __init__(self, ctx: RunContext, run: StageRun, shard: str, files: tuple[str, ...]):
        from pipeline.core.store import StoredFiles

        outs = ShardOutputs(ctx.out, run.name, shard)
        try:
            table = read_manifest(outs.manifest)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            outs.marker.unlink(missing_ok=True)  # so the next run redoes that stage for this shard
            raise ShardError(f"shard {shard}: the {run.name} manifest is missing or unreadable "
                             f"({type(exc).__name__}); rerun to redo it") from None
        self.rows = {row["key"]: row for row in table.to_pylist()}
        self.files = files
        self.frame_suffix = f"{run.frame_name}.{ctx.frame_format}" if run.frame_name else None
        self.store = StoredFiles(ctx.out, run.name, shard, last=self.frame_suffix or (
            "image.jpg" if run.name == SOURCE else None))

    def members(self, key: str) -> list[tuple[str, bytes]]:
        """The stored files of ``key`` as (suffix, bytes), in the order they were written."""
        return self.store.members(key)

    def result(self, key: str, frame: bool = True) -> Result | None:
        """The stored result of ``key``; ``frame=False`` skips decoding the frame."""
        row = self.rows.get(key)
        if row is None:
            return None
        res = Result(status=row["status"], error=row["error"], columns=row)
        if res.status == OK:
            res.files = {s: d for s in self.files if (d := self.store.get(key, s)) is not None}
            if self.frame_suffix and frame:
                data = self.store.get(key, self.frame_suffix)
                res.frame = decode_frame(data) if data is not None else None
        return res

    def close(self) -> None:
        self.store.close()


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
