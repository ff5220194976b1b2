"""The runner: checks everything before work, then source step -> stage groups -> pack.

The only package that imports ray (in ``executor.py``). Executors: ``ray`` (embedded local Ray
or ``--ray-address``; one actor per worker, stages set up once per actor, steps pipelined by
shard) and ``local`` (one process, step after step, for debugging).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pipeline import plan as plan_mod
from pipeline.config import RunConfig
from pipeline.execute import SOURCE, RunContext, run_source_shard
from pipeline.group import GroupWorker
from pipeline.lock import OutputLock
from pipeline.manifest import clean_temp_files, write_json
from pipeline.pack import pack_shard, write_index
from pipeline.progress import Progress
from pipeline.runner.executor import Executor, Step
from pipeline.schedule import MissingWeightsError, groups_of, make_context, prepare  # noqa: F401 (re-export)
from pipeline.sources import get_source

class SourceWorker:
    """Runs the source step for shards (reads the plan once)."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.plan = plan_mod.load(ctx.out)
        self.source = get_source(ctx.source_name)(ctx.input)

    def run_shard(self, shard: str) -> dict:
        return run_source_shard(self.ctx, self.source, self.plan.rows(shard), shard)


class PackWorker:
    def __init__(self, ctx: RunContext, names: list[str]):
        self.ctx, self.names = ctx, names

    def run_shard(self, shard: str) -> dict:
        entry = pack_shard(self.ctx, self.names, shard)
        return {"stage": "pack", "shard": shard, "n": entry["samples"], "status": {}, "index": entry}


class DiskFullError(OSError):
    """The output disk filled up; nothing half-written was marked done."""


def run(cfg: RunConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the configured pipeline; returns the summary (also written to OUT/run.json)."""
    try:
        return _run(cfg, quiet)
    except OSError as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc):
            raise DiskFullError(errno.ENOSPC, f"disk full while writing to {cfg.out}; nothing half-written was "
                                f"marked done: free space and rerun the same command to finish") from exc
        raise


def _run(cfg: RunConfig, quiet: bool) -> dict[str, Any]:
    source, names, instances = prepare(cfg)
    out = Path(cfg.out)
    started = time.time()
    with OutputLock(out):
        clean_temp_files(out)
        plan = plan_mod.load_or_create(out, source, cfg.source, cfg.input, cfg.shard_size)
        cfg.shard_size = plan.info["shard_size"]
        ctx = make_context(cfg, plan, names, instances)
        _write_config(out, cfg, names, instances)
        shards = plan.shards
        progress = Progress(quiet=quiet, total_samples=len(plan))
        index: dict[str, dict] = {}
        steps = [Step(SourceWorker, (ctx,), 0.0, progress.step(SOURCE, len(shards)))]
        for group in groups_of(ctx, names, cfg.fuse):
            gpus = max(ctx.stage_runs[n].gpus for n in group)
            steps.append(Step(GroupWorker, (ctx, group), gpus, progress.step("+".join(group), len(shards))))
        steps.append(Step(PackWorker, (ctx, names), 0.0, progress.step("pack", len(shards)),
                          collect=lambda r: index.__setitem__(r["shard"], r["index"])))
        with Executor(cfg) as ex:
            ex.run(steps, shards)
        write_index(out, index)
        summary = summarize(out, [SOURCE, *names], shards)
        summary.update(seconds=round(time.time() - started, 2), samples=len(plan),
                       packed=sum(e["samples"] for e in index.values()),
                       skipped_files=plan.info.get("skipped_files", {}))
        write_json({"config": cfg.to_dict(), "stages": names, "summary": summary, "started": started,
                    "provenance": {n: dataclasses.asdict(s.provenance()) for n, s in instances.items()},
                    "versions": _versions()}, out / "run.json")
        progress.summary(summary)
    return summary


def summarize(out: Path, names: list[str], shards: list[str]) -> dict[str, Any]:
    per_stage = {}
    for name in names:
        status, reasons = Counter(), Counter()
        for shard in shards:
            path = out / "stats" / name / f"{shard}.json"
            if path.exists():
                stats = json.loads(path.read_text())
                status.update(stats["status"])
                reasons.update(stats["reasons"])
        per_stage[name] = {"status": dict(status), "reasons": dict(reasons)}
    return {"stages": per_stage}


def _write_config(out: Path, cfg: RunConfig, names: list[str], instances: dict) -> None:
    data = cfg.to_dict()
    data["stages"] = names
    for name in names:
        data[name] = instances[name].config()
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=True))


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("faceweave", "torch", "mediapipe", "numpy", "pyarrow", "ray", "facexlib", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions
