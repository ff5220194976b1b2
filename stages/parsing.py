"""parsing: per-pixel CelebAMask-HQ labels (19 classes) and a binary face mask.

The net sees the frame resized to 512x512; its class scores are resized back to the frame's
size before the argmax, so ``parsing.png`` and ``facemask.png`` match the frame pixel for pixel.
Labels are in ``schemas.parsing.CLASSES`` order for both models (ParseNet's are remapped).
When the source carries ground truth (``gtparsing.png``, celeba-hq) ``gt_miou`` scores the map
against it (``stages.parsing_eval``; in a crop frame this needs detect's affine).
Per-sample failures: ``non_finite_output`` (``bad_image`` from the framework).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

import schemas.parsing as sp
from schemas.gt import GT_PARSING
from stages import drawing, parsing_eval
from stages.base import NON_FINITE, Result, Sample
from stages.model_stage import ModelStage
from stages.models import parsing

MODELS = {"bisenet": parsing.BISENET, "parsenet": parsing.PARSENET}
_FACE_LUT = np.zeros(256, np.uint8)
_FACE_LUT[list(sp.FACE_MASK_IDS)] = 255


@dataclass
class Parsing(ModelStage):
    name: ClassVar[str] = "parsing"
    version: ClassVar[str] = "2"
    optional_reads: ClassVar[tuple[str, ...]] = ("detect",)
    schema: ClassVar[pa.Schema] = sp.SCHEMA
    files: ClassVar[tuple[str, ...]] = (sp.PARSING_IMAGE, sp.FACE_MASK_IMAGE)
    nan_columns: ClassVar[tuple[str, ...]] = ("gt_iou",)  # NaN: a class in neither map
    gpus: ClassVar[float] = 0.25
    models: ClassVar[dict] = MODELS

    model: str = "bisenet"
    """bisenet (facexlib BiSeNet, ImageNet normalisation) or parsenet (facexlib ParseNet)."""
    batch_size: int = 16
    """Images per forward pass (512x512 inputs)."""

    def stats(self, rows: list[dict]) -> dict:
        """Ground-truth scores over the shard (celeba-hq): mean IoU per class."""
        return parsing_eval.summarize([r["gt_iou"] for r in rows if r.get("gt_iou") is not None])

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [_result(lab, _gt_miou(s, lab)) for s, lab in zip(batch, self.labels([s.image for s in batch]))]

    def labels(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """uint8 label maps the size of each image (None where the scores are not finite)."""
        size = parsing.INPUT_SIZE
        with self.inference():
            scores = self._net(self.tensor([drawing.resize_to(im, size, size) for im in images]))
        return parsing.label_maps(scores, [im.shape[:2] for im in images])


def _gt_miou(sample: Sample, labels: np.ndarray | None) -> tuple[float | None, list[float] | None]:
    """IoU against the source's ground truth (mean, per class); None without one or when misplaced."""
    det = sample.upstream.get("detect")
    return parsing_eval.score_per_class(labels, (sample.meta.get("files") or {}).get(GT_PARSING), sample.frame,
                                        det.columns.get("affine") if det else None)


def _result(labels: np.ndarray | None, gt: tuple[float | None, list[float] | None] = (None, None)) -> Result:
    if labels is None:
        return Result.fail(NON_FINITE)
    fraction = np.bincount(labels.ravel(), minlength=len(sp.CLASSES)) / labels.size
    mask = _FACE_LUT[labels]
    return Result(
        columns={
            "class_fraction": fraction.astype(np.float32).tolist(),
            "face_mask_fraction": float((mask > 0).mean()),
            "model_classes": sp.MODEL_CLASSES,
            "gt_miou": gt[0],
            "gt_iou": gt[1],
        },
        files={sp.PARSING_IMAGE: labels, sp.FACE_MASK_IMAGE: mask},
    )
