"""identity: a face-recognition embedding of the detected face, L2-normalised.

The face is re-aligned from the stage's frame (the aligned or restored crop) to the 112x112
ArcFace template using detect's ``points5_crop`` (``points5`` when the frame is the source
photo), then embedded. The norm before normalising is kept: it drops for blurry, occluded or
non-face crops. Each model's same/different-identity cosine threshold lives in the registry
(``spec.extra["same_identity_cosine"]``) for later audits.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

import schemas.identity
from stages import align
from stages.base import ERROR, SKIPPED, Provenance, Result, Sample, Stage
from stages.models import common, load, registry

SIZE = 112


def embedding_bytes(vector: np.ndarray) -> bytes:
    """``.npy`` bytes of a float32 vector."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


@dataclass
class Identity(Stage):
    name: ClassVar[str] = "identity"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ("detect",)
    schema: ClassVar = schemas.identity.SCHEMA
    files: ClassVar[tuple[str, ...]] = ("id.npy",)
    gpus: ClassVar[float] = 0.25

    model: str = "arcface_irse50"
    """Registry name: arcface_irse50 (512-d), mobilefacenet (128-d, lite, bundled), or the
    insightface ONNX models the adapters were trained on: insightface_w600k_r50 (buffalo_l,
    IP-Adapter-FaceID) and insightface_glintr100 (antelopev2, InstantID), 512-d, onnxruntime."""
    weights: str = "pretrained"
    """pretrained (verified file) or random (real architecture, random init; for tests only)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "fp32"
    """fp32, bf16 or fp16 (autocast; weights stay fp32)."""
    batch_size: int = 64
    """Faces per forward pass."""
    weights_dir: str | None = None
    """Weights directory (the runner fills it from --weights-dir)."""

    def check(self) -> None:
        common.check_common(self.device, self.dtype, self.weights, self.batch_size)
        family = registry.get(self.model).family
        if family not in ("arcface", "mobilefacenet", "insightface"):
            raise ValueError(f"model {self.model!r} is not a face-recognition embedder")
        if family == "insightface" and self.weights == "random":
            raise ValueError(f"model {self.model!r} is an ONNX graph: weights=random is not available")
        common.check_weights(self.model, self.weights, self.weights_dir)

    def setup(self) -> None:
        spec = registry.get(self.model)
        self._device = common.torch_device(self.device)
        self._net = load(self.model, self.weights_dir, device=self._device, dtype=self.dtype,
                         random_init=self.weights == "random")
        self._mean = torch.tensor(spec.extra["mean"], device=self._device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(spec.extra["std"], device=self._device).view(1, 3, 1, 1) * 255

    def provenance(self) -> Provenance:
        return common.provenance(self.model, self.weights == "random", self.weights_dir)

    def _points(self, sample: Sample) -> np.ndarray | None:
        det = sample.upstream.get("detect")
        if det is None:
            return None
        key = "points5" if sample.frame == "source" else "points5_crop"
        points = det.columns.get(key)
        if points is None or len(points) != 10 or not np.all(np.isfinite(points)):
            return None
        return align.as_points(points)

    @torch.inference_mode()
    def embed(self, faces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw embeddings of 112x112 RGB uint8 faces: (unit vectors, norms before)."""
        x = torch.from_numpy(np.stack(faces)).to(self._device).permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        memory = torch.channels_last if self._device.type == "cuda" else torch.contiguous_format
        x = x.contiguous(memory_format=memory)
        with common.autocast(self._device, common.torch_dtype(self.dtype)):
            raw = self._net(x)
        raw = raw.float()
        norms = raw.norm(dim=1)
        unit = raw / norms.clamp_min(1e-12)[:, None]
        return unit.cpu().numpy().astype(np.float32), norms.cpu().numpy().astype(np.float32)

    def process(self, batch: list[Sample]) -> list[Result]:
        if getattr(self, "_net", None) is None:
            self.setup()
        results: list[Result | None] = [None] * len(batch)
        faces, idx = [], []
        raw_faces, raw_idx = [], []  # the un-restored aligned crops, for the drift score
        for i, sample in enumerate(batch):
            points = self._points(sample)
            if points is None:
                results[i] = Result.fail("no_detection", SKIPPED)
            elif sample.image is None or sample.image.ndim != 3 or sample.image.shape[2] != 3:
                results[i] = Result.fail("bad_image", ERROR)
            else:
                face, _ = align.align(np.ascontiguousarray(sample.image, dtype=np.uint8), points,
                                      align.ARCFACE_112, SIZE)
                faces.append(face)
                idx.append(i)
                raw = sample.upstream["detect"].frame if sample.frame == "restored" else None
                if raw is not None and raw.shape == sample.image.shape:
                    raw_face, _ = align.align(np.ascontiguousarray(raw, dtype=np.uint8), points,
                                              align.ARCFACE_112, SIZE)
                    raw_faces.append(raw_face)
                    raw_idx.append(i)
        raw_unit = {}
        for start in range(0, len(raw_idx), self.batch_size):
            unit, _ = self.embed(raw_faces[start:start + self.batch_size])
            raw_unit.update(zip(raw_idx[start:start + self.batch_size], unit))
        for start in range(0, len(idx), self.batch_size):
            unit, norms = self.embed(faces[start:start + self.batch_size])
            for i, vector, norm in zip(idx[start:start + self.batch_size], unit, norms):
                if not (np.isfinite(norm) and norm > 0 and np.all(np.isfinite(vector))):
                    results[i] = Result.fail("bad_embedding", ERROR)
                    continue
                results[i] = Result(
                    columns={"embedding": vector.tolist(), "dim": int(vector.shape[0]),
                             "norm_before": float(norm),
                             "restore_cosine": float(vector @ raw_unit[i]) if i in raw_unit else None},
                    files={"id.npy": embedding_bytes(vector)},
                )
        return results  # type: ignore[return-value]
