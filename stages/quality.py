"""quality: cheap per-face image quality on the CPU (sharpness, exposure, tone, size, JPEG).

What each column measures, and the default skip thresholds, are documented in
``schemas/quality.py``. The stage reads detect's row when it ran (face ROI, eye points, box,
face count) and the source row in ``Sample.meta`` (width, height, format, and ``jpeg_quality``,
which the source step reads from the file's quantisation tables). Without it (a non-JPEG
source) the JPEG quality is estimated by re-compressing the source frame; see the schema module. An optional learned FIQA model
(``fiqa_model``) scores the ArcFace-aligned 112 px face.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

import schemas.quality as qs
from stages.models import align
from stages.jpeg import jpeg_quality_from_bytes
from stages.base import NON_FINITE, SKIPPED, Provenance, Result, Sample
from stages.model_stage import WEIGHTS, DeviceStage
from stages.types import finite
from stages.expression import MIN_ROI, face_roi
from stages.models import common, fiqa, registry, tddfa

RECOMPRESS_QUALITIES = range(20, 100)
RECOMPRESS_SIDE = 128  # a centred, 16-aligned patch: enough blocks, 80 encodes stay ~10 ms


def jpeg_quality_by_recompression(rgb: np.ndarray) -> int | None:
    """The quality at which re-encoding the decoded image's luma is a sharp minimum; None if none."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    side = min(RECOMPRESS_SIDE, h // 16 * 16, w // 16 * 16)
    if side < 32:
        return None
    y0, x0 = (h - side) // 32 * 16, (w - side) // 32 * 16  # keep the original 16 px MCU grid
    patch = gray[y0:y0 + side, x0:x0 + side]
    errors = []
    for q in RECOMPRESS_QUALITIES:
        _, buf = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, q])
        errors.append(np.abs(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.int16) - patch).mean())
    e = np.asarray(errors)
    i = int(np.argmin(e[1:-1])) + 1
    if e[i] < 0.5 * min(e[i - 1], e[i + 1]) and e[i] < 0.5:
        return RECOMPRESS_QUALITIES[i]
    return None


def tone_of(rgb: np.ndarray, gray_chroma: float, sepia_hue_spread: float) -> tuple[float, float, str]:
    """(mean channel spread, hue spread, tone) of an RGB uint8 image."""
    spread = float((rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)).mean())
    ycc = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YCrCb).astype(np.float32)
    unclipped = (rgb.max(axis=2) < 250) & (rgb.min(axis=2) > 5)
    cr, cb = ycc[..., 1][unclipped] - 128.0, ycc[..., 2][unclipped] - 128.0
    weight = float(np.hypot(cr, cb).sum())
    hue = 1.0 - float(np.hypot(cr.sum(), cb.sum())) / weight if weight > 1e-6 else 1.0
    if spread < gray_chroma:
        return spread, hue, "grayscale"
    return spread, hue, "sepia" if hue < sepia_hue_spread else "color"


def exposure(gray: np.ndarray) -> dict[str, float]:
    p5, p50, p95 = np.percentile(gray, (5, 50, 95))
    return {"luma_p5": float(p5), "luma_p50": float(p50), "luma_p95": float(p95),
            "clipped_low": float((gray <= qs.CLIP_LOW).mean()), "clipped_high": float((gray >= qs.CLIP_HIGH).mean())}


def detect_columns(det: Result | None, meta: dict[str, Any]) -> dict[str, Any]:
    """interocular_px, face_area_ratio, n_faces from detect's row (source px) and the source size."""
    cols: dict[str, Any] = {"interocular_px": None, "face_area_ratio": None, "n_faces": None}
    if det is None:
        return cols
    points, box = finite(det.columns.get("points5"), 10), finite(det.columns.get("box"), 4)
    if points is not None:
        cols["interocular_px"] = float(np.hypot(*(points[2:4] - points[0:2])))
    width, height = meta.get("width"), meta.get("height")
    if box is not None and width and height:
        cols["face_area_ratio"] = float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0) / (width * height))
    if det.columns.get("n_faces") is not None:
        cols["n_faces"] = int(det.columns["n_faces"])
    return cols


