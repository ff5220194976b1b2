"""The runner: checks everything before work, then source step -> stage groups -> pack.

The only package that imports ray (in ``executor.py``). Executors: ``ray`` (embedded local Ray
or ``--ray-address``; one actor per worker, stages set up once per actor, steps pipelined by
shard), ``processes`` (``pool.py``: worker processes on this machine, the same pipelining) and
``local`` (this process, step after step, for debugging).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import platform
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from pipeline import layout
from pipeline.core import plan as plan_mod
from pipeline.core import refresh
from pipeline.config import RunConfig
from pipeline.core.execute import SOURCE, RunContext, ShardReport, StageRun
from pipeline.core.lock import OutputLock
from pipeline.core.manifest import ShardOutputs, clean_temp_files, write_json, write_text
from pipeline.core.pack import is_packed, pack_lineage, pack_shard, write_index
from pipeline.core.progress import Progress
from pipeline.core.runner.executor import Executor, Step
from pipeline.sources import get_source

RUNTIME_RUN_FIELDS = ("executor", "ray_address", "num_cpus", "num_gpus", "refresh", "decode", "fuse")
"""Run fields that change how, not what: a rerun differing only in these has nothing to do."""

class PackWorker:
    def __init__(self, ctx: RunContext, names: list[str]):
        from pipeline.core import guard

        guard.join(ctx.out, ctx.lock_token)
        self.ctx, self.names = ctx, names

    def run_shard(self, shard: str) -> "PackReport":
        return PackReport(shard, pack_shard(self.ctx, self.names, shard))


@dataclasses.dataclass
class PackReport:
    shard: str
    index: dict


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
    out = Path(cfg.out)
    compared: dict[str, Any] = {}  # the input comparison, done once per run
    quick = _up_to_date(cfg, out, compared)
    if quick is not None:  # before importing any model code: a no-op rerun takes a second
        Progress(quiet=quiet).nothing_to_do(quick["summary"]["samples"], quick["n_shards"], quick["stages"], out)
        return _nothing_done(quick["summary"])
    from pipeline.config import choose_executor
    from pipeline.core import guard

    source = get_source(cfg.source)(cfg.input)  # a wrong --input fails now, before the model imports
    if choose_executor(cfg) == "processes":
        from pipeline.core.forkserver import warm_up

        warm_up()  # the workers' imports run beside the model imports just below
    from pipeline.core.schedule import prepare

    source, names, instances = prepare(cfg, source)
    started = time.time()
    with OutputLock(out) as lock:
        guard.join(out, lock.token)
        try:
            return _locked_run(cfg, quiet, out, lock, started, source, names, instances, compared)
        finally:
            guard.leave()


def _locked_run(cfg: RunConfig, quiet: bool, out: Path, lock: OutputLock, started: float, source: Any,
                names: list[str], instances: dict, compared: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core.schedule import make_context

    clean_temp_files(out)
    plan = _plan(out, source, cfg, compared)
    cfg.shard_size = plan.info["shard_size"]
    ctx = make_context(cfg, plan, names, instances)
    ctx.lock_token = lock.token
    progress = Progress(quiet=quiet, total_samples=len(plan), out=out)
    try:
        return _run_steps(cfg, out, lock, started, source, names, instances, plan, ctx, progress)
    finally:
        progress.close()


def _run_steps(cfg: RunConfig, out: Path, lock: OutputLock, started: float, source: Any, names: list[str],
               instances: dict, plan: plan_mod.Plan, ctx: RunContext, progress: Progress) -> dict[str, Any]:
    from pipeline.core.group import GroupWorker
    from pipeline.config import choose_executor
    from pipeline.core.schedule import groups_of

    shards = plan.shards
    groups = groups_of(ctx, names, cfg.fuse)
    if _all_done(ctx, names, shards):
        progress.nothing_to_do(len(plan), len(shards), names, out)
        return _nothing_done(json.loads(layout.run_json(out).read_text())["summary"])
    config_yaml = _write_config(out, _config_data(cfg, names, instances))
    index: dict[str, dict] = {}
    reports: list[ShardReport] = []
    steps = []
    for i, group in enumerate(groups):
        gpus = max(ctx.stage_runs[n].gpus for n in group)
        label = "+".join(([SOURCE] if i == 0 else []) + group)
        steps.append(Step(GroupWorker, (ctx, group, i == 0), gpus, progress.step(label, len(shards)),
                          collect=reports.extend))
    steps.append(Step(PackWorker, (ctx, names), 0.0, progress.step("pack", len(shards)),
                      collect=lambda r: index.__setitem__(r.shard, r.index)))
    cfg.executor = choose_executor(cfg)
    with Executor(cfg) as ex:
        failed = ex.run(steps, shards, poll=progress.poll,
                        models_mb=sum(instances[n].resident_mb() for n in names))
        workers = ex.workers
    clean_temp_files(out)  # what killed workers left behind, now that every worker is done
    write_index(out, index)
    summary = summarize(reports, [SOURCE, *names])
    summary.update(seconds=round(time.time() - started, 2), samples=len(plan),
                   packed=sum(e["samples"] for e in index.values()), executor=cfg.executor, workers=workers,
                   skipped_files=plan.info.get("skipped_files", {}), failed_shards=failed)
    write_json({"config": cfg.to_dict(), "stages": names, "summary": summary, "started": started,
                "provenance": {n: dataclasses.asdict(s.provenance()) for n, s in instances.items()},
                "lineages": {SOURCE: ctx.source_lineage, **{n: ctx.stage_runs[n].lineage for n in names}},
                "frames": ctx.frame_format, "config_yaml": config_yaml, "versions": _versions()},
               layout.run_json(out))
    progress.summary(summary)
    return summary


def _nothing_done(last: dict[str, Any]) -> dict[str, Any]:
    """The last run's counts, with nothing computed by this one."""
    stages = {n: {**st, "computed": 0, "seconds": 0.0, "cpu_seconds": 0.0} for n, st in last["stages"].items()}
    return {**last, "stages": stages, "nothing_to_do": True}


