"""consistency: cross-checks between the annotations of one sample (CPU, no model).

Compares what independent stages say about the same face: head pose from three estimators,
the parsing face mask against the landmark hull, the landmarks against detect's box, and the
identity drift of restoration. Every input is optional; a check whose inputs are missing is
null. Thresholds turn the checks into a verdict (``good`` / ``suspect`` / ``bad``) with reasons;
columns are described in ``schemas/consistency.py``.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
import pyarrow as pa

import schemas.consistency as schema
from stages import geometry
from stages.base import Provenance, Result, Sample, Stage

CROP_FRAMES = ("aligned",)
"""Frames whose pixels are detect's crop (``affine`` maps source pixels into them)."""


@dataclass
class Consistency(Stage):
    """Cross-checks of pose, mask, landmarks, box and identity drift; a good/suspect/bad verdict."""

    name: ClassVar[str] = "consistency"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = (
        "detect", "restore", "landmarks", "pose", "parsing", "identity", "expression")
    schema: ClassVar[pa.Schema] = schema.SCHEMA
    needs_image: ClassVar[bool] = False
    limits: ClassVar[dict] = {"max_pose_diff_deg": "(0, inf)", "min_mask_iou": "[-1, 1]",
                              "min_landmarks_in_box": "[-1, 1]", "min_restore_cosine": "[-1, 1]",
                              "box_margin": "[0, 1]", "bad_at": "[1, inf)"}

    max_pose_diff_deg: float = 15.0
    """Largest mean |yaw, pitch, roll| difference between two pose estimators that still agrees."""
    min_mask_iou: float = 0.5
    """Smallest IoU of the parsing face mask and the landmark hull that still agrees."""
    min_landmarks_in_box: float = 0.9
    """Smallest share of the landmarks inside detect's (grown) box that still agrees."""
    box_margin: float = 0.1
    """Grow detect's box by this fraction of its width/height on every side before counting:
    detector boxes may clip the forehead or chin that the mesh still covers."""
    min_restore_cosine: float = 0.6
    """Smallest identity cosine before/after restoration that still counts as the same person."""
    bad_at: int = 2
    """Number of failed checks that makes a sample ``bad``; fewer (but some) make it ``suspect``."""
    random_is_bad: bool = True
    """Upstream columns from random weights make the sample ``bad`` (else only ``suspect``)."""
    batch_size: int = 64
    """Samples per call (the work is cheap numpy)."""

    def provenance(self) -> Provenance:
        return Provenance(model=f"consistency-checks:v{self.version}")

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [Result(columns=self.measure(sample)) for sample in batch]

    def measure(self, sample: Sample) -> dict[str, Any]:
        """All checks, the verdict and its reasons for one sample."""
        up = {name: res.columns for name, res in sample.upstream.items()}
        lmk = _landmarks(sample)
        cols: dict[str, Any] = {
            "posenet_vs_pnp_deg": pose_difference(up.get("pose"), up.get("landmarks")),
            "tddfa_vs_pnp_deg": pose_difference(up.get("expression"), up.get("landmarks")),
            "tddfa_vs_posenet_deg": pose_difference(up.get("expression"), up.get("pose")),
            "facemask_vs_hull_iou": None,
            "landmarks_in_box": None,
            "restore_cosine": _finite((up.get("identity") or {}).get("restore_cosine")),
        }
        mask = _facemask(sample)
        if lmk is not None and mask is not None and _same_frame(up.get("landmarks"), up.get("parsing")):
            cols["facemask_vs_hull_iou"] = hull_iou(lmk, mask)
        if lmk is not None and "detect" in up:
            geometry = _geometry_of(sample)
            cols["landmarks_in_box"] = landmarks_in_box(lmk, up["detect"], geometry, self.box_margin)
        random_stages = sorted(n for n, c in up.items() if c.get("weights_random"))
        reasons, failed, checked = self._verdict_inputs(cols, random_stages)
        cols["quality"] = self._verdict(failed, random_stages, checked)
        cols["quality_reasons"] = reasons
        cols["random_stages"] = random_stages
        return cols

    def _verdict_inputs(self, cols: dict[str, Any], random_stages: list[str]) -> tuple[list[str], int, int]:
        """(reasons in REASONS order, number of failed checks, number of checks that ran)."""
        failed: set[str] = set()
        checked = 0
        for column, (reason, higher_is_worse) in schema.CHECKS.items():
            value = cols[column]
            if value is None:
                continue
            checked += 1
            if higher_is_worse and value > self.max_pose_diff_deg:
                failed.add(reason)
            elif not higher_is_worse and value < self._minimum(column):
                failed.add(reason)
        reasons = [r for r in schema.REASONS if r in failed]
        if random_stages:
            reasons.append(schema.RANDOM_WEIGHTS)
        return reasons, len(failed), checked

    def _minimum(self, column: str) -> float:
        return {"facemask_vs_hull_iou": self.min_mask_iou, "landmarks_in_box": self.min_landmarks_in_box,
                "restore_cosine": self.min_restore_cosine}[column]

    def _verdict(self, failed: int, random_stages: list[str], checked: int) -> str | None:
        if random_stages and self.random_is_bad:
            return schema.BAD
        if failed >= self.bad_at:
            return schema.BAD
        if failed or random_stages:
            return schema.SUSPECT
        return schema.GOOD if checked else None


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pose_difference(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """Mean absolute yaw/pitch/roll difference (each wrapped to [-180, 180]); None without both."""
    if a is None or b is None or not _same_frame(a, b):
        return None
    x, y = geometry.angles_in(a), geometry.angles_in(b)
    return None if x is None or y is None else geometry.mean_angle_difference(x, y)


def _same_frame(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    # rows read from disk carry their frame; results handed over in memory share the run's frame
    fa, fb = (a or {}).get("frame"), (b or {}).get("frame")
    return fa is None or fb is None or fa == fb


def hull_iou(lmk: np.ndarray, facemask: np.ndarray) -> float | None:
    """IoU of the filled convex hull of the landmarks' x, y and a 0/255 mask of the same frame."""
    h, w = facemask.shape[:2]
    xy = lmk[:, :2]
    if len(xy) < 3 or not np.isfinite(xy).all():
        return None
    hull = cv2.convexHull(np.round(xy).astype(np.int32))
    filled = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(filled, hull, 1)
    a, b = filled.astype(bool), facemask > 127
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else None


def landmarks_in_box(lmk: np.ndarray, detect: dict[str, Any], geometry: str, margin: float) -> float | None:
    """Share of landmarks inside detect's box grown by ``margin``; landmarks given in ``geometry``."""
    box = detect.get("box")
    if box is None or len(box) != 4 or not np.isfinite(np.asarray(box, np.float64)).all():
        return None
    xy = lmk[:, :2].astype(np.float64)
    if geometry in CROP_FRAMES:
        affine = detect.get("affine")
        if affine is None or len(affine) != 6:
            return None
        inverse = cv2.invertAffineTransform(np.asarray(affine, np.float64).reshape(2, 3))
        xy = xy @ inverse[:, :2].T + inverse[:, 2]
    elif geometry != "source":
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    inside = (xy[:, 0] >= x0 - dx) & (xy[:, 0] <= x1 + dx) & (xy[:, 1] >= y0 - dy) & (xy[:, 1] <= y1 + dy)
    return float(inside.mean()) if len(xy) else None


def _geometry_of(sample: Sample) -> str:
    """Pixel geometry of the landmarks' frame: ``source`` or ``aligned`` (restored keeps its input's)."""
    frame = sample.upstream["landmarks"].columns.get("frame") or sample.frame
    if frame == "restored":
        restore = sample.upstream.get("restore")
        return (restore.columns.get("input_frame") if restore else None) or "aligned"
    return frame


def _landmarks(sample: Sample) -> np.ndarray | None:
    res = sample.upstream.get("landmarks")
    data = res.files.get("lmk.npy") if res is not None else None
    if not data:
        return None
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    return arr if arr.ndim == 2 and arr.shape[1] >= 2 else None


def _facemask(sample: Sample) -> np.ndarray | None:
    res = sample.upstream.get("parsing")
    data = res.files.get("facemask.png") if res is not None else None
    if not data:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
