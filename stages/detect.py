"""detect: find the main face with RetinaFace and align it to a 512x512 FFHQ-style crop.

The aligned crop becomes the frame every later stage works in (``produces_frame = "aligned"``).
Several faces in a photo are recorded (``n_faces``), not an error: the main one is chosen by
detector score, size, centrality and the shape of its five points (``stages/face_choice.py``;
``select: largest`` / ``central`` keep the single-rule choices), and the manifest records why
(``choice_why``) and the runner-up. Samples without a usable face are skipped with a
reason: ``no_face``, ``low_score`` (only detections between 0.5 and ``conf_threshold``) or
``face_too_small``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import schemas.detect
from stages import face_choice
from stages.models import align
from stages.base import SKIPPED, Result, Sample
from stages.model_stage import ModelStage
from stages.models import retinaface

SELECT = ("auto", "largest", "central")
LOW_SCORE_FLOOR = 0.5
"""Best detection at or above this but below conf_threshold: ``low_score``, else ``no_face``."""


@dataclass
class Detect(ModelStage):
    name: ClassVar[str] = "detect"
    version: ClassVar[str] = "2"
    schema: ClassVar = schemas.detect.SCHEMA
    gpus: ClassVar[float] = 0.25
    produces_frame: ClassVar[str | None] = "aligned"
    families: ClassVar[tuple[str, ...]] = ("retinaface",)
    limits: ClassVar[dict] = {"conf_threshold": "(0, 1)", "nms_iou": "(0, 1)", "select": SELECT,
                              "crop_size": "[64, inf)", "min_face_size": "[0, inf)", "max_side": "[0, inf)"}

    model: str = "retinaface_resnet50"
    """Registry name: retinaface_resnet50 (accurate) or retinaface_mobile0.25 (lite, bundled)."""
    conf_threshold: float = 0.8
    """Detections scoring below this are not faces (real faces score 0.95-1.0)."""
    nms_iou: float = 0.4
    """Overlap above which the weaker of two detections is dropped."""
    min_face_size: float = 32.0
    """Smallest usable face: shorter side of the detection box, source px."""
    select: str = "auto"
    """Main face: auto (score, size, centrality and five-point shape; robust to background
    faces and false positives on wild photos), largest (box area), or central (box centre
    nearest the image centre; suits datasets cropped around the labelled person)."""
    crop_size: int = 512
    """Side of the aligned crop, px."""
    max_side: int = 1024
    """Images with a longer side are detected downscaled (the crop still uses full resolution);
    a batch is padded to its largest image."""

    def compute(self, batch: list[Sample]) -> list[Result]:
        images = [np.ascontiguousarray(s.image) for s in batch]
        dets = retinaface.detect(self._net, images, self._device, self.dtype,
                                 score_floor=min(LOW_SCORE_FLOOR, self.conf_threshold),
                                 nms_iou=self.nms_iou, max_side=self.max_side)
        return [self._one(image, det) for image, det in zip(images, dets)]

    def _one(self, image: np.ndarray, det: np.ndarray) -> Result:
        faces = det[det[:, 4] >= self.conf_threshold] if len(det) else det
        if len(faces) == 0:
            if len(det):
                return Result.fail(f"low_score: {det[:, 4].max():.3f}", SKIPPED)
            return Result.fail("no_face", SKIPPED)
        choice = face_choice.choose(faces, image.shape[1], image.shape[0], self.select)
        face = faces[choice.index]
        runner = faces[choice.runner_up] if choice.runner_up is not None else None
        box, points = face[:4], face[5:15]
        face_size = float(min(box[2] - box[0], box[3] - box[1]))
        if face_size < self.min_face_size:
            return Result.fail(f"face_too_small: {face_size:.1f}px", SKIPPED)
        crop, matrix = align.align(image, points, align.ffhq_template(self.crop_size), self.crop_size)
        points_crop = align.transform_points(points, matrix)
        f32 = lambda a: np.asarray(a, dtype=np.float32).ravel().tolist()  # noqa: E731
        return Result(
            columns={
                "box": f32(box),
                "score": float(face[4]),
                "points5": f32(points),
                "n_faces": int(len(faces)),
                "face_size": face_size,
                "affine": f32(matrix),
                "points5_crop": f32(points_crop),
                "choice_value": choice.value,
                "choice_why": choice.why,
                "runner_up_box": None if runner is None else f32(runner[:4]),
                "runner_up_score": None if runner is None else float(runner[4]),
                "runner_up_value": choice.runner_up_value,
            },
            frame=crop,
        )
