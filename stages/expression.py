"""expression: 3DDFA-V2 3DMM parameters (pose, 40 shape, 10 expression coefficients) per face.

The face ROI is the square 3DDFA-V2 crops (``face_roi``): from detect's five points in the
aligned crop, from its box in the source photo, or, without detect, a centred square of
``no_detect_roi`` times the shorter side (0.71 reproduces the ROI 3DDFA-V2 builds from
RetinaFace boxes on 250x250 LFW/CASIA-WebFace photos; 1.0 is the whole image). Angles follow
the ``landmarks``/``pose`` sign convention (``schemas/expression.py``); when those stages'
rows are in ``Sample.upstream`` the mean absolute angle difference to them is recorded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch

import schemas.expression as xschema
from stages.models import align
from stages.base import SKIPPED, Result, Sample
from stages.model_stage import ModelStage
from stages.models import common, registry, tddfa

MIN_ROI = 16.0
"""ROIs smaller than this (px) hold too little face to regress: skipped as ``face_too_small``."""
FAMILIES = ("tddfa",)


def _points(values) -> np.ndarray | None:
    """Ten finite numbers as (5, 2), else None."""
    if values is None:
        return None
    p = np.asarray(values, dtype=np.float64).reshape(-1)
    return p.reshape(5, 2) if p.size == 10 and np.all(np.isfinite(p)) else None


def face_roi(sample: Sample, no_detect_roi: float) -> tuple[tuple[float, float, float], str]:
    """The 3DDFA-V2 ROI (cx, cy, side) in the sample's frame and where it came from."""
    det = sample.upstream.get("detect")
    h, w = sample.image.shape[:2]
    if det is not None:
        cols = det.columns
        if sample.frame == "source":
            box = cols.get("box")
            if box is not None and len(box) == 4 and np.all(np.isfinite(box)):
                return tddfa.roi_from_box(box), "box"
            points = _points(cols.get("points5"))
            if points is not None:
                return tddfa.roi_from_points(points), "points5"
        else:
            points = _points(cols.get("points5_crop"))
            if points is not None:
                return tddfa.roi_from_points(points), "points5_crop"
            return tddfa.roi_from_points(align.ffhq_template(min(h, w))), "template"
    return (w / 2.0, h / 2.0, no_detect_roi * min(h, w)), "centre"


def pose_from_params(params: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees, in the landmarks/pose sign convention."""
    rot, _ = tddfa.camera_to_rotation(params)
    yaw, pitch, roll = tddfa.rotation_to_angles(rot)
    # 3DDFA's pitch is positive looking down and its roll positive counter-clockwise on screen
    return yaw, -pitch, -roll


def angle_diff(a: float, b: float) -> float:
    """|a - b| in degrees, wrapped to [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def pose_agreement(pose: tuple[float, float, float], upstream) -> float | None:
    """Mean absolute yaw/pitch/roll difference to an upstream row's angles; None without them."""
    if upstream is None:
        return None
    theirs = [upstream.columns.get(k) for k in ("yaw", "pitch", "roll")]
    if any(v is None or not math.isfinite(float(v)) for v in theirs):
        return None
    return float(np.mean([angle_diff(a, float(b)) for a, b in zip(pose, theirs)]))


@dataclass
class Expression(ModelStage):
    name: ClassVar[str] = "expression"
    version: ClassVar[str] = "1"
    reads: ClassVar[tuple[str, ...]] = ()
    optional_reads: ClassVar[tuple[str, ...]] = ("detect", "landmarks", "pose")
    """Used when their rows are in ``Sample.upstream``; never required."""
    schema: ClassVar = xschema.SCHEMA
    files: ClassVar[tuple[str, ...]] = (xschema.EXPR_FILE,)
    gpus: ClassVar[float] = 0.1

    model: str = tddfa.WEIGHTS
    """Registry name of the 3DMM regressor: tddfa_v2_mb05 (3DDFA-V2 MobileNet x0.5, bundled)."""
    batch_size: int = 128
    """Faces per forward pass (120x120 crops)."""
    no_detect_roi: float = 0.71
    """Without detect: side of the centred square ROI over the shorter image side (0.1-2)."""

    def check_model(self) -> None:
        if registry.get(self.model).family not in FAMILIES:
            raise ValueError(f"model {self.model!r} is not a 3DMM regressor ({', '.join(FAMILIES)})")
        if not 0.1 <= self.no_detect_roi <= 2.0:
            raise ValueError(f"no_detect_roi must be in [0.1, 2], got {self.no_detect_roi}")
        if self.weights == "pretrained":
            registry.resolve(registry.get(self.model).extra["mean_std"], self.weights_dir)

    def load(self):  # noqa: ANN201
        return tddfa.load_tddfa(self.model, self.weights_dir, device=self._device, dtype=self.dtype,
                                random_init=self.random_weights)

    @torch.inference_mode()
    def regress(self, crops_bgr: list[np.ndarray]) -> np.ndarray:
        """(N, 62) float32 de-normalised parameters of 120x120 BGR uint8 crops."""
        x = tddfa.preprocess(np.stack(crops_bgr)).to(self._device)
        if self._device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with common.autocast(self._device, common.torch_dtype(self.dtype)):
            params = self._net.params(x)
        return params.cpu().numpy().astype(np.float32)

    def _crop(self, sample: Sample) -> tuple[np.ndarray | None, str, str]:
        """(120x120 BGR crop, roi source, failure reason)."""
        img = sample.image
        roi, source = face_roi(sample, self.no_detect_roi)
        if not all(math.isfinite(v) for v in roi) or roi[2] < MIN_ROI:
            return None, source, "face_too_small"
        crop = tddfa.crop_roi(np.ascontiguousarray(img), roi, tddfa.INPUT_SIZE)
        return cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), source, ""

    def compute(self, batch: list[Sample]) -> list[Result]:
        results: list[Result | None] = [None] * len(batch)
        crops, idx, sources = [], [], []
        for i, sample in enumerate(batch):
            crop, source, reason = self._crop(sample)
            if crop is None:
                results[i] = Result.fail(reason, SKIPPED)
                continue
            crops.append(crop)
            idx.append(i)
            sources.append(source)
        params = self.regress(crops) if crops else []
        for j, p in enumerate(params):
            results[idx[j]] = self._result(batch[idx[j]], p, sources[j])
        return results  # type: ignore[return-value]

    def _result(self, sample: Sample, params: np.ndarray, source: str) -> Result:
        if not np.all(np.isfinite(params)):
            return Result.fail("non_finite_output")
        pose = pose_from_params(params)
        if not all(math.isfinite(a) for a in pose):
            return Result.fail("non_finite_output")
        shape = params[tddfa.N_POSE:tddfa.N_POSE + tddfa.N_SHAPE]
        expr = params[tddfa.N_POSE + tddfa.N_SHAPE:]
        columns = {
            "yaw": pose[0], "pitch": pose[1], "roll": pose[2],
            "shape": shape.tolist(), "expression": expr.tolist(), "params": params.tolist(),
            "diff_to_landmarks_deg": pose_agreement(pose, sample.upstream.get("landmarks")),
            "diff_to_posenet_deg": pose_agreement(pose, sample.upstream.get("pose")),
            "roi_source": source,
        }
        return Result(columns=columns, files={xschema.EXPR_FILE: expr.astype(np.float32)})
