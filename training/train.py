"""Training entry point: ``train("dense-face" | "portraitbooth", shards, base, config, overrides)``.

The config is a YAML with sections ``model``, ``optim``, ``data`` (with ``pairs``) and ``trainer``;
``overrides`` are ``SECTION.FIELD=VALUE`` strings (values parsed as YAML). ``config`` is a path or
the name of a shipped config (``dense_face``, ``tiny``, ``portraitbooth``, ``portraitbooth_tiny``).
``base`` is a diffusers folder, a hub id or ``tiny`` (random miniature SD, for smoke runs).
"""
from __future__ import annotations

import io
import json
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import lightning as L
import numpy as np
import yaml

from schemas.shard import META, meta_section
from training.data import DataConfig, FaceShardDataModule
from training.pairs import EMBEDDING, PairConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TRAINER_DEFAULTS: dict[str, Any] = dict(
    max_steps=1000, precision="bf16-mixed", accumulate_grad_batches=1, gradient_clip_val=None,
    log_every_n_steps=50, checkpoint_every_n_steps=1000, keep_checkpoints=1, accelerator="auto",
    devices="auto", strategy="auto", root_dir="runs/dense_face", progress_bar=True,
)


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


def _dense_face(cfg: dict, shards: Path, base: str) -> tuple[L.LightningModule, FaceShardDataModule]:
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


def _portraitbooth(cfg: dict, shards: Path, base: str) -> tuple[L.LightningModule, FaceShardDataModule]:
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


MODELS: dict[str, Callable[[dict, Path, str], tuple[L.LightningModule, FaceShardDataModule]]] = {
    "dense-face": _dense_face,
    "portraitbooth": _portraitbooth,
}


def train(model_name: str, shards: str | Path, base: str, config: str | Path, overrides: Iterable[str] = (),
          resume: str | None = None) -> dict[str, Any]:
    """Train ``model_name`` on ``shards``; returns where the checkpoints went and the pairing counts."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(MODELS)}")
    cfg = load_config(config, overrides)
    tcfg = {**TRAINER_DEFAULTS, **(cfg.get("trainer") or {})}
    unknown = set(tcfg) - set(TRAINER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys in trainer: {sorted(unknown)}")
    L.seed_everything(int((cfg.get("model") or {}).get("seed", 0)), workers=True, verbose=False)
    module, dm = MODELS[model_name](cfg, Path(shards), base)
    root = Path(tcfg["root_dir"])
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root / "checkpoints", every_n_train_steps=tcfg["checkpoint_every_n_steps"],
        save_top_k=tcfg["keep_checkpoints"], save_last=True, filename="step{step:07d}",
        auto_insert_metric_name=False,
    )
    trainer = L.Trainer(
        max_steps=tcfg["max_steps"], precision=tcfg["precision"],
        accumulate_grad_batches=tcfg["accumulate_grad_batches"],
        gradient_clip_val=tcfg["gradient_clip_val"], log_every_n_steps=tcfg["log_every_n_steps"],
        accelerator=tcfg["accelerator"], devices=tcfg["devices"], strategy=tcfg["strategy"],
        default_root_dir=root, callbacks=[ckpt], logger=L.pytorch.loggers.CSVLogger(root, name="logs"),
        enable_progress_bar=tcfg["progress_bar"], enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    if resume == "last":
        resume = str(root / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    final = root / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)
    summary = {"model": model_name, "steps": trainer.global_step, "checkpoint": str(final),
               "pairs": asdict(dm.index.stats), "consumed_batches": dm.consumed, "config": cfg}
    if trainer.is_global_zero:
        (root / "train_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
