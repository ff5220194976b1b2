"""Two tiny CPU stages used to test the runner without any model (no weights involved).

``center`` crops the middle of the image and hands it on as the ``aligned`` frame, like detect
does; ``colour`` reads it and records the mean colour. They exercise frames, reads, payload
files and error rows through the real runner.
"""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa

from stages.base import Provenance, Result, Sample, Stage


class OutOfMemoryError(RuntimeError):
    """Named like torch's, which is what the runner recognises."""


@dataclass
class CenterStage(Stage):
    """Centre crop as a stand-in frame producer."""

    name: ClassVar[str] = "center"
    schema: ClassVar[pa.Schema] = pa.schema([pa.field("crop_side", pa.int32())])
    produces_frame: ClassVar[str] = "aligned"
    gpus: ClassVar[float] = 0.5  # requested only with device=cuda: lets tests fake a GPU stage

    fraction: float = 0.8
    """Side of the crop as a fraction of the shorter image side."""
    batch_size: int = 4
    """Samples per process() call."""
    device: str = "cpu"
    """cuda makes the runner schedule it as a GPU stage (it still computes on the CPU)."""
    fail_key: str = ""
    """A key whose processing raises (to test error isolation)."""
    abort_key: str = ""
    """A key whose processing kills the process (to test crash isolation)."""

    def process(self, batch: list[Sample]) -> list[Result]:
        out = []
        for s in batch:
            if s.key in (self.fail_key, os.environ.get("FACEWEAVE_TEST_FAIL_KEY")):
                raise RuntimeError("boom")
            if s.key == self.abort_key:
                os.abort()
            # From the environment, not a field: a field would change the lineage hash.
            time.sleep(float(os.environ.get("FACEWEAVE_TEST_SLEEP", "0")))
            h, w = s.image.shape[:2]
            side = max(1, int(min(h, w) * self.fraction))
            y, x = (h - side) // 2, (w - side) // 2
            out.append(Result(columns={"crop_side": side}, frame=s.image[y:y + side, x:x + side].copy()))
        return out

    def provenance(self) -> Provenance:
        return Provenance(model="center-crop", weights="none")


@dataclass
class ColourStage(Stage):
    """Mean colour of the frame; a sample whose mean is too dark becomes an error row."""

    name: ClassVar[str] = "colour"
    reads: ClassVar[tuple[str, ...]] = ("center",)
    schema: ClassVar[pa.Schema] = pa.schema([pa.field("mean_rgb", pa.list_(pa.float32())),
                                             pa.field("crop_side", pa.int32())])
    files: ClassVar[tuple[str, ...]] = ("mean.npy",)

    min_mean: float = 1.0
    """Frames darker than this are errors ('too_dark')."""
    batch_size: int = 3
    """Samples per process() call."""

    def process(self, batch: list[Sample]) -> list[Result]:
        cap = int(os.environ.get("FACEWEAVE_TEST_OOM_ABOVE", "0"))
        if cap and len(batch) > cap:  # an artificial memory cap, as a CUDA OOM would look
            raise OutOfMemoryError(f"CUDA out of memory: batch {len(batch)} > {cap} (test cap)")
        out = []
        for s in batch:
            mean = s.image.reshape(-1, 3).mean(0).astype(np.float32)
            if mean.mean() < self.min_mean:
                out.append(Result.fail("too_dark"))
                continue
            buf = io.BytesIO()
            np.save(buf, mean)
            out.append(Result(columns={"mean_rgb": mean.tolist(),
                                       "crop_side": s.upstream["center"].columns["crop_side"]},
                              files={"mean.npy": buf.getvalue()}))
        return out


@dataclass
class BrightnessStage(Stage):
    """Mean brightness of whatever frame it is given; makes no frame (run alone: the source image)."""

    name: ClassVar[str] = "brightness"
    schema: ClassVar[pa.Schema] = pa.schema([pa.field("brightness", pa.float32())])

    def process(self, batch: list[Sample]) -> list[Result]:
        return [Result(columns={"brightness": float(s.image.mean())}) for s in batch]


def register() -> None:
    import stages

    stages.register("center", __name__, before="landmarks")
    stages.register("colour", __name__, before="landmarks")
    stages.register("brightness", __name__, before="landmarks")
