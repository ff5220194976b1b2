"""A group of consecutive stages run on one worker, one batch at a time, frames kept in memory."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import stages as stage_registry
from pipeline import imaging
from pipeline.config import build_stage
from pipeline.execute import SOURCE, RunContext, StageRun, UpstreamStore, encode_png, process_isolated
from pipeline.execute import write_stats
from pipeline.journal import CRASHED, Journal, note_crash
from pipeline.manifest import ShardOutputs, TarReader, TarWriter, read_manifest, validate_columns, write_marker
from pipeline.manifest import write_table
from pipeline.sources import get_source
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
    """The stage's finished outputs when only some rows are redone (--retry-errors)."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    started: float = field(default_factory=time.time)


class GroupWorker:
    """Holds the group's stages (set up once) and processes shards."""

    def __init__(self, ctx: RunContext, names: list[str]):
        self.ctx = ctx
        self.runs = [ctx.stage_runs[n] for n in names]
        for r in ctx.stage_runs.values():
            stage_registry.register(r.name, r.module)
        self.stages = {r.name: build_stage(r.name, r.values) for r in self.runs}
        self._ready: set[str] = set()
        self._source_files: TarReader | None = None
        self.source = get_source(ctx.source_name)(ctx.input)

    @staticmethod
    def note_crash(ctx: RunContext, names: list[str], shard: str) -> list[str]:
        """Called by the executor when a worker died on ``shard``."""
        return note_crash(ctx.out, names, shard)

    def _setup(self, name: str) -> Stage:
        if name not in self._ready:  # lazily: a resumed run whose stage is done loads no weights
            stage = self.stages[name]
            stage.setup()
            if getattr(stage, "batch_size", None) == 0:  # 0 = choose from free accelerator memory
                stage.batch_size = auto_batch_size(getattr(stage, "device", "cpu"), stage.mem_per_sample_mb)
            self._ready.add(name)
        return self.stages[name]

    def run_shard(self, shard: str) -> list[dict]:
        todo, partial = [], set()
        for r in self.runs:
            if not ShardOutputs(self.ctx.out, r.name, shard).is_done(r.lineage):
                todo.append(r)
            elif self.ctx.retry and self._has_retry_rows(r, shard):
                todo.append(r)
                partial.add(r.name)
        if not todo:
            return []
        source_rows = read_manifest(ShardOutputs(self.ctx.out, SOURCE, shard).manifest).to_pylist()
        todo_names = {r.name for r in todo}
        # Stages outside this group (or already done) that something here needs, read from disk.
        needed = {n for r in todo for n in (*r.reads, *r.optional, r.frame_from) if n}
        stores = {
            n: UpstreamStore(self.ctx, self.ctx.stage_runs[n], shard, self.stages[n].files
                             if n in self.stages else _files_of(n))
            for n in needed if n not in todo_names
        }
        src_payload = ShardOutputs(self.ctx.out, SOURCE, shard).payload
        self._source_files = TarReader(src_payload) if src_payload.exists() else None
        pending = {}
        for r in todo:
            stage = self._setup(r.name)
            outs = ShardOutputs(self.ctx.out, r.name, shard)
            old = UpstreamStore(self.ctx, r, shard, stage.files) if r.name in partial else None
            pending[r.name] = _Pending(r, stage, outs, TarWriter(outs.payload), stage.provenance(),
                                       Journal(self.ctx.out, r.name, shard), old)
        try:
            chunk = max(getattr(p.stage, "batch_size", DEFAULT_BATCH) for p in pending.values())
            for i in range(0, len(source_rows), chunk):
                self._run_chunk(source_rows[i:i + chunk], pending, stores)
            return [self._finish(p) for p in pending.values()]
        except BaseException:
            for p in pending.values():
                p.tar.abort()
            raise
        finally:
            for s in [*stores.values(), *(p.old for p in pending.values() if p.old is not None)]:
                s.close()
            if self._source_files is not None:
                self._source_files.close()

    def _run_chunk(self, rows: list[dict], pending: dict[str, _Pending], stores: dict[str, UpstreamStore]) -> None:
        results: dict[str, dict[str, Result]] = {}  # stage -> key -> result, for this chunk only
        images: dict[str, tuple[np.ndarray | None, str]] = {}

        def lookup(stage: str, key: str, frame: bool = False) -> Result | None:
            if stage in results:
                return results[stage].get(key)
            return stores[stage].result(key, frame) if stage in stores else None

        def source_image(row: dict) -> tuple[np.ndarray | None, str]:
            if row["key"] not in images:
                try:
                    data = self.source.read(row["location"])
                except OSError as exc:
                    images[row["key"]] = (None, f"unreadable: {type(exc).__name__}")
                else:
                    img, _, reason = imaging.decode_rgb(data, self.ctx.max_pixels, self.ctx.min_side,
                                                            self.ctx.max_decode_mb)
                    images[row["key"]] = (img, f"decode_failed: {reason}" if img is None else "")
            return images[row["key"]]

        if self.ctx.decode_device != "cpu":
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
                                      upstream=upstream, meta={**row, "files": self._extra_files(key)}))
            for batch in self._batches(p, samples, out):
                t0 = time.perf_counter()
                p.journal.begin([s.key for s in batch])
                batch_results = process_isolated(p.stage, batch)
                p.journal.end()
                dt = time.perf_counter() - t0
                p.seconds += dt
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
        """In a retry: redo this stage's error rows, and rows skipped for an upstream that recovered."""
        if old is None:
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
        """Batch-decode the chunk's clean JPEGs on the GPU; anything it cannot do falls to PIL."""
        if not any(p.run.frame_from is None and p.stage.needs_image for p in pending.values()):
            return
        todo = [r for r in rows if r["status"] == OK and r["format"] == "JPEG" and not r["note"]]
        if not todo:
            return
        try:
            datas = [self.source.read(r["location"]) for r in todo]
        except OSError:
            return
        for row, image in zip(todo, imaging.decode_jpeg_batch(datas, self.ctx.decode_device)):
            if image is not None:
                images[row["key"]] = (image, "")

    def _extra_files(self, key: str) -> dict[str, bytes]:
        """Files the source carried for this sample (e.g. a ground-truth label map)."""
        if self._source_files is None:
            return {}
        return {suffix: self._source_files.get(f"{key}.{suffix}") for suffix in self.source.files
                if f"{key}.{suffix}" in self._source_files.index}

    def _record(self, p: _Pending, key: str, res: Result, frame: str) -> None:
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
                p.tar.add(f"{key}.{p.run.frame_name}.png", encode_png(res.frame))
        row.update(key=key, status=res.status, error=res.error, duration_s=duration, stage=p.run.name,
                   stage_version=type(p.stage).version, frame=frame, model=prov.model,
                   weights_sha256=prov.weights_sha256, weights_random=prov.weights_random,
                   config_hash=p.run.lineage)
        p.rows.append(row)
        if res.status == OK:  # later stages of this group see what a stored row would give them
            res.columns = dict(row)

    def _finish(self, p: _Pending) -> dict:
        table = validate_columns(p.rows, manifest_schema(p.stage.schema))
        p.tar.close()
        write_table(table, p.outs.manifest)
        statuses = [r["status"] for r in p.rows]
        write_marker(p.outs, p.run.lineage, dict(Counter(statuses)))
        p.journal.close()
        extra = p.stage.stats([r for r in p.rows if r["status"] == OK])
        return write_stats(p.outs, statuses, [r["error"] for r in p.rows], p.seconds, extra, p.started)


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


def _files_of(name: str) -> tuple[str, ...]:
    from stages import stage_class

    return stage_class(name).files
