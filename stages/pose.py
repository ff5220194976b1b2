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

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

import schemas.pose
from stages import drawing, geometry
from stages.base import NON_FINITE, Provenance, Result, Sample
from stages.model_stage import ModelStage
from stages.models import hopenet, registry

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
    models: ClassVar[dict] = MODELS
    limits: ClassVar[dict] = {"crop": "[0.1, 1]", "axis_scale": "(0, 1]"}

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
        return self.checkpoint or super().weights_name

    @property
    def verify_weights(self) -> bool:
        return not self.hub  # a hub download is verified when it is fetched

    def check_config(self) -> None:
        if self.weights_name not in MODELS[self.model]:
            raise ValueError(f"checkpoint {self.weights_name!r} does not fit model {self.model!r}; "
                             f"choose from {MODELS[self.model]}")

    def load(self):  # noqa: ANN201
        return hopenet.load_hopenet(self.weights_name, self.weights_dir, self._device, self.dtype,
                                    random_init=self.random_weights, hub=self.hub)

    def weights_path(self):  # noqa: ANN201
        local = registry.path_of(self.weights_name, self.weights_dir)
        return hopenet.hub_path(registry.get(self.weights_name)) if self.hub and not local.is_file() else None

    def provenance(self) -> Provenance:
        return dataclasses.replace(super().provenance(), model=f"{self.model}:{self.weights_name}")

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [self._result(s, ypr) for s, ypr in zip(batch, self.angles([s.image for s in batch]))]

    def angles(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 3) float32 yaw, pitch, roll in degrees for RGB uint8 images."""
        size = self._net.input_size
        x = [drawing.resize_to(drawing.centre_crop(im, self.crop), size, size) for im in images]
        with self.inference():
            out = self._net(self.tensor(x))
        return out.float().cpu().numpy()

    def _result(self, sample: Sample, ypr: np.ndarray) -> Result:
        if not np.isfinite(ypr).all():
            return Result.fail(NON_FINITE)
        yaw, pitch, roll = (float(v) for v in ypr)
        columns: dict[str, Any] = {"yaw": yaw, "pitch": pitch, "roll": roll}
        landmarks = sample.upstream.get("landmarks")  # its PnP angles, when that stage's row is here
        theirs = geometry.angles_in(landmarks.columns if landmarks is not None else None)
        for key, ours, ref in zip(geometry.ANGLES, (yaw, pitch, roll), (None,) * 3 if theirs is None else theirs):
            columns[f"pnp_diff_{key}"] = None if ref is None else geometry.wrap_degrees(ours - float(ref))
        h, w = sample.image.shape[:2]
        canvas = drawing.draw_pose_axes(h, w, yaw, pitch, roll, _face_centre(sample), self.axis_scale)
        return Result(columns=columns, files={schemas.pose.POSE_IMAGE: canvas})


def _face_centre(sample: Sample) -> tuple[float, float] | None:
    """Mean of detect's five points in an aligned/restored frame, else None (image centre)."""
    points = sample.points5() if sample.frame in ALIGNED_FRAMES else None
    return None if points is None else (float(points[:, 0].mean()), float(points[:, 1].mean()))
