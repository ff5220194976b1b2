"""The runner: checks everything before work, then source step -> stage groups -> pack.

The only module that imports ray. Executors: ``ray`` (embedded local Ray or ``--ray-address``;
one actor per worker, stages set up once per actor) and ``local`` (one process, for debugging).
"""
from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

import stages as stage_registry
from pipeline import plan as plan_mod
from pipeline.config import ConfigError, RunConfig, build_stage
from pipeline.execute import SOURCE, RunContext, StageRun, run_source_shard
from pipeline.group import GroupWorker
from pipeline.lock import OutputLock
from pipeline.manifest import clean_temp_files, stable_hash, write_json
from pipeline.pack import pack_shard, write_index
from pipeline.progress import Progress
from pipeline.sources import get_source
from stages.models.registry import MissingWeights

RUNTIME_FIELDS = ("device", "batch_size", "weights_dir", "num_workers")
"""Stage fields that change speed, not results: excluded from the lineage hash."""


def resolve_stage_names(requested: Iterable[str]) -> list[str]:
    """Requested stages plus everything they read, in run order."""
    names: set[str] = set()
    todo = list(requested)
    while todo:
        name = todo.pop()
        if name not in stage_registry.ORDER:
            raise ConfigError(f"unknown stage '{name}'; known: {', '.join(stage_registry.available())}")
        if name not in names:
            names.add(name)
            todo.extend(stage_registry.stage_class(name).reads)
    return [n for n in stage_registry.ORDER if n in names]


def prepare(cfg: RunConfig) -> tuple[Any, list[str], dict[str, Any]]:
    """Everything that can fail on bad input, before any work: source, stages, weights."""
    source_cls = get_source(cfg.source)
    if cfg.executor not in ("ray", "local"):
        raise ConfigError(f"executor must be 'ray' or 'local', got '{cfg.executor}'")
    source = source_cls(cfg.input)
    names = resolve_stage_names(cfg.stages)
    unknown = set(cfg.stage_config) - set(stage_registry.ORDER)
    if unknown:
        raise ConfigError(f"config for unknown stages: {sorted(unknown)}")
    instances, missing = {}, []
    for name in names:
        values = dict(cfg.stage_config.get(name, {}))
        cls = stage_registry.stage_class(name)
        if "weights_dir" in {f.name for f in dataclasses.fields(cls)} and cfg.weights_dir:
            values.setdefault("weights_dir", cfg.weights_dir)
        stage = build_stage(name, values)
        try:
            stage.check()
        except MissingWeights as exc:
            missing.append((name, exc))
        instances[name] = stage
    if missing:
        raise MissingWeightsError(missing)
    return source, names, instances


class MissingWeightsError(FileNotFoundError):
    """Every missing weights file of the run, with what to fetch and where to put it."""

    def __init__(self, missing: list[tuple[str, MissingWeights]]):
        names = " ".join(sorted({exc.spec.name for _, exc in missing}))
        lines = [f"missing weights for {len(missing)} stage(s); nothing was run.",
                 f"  where internet exists: pipeline weights fetch {names}",
                 "  or download by hand:"]
        for stage, exc in missing:
            urls = " | ".join(exc.spec.urls) or "(no public URL)"
            lines.append(f"    [{stage}] {urls}\n        -> {exc.path}  (sha256 {exc.spec.sha256 or 'not pinned'})")
        lines.append("  or run the bundled models offline: --preset lite")
        super().__init__("\n".join(lines))


def make_context(cfg: RunConfig, plan: plan_mod.Plan, names: list[str], instances: dict) -> RunContext:
    source_lineage = stable_hash({"plan": plan.info["plan_sha256"], "max_pixels": cfg.max_pixels,
                                  "min_side": cfg.min_side, "version": 1})
    ctx = RunContext(Path(cfg.out), cfg.source, cfg.input, cfg.max_pixels, cfg.min_side, source_lineage)
    frame_from = None
    for name in names:
        stage = instances[name]
        values = stage.config()
        optional = tuple(r for r in stage.optional_reads if r in ctx.stage_runs and r not in stage.reads)
        upstream = [ctx.stage_runs[r].lineage for r in (*stage.reads, *optional)]
        lineage = stable_hash({
            "stage": name, "version": type(stage).version, "source": source_lineage, "upstream": upstream,
            "frame_from": ctx.stage_runs[frame_from].lineage if frame_from else None,
            "config": {k: v for k, v in values.items() if k not in RUNTIME_FIELDS},
        })
        device = str(values.get("device", "cpu"))
        if device == "auto":
            device = "cuda" if _gpu_available(cfg) else "cpu"
        ctx.stage_runs[name] = StageRun(name, values, lineage, frame_from, tuple(stage.reads), optional,
                                        type(stage).produces_frame,
                                        type(stage).gpus if device.startswith("cuda") else 0.0,
                                        stage_registry.MODULES[name])
        if type(stage).produces_frame:
            frame_from = name
    return ctx


def _gpu_available(cfg: RunConfig) -> bool:
    if cfg.num_gpus is not None:
        return cfg.num_gpus > 0
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def groups_of(ctx: RunContext, names: list[str]) -> list[list[str]]:
    """Consecutive stages with the same kind of resource run fused in one worker."""
    groups: list[list[str]] = []
    for name in names:
        gpu = ctx.stage_runs[name].gpus > 0
        if groups and (ctx.stage_runs[groups[-1][0]].gpus > 0) == gpu:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


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


def run(cfg: RunConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the configured pipeline; returns the summary (also written to OUT/run.json)."""
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
            for group in groups_of(ctx, names):
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
    """Maps shards over workers: in this process (``local``) or over Ray actors (``ray``)."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.ray = None

    def __enter__(self) -> "Executor":
        if self.cfg.executor == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(address=self.cfg.ray_address, num_cpus=self.cfg.num_cpus if not self.cfg.ray_address else None,
                         num_gpus=self.cfg.num_gpus if not self.cfg.ray_address else None,
                         include_dashboard=False, log_to_driver=True, logging_level="warning")
            self.ray = ray
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ray is not None and not self.cfg.ray_address:
            self.ray.shutdown()

    def map(self, worker_cls: type, args: tuple, shards: list[str], tick: Callable[[Any], None],
            gpus: float, collect: Callable[[Any], None] | None = None) -> None:
        if self.ray is None:
            worker = worker_cls(*args)
            for shard in shards:
                result = worker.run_shard(shard)
                tick(result)
                if collect:
                    collect(result)
            return
        from ray.util import ActorPool

        ray = self.ray
        resources = ray.cluster_resources()
        if gpus > 0:
            n = int(resources.get("GPU", 0) // gpus)
            if n < 1:
                raise ConfigError(f"a GPU stage asks for {gpus} GPU per worker but the cluster has "
                                  f"{resources.get('GPU', 0)} GPUs; set device=cpu or add GPUs")
        else:
            n = max(1, int(resources.get("CPU", 1)))
        n = min(n, len(shards)) or 1
        remote = ray.remote(num_cpus=1 if gpus == 0 else 0, num_gpus=gpus)(worker_cls)
        actors = [remote.remote(*args) for _ in range(n)]
        pool = ActorPool(actors)
        try:
            for result in pool.map_unordered(lambda a, s: a.run_shard.remote(s), shards):
                tick(result)
                if collect:
                    collect(result)
        finally:
            for actor in actors:
                ray.kill(actor)
