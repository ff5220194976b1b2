"""Training entry point: ``train(model, shards, base, config, overrides, runs_dir=..., key=..., identity=...)``.

Models (``training.catalog``): dense-face, portraitbooth, msid, face2diffusion, sefi-ide.
The config is a YAML with sections ``model``, ``optim``, ``data`` (with ``pairs``) and ``trainer``;
``overrides`` are ``SECTION.FIELD=VALUE`` strings (values parsed as YAML). ``config`` is a path, a
shipped config name, ``paper`` / None (the model's paper setup) or ``tiny`` (its tiny config).
``base`` is a diffusers folder, a hub id or ``tiny`` (random miniature SD, for smoke runs).
A run writes under ``trainer.root_dir``; a relative one is taken under ``runs_dir`` (default:
``runs/`` next to the shards folder, i.e. ``OUT/runs/``).
"""
from __future__ import annotations

import io
import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import lightning as L
import numpy as np
import yaml

from schemas.shard import META, meta_section
from training.catalog import CONFIG_DIR, check_model, resolve_config
from training.data import DataConfig, FaceShardDataModule
from training.pairs import EMBEDDING, PairConfig
from training.progress import StepProgress

TRAINER_DEFAULTS: dict[str, Any] = dict(
    max_steps=1000, precision="bf16-mixed", accumulate_grad_batches=1, gradient_clip_val=None,
    log_every_n_steps=50, checkpoint_every_n_steps=1000, keep_checkpoints=1, accelerator="auto",
    devices="auto", strategy="auto", root_dir="", progress_bar=True, progress_interval=10.0,
)  # root_dir "": the model's name under runs_dir


def config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    shipped_names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no config {name_or_path!r}: not a file, nor one of {shipped_names}")


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> dict[str, dict]:
    """The YAML as nested dicts with ``SECTION.FIELD[.SUB]=VALUE`` overrides applied."""
    cfg = yaml.safe_load(config_path(name_or_path).read_text()) or {}
    for item in overrides:
        name, sep, value = item.partition("=")
        parts = name.strip().split(".")
        if not sep or len(parts) < 2:
            raise ValueError(f"override must look like SECTION.FIELD=VALUE, got {item!r}")
        node = cfg
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    unknown = set(cfg) - {"model", "optim", "data", "trainer"}
    if unknown:
        raise ValueError(f"unknown config sections: {sorted(unknown)}")
    return cfg


def make(cls: type, values: dict | None, section: str) -> Any:
    """A config dataclass from a YAML mapping; unknown keys are an error naming the section."""
    values = dict(values or {})
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown keys in {section}: {sorted(unknown)} (known: {sorted(names)})")
    for f in fields(cls):  # YAML 1.1 reads 1e-5 as a string; ints are fine floats
        if f.type in ("float", float) and isinstance(values.get(f.name), (str, int)):
            values[f.name] = float(values[f.name])
    return cls(**values)


def data_config(cfg: dict, identity_word: str) -> DataConfig:
    data = dict(cfg.get("data") or {})
    pairs = make(PairConfig, data.pop("pairs", None), "data.pairs")
    return make(DataConfig, {**data, "pairs": pairs, "identity_word": identity_word}, "data")


def _dense_face(cfg: dict, shards: Path, base: str, **_: Any) -> tuple[L.LightningModule, FaceShardDataModule]:
    from training.dense_face import DenseFace, DenseFaceConfig, OptimConfig
    from training.sd import load_sd

    model_cfg = make(DenseFaceConfig, cfg.get("model"), "model")
    optim = make(OptimConfig, cfg.get("optim"), "optim")
    dm = FaceShardDataModule(shards, data_config(cfg, model_cfg.identity_word))
    dm.prepare_data()
    dm.setup()
    if model_cfg.id_dim <= 0:
        rows = np.flatnonzero(dm.index.has(EMBEDDING))
        if not len(rows):
            raise ValueError(f"no identity embeddings ({EMBEDDING}) in {shards}: run the identity stage")
        model_cfg.id_dim = int(np.load(io.BytesIO(dm.index.read(int(rows[0]), EMBEDDING))).shape[0])
    sd = load_sd(base)  # fp32: the pose branch copies full-precision UNet weights; DenseFace casts the rest
    return DenseFace(sd, model_cfg, optim), dm


def _shard_identity(dm: FaceShardDataModule) -> tuple[int, str]:
    """(id.npy size, identity model name) of the first sample that has an embedding."""
    rows = np.flatnonzero(dm.index.has(EMBEDDING))
    if not len(rows):
        raise ValueError(f"no identity embeddings ({EMBEDDING}) in {dm.shards}: run the identity stage")
    meta = json.loads(dm.index.read(int(rows[0]), META))
    model = (meta.get(meta_section("identity")) or {}).get("model", "")
    return int(np.load(io.BytesIO(dm.index.read(int(rows[0]), EMBEDDING))).shape[0]), str(model)


