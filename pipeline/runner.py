"""The runner: checks everything before work, then source step -> stage groups -> pack.

The only module that imports ray. Executors: ``ray`` (embedded local Ray or ``--ray-address``;
one actor per worker, stages set up once per actor) and ``local`` (one process, for debugging).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import platform
import time
import warnings
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline import plan as plan_mod
from pipeline.config import ConfigError, RunConfig
from pipeline.execute import SOURCE, RunContext, run_source_shard
from pipeline.group import GroupWorker
from pipeline.lock import OutputLock
from pipeline.manifest import clean_temp_files, write_json
from pipeline.pack import pack_shard, write_index
from pipeline.progress import Progress
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
        with Executor(cfg) as ex:
            ex.map(SourceWorker, (ctx,), shards, progress.step(SOURCE, len(shards)), gpus=0.0)
            for group in groups_of(ctx, names, cfg.fuse):
                gpus = max(ctx.stage_runs[n].gpus for n in group)
                label = "+".join(group)
                ex.map(GroupWorker, (ctx, group), shards, progress.step(label, len(shards)), gpus=gpus)
            index: dict[str, dict] = {}
            ex.map(PackWorker, (ctx, names), shards, progress.step("pack", len(shards)), gpus=0.0,
                   collect=lambda r: index.__setitem__(r["shard"], r["index"]))
        write_index(out, index)
        summary = summarize(out, [SOURCE, *names], shards)
        summary.update(seconds=round(time.time() - started, 2), samples=len(plan),
                       packed=sum(e["samples"] for e in index.values()))
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


class Executor:
    """Maps shards over workers: in this process (``local``) or over Ray actors (``ray``).

    With Ray, a worker that dies (native crash, OOM killer, kill) is replaced and its shard
    retried; the worker class's ``note_crash`` narrows the culprit down so that a sample that
    crashes the process costs one error row, not the run.
    """

    max_attempts = 8
    """Deaths tolerated per shard: a crashing sample needs two (its batch, then itself)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.ray = None

    def __enter__(self) -> "Executor":
        if self.cfg.executor == "ray":
            import ray

            if not ray.is_initialized():
                local = not self.cfg.ray_address
                ray.init(address=self.cfg.ray_address, num_cpus=self.cfg.num_cpus if local else None,
                         num_gpus=self.cfg.num_gpus if local else None,
                         include_dashboard=False, log_to_driver=True, logging_level="warning")
            self.ray = ray
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ray is not None and not self.cfg.ray_address:
            self.ray.shutdown()

    def map(self, worker_cls: type, args: tuple, shards: list[str], tick: Callable[[Any], None],
            gpus: float, collect: Callable[[Any], None] | None = None) -> None:
        def done(result: Any) -> None:
            tick(result)
            if collect:
                collect(result)

        if self.ray is None:
            worker = worker_cls(*args)
            for shard in shards:
                done(worker.run_shard(shard))
            return
        self._map_ray(worker_cls, args, shards, gpus, done)

    def _workers(self, gpus: float, n_shards: int) -> int:
        resources = self.ray.cluster_resources()
        if gpus > 0:
            n = int(resources.get("GPU", 0) // gpus)
            if n < 1:
                raise ConfigError(f"a GPU stage asks for {gpus} GPU per worker but the cluster has "
                                  f"{resources.get('GPU', 0)} GPUs; set device=cpu or add GPUs")
        else:
            n = max(1, int(resources.get("CPU", 1)))
        return max(1, min(n, n_shards))

    def _map_ray(self, worker_cls: type, args: tuple, shards: list[str], gpus: float,
                 done: Callable[[Any], None]) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

        ray = self.ray
        remote = ray.remote(num_cpus=1 if gpus == 0 else 0, num_gpus=gpus, max_restarts=0)(worker_cls)
        idle = [remote.remote(*args) for _ in range(self._workers(gpus, len(shards)))]
        queue, running, deaths = deque(shards), {}, Counter()
        try:
            while queue or running:
                while queue and idle:
                    actor, shard = idle.pop(), queue.popleft()
                    running[actor.run_shard.remote(shard)] = (actor, shard)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                actor, shard = running.pop(ref)
                try:
                    result = ray.get(ref)
                except (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError) as exc:
                    deaths[shard] += 1
                    if deaths[shard] >= self.max_attempts:
                        raise RuntimeError(f"shard {shard}: the worker died {deaths[shard]} times; giving up "
                                           f"(last: {type(exc).__name__}). Rerun to retry.") from None
                    blamed = worker_cls.note_crash(*args, shard) if hasattr(worker_cls, "note_crash") else []
                    warnings.warn(f"a worker died on shard {shard} ({type(exc).__name__}); retrying"
                                  + (f", isolating {blamed}" if blamed else ""), stacklevel=2)
                    ray.kill(actor)
                    idle.append(remote.remote(*args))
                    queue.appendleft(shard)
                    continue
                idle.append(actor)
                done(result)
        finally:
            for actor in idle + [a for a, _ in running.values()]:
                ray.kill(actor)