@dataclass
class Quality(DeviceStage):
    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ("detect",)
    """Used when its row is in ``Sample.upstream``: face ROI, eye distance, box, face count."""
    schema: ClassVar = qs.SCHEMA
    gpus: ClassVar[float] = 0.1
    """Only requested when ``device`` is cuda (the FIQA model); the metrics run on the CPU."""
    limits: ClassVar[dict] = {"min_sharpness": "[0, inf)", "min_interocular_px": "[0, inf)",
                              "max_faces": "[0, inf)", "gray_chroma": "[0, 255]", "sepia_hue_spread": "[0, 1]",
                              "no_detect_roi": "[0.1, 2]", "weights": WEIGHTS}

    min_sharpness: float = 0.0
    """Skip as ``blurry`` below this face-region Laplacian variance (0: off)."""
    min_interocular_px: float = 8.0
    """Skip as ``face_too_small`` below this eye distance in source px (needs detect; 0: off)."""
    max_faces: int = 0
    """Skip as ``too_many_faces`` when detect saw more faces (0: off)."""
    skip_monochrome: bool = False
    """Skip grayscale and sepia images as ``monochrome``."""
    gray_chroma: float = 3.0
    """Mean channel spread (0-255) below which an image is grayscale."""
    sepia_hue_spread: float = 0.012
    """Hue spread below which a coloured image is sepia (single-hue) toned."""
    no_detect_roi: float = 0.71
    """Without detect: face ROI side over the shorter image side (as the expression stage)."""
    fiqa_model: str = ""
    """Learned quality model's registry name (cr_fiqa_s, cr_fiqa_l, ediffiqa_t); "" for none."""
    min_fiqa: float | None = None
    """Skip as ``low_fiqa`` below this fiqa_score (None: off)."""
    weights: str = "pretrained"
    """pretrained (verified file) or random (real architecture, random init; for tests only)."""
    device: str = "cpu"
    """auto, cpu, cuda or cuda:N (only the FIQA model uses it; dtype and batch_size are its too)."""
    batch_size: int = 64
    """Faces per batch (0: as many as fit in ~70% of free GPU memory)."""

    def check_config(self) -> None:
        if self.fiqa_model:
            if registry.get(self.fiqa_model).family != "fiqa":
                raise ValueError(f"model {self.fiqa_model!r} is not a face image quality model")
            common.check_weights(self.fiqa_model, self.weights, self.weights_dir)
        elif self.min_fiqa is not None:
            raise ValueError("quality.min_fiqa needs a fiqa_model")

    def setup(self) -> None:
        super().setup()
        self._net = fiqa.load_fiqa(self.fiqa_model, self.weights_dir, self._device, self.dtype,
                                   random_init=self.weights == "random") if self.fiqa_model else None

    def provenance(self) -> Provenance:
        if not self.fiqa_model:
            return Provenance(model="quality-metrics")
        return common.provenance(self.fiqa_model, self.weights == "random", self.weights_dir)

    def measure(self, sample: Sample) -> tuple[dict[str, Any], str]:
        """The cheap columns of one sample, and a failure reason ('' when measured)."""
        img = sample.image
        (cx, cy, side), _ = face_roi(sample, self.no_detect_roi)
        if not all(math.isfinite(v) for v in (cx, cy, side)) or side < MIN_ROI:
            return {}, "face_too_small: no usable face region"
        face = tddfa.crop_roi(np.ascontiguousarray(img), (cx, cy, side), qs.FACE_SIZE, cv2.BORDER_REPLICATE)
        gray = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
        chroma, hue, tone = tone_of(img, self.gray_chroma, self.sepia_hue_spread)
        cols = {"sharpness": float(cv2.Laplacian(gray, cv2.CV_64F).var()), **exposure(gray),
                "chroma": chroma, "hue_spread": hue, "tone": tone,
                **detect_columns(sample.upstream.get("detect"), sample.meta), **self._jpeg(sample)}
        return cols, ""

    def _jpeg(self, sample: Sample) -> dict[str, Any]:
        meta, quality, method = sample.meta, None, None
        if isinstance(meta.get("jpeg_quality"), int):  # from the source step (DQT)
            quality, method = meta["jpeg_quality"], "dqt"
        elif isinstance(meta.get("source_bytes"), (bytes, bytearray)):
            quality = jpeg_quality_from_bytes(bytes(meta["source_bytes"]))
            method = "dqt" if quality is not None else None
        elif sample.frame == "source" and meta.get("format") in (None, "JPEG", "MPO"):
            quality = jpeg_quality_by_recompression(sample.image)
            method = "recompress" if quality is not None else None
        return {"jpeg_quality": quality, "jpeg_quality_method": method}

    def skip_reason(self, c: dict[str, Any]) -> str:
        """The first threshold a measured sample fails ('' when it passes all)."""
        if c["interocular_px"] is not None and c["interocular_px"] < self.min_interocular_px:
            return f"face_too_small: interocular {c['interocular_px']:.1f} px < {self.min_interocular_px:g}"
        if c["sharpness"] < self.min_sharpness:
            return f"blurry: sharpness {c['sharpness']:.1f} < {self.min_sharpness:g}"
        if self.max_faces and c["n_faces"] is not None and c["n_faces"] > self.max_faces:
            return f"too_many_faces: {c['n_faces']} > {self.max_faces}"
        if self.skip_monochrome and c["tone"] != "color":
            return f"monochrome: {c['tone']}"
        if self.min_fiqa is not None and c.get("fiqa_score") is not None and c["fiqa_score"] < self.min_fiqa:
            return f"low_fiqa: {c['fiqa_score']:.3f} < {self.min_fiqa:g}"
        return ""

    def arcface_crop(self, sample: Sample) -> np.ndarray | None:
        points = sample.points5()
        if points is None:
            return None
        face, _ = align.align(np.ascontiguousarray(sample.image), points, align.ARCFACE_112, 112)
        return face

    def _fiqa(self, faces: list[np.ndarray]) -> np.ndarray:
        with self.inference():
            return self._net(fiqa.preprocess(np.stack(faces)).to(self._device)).float().cpu().numpy()

    def compute(self, batch: list[Sample]) -> list[Result]:
        measured: list[tuple[dict[str, Any], str]] = [self.measure(s) for s in batch]
        if self._net is not None:
            todo = [(i, f) for i, (s, (c, err)) in enumerate(zip(batch, measured))
                    if not err and (f := self.arcface_crop(s)) is not None]
            for (i, _), score in zip(todo, self._fiqa([f for _, f in todo]) if todo else []):
                measured[i][0].update(fiqa_score=float(score), fiqa_model=self.fiqa_model)
        results = []
        for cols, err in measured:
            if err:
                results.append(Result.fail(err, SKIPPED))
            elif not all(v is None or not isinstance(v, float) or math.isfinite(v) for v in cols.values()):
                results.append(Result.fail(NON_FINITE))
            else:
                reason = self.skip_reason(cols)
                results.append(Result.fail(reason, SKIPPED) if reason else Result(columns=cols))
        return results
