"""restore: CodeFormer blind face restoration of the aligned crop.

The restored crop becomes the frame later stages see (``produces_frame = "restored"``); the crop
it was given is kept as ``raw.jpg``. CodeFormer works at 512x512: other sizes are resized in and
the result resized back, so coordinates from ``detect`` stay valid in the restored frame.
Per-sample failures: ``bad_image`` (not an HxWx3 uint8 array), ``non_finite_output`` (NaN/inf,
e.g. an fp16 overflow).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pyarrow as pa
import torch

import schemas.restore
from stages import drawing
from stages.base import NON_FINITE, Provenance, Result, Sample
from stages.model_stage import ModelStage
from stages.models import codeformer

ARCHS = ("full", "tiny")


@dataclass
class Restore(ModelStage):
    name: ClassVar[str] = "restore"
    version: ClassVar[str] = "2"
    reads: ClassVar[tuple[str, ...]] = ("detect",)
    schema: ClassVar[pa.Schema] = schemas.restore.SCHEMA
    files: ClassVar[tuple[str, ...]] = (schemas.restore.RAW_IMAGE,)
    gpus: ClassVar[float] = 0.5
    produces_frame: ClassVar[str | None] = "restored"
    families: ClassVar[tuple[str, ...]] = ("codeformer",)
    limits: ClassVar[dict] = {"arch": ARCHS, "fidelity_w": "[0, 1]", "jpeg_quality": "[1, 100]"}

    model: str = codeformer.WEIGHTS
    """Registry name of the CodeFormer checkpoint."""
    arch: str = "full"
    """full (the released architecture) or tiny (narrow, random weights only: tests, smoke runs)."""
    fidelity_w: float = 0.5
    """CodeFormer's w in [0, 1]: 0 trusts the codebook most (strongest restoration), 1 keeps
    most of the input; recorded per row."""
    batch_size: int = 8
    """Crops per forward pass (512x512, a large net)."""
    jpeg_quality: int = 95
    """JPEG quality of raw.jpg, the un-restored crop."""
    compile: bool = False
    """torch.compile the network on CUDA (batches padded to batch_size so shapes stay static)."""

    def check_config(self) -> None:
        if self.arch != "full" and self.weights != "random":
            raise ValueError(f"arch {self.arch!r} has no pretrained weights; set weights: random")

    def load(self):  # noqa: ANN201
        net = codeformer.load_codeformer(self.model, self.weights_dir, self._device, self.dtype,
                                         random_init=self.random_weights, arch=self.arch)
        self._compiled = self.compile and self._device.type == "cuda"
        return torch.compile(net, dynamic=False) if self._compiled else net

    def provenance(self) -> Provenance:
        prov = super().provenance()
        return prov if self.arch == "full" else dataclasses.replace(prov, model=f"{self.model}:{self.arch}")

    def compute(self, batch: list[Sample]) -> list[Result]:
        return [self._result(s, r) for s, r in zip(batch, self._restore([s.image for s in batch]))]

    def _restore(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """Restored crops at each input's own size (None where the output is not finite)."""
        size = codeformer.INPUT_SIZE
        x = np.stack([drawing.resize_to(im, size, size) for im in images])
        n = len(x)
        if getattr(self, "_compiled", False) and n < self.batch_size:  # static shapes: no recompiles
            x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
        with self.inference():
            y = codeformer.restore(self._net, self.tensor(x, 127.5, 1.0), self.fidelity_w)
        return [None if a is None else drawing.resize_to(a, im.shape[1], im.shape[0])
                for a, im in zip(codeformer.to_images(y[:n]), images)]

    def _result(self, sample: Sample, restored: np.ndarray | None) -> Result:
        if restored is None:
            return Result.fail(NON_FINITE)
        return Result(
            columns={"fidelity_w": float(self.fidelity_w),
                     "input_frame": sample.frame},
            files={schemas.restore.RAW_IMAGE: drawing.encode_jpeg(sample.image, self.jpeg_quality)},
            frame=restored,
        )
