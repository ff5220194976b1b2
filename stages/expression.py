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

import schemas.expression as xschema
from stages import geometry
from stages.models import align
from stages.base import SKIPPED, Result, Sample
from stages.model_stage import ModelStage
from stages.models import registry, tddfa

MIN_ROI = 16.0
"""ROIs smaller than this (px) hold too little face to regress: skipped as ``face_too_small``."""


def face_roi(sample: Sample, no_detect_roi: float) -> tuple[tuple[float, float, float], str]:
    """The 3DDFA-V2 ROI (cx, cy, side) in the sample's frame and where it came from."""
    h, w = sample.image.shape[:2]
    if "detect" in sample.upstream:
        box, points = sample.box(), sample.points5()
        if box is not None:
            return tddfa.roi_from_box(box), "box"
        if points is not None:
            return tddfa.roi_from_points(points), "points5" if sample.frame == "source" else "points5_crop"
        if sample.frame != "source":
            return tddfa.roi_from_points(align.ffhq_template(min(h, w))), "template"
    return (w / 2.0, h / 2.0, no_detect_roi * min(h, w)), "centre"


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
    families: ClassVar[tuple[str, ...]] = ("tddfa",)
    limits: ClassVar[dict] = {"no_detect_roi": "[0.1, 2]"}

    model: str = tddfa.WEIGHTS
    """Registry name of the 3DMM regressor: tddfa_v2_mb05 (3DDFA-V2 MobileNet x0.5, bundled)."""
    batch_size: int = 128
    """Faces per forward pass (120x120 crops)."""
    no_detect_roi: float = 0.71
    """Without detect: side of the centred square ROI over the shorter image side (0.1-2)."""

    def check_config(self) -> None:
        if self.weights == "pretrained":  # the parameters' mean and std, a file of their own
            registry.resolve(registry.get(self.model).extra["mean_std"], self.weights_dir)

    def load(self):  # noqa: ANN201
        return tddfa.load_tddfa(self.model, self.weights_dir, device=self._device, dtype=self.dtype,
                                random_init=self.random_weights)

    def regress(self, crops_bgr: list[np.ndarray]) -> np.ndarray:
        """(N, 62) float32 de-normalised parameters of 120x120 BGR uint8 crops."""
        with self.inference():
            params = self._net.params(self.to_device(tddfa.preprocess(np.stack(crops_bgr))))
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
        crops = [self._crop(s) for s in batch]  # (crop, roi source, reason)
        todo = [i for i, (crop, _, _) in enumerate(crops) if crop is not None]
        results = [Result.fail(reason, SKIPPED) for _, _, reason in crops]
        for i, params in zip(todo, self.regress([crops[i][0] for i in todo]) if todo else []):
            results[i] = self._result(batch[i], params, crops[i][1])
        return results

    def _result(self, sample: Sample, params: np.ndarray, source: str) -> Result:
        pose = tddfa.pose_angles(params)  # NaN/inf in params or angles: non_finite_output (framework)
        shape = params[tddfa.N_POSE:tddfa.N_POSE + tddfa.N_SHAPE]
        expr = params[tddfa.N_POSE + tddfa.N_SHAPE:]
        columns = {
            "yaw": pose[0], "pitch": pose[1], "roll": pose[2],
            "shape": shape.tolist(), "expression": expr.tolist(), "params": params.tolist(),
            "diff_to_landmarks_deg": _agreement(pose, sample.upstream.get("landmarks")),
            "diff_to_posenet_deg": _agreement(pose, sample.upstream.get("pose")),
            "roi_source": source,
        }
        return Result(columns=columns, files={xschema.EXPR_FILE: expr.astype(np.float32)})


def _agreement(pose: tuple[float, float, float], upstream: Result | None) -> float | None:
    """Mean absolute yaw/pitch/roll difference to an upstream row's angles; None without them."""
    theirs = geometry.angles_in(upstream.columns if upstream is not None else None)
    return None if theirs is None else geometry.mean_angle_difference(pose, theirs)
