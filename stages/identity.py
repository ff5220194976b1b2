"""identity: a face-recognition embedding of the detected face, L2-normalised.

The face is re-aligned from the stage's frame (the aligned or restored crop) to the 112x112
ArcFace template using detect's ``points5_crop`` (``points5`` when the frame is the source
photo), then embedded. The norm before normalising is kept: it drops for blurry, occluded or
non-face crops. Each model's same/different-identity cosine threshold lives in the registry
(``spec.extra["same_identity_cosine"]``) for later audits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

import schemas.identity
from stages.models import align
from stages.base import ERROR, SKIPPED, Result, Sample
from stages.model_stage import ModelStage
from stages.models import registry

SIZE = 112


@dataclass
class Identity(ModelStage):
    name: ClassVar[str] = "identity"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ("detect",)
    schema: ClassVar = schemas.identity.SCHEMA
    files: ClassVar[tuple[str, ...]] = ("id.npy",)
    gpus: ClassVar[float] = 0.25
    families: ClassVar[tuple[str, ...]] = ("arcface", "mobilefacenet", "insightface")

    model: str = "arcface_irse50"
    """Registry name: arcface_irse50 (512-d), mobilefacenet (128-d, lite, bundled), or the
    insightface ONNX models the adapters were trained on: insightface_w600k_r50 (buffalo_l,
    IP-Adapter-FaceID) and insightface_glintr100 (antelopev2, InstantID), 512-d, onnxruntime."""
    batch_size: int = 64
    """Faces per forward pass (112x112)."""

    def check_config(self) -> None:
        if registry.get(self.model).family == "insightface" and self.weights == "random":
            raise ValueError(f"model {self.model!r} is an ONNX graph: weights=random is not available")

    def setup(self) -> None:
        super().setup()
        spec = registry.get(self.model)
        self._mean = torch.tensor(spec.extra["mean"], device=self._device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(spec.extra["std"], device=self._device).view(1, 3, 1, 1) * 255

    def embed(self, faces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw embeddings of 112x112 RGB uint8 faces: (unit vectors, norms before)."""
        with self.inference():
            raw = self._net((self.tensor(faces, 1.0) - self._mean) / self._std).float()
        norms = raw.norm(dim=1)
        unit = raw / norms.clamp_min(1e-12)[:, None]
        return unit.cpu().numpy().astype(np.float32), norms.cpu().numpy().astype(np.float32)

    def compute(self, batch: list[Sample]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        faces, idx, raw_faces, raw_idx = [], [], [], []  # raw: the un-restored crops, for the drift
        for i, sample in enumerate(batch):
            points = sample.points5()
            if points is None:
                results[i] = Result.fail("no_detection", SKIPPED)
                continue
            faces.append(align.align(sample.image, points, align.ARCFACE_112, SIZE)[0])
            idx.append(i)
            raw = sample.upstream["detect"].frame if sample.frame == "restored" else None
            if raw is not None and raw.shape == sample.image.shape:
                raw_faces.append(align.align(np.ascontiguousarray(raw), points, align.ARCFACE_112, SIZE)[0])
                raw_idx.append(i)
        raw_unit = dict(zip(raw_idx, self.embed(raw_faces)[0])) if raw_faces else {}
        unit, norms = self.embed(faces) if faces else ([], [])
        for i, vector, norm in zip(idx, unit, norms):
            if not (np.isfinite(norm) and norm > 0 and np.all(np.isfinite(vector))):
                results[i] = Result.fail("bad_embedding", ERROR)
                continue
            results[i] = Result(
                columns={"embedding": vector.tolist(), "dim": int(vector.shape[0]), "norm_before": float(norm),
                         "restore_cosine": float(vector @ raw_unit[i]) if i in raw_unit else None},
                files={"id.npy": vector.astype(np.float32)})
        return results  # type: ignore[return-value]
