"""Scheduling decisions made before any work: which stages, in which groups, with which lineage."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import stages as stage_registry
from pipeline.core import imaging
from pipeline.core import plan as plan_mod
from pipeline.config import ConfigError, RunConfig, build_stage, choose_executor, gpu_available  # noqa: F401
from pipeline.core.execute import FRAME_FORMATS, RunContext, StageRun
from pipeline.core.manifest import stable_hash
from pipeline.sources import get_source
from stages.models.registry import MissingWeights

EXECUTORS = ("auto", "ray", "processes", "local")
RUNTIME_FIELDS = ("device", "batch_size", "weights_dir", "num_workers", "compile")
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


def prepare(cfg: RunConfig, source: Any = None) -> tuple[Any, list[str], dict[str, Any]]:
    """Everything that can fail on bad input, before any work: source (unless given), stages, weights."""
    source_cls = get_source(cfg.source)
    if cfg.executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got '{cfg.executor}'")
    source = source if source is not None else source_cls(cfg.input)
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
        except FileNotFoundError as exc:  # MissingWeights, or a model directory (captioners)
            missing.append((name, exc))
        instances[name] = stage
    if missing:
        raise MissingWeightsError(missing)
    return source, names, instances


class MissingWeightsError(FileNotFoundError):
    """Every missing weights file of the run, with what to fetch and where to put it."""

    def __init__(self, missing: list[tuple[str, FileNotFoundError]]):
        specs = [(stage, exc) for stage, exc in missing if isinstance(exc, MissingWeights)]
        others = [(stage, exc) for stage, exc in missing if not isinstance(exc, MissingWeights)]
        names = " ".join(sorted({exc.spec.name for _, exc in specs}))
        lines = [f"missing weights for {len(missing)} stage(s); nothing was run."]
        if specs:
            lines += [f"  where internet exists: pipeline weights fetch {names}", "  or download by hand:"]
        for stage, exc in specs:
            urls = " | ".join(exc.spec.urls) or "(no public URL)"
            lines.append(f"    [{stage}] {urls}\n        -> {exc.path}  (sha256 {exc.spec.sha256 or 'not pinned'})")
        for stage, exc in others:
            lines.append(f"    [{stage}] {exc}")
        lines.append("  or run the bundled models offline: --preset lite")
        super().__init__("\n".join(lines))


def make_context(cfg: RunConfig, plan: plan_mod.Plan, names: list[str], instances: dict) -> RunContext:
    # Not the plan's sha256: --refresh re-plans some shards, and only their changed keys redo.
    store_image = not any(stage_registry.stage_class(n).produces_frame for n in names)
    limits = {"max_pixels": cfg.max_pixels, "min_side": cfg.min_side}
    if cfg.max_decode_mb != imaging.DEFAULT_MAX_DECODE_MB:
        limits["max_decode_mb"] = cfg.max_decode_mb
    source_lineage = stable_hash({"source": plan.info["source"], "input": plan.info["input"], **limits,
                                  "store_image": store_image, "version": 2})
    retry = tuple(names) if "all" in cfg.retry_errors else tuple(cfg.retry_errors)
    unknown = set(retry) - set(names)
    if unknown:
        raise ConfigError(f"--retry-errors names stages not in this run: {sorted(unknown)}")
    if cfg.frames not in FRAME_FORMATS:
        raise ConfigError(f"frames must be one of {FRAME_FORMATS}, got {cfg.frames!r}")
    ctx = RunContext(Path(cfg.out), cfg.source, cfg.input, cfg.max_pixels, cfg.min_side, source_lineage,
                     retry=retry, frame_format=cfg.frames, store_source_image=store_image,
                     compact=cfg.compact, source_files=tuple(get_source(cfg.source).files),
                     max_decode_mb=cfg.max_decode_mb)
    ctx.decode_device = _decode_device(cfg, names, instances)
    frame_from = None
    for name in names:
        stage = instances[name]
        values = stage.config()
        optional = tuple(r for r in stage.optional_reads if r in ctx.stage_runs and r not in stage.reads)
        upstream = [ctx.stage_runs[r].lineage for r in (*stage.reads, *optional)]
        lineage = stable_hash({
            "stage": name, "version": type(stage).version, "source": source_lineage, "upstream": upstream,
            "frame_from": [ctx.stage_runs[frame_from].lineage, cfg.frames] if frame_from else ctx.decode_device,
            "config": {k: v for k, v in values.items() if k not in RUNTIME_FIELDS},
        })
        device = str(values.get("device", "cpu"))
        if device == "auto":
            device = "cuda" if gpu_available(cfg) else "cpu"
        ctx.stage_runs[name] = StageRun(name, values, lineage, frame_from, tuple(stage.reads), optional,
                                        type(stage).produces_frame,
                                        type(stage).gpus if device.startswith("cuda") else 0.0,
                                        stage_registry.MODULES[name], tuple(type(stage).files))
        if type(stage).produces_frame:
            frame_from = name
    return ctx


def _decode_device(cfg: RunConfig, names: list[str], instances: dict) -> str:
    """cuda only when every stage that sees the source image is a GPU stage (it decodes there)."""
    if cfg.decode not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"decode must be auto, cpu or cuda, got {cfg.decode!r}")
    if cfg.decode == "cpu" or not gpu_available(cfg):
        return "cpu"
    if cfg.decode == "auto":
        import torch

        if not torch.cuda.is_available():  # a declared GPU (Ray resources) is not a CUDA device here
            return "cpu"
    source_seers, frame = [], False
    for name in names:
        stage = instances[name]
        if not frame and stage.needs_image:
            source_seers.append(stage)
        frame = frame or bool(type(stage).produces_frame)
    on_gpu = all(str(getattr(s, "device", "cpu")) in ("cuda", "auto") or str(getattr(s, "device", "")).startswith("cuda")
                 for s in source_seers)
    if cfg.decode == "cuda" or (source_seers and on_gpu and all(type(s).gpus > 0 for s in source_seers)):
        return "cuda"
    return "cpu"


def groups_of(ctx: RunContext, names: list[str], fuse: bool = True) -> list[list[str]]:
    """Consecutive stages with the same kind of resource run fused in one worker."""
    groups: list[list[str]] = []
    for name in names:
        gpu = ctx.stage_runs[name].gpus > 0
        if fuse and groups and (ctx.stage_runs[groups[-1][0]].gpus > 0) == gpu:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups
