"""CLIP zero-shot classification over prompt sets, with the caption stage's CLIP loading.

A *prompt set* is a list of classes, each described by one or more sentences. A class's text
embedding is the re-normalised mean of its sentences' unit embeddings (prompt ensembling); an
image's probabilities are ``softmax(logit_scale * cosine)`` over the classes of one set, with
the model's own learnt logit scale (100 for OpenAI CLIP). Text embeddings are computed once per
set and cached; image embeddings once per batch and shared by every set.

The model is located exactly as the caption stage locates its scoring CLIP (a local snapshot
directory or a Hugging Face id resolved offline: ``stages.captioners.resolve_location``) and
loaded by the caption stage's ``ClipScorer``; random-weight directories carry the marker file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stages import captioners as caps
from stages.base import Provenance
from stages.caption import CLIP_DEFAULT, CLIP_RESIDENT_MB, ClipScorer

__all__ = ["CLIP_DEFAULT", "CLIP_RESIDENT_MB", "ZeroShotClip", "resolve_clip", "clip_provenance"]

PromptSet = Sequence[Sequence[str]]
"""Per class, the sentences describing it."""


def resolve_clip(location: str, allow_download: bool = False,
                 weights_dir: str | os.PathLike | None = None, what: str = "attributes clip_model") -> Path:
    """Local directory of a CLIP model (FileNotFoundError naming the fix when absent)."""
    return caps.resolve_location(location, what, allow_download, weights_dir)


def clip_provenance(location: str, path: Path) -> Provenance:
    """Model location (with snapshot commit), sha256 over its weight files, random marker."""
    revision = caps.revision_of(path)
    return Provenance(model=f"clip={location}", weights=location + (f"@{revision}" if revision else ""),
                      weights_sha256=caps.weights_sha256(path), weights_random=caps.is_random(path))


class ZeroShotClip:
    """Zero-shot class probabilities of images under a locally stored CLIP model."""

    def __init__(self, path: str | Path, device: torch.device, dtype: torch.dtype):
        self.scorer = ClipScorer(path, device, dtype)
        self.scale = float(self.scorer.model.logit_scale.detach().exp().clamp(max=100.0))
        self._sets: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def add_set(self, name: str, classes: PromptSet) -> None:
        """Embed and cache the classes of a prompt set: (C, D) unit vectors."""
        if not classes or any(not c for c in classes):
            raise ValueError(f"prompt set {name!r} needs at least one sentence per class")
        flat = [s for c in classes for s in c]
        feats = self.scorer.text_features(flat)
        rows, start = [], 0
        for c in classes:
            mean = feats[start:start + len(c)].mean(dim=0)
            rows.append(mean / mean.norm().clamp_min(1e-12))
            start += len(c)
        self._sets[name] = torch.stack(rows)

    @torch.inference_mode()
    def image_features(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, D) unit image embeddings of RGB uint8 images."""
        return self.scorer.image_features(images)

    @torch.inference_mode()
    def probs(self, features: torch.Tensor, name: str) -> np.ndarray:
        """(N, C) float32 class probabilities of image features under prompt set ``name``."""
        logits = self.scale * features.float() @ self._sets[name].float().T
        return torch.softmax(logits, dim=-1).cpu().numpy().astype(np.float32)
