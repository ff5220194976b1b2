"""attributes: emotion (FER2013 mini-Xception); age, gender and CelebA's 40 by CLIP zero-shot.

Emotion crop: the square face ROI of the ``expression`` stage (detect's points or box, or a
centred square without detect) shrunk to ``emotion_crop`` of its side around the same
centre, which frames brows to chin like FER2013's 48 px faces (0.7: about 1.2 RetinaFace box
widths). It is converted to grayscale (ITU-R 601 luma), area-resized to 64x64 and scaled to
[-1, 1]. The label is the arg-max class when its probability reaches ``emotion_threshold``,
else ``uncertain`` (``schemas/attributes.py``); ``emotion_confident`` marks labels whose top
probability reaches the calibrated ``emotion_confident_threshold`` (docs/wild.md).

CLIP groups (``age``, ``gender``, ``celeba``; ``clip_attributes`` names all three) see the
whole frame: the aligned crop holds hair, ears, neck and hat, which several CelebA attributes
are about. On a source frame with detect's box the view is a square of ``clip_context`` box
sides around the box, else the whole image. The CLIP model is the caption stage's, located the
same way (local snapshot or offline HF id: ``stages/clip_zeroshot.py``); prompts are in
``schemas/attribute_prompts.py``. Probabilities are stored with the thresholded labels and the
threshold, so readers can re-threshold. A CelebA source's ground truth
(``Sample.meta["meta"]["celeba_attributes"]``) is copied next to the predictions.

Dedicated age/gender classifiers (FairFace) have a registry slot (``age_gender_model``) but no
loader yet: ``check()`` names the missing file and its URL, then refuses.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np

import schemas.attribute_prompts as prompts
import schemas.attributes as aschema
from stages import clip_zeroshot as zs
from stages.base import SKIPPED, Provenance, Result, Sample
from stages.expression import MIN_ROI, face_roi
from stages.model_stage import WEIGHTS, DeviceStage
from stages.models import common, emotion, registry, tddfa

CLIP_GROUPS = ("age", "gender", "celeba")
GROUPS = ("emotion", *CLIP_GROUPS)
ALIASES = {"clip_attributes": CLIP_GROUPS}
EMOTION_SIZE = 64
CLIP = "clip"


def expand_groups(groups: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Groups with aliases expanded, in ``GROUPS`` order; ValueError for unknown names."""
    wanted: set[str] = set()
    for g in groups:
        if g in ALIASES:
            wanted.update(ALIASES[g])
        elif g in GROUPS:
            wanted.add(g)
        else:
            raise ValueError(f"unknown attribute group {g!r}; known: {', '.join([*GROUPS, *ALIASES])}")
    return tuple(g for g in GROUPS if g in wanted)


def emotion_columns(probs: np.ndarray, threshold: float,
                    confident_threshold: float = aschema.EMOTION_CONFIDENT_THRESHOLD) -> dict:
    """The emotion columns of one face's probabilities."""
    top = int(np.argmax(probs))
    label = aschema.EMOTIONS[top] if probs[top] >= threshold else aschema.UNCERTAIN
    return {"emotion": label, "emotion_probs": probs.astype(np.float32).tolist(),
            "emotion_threshold": float(threshold),
            "emotion_confident": bool(label != aschema.UNCERTAIN and probs[top] >= confident_threshold),
            "emotion_confident_threshold": float(confident_threshold)}


def class_columns(prefix: str, classes: tuple[str, ...], probs: np.ndarray, threshold: float) -> dict:
    """``<prefix>_label`` / ``_probs`` / ``_threshold`` of one face's class probabilities."""
    top = int(np.argmax(probs))
    return {f"{prefix}_label": classes[top] if probs[top] >= threshold else aschema.UNCERTAIN,
            f"{prefix}_probs": probs.astype(np.float32).tolist(), f"{prefix}_threshold": float(threshold)}


