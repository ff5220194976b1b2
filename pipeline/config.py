"""Run configuration: typed dataclasses, presets, ``--config run.yaml`` and ``--set`` overrides.

Resolution order (later wins): preset file -> ``--config`` file -> command-line flags -> ``--set``.
A config file has run fields at the top level and one mapping per stage name::

    preset: lite
    source: casia-webface
    stages: [detect, landmarks]
    detect: {model: retinaface_mobile0.25}
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import stages as stage_registry
from stages.base import Stage

PRESET_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_PRESET = "full"


class ConfigError(ValueError):
    """A bad configuration, reported before any work starts."""


@dataclass
class RunConfig:
    """Everything a run needs besides the stages' own fields."""

    source: str = "sample"
    """Source name (``pipeline sources`` lists them)."""
    input: str | None = None
    """Input folder of the source (unused by ``sample``)."""
    out: str = "out"
    """Output folder."""
    preset: str = ""
    """Preset the config started from (``pipeline presets`` lists them)."""
    stages: list[str] = field(default_factory=lambda: ["landmarks"])
    """Stages to run; required upstream stages are added automatically."""
    shard_size: int | None = None
    """Samples per shard (1000 when unset); fixed once per output folder."""
    weights_dir: str | None = None
    """Weights directory (else $FACEWEAVE_WEIGHTS, else ~/.cache/faceweave/weights)."""
    max_pixels: int = 40_000_000
    """Images with more pixels are refused from their header (decompression-bomb guard)."""
    min_side: int = 16
    """Images with a smaller side are refused as too small."""
    max_decode_mb: int = 1024
    """Images whose decode would need more memory (pixels x peak bytes per pixel of their mode) are
    refused from their header, e.g. a small 16-bit PNG of 10000x10000."""
    executor: str = "auto"
    """``auto`` (Ray when a GPU or a cluster address is there, else ``processes``), ``ray`` (embedded
    local Ray, or a cluster via ray_address), ``processes`` (worker processes on this machine, one
    per core, steps pipelined by shard) or ``local`` (this process, step after step: debugging)."""
    ray_address: str | None = None
    """Address of an existing Ray cluster to join; None starts an embedded one."""
    num_cpus: int | None = None
    """CPU cap for the embedded Ray and the ``processes`` workers (None: all cores)."""
    num_gpus: float | None = None
    """GPU cap for the embedded Ray (None: all GPUs)."""
    decode: str = "auto"
    """Where source JPEGs are decoded: cpu, cuda (nvJPEG, batched), or auto = cuda when every
    stage that sees the source image runs on a GPU."""
    frames: str = "jpg"
    """How a stage's frame (aligned/restored crop) is stored for later steps: ``jpg`` (quality 95;
    these bytes become the shard image, and every stage sees exactly them) or ``png`` (lossless)."""
    compact: bool = True
    """After a shard is packed, drop from payloads/ the files the shard holds byte for byte (later
    runs read them from the shard); false keeps full payloads (about twice the disk)."""
    refresh: bool = False
    """Accept input changes since planning: re-plan the changed keys, keep everything else."""
    fuse: bool = True
    """Run consecutive stages of one kind (CPU or GPU) in one worker, frames kept in memory."""
    retry_errors: list[str] = field(default_factory=list)
    """Stages whose error rows are recomputed (``all`` for every stage); ok rows stay untouched."""
    stage_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-stage field values, keyed by stage name."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(data.pop("stage_config"))
        return data


RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"stage_config"}


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping")
    return data


def merge(cfg: RunConfig, data: dict[str, Any], origin: str) -> None:
    """Apply a config mapping (run fields + stage sections) onto ``cfg``."""
    known_stages = set(stage_registry.ORDER)
    for name, value in data.items():
        if name in RUN_FIELDS:
            if name in ("stages", "retry_errors") and isinstance(value, str):
                value = [s.strip() for s in value.split(",") if s.strip()]
            setattr(cfg, name, value)
        elif name in known_stages:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: section '{name}' must be a mapping of stage fields")
            cfg.stage_config.setdefault(name, {}).update(value)
        else:
            raise ConfigError(f"{origin}: unknown key '{name}' (run fields: {', '.join(sorted(RUN_FIELDS))}; "
                              f"stages: {', '.join(stage_registry.ORDER)})")


def parse_set(item: str) -> tuple[str, str, Any]:
    """``STAGE.FIELD=VALUE`` -> (stage, field, value): YAML-parsed unless the field is a str."""
    target, sep, raw = item.partition("=")
    stage, dot, name = target.partition(".")
    if not sep or not dot or not stage or not name:
        raise ConfigError(f"--set expects STAGE.FIELD=VALUE, got '{item}'")
    if stage not in stage_registry.ORDER:
        raise ConfigError(f"--set {item}: unknown stage '{stage}'")
    hint = typing.get_type_hints(stage_registry.stage_class(stage)).get(name)
    if hint is str:  # keep '0000045_001' a string (YAML would read it as the integer 45001)
        return stage, name, raw
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return stage, name, value


def resolve(
    preset: str | None = None,
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
) -> RunConfig:
    """Build the RunConfig from its layers; raise ConfigError on anything unknown."""
    cfg = RunConfig()
    file_data = load_yaml(Path(config_file)) if config_file else {}
    preset = preset or file_data.get("preset") or DEFAULT_PRESET
    if preset:
        if preset not in presets():
            raise ConfigError(f"unknown preset '{preset}'; known: {', '.join(presets())}")
        merge(cfg, load_yaml(presets()[preset]), f"preset {preset}")
        cfg.preset = preset
    merge(cfg, file_data, str(config_file))
    if preset:
        cfg.preset = preset
    for name, value in (flags or {}).items():
        if value is not None:
            merge(cfg, {name: value}, "command line")
    for item in sets or []:
        stage, name, value = parse_set(item)
        cfg.stage_config.setdefault(stage, {})[name] = value
    return cfg


def gpu_available(cfg: RunConfig) -> bool:
    """A CUDA GPU for this run (``num_gpus`` decides when given; torch is imported only where a
    GPU device node exists, so CPU machines never pay for it here)."""
    if cfg.num_gpus is not None:
        return cfg.num_gpus > 0
    import os

    if not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def choose_executor(cfg: RunConfig) -> str:
    """auto: Ray where it pays (a GPU, a cluster), worker processes on a CPU-only machine."""
    if cfg.executor != "auto":
        return cfg.executor
    return "ray" if cfg.ray_address or gpu_available(cfg) else "processes"


def build_stage(name: str, values: dict[str, Any]) -> Stage:
    """Instantiate a stage from its field values, checking names and simple types."""
    cls = stage_registry.stage_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"stage '{name}' has no field '{key}'; fields: {', '.join(fields)}")
        kwargs[key] = _coerce(name, key, value, hints.get(key))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"stage '{name}': {exc}") from None


def _coerce(stage: str, key: str, value: Any, hint: Any) -> Any:
    if hint in (int, float, bool, str) and not isinstance(value, hint):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if hint is str and isinstance(value, (int, float)):
            return str(value)
        raise ConfigError(f"{stage}.{key} must be {hint.__name__}, got {value!r}")
    return value
