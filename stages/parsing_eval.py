"""Scoring a parsing label map against ground truth (CelebAMask-HQ's ``gtparsing.png``).

The ground truth lives in the source frame; the parsing stage usually works in detect's aligned
(or restored, same geometry) crop. ``warp_labels`` moves the ground truth into the crop with
detect's 2x3 source->crop affine, nearest neighbour so labels are never blended. Crop pixels
that fall outside the source image get ``IGNORE`` and are not scored (the crop shows reflected
padding there, whose true label nobody knows).

IoU is per class over the scored pixels; the mean is over classes present in either map
(background included), so a class missing from both neither helps nor hurts.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np

from schemas.parsing import CLASSES

IGNORE = 255
N_CLASSES = len(CLASSES)


def affine_matrix(values: Sequence[float] | None) -> np.ndarray | None:
    """Six finite numbers (row-major 2x3) as a float64 (2, 3) matrix, else None."""
    if values is None:
        return None
    m = np.asarray(values, dtype=np.float64).reshape(-1)
    if m.size != 6 or not np.all(np.isfinite(m)):
        return None
    return m.reshape(2, 3)


def warp_labels(labels: np.ndarray, affine: Sequence[float] | np.ndarray,
                size: tuple[int, int]) -> np.ndarray:
    """``labels`` (source frame) in the crop frame of ``size`` = (width, height).

    Nearest neighbour; crop pixels whose source lies outside ``labels`` become ``IGNORE``.
    """
    m = affine_matrix(np.asarray(affine).reshape(-1).tolist())
    if m is None:
        raise ValueError("affine must be 6 finite numbers")
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D uint8 map, got {labels.dtype} {labels.shape}")
    return cv2.warpAffine(labels, m, size, flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)


def iou_per_class(pred: np.ndarray, gt: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """float64 (n_classes,) IoU per class, NaN for classes in neither map; ``IGNORE`` gt skipped."""
    if pred.shape != gt.shape:
        raise ValueError(f"shapes differ: pred {pred.shape}, gt {gt.shape}")
    scored = gt != IGNORE
    p = pred[scored].astype(np.int64).ravel()
    g = gt[scored].astype(np.int64).ravel()
    if p.size and (p.max() >= n_classes or g.max() >= n_classes):
        raise ValueError(f"labels must be below {n_classes}")
    confusion = np.bincount(g * n_classes + p, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def miou_per_class(pred: np.ndarray, gt: np.ndarray, n_classes: int = N_CLASSES) -> dict[str, float]:
    """Class name -> IoU for the classes present in either map (names from ``CLASSES``)."""
    ious = iou_per_class(pred, gt, n_classes)
    names = CLASSES if n_classes == N_CLASSES else tuple(str(i) for i in range(n_classes))
    return {names[i]: float(v) for i, v in enumerate(ious) if not math.isnan(v)}


def mean_iou(pred: np.ndarray, gt: np.ndarray, n_classes: int = N_CLASSES) -> float | None:
    """Mean IoU over classes present in either map; None when no pixel is scored."""
    ious = iou_per_class(pred, gt, n_classes)
    present = ious[~np.isnan(ious)]
    return float(present.mean()) if present.size else None


def decode_labels(data: bytes) -> np.ndarray:
    """A grey uint8 label map from PNG bytes."""
    labels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError("not a grey 8-bit PNG label map")
    return labels


def gt_in_frame(gt: np.ndarray, frame: str, size: tuple[int, int],
                affine: Any = None) -> np.ndarray | None:
    """Ground truth (source frame) in a stage's frame of ``size`` = (width, height), or None.

    ``source``: as is when the sizes match. ``aligned``/``restored``: warped with detect's affine.
    """
    if frame == "source":
        return gt if gt.shape[::-1] == tuple(size) else None
    if affine_matrix(affine) is None:
        return None
    return warp_labels(gt, affine, size)


def score(pred: np.ndarray, gt_png: bytes, frame: str, affine: Any = None) -> float | None:
    """Mean IoU of ``pred`` (in ``frame``) against ``gtparsing.png`` bytes; None if not comparable."""
    gt = gt_in_frame(decode_labels(gt_png), frame, (pred.shape[1], pred.shape[0]), affine)
    return None if gt is None else mean_iou(pred, gt)


def score_per_class(pred: np.ndarray | None, gt_png: bytes | None, frame: str,
                    affine: Any = None) -> tuple[float | None, list[float] | None]:
    """(mean IoU, IoU per class with NaN for absent classes), or (None, None) without a prediction
    or ground truth, or when they are not comparable: unreadable or out-of-range ground truth is
    no score, not a failed sample."""
    if pred is None or gt_png is None:
        return None, None
    try:
        gt = gt_in_frame(decode_labels(gt_png), frame, (pred.shape[1], pred.shape[0]), affine)
        if gt is None:
            return None, None
        ious = iou_per_class(pred, gt)
    except ValueError:
        return None, None
    present = ious[~np.isnan(ious)]
    return (float(present.mean()) if present.size else None), ious.astype(np.float32).tolist()


def summarize(per_class: list[list[float]]) -> dict[str, Any]:
    """Dataset-level scores from per-sample per-class IoUs: mean IoU per class and overall."""
    if not per_class:
        return {}
    arr = np.array(per_class, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        means = np.nanmean(np.where(np.isfinite(arr), arr, np.nan), axis=0)
    per = {CLASSES[i]: round(float(v), 4) for i, v in enumerate(means) if np.isfinite(v)}
    return {"gt_samples": len(per_class), "gt_mean_iou": round(float(np.mean(list(per.values()))), 4) if per else None,
            "gt_iou_per_class": per}
