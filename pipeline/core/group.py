"""A group of consecutive stages run on one worker, one chunk at a time, frames kept in memory.

The run's first group also reads the inputs (``pipeline/core/read.py``): each file is read, hashed,
checked and decoded once, the source manifest is written here, and the decoded image goes to the
group's stages directly. A frame a stage makes is encoded once (JPEG by default); downstream
stages in the group see the decoded stored bytes, so the pixels are the same fused or not, and
the same ones the shard image holds.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import stages as stage_registry
from pipeline.core import guard, imaging, progress
from pipeline.core import plan as plan_mod
from pipeline.core import read as reader
from pipeline.core import refresh
from pipeline.config import build_stage
from pipeline.core.execute import SOURCE, RunContext, ShardReport, StageRun, UpstreamStore, decode_frame
from pipeline.core.execute import encode_frame, frame_member, process_isolated, write_stats
from pipeline.core.journal import CRASHED, Journal, note_crash
from pipeline.core.manifest import ShardOutputs, TarWriter, read_manifest, validate_columns, write_marker
from pipeline.core.manifest import write_table
from pipeline.sources import get_source
from schemas import source as source_schema
from schemas.common import manifest_schema
from stages.base import OK, SKIPPED, Provenance, Result, Sample, Stage

DEFAULT_BATCH = 16
UPSTREAM_FAILED = "upstream_failed: "


@dataclass
class _Pending:
    """Outputs of one not-yet-done stage for the shard being processed."""

    run: StageRun
    stage: Stage
    outs: ShardOutputs
    tar: TarWriter
    prov: Provenance
    journal: Journal
    old: UpstreamStore | None = None
    """The stage's finished outputs when only some rows are redone (--retry-errors, --refresh)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    started: float = field(default_factory=time.time)
    redone: int = 0
    """Rows computed now (the rest were kept from ``old``)."""


@dataclass
class _SourcePending:
    """The source manifest being written by the group that reads the inputs."""

    outs: ShardOutputs
    tar: TarWriter
    old: UpstreamStore | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    started: float = field(default_factory=time.time)
    read: int = 0
    """Files read now (the rest of the rows were kept from ``old``)."""


