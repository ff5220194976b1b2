"""What each trainer expects of the identity embedding, and the checks an export makes against it.

The adapters were trained on one recognition model's features; an embedding of another model,
or of another size, loads silently and means something else. So an export whose embeddings have
the wrong size is refused before anything is written (one line naming what is needed), and one
made with a different 512-d model is written with a loud warning naming the expected model.

Embedding files are ``torch.save``d float32 **tensors**: they load with
``torch.load(path, weights_only=True)``, the default since torch 2.6, which refuses pickled
numpy arrays.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.readers.export import Context, Sample

MISMATCH = "EMBEDDING MODEL MISMATCH"


@dataclass(frozen=True)
class Target:
    """One trainer's expectation of the identity embedding."""

    name: str
    """The trainer, as named in messages."""
    dim: int
    """Embedding size its projection is built for."""
    model: str | None
    """Registry name of the recognition model its released weights were trained with (None: any)."""
    model_words: str = ""
    """That model in words, for messages."""
    scale: str = "unit"
    """unit (L2-normalised, insightface's ``normed_embedding``) or raw (``face.embedding``)."""


IP_ADAPTER = Target("IP-Adapter-FaceID", 512, "insightface_w600k_r50",
                    "insightface buffalo_l w600k_r50 (normed_embedding)", "unit")
INSTANTID = Target("InstantID", 512, "insightface_glintr100",
                   "insightface antelopev2 glintr100 (raw face.embedding)", "raw")
DENSE_FACE = Target("Dense-Face", 512, None, "a 512-d ArcFace model", "unit")


def selection_models(ctx: "Context") -> dict[tuple[str, int], int]:
    """(identity model, dim) -> number of selected samples with an ok embedding; {} without identity."""
    import duckdb

    from pipeline.readers.sql import keys_where

    try:
        table = keys_where(ctx.out, ctx.where, extra=("identity_model", "identity_dim", "identity_status"))
    except (duckdb.Error, ValueError):
        return {}  # the identity stage did not run: no such columns
    counts: dict[tuple[str, int], int] = {}
    for model, dim, status in zip(*(table.column(c).to_pylist() for c in
                                     ("identity_model", "identity_dim", "identity_status"))):
        if status == "ok" and dim is not None:
            counts[(model or "", int(dim))] = counts.get((model or "", int(dim)), 0) + 1
    return counts


def require(ctx: "Context", target: Target, fmt: str) -> dict[str, Any]:
    """Refuse (ValueError, one line) an export whose embeddings are not ``target.dim`` values;
    warn when the model differs from the target's. Returns what export.json records."""
    models = selection_models(ctx)
    if not models:
        raise ValueError(f"{fmt} export needs identity embeddings: run the identity stage with a "
                         f"{target.dim}-d model ({target.model_words})")
    dims = sorted({d for _, d in models})
    if dims != [target.dim]:
        have = ", ".join(f"{d}-d {m}" for m, d in sorted(models))
        raise ValueError(f"{fmt} export refused: {target.name} needs {target.dim}-d identity embeddings "
                         f"({target.model_words}); this selection has {have}. Rerun the identity stage "
                         f"with --set identity.model={target.model or 'arcface_irse50'}")
    names = sorted({m for m, _ in models})
    if target.model and names != [target.model]:
        ctx.warn(f"{MISMATCH}: embeddings made with {', '.join(names)}, but {target.name}'s released "
                 f"weights expect {target.model_words} (identity.model={target.model}); they load but "
                 f"live in another embedding space: train the adapter from scratch or re-embed")
    return {"embedding_models": names, "embedding_dim": target.dim,
            "expected_embedding_model": target.model, "embedding_model_matches": not target.model
            or names == [target.model], "embedding_scale": target.scale}


def scaled(sample: "Sample", unit: np.ndarray, scale: str) -> np.ndarray:
    """The embedding at the target's scale: the unit vector, or times the identity stage's
    ``norm_before`` (the raw model output's norm) for ``raw``."""
    if scale == "unit":
        return unit
    norm = sample.stage("identity").get("norm_before")
    if norm is None:
        raise ValueError(f"{sample.key}: no identity norm_before, cannot write a raw-scale embedding")
    return (unit * np.float32(norm)).astype(np.float32)


def tensor_bytes(vector: np.ndarray, shape: tuple[int, ...] | None = None) -> bytes:
    """``torch.save`` bytes of a float32 tensor (loads with ``weights_only=True``)."""
    import torch

    array = np.ascontiguousarray(vector, np.float32)
    buf = io.BytesIO()
    torch.save(torch.from_numpy(array.reshape(shape) if shape else array).clone(), buf)
    return buf.getvalue()
