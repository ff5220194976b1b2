"""attributes: per-face attribute groups; for now facial emotion (FER2013 mini-Xception).

Emotion crop: the square face ROI of the ``expression`` stage (detect's points or box, or a
centred square without detect) shrunk to ``emotion_crop`` of its side around the same
centre, which frames brows to chin like FER2013's 48 px faces (0.7: about 1.2 RetinaFace box
widths). It is converted to grayscale (ITU-R 601 luma), area-resized to 64x64 and scaled to
[-1, 1]. The label is the arg-max class when its probability reaches ``emotion_threshold``,
else ``uncertain`` (``schemas/attributes.py``).

Attribute groups are listed in ``groups``; each is a small head with its own model. Planned
groups (age, gender, CelebA attributes via CLIP zero-shot) are named in ``PLANNED`` and refused
by ``check()`` until written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch

import schemas.attributes as aschema
from stages.base import ERROR, SKIPPED, Provenance, Result, Sample, Stage
from stages.expression import MIN_ROI, face_roi
from stages.models import common, emotion, registry, tddfa

GROUPS = ("emotion",)
PLANNED = ("age", "gender", "celeba")
EMOTION_SIZE = 64


class EmotionHead:
    """FER2013 mini-Xception on a 64x64 grayscale crop -> emotion columns."""

    def __init__(self, model: str, device: torch.device, dtype: str, random_init: bool):
        self.device, self.dtype = device, common.torch_dtype(dtype)
        self.net = emotion.load_emotion(model, device=device, dtype=dtype, random_init=random_init)

    @torch.inference_mode()
    def probs(self, gray: list[np.ndarray]) -> np.ndarray:
        """(N, 7) float32 class probabilities of (64, 64) uint8 grayscale crops."""
        x = emotion.preprocess(np.stack(gray)).to(self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with common.autocast(self.device, self.dtype):
            p = self.net(x)
        return p.float().cpu().numpy()


def emotion_columns(probs: np.ndarray, threshold: float) -> dict:
    """The emotion columns of one face's probabilities."""
    top = int(np.argmax(probs))
    label = aschema.EMOTIONS[top] if probs[top] >= threshold else aschema.UNCERTAIN
    return {"emotion": label, "emotion_probs": probs.astype(np.float32).tolist(),
            "emotion_threshold": float(threshold)}


@dataclass
class Attributes(Stage):
    name: ClassVar[str] = "attributes"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ("detect",)
    """Used when its row is in ``Sample.upstream`` (face ROI); never required."""
    schema: ClassVar = aschema.SCHEMA
    gpus: ClassVar[float] = 0.1

    groups: tuple[str, ...] = ("emotion",)
    """Attribute groups to predict: emotion. Planned: age, gender, celeba (CLIP zero-shot)."""
    emotion_model: str = emotion.FER_MINI_XCEPTION
    """Registry name of the emotion classifier (fer2013_mini_xception, bundled)."""
    emotion_threshold: float = 0.5
    """Top probability needed to keep the label, else ``uncertain`` (on lfw10, 0.5 keeps 60% of
    labels, 95% of them unchanged by mirroring; 0 keeps all, 78% unchanged)."""
    emotion_crop: float = 0.7
    """Side of the emotion crop relative to the 3DDFA-style face ROI (0.3-1.5)."""
    no_detect_roi: float = 0.71
    """Without detect: face ROI side over the shorter image side (as the expression stage)."""
    weights: str = "pretrained"
    """pretrained (verified file) or random (real architecture, random init; for tests only)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "fp32"
    """fp32, bf16 or fp16 (autocast; weights stay fp32)."""
    batch_size: int = 256
    """Faces per forward pass."""

    def check(self) -> None:
        common.check_common(self.device, self.dtype, self.weights, self.batch_size)
        groups = tuple(self.groups)
        if not groups:
            raise ValueError("attributes needs at least one group")
        for g in groups:
            if g in PLANNED:
                raise ValueError(f"attribute group {g!r} is planned but not implemented yet")
            if g not in GROUPS:
                raise ValueError(f"unknown attribute group {g!r}; known: {', '.join(GROUPS)}")
        if not 0.0 <= self.emotion_threshold < 1.0:
            raise ValueError(f"emotion_threshold must be in [0, 1), got {self.emotion_threshold}")
        if not 0.3 <= self.emotion_crop <= 1.5 or not 0.1 <= self.no_detect_roi <= 2.0:
            raise ValueError("emotion_crop must be in [0.3, 1.5] and no_detect_roi in [0.1, 2]")
        spec = registry.get(self.emotion_model)
        if spec.family != "emotion":
            raise ValueError(f"model {self.emotion_model!r} is not an emotion classifier")
        if self.emotion_model == emotion.HSEMOTION_B0_8:
            registry.resolve(self.emotion_model, check=False)  # MissingWeights names the URL
            raise NotImplementedError(f"{self.emotion_model!r} has no loader yet; use "
                                      f"{emotion.FER_MINI_XCEPTION!r}")
        common.check_weights(self.emotion_model, self.weights)

    def setup(self) -> None:
        self._device = common.torch_device(self.device)
        self._emotion = EmotionHead(self.emotion_model, self._device, self.dtype,
                                    self.weights == "random")

    def provenance(self) -> Provenance:
        return common.provenance(self.emotion_model, self.weights == "random")

    def emotion_crop_of(self, sample: Sample) -> tuple[np.ndarray | None, str]:
        """(64x64 uint8 grayscale face crop, failure reason)."""
        img = sample.image
        if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            return None, "bad_image"
        (cx, cy, side), _ = face_roi(sample, self.no_detect_roi)
        side *= self.emotion_crop
        if not all(math.isfinite(v) for v in (cx, cy, side)) or side < MIN_ROI:
            return None, "face_too_small"
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
        return tddfa.crop_roi(gray, (cx, cy, side), EMOTION_SIZE, cv2.BORDER_REPLICATE), ""

    def process(self, batch: list[Sample]) -> list[Result]:
        if getattr(self, "_emotion", None) is None:
            self.setup()
        results: list[Result | None] = [None] * len(batch)
        crops, idx = [], []
        for i, sample in enumerate(batch):
            crop, reason = self.emotion_crop_of(sample)
            if crop is None:
                results[i] = Result.fail(reason, ERROR if reason == "bad_image" else SKIPPED)
            else:
                crops.append(crop)
                idx.append(i)
        for part in common.chunks(range(len(idx)), self.batch_size):
            probs = self._emotion.probs([crops[j] for j in part])
            for j, p in zip(part, probs):
                if not np.all(np.isfinite(p)):
                    results[idx[j]] = Result.fail("non_finite_output")
                else:
                    results[idx[j]] = Result(columns=emotion_columns(p, self.emotion_threshold))
        return results  # type: ignore[return-value]