def _plan(out: Path, source: Any, cfg: RunConfig, compared: dict[str, Any]) -> plan_mod.Plan:
    """The plan, checked against the input folder as it is now (``--refresh`` applies changes);
    ``compared`` is reused when it was made against this very plan."""
    existing = plan_mod.load(out)
    plan = plan_mod.load_or_create(out, source, cfg.source, cfg.input, cfg.shard_size)
    if existing is None:
        return plan
    if compared.get("plan_sha256") == plan.info["plan_sha256"]:
        changes = compared["changes"]
    else:
        changes = refresh.compare(out, plan, plan_mod.listing(source, cfg.source), source)
    if changes and not cfg.refresh:
        raise InputChangedError(f"{changes.message()}. Rerun with --refresh to recompute just those "
                                f"samples (deleted ones leave the manifests and shards), or use another --out")
    if changes or changes.touched:
        plan = refresh.apply(out, plan, changes, source)
        if changes:
            warnings.warn(f"refreshed: {changes.message().split(': ', 1)[1]}", stacklevel=2)
    return plan


class InputChangedError(ValueError):
    """The input folder no longer matches the plan and --refresh was not given."""


def _up_to_date(cfg: RunConfig, out: Path, compared: dict[str, Any]) -> dict | None:
    """run.json when the last run had this config and every output is still done and the input
    unchanged; else None. Reads markers, plan and a listing of the input: no model code. The
    comparison it made is left in ``compared`` for the run that follows."""
    if cfg.retry_errors:
        return None
    try:
        last = json.loads(layout.run_json(out).read_text())
        lineages, names = last["lineages"], last["stages"]
    except (OSError, ValueError, KeyError):
        return None
    strip = lambda d: {k: v for k, v in d.items() if k not in RUNTIME_RUN_FIELDS}  # noqa: E731
    wanted = cfg.to_dict()
    wanted["shard_size"] = wanted["shard_size"] or last["config"].get("shard_size")
    if strip(wanted) != strip(last["config"]):
        return None
    plan = plan_mod.load(out)
    if plan is None:
        return None
    try:
        source = get_source(cfg.source)(cfg.input)
        changes = refresh.compare(out, plan, plan_mod.listing(source, cfg.source), source)
        compared.update(plan_sha256=plan.info["plan_sha256"], changes=changes)
        if changes:
            return None
    except (OSError, ValueError):
        return None
    ctx = RunContext(out, cfg.source, cfg.input, cfg.max_pixels, cfg.min_side, lineages[SOURCE],
                     stage_runs={n: StageRun(n, {}, lineages[n]) for n in names},
                     frame_format=last.get("frames", "jpg"))
    if not _all_done(ctx, names, plan.shards):
        return None
    return {**last, "n_shards": len(plan.shards)}