class GroupWorker:
    """Holds the group's stages (set up once) and processes shards."""

    def __init__(self, ctx: RunContext, names: list[str], reads_source: bool = False):
        guard.join(ctx.out, ctx.lock_token)
        self.ctx = ctx
        self.runs = [ctx.stage_runs[n] for n in names]
        for r in ctx.stage_runs.values():
            stage_registry.register(r.name, r.module)
        self.stages = {r.name: build_stage(r.name, r.values) for r in self.runs}
        self._ready: set[str] = set()
        self.reads_source = reads_source
        self.plan = plan_mod.load(ctx.out) if reads_source else None
        self.source = get_source(ctx.source_name)(ctx.input)

    @staticmethod
    def note_crash(ctx: RunContext, names: list[str], reads_source: bool, shard: str) -> list[str]:
        """Called by the executor (with the constructor's arguments) when a worker died on ``shard``."""
        return note_crash(ctx.out, names, shard)

    def _setup(self, name: str) -> Stage:
        if name not in self._ready:  # lazily: a resumed run whose stage is done loads no weights
            stage = self.stages[name]
            stage.ensure_setup()
            if getattr(stage, "batch_size", None) == 0:  # 0 = choose from free accelerator memory
                stage.batch_size = auto_batch_size(getattr(stage, "device", "cpu"), stage.mem_per_sample_mb)
            self._ready.add(name)
        return self.stages[name]

    def run_shard(self, shard: str) -> list[ShardReport]:
        redo_part = refresh.pending(self.ctx.out, shard)
        src_outs = ShardOutputs(self.ctx.out, SOURCE, shard)
        read_now = self.reads_source and not src_outs.is_done(self.ctx.source_lineage)
        todo, partial, reports = [], set(), []
        for r in self.runs:
            outs = ShardOutputs(self.ctx.out, r.name, shard)
            if not outs.is_done(r.lineage):
                todo.append(r)
                if redo_part and outs.manifest.exists():
                    partial.add(r.name)
            elif self.ctx.retry and self._has_retry_rows(r, shard):
                todo.append(r)
                partial.add(r.name)
            else:
                reports.append(ShardReport.load(outs))
        if self.reads_source and not read_now:
            reports.insert(0, ShardReport.load(src_outs))
        if not todo and not read_now:
            return reports
        source_run = StageRun(SOURCE, {}, self.ctx.source_lineage)
        src = None
        if read_now:
            old = UpstreamStore(self.ctx, source_run, shard, self.source.files + (reader.SOURCE_IMAGE,)) \
                if redo_part and src_outs.manifest.exists() else None
            src = _SourcePending(src_outs, TarWriter(src_outs.payload), old)
            rows = self.plan.rows(shard)
        else:
            rows = read_manifest(src_outs.manifest).to_pylist()
        todo_names = {r.name for r in todo}
        # Stages outside this group (or already done) that something here needs, read from disk.
        needed = {n for r in todo for n in (*r.reads, *r.optional, r.frame_from) if n}
        stores = {n: UpstreamStore(self.ctx, self.ctx.stage_runs[n], shard, self.ctx.stage_runs[n].files)
                  for n in needed if n not in todo_names}
        source_files = None
        if not read_now and self.source.files and src_outs.payload.exists():
            source_files = UpstreamStore(self.ctx, source_run, shard, self.source.files)
        pending = {}
        for r in todo:
            stage = self._setup(r.name)
            outs = ShardOutputs(self.ctx.out, r.name, shard)
            old = UpstreamStore(self.ctx, r, shard, stage.files) if r.name in partial else None
            pending[r.name] = _Pending(r, stage, outs, TarWriter(outs.payload), stage.provenance(),
                                       Journal(self.ctx.out, r.name, shard), old)
        try:
            chunk = max([getattr(p.stage, "batch_size", DEFAULT_BATCH) for p in pending.values()] or [DEFAULT_BATCH])
            label = "+".join(([SOURCE] if self.reads_source else []) + [r.name for r in self.runs])
            for i in range(0, len(rows), chunk):
                self._run_chunk(rows[i:i + chunk], pending, stores, src, source_files)
                errors = sum(1 for p in pending.values() for r in p.rows if r["status"] == "error")
                progress.report(self.ctx.out, label, shard, min(i + chunk, len(rows)), errors)
            out = [self._finish_source(src)] if src is not None else []
            return out + reports + [self._finish(p) for p in pending.values()]
        except BaseException:
            for tar in [p.tar for p in pending.values()] + ([src.tar] if src else []):
                tar.abort()
            raise
        finally:
            olds = [p.old for p in pending.values()] + [src.old if src else None, source_files]
            for s in [*stores.values(), *(o for o in olds if o is not None)]:
                s.close()

    def _read_inputs(self, rows: list[dict], src: _SourcePending, images: dict, extras: dict) -> list[dict]:
        """The source step for one chunk: read, verify, decode each file once; return its rows."""
        records = []
        for row in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            key = row["key"]
            kept = src.old.rows.get(key) if src.old is not None else None
            if kept is not None and kept["config_hash"] == self.ctx.source_lineage:
                records.append(kept)  # --refresh: an unchanged file's row stays byte for byte
                for suffix, data in src.old.members(key):
                    src.tar.add(f"{key}.{suffix}", data)
                    extras.setdefault(key, {})[suffix] = data
                continue
            item = reader.read_input(self.ctx, self.source, row)
            src.read += 1
            rec = item.record
            if rec["status"] == OK and self.source.files:
                files, err = reader.extra_files(self.source, rec)
                if err:
                    rec.update(status="error", error=err)
                extras[key] = files
                for suffix, blob in sorted(files.items()):
                    src.tar.add(f"{key}.{suffix}", blob)
            if rec["status"] == OK:
                images[key] = (item.image, "")
                if self.ctx.store_source_image:
                    src.tar.add(f"{key}.{reader.SOURCE_IMAGE}", reader.image_member(item))
            dt = time.perf_counter() - t0
            src.seconds += dt
            src.cpu_seconds += time.process_time() - c0
            rec.update(duration_s=dt, stage=SOURCE, stage_version="1", frame=None, model=None,
                       weights_sha256=None, weights_random=None, config_hash=self.ctx.source_lineage)
            records.append(rec)
        src.rows.extend(records)
        return records

    def _finish_source(self, src: _SourcePending) -> ShardReport:
        table = validate_columns(src.rows, manifest_schema(source_schema.SCHEMA))
        src.tar.close()
        if src.tar.count == 0:
            src.outs.payload.unlink(missing_ok=True)  # nothing carried: no empty tar to vouch for
        write_table(table, src.outs.manifest)
        statuses = [r["status"] for r in src.rows]
        write_marker(src.outs, self.ctx.source_lineage, dict(Counter(statuses)), src.tar)
        report = write_stats(src.outs, statuses, [r["error"] for r in src.rows], src.seconds, started=src.started,
                             cpu_seconds=src.cpu_seconds)
        if src.old is not None:
            report.computed = src.read
        return report

    def _run_chunk(self, rows: list[dict], pending: dict[str, _Pending], stores: dict[str, UpstreamStore],
                   src: _SourcePending | None, source_files: UpstreamStore | None) -> None:
        results: dict[str, dict[str, Result]] = {}  # stage -> key -> result, for this chunk only
        images: dict[str, tuple[np.ndarray | None, str]] = {}
        extras: dict[str, dict[str, bytes]] = {}
        if src is not None:
            rows = self._read_inputs(rows, src, images, extras)
        elif source_files is not None:
            extras = {r["key"]: dict(source_files.members(r["key"])) for r in rows}

        def lookup(stage: str, key: str, frame: bool = False) -> Result | None:
            if stage in results:
                return results[stage].get(key)
            return stores[stage].result(key, frame) if stage in stores else None

        def source_image(row: dict) -> tuple[np.ndarray | None, str]:
            if row["key"] not in images:  # a later run: read again, checked against the recorded sha256
                images[row["key"]] = reader.reread(self.source, row, self.ctx.max_pixels, self.ctx.min_side,
                                                      self.ctx.max_decode_mb)
            return images[row["key"]]

        if self.ctx.decode_device != "cpu" and src is None:
            self._decode_on_device(rows, pending, images)
        for run in self.runs:
            if run.name not in pending:
                continue
            p = pending[run.name]
            frame = self.ctx.stage_runs[run.frame_from].frame_name if run.frame_from else "source"
            samples, out = [], {}
            kept = set()
            for row in rows:
                key = row["key"]
                if p.old is not None and not self._redo(run, p.old.rows.get(key), lookup):
                    out[key] = p.old.result(key)
                    kept.add(key)
                    continue
                blocked = SOURCE if row["status"] != OK else ""
                upstream = {}
                for dep in (*run.reads, *([run.frame_from] if run.frame_from else [])):
                    # frames of `reads` too: identity compares detect's crop with restore's
                    res = lookup(dep, key, frame=p.stage.needs_image)
                    if res is None or res.status != OK:
                        blocked = blocked or dep
                    else:
                        upstream[dep] = res
                for dep in run.optional:
                    if dep in upstream:  # already looked up, with its frame
                        continue
                    res = lookup(dep, key)
                    if res is not None and res.status == OK:
                        upstream[dep] = res
                if blocked:
                    out[key] = Result(status=SKIPPED, error=f"{UPSTREAM_FAILED}{blocked}")
                    continue
                if not p.stage.needs_image:
                    image, err = None, ""
                elif run.frame_from:
                    image, err = upstream[run.frame_from].frame, ""
                    if image is None:
                        image, err = None, f"missing_frame: {run.frame_from}"
                else:
                    image, err = source_image(row)
                if err:
                    out[key] = Result.fail(err)
                    continue
                samples.append(Sample(key=key, identity=row["identity"], image=image, frame=frame,
                                      upstream=upstream, meta={**row, "files": extras.get(key, {})}))
            for batch in self._batches(p, samples, out):
                t0, c0 = time.perf_counter(), time.process_time()
                p.journal.begin([s.key for s in batch])
                batch_results = process_isolated(p.stage, batch)
                p.journal.end()
                dt = time.perf_counter() - t0
                p.seconds += dt
                p.cpu_seconds += time.process_time() - c0
                for s, res in zip(batch, batch_results):
                    res.columns.setdefault("__duration", dt / len(batch))
                    out[s.key] = res
            results[run.name] = out
            for row in rows:
                if row["key"] in kept:
                    self._keep(p, row["key"])
                else:
                    self._record(p, row["key"], out[row["key"]], frame)

    def _has_retry_rows(self, run: StageRun, shard: str) -> bool:
        table = read_manifest(ShardOutputs(self.ctx.out, run.name, shard).manifest)
        for status, error in zip(table.column("status").to_pylist(), table.column("error").to_pylist()):
            if (status == "error" and run.name in self.ctx.retry) or error.startswith(UPSTREAM_FAILED):
                return True
        return False

    def _redo(self, run: StageRun, old: dict | None, lookup) -> bool:
        """Partial redo: rows not computed under this lineage, this stage's error rows in a retry,
        and rows skipped for an upstream that recovered."""
        if old is None or old["config_hash"] != run.lineage:
            return True
        if old["status"] == "error":
            return run.name in self.ctx.retry
        if old["error"].startswith(UPSTREAM_FAILED):
            dep = old["error"][len(UPSTREAM_FAILED):]
            res = lookup(dep, old["key"]) if dep != SOURCE else None
            return res is not None and res.status == OK
        return False

    def _keep(self, p: _Pending, key: str) -> None:
        """Carry a finished row and its stored files over unchanged (byte for byte)."""
        p.rows.append(p.old.rows[key])
        for suffix, data in p.old.members(key):
            p.tar.add(f"{key}.{suffix}", data)

    @staticmethod
    def _batches(p: _Pending, samples: list[Sample], out: dict[str, Result]) -> list[list[Sample]]:
        """Batches to run: samples that crashed a worker before are error rows; suspects go alone."""
        normal, batches = [], []
        for s in samples:
            if s.key in p.journal.crashed:
                out[s.key] = Result.fail(CRASHED)
            elif s.key in p.journal.suspects:
                batches.append([s])
            else:
                normal.append(s)
        bs = getattr(p.stage, "batch_size", DEFAULT_BATCH)
        return batches + [normal[i:i + bs] for i in range(0, len(normal), bs)]

    def _decode_on_device(self, rows: list[dict], pending: dict, images: dict) -> None:
        """Batch-decode the chunk's clean JPEGs on the GPU (each read once, checked against its
        recorded sha256); anything it cannot do falls to PIL."""
        if not any(p.run.frame_from is None and p.stage.needs_image for p in pending.values()):
            return
        todo, datas = [], []
        for r in rows:
            if r["status"] == OK and r["format"] == "JPEG" and not r["note"]:
                data, reason = reader.read_bytes(self.source, r["location"])
                reason = reason or reader.verify(data, r["sha256"], r["bytes"])
                if reason:
                    images[r["key"]] = (None, reason)
                else:
                    todo.append(r)
                    datas.append(data)
        if not todo:
            return
        for row, data, image in zip(todo, datas, imaging.decode_jpeg_batch(datas, self.ctx.decode_device)):
            if image is None:
                image, _, reason = imaging.decode_rgb(data, self.ctx.max_pixels, self.ctx.min_side,
                                                      self.ctx.max_decode_mb)
                images[row["key"]] = (image, f"decode_failed: {reason}" if image is None else "")
            else:
                images[row["key"]] = (image, "")

    def _record(self, p: _Pending, key: str, res: Result, frame: str) -> None:
        p.redone += 1
        prov = p.prov
        duration = res.columns.pop("__duration", 0.0)
        row = {name: None for name in p.stage.schema.names}
        if res.status == OK:
            unknown = set(res.columns) - set(row)
            if unknown:
                raise ValueError(f"stage '{p.run.name}' returned unknown columns {sorted(unknown)}")
            row.update(res.columns)
            for suffix, data in sorted(res.files.items()):
                if suffix not in p.stage.files:
                    raise ValueError(f"stage '{p.run.name}' wrote undeclared file '{suffix}'")
                p.tar.add(f"{key}.{suffix}", data)
            if p.run.frame_name and res.frame is not None:
                data = encode_frame(res.frame, self.ctx.frame_format)
                p.tar.add(frame_member(key, p.run.frame_name, self.ctx.frame_format), data)
                res.frame = decode_frame(data)  # downstream sees what a stored frame would give it
        row.update(key=key, status=res.status, error=res.error, duration_s=duration, stage=p.run.name,
                   stage_version=type(p.stage).version, frame=frame, model=prov.model,
                   weights_sha256=prov.weights_sha256, weights_random=prov.weights_random,
                   config_hash=p.run.lineage)
        p.rows.append(row)
        if res.status == OK:  # later stages of this group see what a stored row would give them
            res.columns = dict(row)

    def _finish(self, p: _Pending) -> ShardReport:
        if p.old is not None and p.redone == 0 and len(p.rows) == len(p.old.rows) and p.outs.is_done(p.run.lineage):
            p.tar.abort()  # a partial redo that redid nothing: the finished outputs stay as they are
            p.journal.close()
            return ShardReport.load(p.outs)
        table = validate_columns(p.rows, manifest_schema(p.stage.schema))
        p.tar.close()
        write_table(table, p.outs.manifest)
        statuses = [r["status"] for r in p.rows]
        write_marker(p.outs, p.run.lineage, dict(Counter(statuses)), p.tar)
        p.journal.close()
        extra = p.stage.stats([r for r in p.rows if r["status"] == OK])
        report = write_stats(p.outs, statuses, [r["error"] for r in p.rows], p.seconds, extra, p.started, p.cpu_seconds)
        if p.old is not None:
            report.computed = p.redone
        return report


def auto_batch_size(device: str, mem_per_sample_mb: float, cap: int = 512, floor: int = 1) -> int:
    """A batch that fits in ~70% of the free memory of ``device`` (CUDA), else a CPU default.

    An estimate only: an out-of-memory error still halves the batch (execute.process_isolated).
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not str(device).startswith(("cuda", "auto")) or not torch.cuda.is_available():
        return DEFAULT_BATCH
    free, _ = torch.cuda.mem_get_info(torch.device(device if device != "auto" else "cuda"))
    return int(max(floor, min(cap, 0.7 * free / 2**20 / max(mem_per_sample_mb, 1e-3))))