def celeba_ground_truth(meta: dict[str, Any]) -> list[bool | None] | None:
    """The source's CelebA attributes in ``CELEBA_ATTRIBUTES`` order (None where unknown)."""
    raw = meta.get("meta")
    try:
        entry = json.loads(raw) if isinstance(raw, str) else (raw or {})
    except ValueError:
        return None
    gt = entry.get("celeba_attributes") if isinstance(entry, dict) else None
    if not isinstance(gt, dict) or not gt:
        return None
    return [bool(gt[n]) if isinstance(gt.get(n), (bool, int)) else None for n in aschema.CELEBA_ATTRIBUTES]


def celeba_columns(probs: np.ndarray, threshold: float, gt: list[bool | None] | None) -> dict:
    """CelebA columns: positive-side probabilities, labels, threshold, ground truth, agreement."""
    labels = [bool(p >= threshold) for p in probs]
    known = [(label, g) for label, g in zip(labels, gt or []) if g is not None]
    return {"celeba_probs": probs.astype(np.float32).tolist(), "celeba_labels": labels,
            "celeba_threshold": float(threshold), "celeba_gt": gt,
            "celeba_gt_agreement": float(np.mean([a == b for a, b in known])) if known else None}


@dataclass
class Attributes(DeviceStage):
    name: ClassVar[str] = "attributes"
    version: ClassVar[str] = "3"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ("detect",)
    """Used when its row is in ``Sample.upstream`` (face ROI); never required."""
    schema: ClassVar = aschema.SCHEMA
    gpus: ClassVar[float] = 0.1
    limits: ClassVar[dict] = {
        **{f"{g}_threshold": "[0, 1)" for g in ("emotion", "emotion_confident", "age", "gender", "celeba")},
        "emotion_crop": "[0.3, 1.5]", "no_detect_roi": "[0.1, 2]", "clip_context": "[1, 4]", "weights": WEIGHTS}

    groups: list[str] = field(default_factory=lambda: ["emotion"])
    """Attribute groups: emotion, age, gender, celeba (CLIP zero-shot); clip_attributes = the
    three CLIP groups."""
    emotion_model: str = emotion.FER_MINI_XCEPTION
    """Registry name of the emotion classifier (fer2013_mini_xception, bundled)."""
    emotion_threshold: float = 0.5
    """Top probability needed to keep the label, else ``uncertain`` (on lfw10, 0.5 keeps 60% of
    labels, 95% of them unchanged by mirroring; 0 keeps all, 78% unchanged)."""
    emotion_confident_threshold: float = aschema.EMOTION_CONFIDENT_THRESHOLD
    """Top probability at which ``emotion_confident`` is true: the label is trusted by captions
    and prompts. 0.85 is calibrated on a labelled set of shared photos (docs/wild.md)."""
    emotion_crop: float = 0.7
    """Side of the emotion crop relative to the 3DDFA-style face ROI (0.3-1.5)."""
    no_detect_roi: float = 0.71
    """Without detect: face ROI side over the shorter image side (as the expression stage)."""
    clip_model: str = zs.CLIP_DEFAULT
    """CLIP for the age/gender/celeba groups: HF model id or local snapshot directory."""
    age_gender_model: str = CLIP
    """clip (zero-shot), or a dedicated classifier's registry name (fairface_res34: slot only)."""
    age_threshold: float = 0.35
    """Top age-bin probability needed for ``age_label`` (5 bins; not calibrated on real CLIP)."""
    gender_threshold: float = 0.6
    """Top probability needed for ``gender_label`` (2 classes; not calibrated on real CLIP)."""
    celeba_threshold: float = 0.5
    """Positive-side probability at which a CelebA attribute's label is true."""
    clip_context: float = 2.0
    """On a source frame with detect's box: side of the CLIP view in box sides (1-4)."""
    allow_download: bool = False
    """Let a missing CLIP download from the Hugging Face hub; off: local files only (also tried:
    ``<weights_dir>/<hf id>``)."""
    weights: str = "pretrained"
    """Emotion model: pretrained (verified file) or random (tests only). A CLIP directory's
    randomness is declared by its marker file instead."""
    batch_size: int = 256
    """Faces per forward pass (0: as many as fit in ~70% of free GPU memory; CLIP runs fp32 on
    the CPU whatever ``dtype``)."""

    def active(self) -> tuple[str, ...]:
        return expand_groups(self.groups)

    def check_config(self) -> None:
        if not self.groups:
            raise ValueError("attributes needs at least one group")
        groups = self.active()
        if "emotion" in groups:
            self._check_emotion()
        if any(g in groups for g in ("age", "gender")) and self.age_gender_model != CLIP:
            if registry.get(self.age_gender_model).family != "fairface":
                raise ValueError(f"age_gender_model {self.age_gender_model!r} is not an age/gender classifier")
            registry.resolve(self.age_gender_model, self.weights_dir, check=False)  # names the URL
            raise NotImplementedError(f"{self.age_gender_model!r} has no loader yet; use {CLIP!r}")
        if any(g in groups for g in CLIP_GROUPS):
            self._clip_dir()

    def _check_emotion(self) -> None:
        spec = registry.get(self.emotion_model)
        if spec.family != "emotion":
            raise ValueError(f"model {self.emotion_model!r} is not an emotion classifier")
        if self.emotion_model == emotion.HSEMOTION_B0_8:
            registry.resolve(self.emotion_model, check=False)  # MissingWeights names the URL
            raise NotImplementedError(f"{self.emotion_model!r} has no loader yet; use "
                                      f"{emotion.FER_MINI_XCEPTION!r}")
        common.check_weights(self.emotion_model, self.weights, self.weights_dir)

    def _clip_dir(self):
        if getattr(self, "_clip_path", None) is None:
            self._clip_path = zs.resolve_clip(self.clip_model, self.allow_download, self.weights_dir)
        return self._clip_path

    def setup(self) -> None:
        super().setup()
        groups = self.active()
        self._emotion = emotion.load_emotion(self.emotion_model, self.weights_dir, self._device, self.dtype,
                                             random_init=self.weights == "random") if "emotion" in groups else None
        self._clip = None
        if any(g in groups for g in CLIP_GROUPS):
            self._clip = zs.ZeroShotClip(self._clip_dir(), self._device, self.load_dtype)
            if "age" in groups:
                self._clip.add_set("age", [prompts.AGE_PROMPTS[c] for c in aschema.AGE_BINS])
            if "gender" in groups:
                self._clip.add_set("gender", [prompts.GENDER_PROMPTS[c] for c in aschema.GENDERS])
            if "celeba" in groups:
                for name in aschema.CELEBA_ATTRIBUTES:
                    self._clip.add_set(name, list(prompts.CELEBA_PROMPTS[name]))

    def stats(self, rows: list[dict]) -> dict:
        """With CelebA ground truth (celeba source): the per-attribute accuracy of the model."""
        with_gt = [r for r in rows if r.get("celeba_gt") is not None and r.get("celeba_probs") is not None]
        if not with_gt:
            return {}
        import pyarrow as pa

        table = pa.Table.from_pylist([{k: r[k] for k in ("celeba_gt", "celeba_probs", "celeba_labels")}
                                      for r in with_gt], schema=pa.schema([self.schema.field(k) for k in
                                                                           ("celeba_gt", "celeba_probs", "celeba_labels")]))
        report = aschema.celeba_accuracy(table)
        scored = [a["accuracy"] for a in report if a["accuracy"] is not None]
        return {"celeba_samples": len(with_gt),
                "celeba_mean_accuracy": round(float(np.mean(scored)), 4) if scored else None,
                "celeba_accuracy": {a["attribute"]: a["accuracy"] for a in report}}

    def resident_mb(self) -> float:
        return 100.0 + (zs.CLIP_RESIDENT_MB if set(self.active()) & set(CLIP_GROUPS) else 0.0)

    def provenance(self) -> Provenance:
        groups = self.active()
        parts = []
        if "emotion" in groups:
            parts.append(common.provenance(self.emotion_model, self.weights == "random", self.weights_dir))
        if any(g in groups for g in CLIP_GROUPS):
            parts.append(zs.clip_provenance(self.clip_model, self._clip_dir()))
        return Provenance.combine(parts)

    def emotion_crop_of(self, sample: Sample) -> np.ndarray | None:
        """64x64 uint8 grayscale face crop (None: no usable face region)."""
        (cx, cy, side), _ = face_roi(sample, self.no_detect_roi)
        side *= self.emotion_crop
        if not all(math.isfinite(v) for v in (cx, cy, side)) or side < MIN_ROI:
            return None
        gray = cv2.cvtColor(np.ascontiguousarray(sample.image), cv2.COLOR_RGB2GRAY)
        return tddfa.crop_roi(gray, (cx, cy, side), EMOTION_SIZE, cv2.BORDER_REPLICATE)

    def emotion_probs(self, gray: list[np.ndarray]) -> np.ndarray:
        """(N, 7) float32 class probabilities of (64, 64) uint8 grayscale crops."""
        with self.inference():
            return self._emotion(self.to_device(emotion.preprocess(np.stack(gray)))).float().cpu().numpy()

    def clip_view(self, sample: Sample) -> np.ndarray:
        """The RGB image CLIP sees: the frame, or a context square around detect's box."""
        img = np.ascontiguousarray(sample.image)
        det = sample.upstream.get("detect")
        box = det.columns.get("box") if det is not None and sample.frame == "source" else None
        if box is None or len(box) != 4 or not np.all(np.isfinite(box)):
            return img
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, y2 - y1) * self.clip_context
        if side < MIN_ROI:
            return img
        size = int(min(max(round(side), 64), 1024))
        return tddfa.crop_roi(img, ((x1 + x2) / 2, (y1 + y2) / 2, side), size, cv2.BORDER_CONSTANT)

    def _clip_columns(self, views: list[np.ndarray], metas: list[dict]) -> list[dict]:
        groups, out = self.active(), [dict(attributes_clip_model=self.clip_model) for _ in views]
        feats = self._clip.image_features(views)
        if "age" in groups:
            for cols, p in zip(out, self._clip.probs(feats, "age")):
                cols.update(class_columns("age", aschema.AGE_BINS, p, self.age_threshold))
        if "gender" in groups:
            for cols, p in zip(out, self._clip.probs(feats, "gender")):
                cols.update(class_columns("gender", aschema.GENDERS, p, self.gender_threshold))
        if "celeba" in groups:
            positive = np.stack([self._clip.probs(feats, n)[:, 0] for n in aschema.CELEBA_ATTRIBUTES], axis=1)
            for cols, p, meta in zip(out, positive, metas):
                cols.update(celeba_columns(p, self.celeba_threshold, celeba_ground_truth(meta)))
        return out

    def compute(self, batch: list[Sample]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        crops = [self.emotion_crop_of(s) for s in batch]
        idx = [i for i, crop in enumerate(crops) if crop is not None or self._emotion is None]
        for i in set(range(len(batch))) - set(idx):
            results[i] = Result.fail("face_too_small", SKIPPED)
        columns: dict[int, dict] = {i: {} for i in idx}
        if self._emotion is not None and idx:
            for i, p in zip(idx, self.emotion_probs([crops[i] for i in idx])):
                columns[i].update(emotion_columns(p, self.emotion_threshold))
        if self._clip is not None and idx:
            extra = self._clip_columns([self.clip_view(batch[i]) for i in idx], [batch[i].meta for i in idx])
            for i, cols in zip(idx, extra):
                columns[i].update(cols)
        for i, cols in columns.items():  # NaN/inf probabilities: non_finite_output (framework)
            results[i] = Result(columns=cols)
        return results  # type: ignore[return-value]