def _all_done(ctx: RunContext, names: list[str], shards: list[str]) -> bool:
    """Every step of every shard is done under the current lineage: a rerun has nothing to do."""
    if ctx.retry or not layout.run_json(ctx.out).exists() or not layout.shard_index(ctx.out).exists():
        return False
    for shard in shards:
        if refresh.pending(ctx.out, shard) or not ShardOutputs(ctx.out, SOURCE, shard).is_done(ctx.source_lineage):
            return False
        if not all(ShardOutputs(ctx.out, n, shard).is_done(ctx.stage_runs[n].lineage) for n in names):
            return False
        if not is_packed(ctx.out, shard, pack_lineage(ctx, names, shard)):
            return False
    return True


def summarize(reports: list[ShardReport], names: list[str]) -> dict[str, Any]:
    """Counts per stage from the steps' reports; compute seconds = time inside model calls (and
    the worker's CPU seconds there)."""
    fresh = lambda: {"status": Counter(), "reasons": Counter(), "seconds": 0.0, "cpu_seconds": 0.0,  # noqa: E731
                     "computed": 0}
    per_stage = {n: fresh() for n in names}
    for r in reports:
        st = per_stage.setdefault(r.stage, fresh())
        st["status"].update(r.status)
        st["reasons"].update(r.reasons)
        if not r.reused:
            st["seconds"] += r.seconds
            st["cpu_seconds"] += r.cpu_seconds
            st["computed"] += r.n_computed
    return {"stages": {n: {"status": dict(st["status"]), "reasons": dict(st["reasons"]),
                           "seconds": round(st["seconds"], 3), "cpu_seconds": round(st["cpu_seconds"], 3),
                           "computed": st["computed"]}
                       for n, st in per_stage.items()}}


def _config_data(cfg: RunConfig, names: list[str], instances: dict) -> dict[str, Any]:
    data = cfg.to_dict()
    data["stages"] = names
    for name in names:
        data[name] = instances[name].config()
    return data


def _write_config(out: Path, data: dict[str, Any]) -> dict[str, Any]:
    """OUT/config.yaml: the resolved config, rewritten only when it changed; a hand edit (the
    file differs from what the last run wrote, recorded in run.json) is named in a warning."""
    text = yaml.safe_dump(data, sort_keys=True)
    data = yaml.safe_load(text)
    path = layout.config_yaml(out)
    try:
        on_disk = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        on_disk = None
    if on_disk == data:
        return data
    try:
        written = json.loads(layout.run_json(out).read_text())["config_yaml"]
    except (OSError, ValueError, KeyError):
        written = None
    if isinstance(on_disk, dict) and written is not None and on_disk != written:
        edited = _diff_fields(on_disk, written)
        warnings.warn(f"{path} was edited by hand ({', '.join(edited)}); it is rewritten with this run's "
                      "config, which comes from the preset, --config and --set", stacklevel=2)
    write_text(path, text)
    return data


def _diff_fields(a: dict, b: dict) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b), key=str):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            diffs += [f"{key}.{k}" for k in sorted(set(x) | set(y), key=str) if x.get(k) != y.get(k)]
        elif x != y:
            diffs.append(str(key))
    return diffs


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("faceweave", "torch", "mediapipe", "numpy", "pyarrow", "ray", "facexlib", "transformers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def __getattr__(name: str) -> Any:
    """Scheduling names re-exported lazily (importing them imports the model code)."""
    if name in ("MissingWeightsError", "prepare", "groups_of", "make_context"):
        from pipeline.core import schedule

        return getattr(schedule, name)
    raise AttributeError(name)