def _portraitbooth(cfg: dict, shards: Path, base: str, **_: Any) -> tuple[L.LightningModule, FaceShardDataModule]:
    from training.dense_face import OptimConfig
    from training.portraitbooth import PortraitBooth, PortraitBoothConfig
    from training.sd import load_sd

    model_cfg = make(PortraitBoothConfig, cfg.get("model"), "model")
    optim = make(OptimConfig, cfg.get("optim"), "optim")
    # the subject word itself is the identity token, and L_id needs the reference's aligned face
    data = replace(data_config(cfg, "person"), keep_subject=True, reference_face=True)
    dm = FaceShardDataModule(shards, data)
    dm.prepare_data()
    dm.setup()
    dim, model = _shard_identity(dm)
    model_cfg.id_dim = model_cfg.id_dim or dim
    model_cfg.embedder = model_cfg.embedder or model
    if model_cfg.id_reference == "embedding" and model_cfg.embedder != model_cfg.id_net:
        raise ValueError(f"id_reference=embedding compares {model_cfg.embedder} embeddings with {model_cfg.id_net} "
                         "ones: use id_reference=id_net, or id_net equal to the shards' identity model")
    return PortraitBooth(load_sd(base), model_cfg, optim), dm


def _msid(cfg: dict, shards: Path, base: str, **_: Any) -> tuple[L.LightningModule, L.LightningDataModule]:
    from training.msid import build as build_msid

    return build_msid(cfg, shards)


def _face2diffusion(cfg: dict, shards: Path, base: str, **_: Any) -> tuple[L.LightningModule, L.LightningDataModule]:
    from training.face2diffusion import build as build_f2d

    return build_f2d(cfg, shards, base)


def _sefi_ide(cfg: dict, shards: Path, base: str, key: str | None = None, identity: str | None = None,
              **_: Any) -> tuple[L.LightningModule, L.LightningDataModule]:
    from training.sefi_ide import build as build_sefi

    return build_sefi(cfg, shards, base, key=key, identity=identity)


MODELS: dict[str, Callable[..., tuple[L.LightningModule, L.LightningDataModule]]] = {
    "dense-face": _dense_face,
    "portraitbooth": _portraitbooth,
    "msid": _msid,
    "face2diffusion": _face2diffusion,
    "sefi-ide": _sefi_ide,
}


def run_root(model_name: str, root_dir: str, shards: str | Path, runs_dir: str | Path | None) -> Path:
    """Where a run writes: ``root_dir`` if absolute, else under ``runs_dir`` (default ``OUT/runs``)."""
    root = Path(root_dir or model_name.replace("-", "_"))
    if root.is_absolute():
        return root
    return (Path(runs_dir) if runs_dir is not None else Path(shards).resolve().parent / "runs") / root


@contextmanager
def lightning_quiet(verbose: bool = False) -> Iterator[None]:
    """Without ``verbose``: no Lightning info lines (accelerator, tips) and no warnings about what
    these trainers do on purpose (frozen modules in eval mode); our progress lines stay."""
    if verbose:
        yield
        return
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        try:
            yield
        finally:
            logger.setLevel(level)


def train(model_name: str, shards: str | Path, base: str, config: str | Path | None = None,
          overrides: Iterable[str] = (), resume: str | None = None, runs_dir: str | Path | None = None,
          key: str | None = None, identity: str | None = None, verbose: bool = False) -> dict[str, Any]:
    """Train ``model_name`` on ``shards``; returns where the checkpoints went and the pairing counts.

    ``key`` / ``identity`` pick SeFi-IDE's one reference face (ignored by the other models);
    ``verbose`` keeps Lightning's own info lines and warnings.
    """
    with lightning_quiet(verbose):
        return _train(model_name, shards, base, config, overrides, resume, runs_dir, key, identity)


def _train(model_name: str, shards: str | Path, base: str, config: str | Path | None, overrides: Iterable[str],
           resume: str | None, runs_dir: str | Path | None, key: str | None, identity: str | None) -> dict[str, Any]:
    check_model(model_name)
    cfg = load_config(resolve_config(model_name, config), overrides)
    tcfg = {**TRAINER_DEFAULTS, **(cfg.get("trainer") or {})}
    unknown = set(tcfg) - set(TRAINER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys in trainer: {sorted(unknown)}")
    L.seed_everything(int((cfg.get("model") or {}).get("seed", 0)), workers=True, verbose=False)
    module, dm = MODELS[model_name](cfg, Path(shards), base, key=key, identity=identity)
    root = run_root(model_name, tcfg["root_dir"], shards, runs_dir) / getattr(module, "run_name", "")
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root / "checkpoints", every_n_train_steps=tcfg["checkpoint_every_n_steps"],
        save_top_k=tcfg["keep_checkpoints"], save_last=True, filename="step{step:07d}",
        auto_insert_metric_name=False,
    )
    callbacks: list[L.Callback] = [ckpt]
    if tcfg["progress_bar"]:
        callbacks.append(StepProgress(interval=float(tcfg["progress_interval"])))
    trainer = L.Trainer(
        max_steps=tcfg["max_steps"], precision=tcfg["precision"],
        accumulate_grad_batches=tcfg["accumulate_grad_batches"],
        gradient_clip_val=tcfg["gradient_clip_val"], log_every_n_steps=tcfg["log_every_n_steps"],
        accelerator=tcfg["accelerator"], devices=tcfg["devices"], strategy=tcfg["strategy"],
        default_root_dir=root, callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(root, name="logs"),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if resume == "last":
        resume = str(root / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    final = root / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)
    index = getattr(dm, "index", None)
    summary = {"model": model_name, "steps": trainer.global_step, "checkpoint": str(final), "root": str(root),
               "pairs": asdict(index.stats) if index is not None else None,
               "consumed_batches": getattr(dm, "consumed", None), "config": cfg}
    summary.update(getattr(module, "run_summary", lambda: {})())
    if trainer.is_global_zero:
        (root / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
