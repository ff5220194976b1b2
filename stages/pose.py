"""pose: head pose (yaw, pitch, roll) from a 66-bin classifier, plus a pose-axes image.

``hopenet_r50`` is Hopenet's ResNet50 (deep-head-pose or facexlib weights); ``lightweight_headpose``
is the bundled 0.9 MB net with real weights. Signs follow ``schemas.pose`` (the same as the
landmarks stage's solvePnP pose, so ``pnp_diff_*`` needs no conversion). Input: a square centre
crop of ``crop`` times the shorter side, resized to 224, ImageNet normalisation. The default
``crop`` of 1.0 suits detect's 512 FFHQ-aligned crops; for loosely framed photos (e.g. 250 px
LFW) about 0.65 matches the framing the nets were trained on.
Per-sample failures: ``non_finite_output`` (``bad_image`` from the framework).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

import schemas.pose
from stages import drawing
from stages.base import ERROR, Provenance, Result, Sample
from stages.model_stage import ModelStage
from stages.models import common, hopenet, registry

MODELS: dict[str, tuple[str, ...]] = {
    # model -> registry names it accepts, the default first
    "hopenet_r50": (hopenet.HOPENET_DHP, hopenet.HOPENET_FACEXLIB),
    "lightweight_headpose": (hopenet.LIGHTWEIGHT,),
}
ALIGNED_FRAMES = ("aligned", "restored")
"""Frames in which detect's ``points5_crop`` are pixel coordinates."""


@dataclass
class Pose(ModelStage):
    name: ClassVar[str] = "pose"
    version: ClassVar[str] = "1"
    schema: ClassVar[pa.Schema] = schemas.pose.SCHEMA
    files: ClassVar[tuple[str, ...]] = (schemas.pose.POSE_IMAGE,)
    gpus: ClassVar[float] = 0.25

    model: str = "hopenet_r50"
    """hopenet_r50 (Hopenet ResNet50) or lightweight_headpose (bundled real weights, 0.9 MB)."""
    checkpoint: str = ""
    """Registry name of the weights; empty: the model's default (hopenet_robust_alpha1 for
    hopenet_r50, which also takes facexlib's headpose_hopenet; lightweight_headpose_b66)."""
    hub: bool = False
    """Download a missing checkpoint from its registered URL via torch.hub's cache (needs
    internet; deep-head-pose's Google Drive link may refuse scripted downloads)."""
    crop: float = 1.0
    """Side of the square centre crop fed to the net, as a fraction of the shorter image side."""
    axis_scale: float = 0.3
    """Axis length in pose.png as a fraction of the shorter image side."""

    @property
    def weights_name(self) -> str:
        return self.checkpoint or MODELS[self.model][0]

    def check(self) -> None:  # hub downloads and unpinned checkpoints: not the common check
        common.check_common(self.device, self.dtype, self.weights, max(self.batch_size, 1))
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {tuple(MODELS)}, got {self.model!r}")
        if self.weights_name not in MODELS[self.model]:
            raise ValueError(f"checkpoint {self.weights_name!r} does not fit model {self.model!r}; "
                             f"choose from {MODELS[self.model]}")
        registry.get(self.weights_name)
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"crop must be in [0.1, 1], got {self.crop}")
        if not 0.0 < self.axis_scale <= 1.0:
            raise ValueError(f"axis_scale must be in (0, 1], got {self.axis_scale}")
        if self.weights == "pretrained" and not self.hub:
            registry.resolve(self.weights_name, self.weights_dir)

    def load(self):  # noqa: ANN201
        return hopenet.load_hopenet(self.weights_name, self.weights_dir, self._device, self.dtype,
                                    random_init=self.random_weights, hub=self.hub)

    def provenance(self) -> Provenance:
        # the runner asks once per row; an unpinned checkpoint's sha256 is worth computing once
        if getattr(self, "_provenance", None) is None:
            self._provenance = self._find_provenance()
        return self._provenance

    def _find_provenance(self) -> Provenance:
        model = f"{self.model}:{self.weights_name}"
        if self.weights == "random":
            return Provenance(model=model, weights="", weights_sha256="", weights_random=True)
        spec = registry.get(self.weights_name)
        # an unpinned checkpoint (allowed via FACEWEAVE_ALLOW_UNVERIFIED) records what was loaded
        path = registry.path_of(self.weights_name, self.weights_dir)
        if self.hub and not path.is_file():
            path = hopenet.hub_path(spec)
        sha = spec.sha256 or registry.sha256_of(path)
        return Provenance(model=model, weights=spec.filename, weights_sha256=sha, weights_random=False)

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [self._result(s, ypr) for s, ypr in zip(batch, self.angles([s.image for s in batch]))]

    def angles(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 3) float32 yaw, pitch, roll in degrees for RGB uint8 images."""
        size = self._net.input_size
        x = np.stack([drawing.resize_to(_centre_crop(im, self.crop), size, size) for im in images])
        t = torch.from_numpy(x).to(self._device).permute(0, 3, 1, 2).float().div_(255.0)
        if self._device.type == "cuda":
            t = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), common.autocast(self._device, self._dtype):
            out = self._net(t)
        return out.float().cpu().numpy()

    def _result(self, sample: Sample, ypr: np.ndarray) -> Result:
        if not np.isfinite(ypr).all():
            return Result.fail("non_finite_output", ERROR)
        yaw, pitch, roll = (float(v) for v in ypr)
        columns: dict[str, Any] = {"yaw": yaw, "pitch": pitch, "roll": roll}
        reference = _landmark_pose(sample)
        for key, ours in zip(("yaw", "pitch", "roll"), (yaw, pitch, roll)):
            theirs = reference.get(key) if reference else None
            columns[f"pnp_diff_{key}"] = None if theirs is None else _wrap(ours - theirs)
        h, w = sample.image.shape[:2]
        canvas = drawing.draw_pose_axes(h, w, yaw, pitch, roll, _face_centre(sample), self.axis_scale)
        return Result(columns=columns, files={schemas.pose.POSE_IMAGE: canvas})


def _centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    side = max(2, int(round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def _wrap(deg: float) -> float:
    """Angle difference folded into [-180, 180)."""
    return (deg + 180.0) % 360.0 - 180.0


def _landmark_pose(sample: Sample) -> dict[str, float] | None:
    """The landmarks stage's PnP yaw/pitch/roll when that stage's result is at hand."""
    res = sample.upstream.get("landmarks")
    if res is None:
        return None
    cols = res.columns
    values = {k: cols.get(k) for k in ("yaw", "pitch", "roll")}
    if any(v is None or not math.isfinite(float(v)) for v in values.values()):
        return None
    return {k: float(v) for k, v in values.items()}


def _face_centre(sample: Sample) -> tuple[float, float] | None:
    """Mean of detect's five crop points in an aligned/restored frame, else None (image centre)."""
    if sample.frame not in ALIGNED_FRAMES:
        return None
    for res in sample.upstream.values():
        pts = res.columns.get("points5_crop")
        if pts is not None and len(pts) == 10:
            xy = np.asarray(pts, np.float64).reshape(5, 2)
            if np.isfinite(xy).all():
                return float(xy[:, 0].mean()), float(xy[:, 1].mean())
    return None
