"""ArcFace IR-SE50 face embedder (512-d), facexlib's architecture.

facexlib's ``Backbone`` L2-normalises in ``forward``; the subclass here returns the raw
embedding so the identity stage can record its norm (a rough face-quality signal) before
normalising it itself. The state-dict keys are unchanged, so the released file loads strictly.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

registry.register(WeightsSpec(
    name="arcface_irse50", family="arcface", filename="recognition_arcface_ir_se50.pth",
    sha256="a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28",
    urls=("https://github.com/xinntao/facexlib/releases/download/v0.1.0/recognition_arcface_ir_se50.pth",),
    license="MIT (TreB1eN/InsightFace_Pytorch), redistributed in facexlib's Apache-2.0 releases",
    input="112x112 ArcFace-aligned RGB, (x/255 - 0.5) / 0.5",
    extra={
        "dim": 512,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        # Not measurable offline (weights unavailable here): the working point commonly used
        # with MS1M-trained ArcFace IR-SE50 embeddings. Re-measure with real weights.
        "same_identity_cosine": 0.30,
        "threshold_measured": False,
    },
))


def _backbone_class() -> type[nn.Module]:
    Backbone = common.facexlib("facexlib.recognition.arcface_arch", "Backbone")  # noqa: N806

    class IRSE50(Backbone):
        """IR-SE50 returning the un-normalised 512-d embedding."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # facexlib's Flatten uses view(), which fails on channels_last feature maps
            return self.output_layer(self.body(self.input_layer(x)).contiguous())

    return IRSE50


def load_arcface(name: str = "arcface_irse50", root: str | os.PathLike | None = None,
                 device: str = "cpu", dtype: str = "fp32", random_init: bool = False) -> nn.Module:
    """The IR-SE50 registered as ``name``, eval mode on device (weights stay fp32)."""
    common.torch_dtype(dtype)
    cls = _backbone_class()
    return common.build(lambda: cls(num_layers=50, drop_ratio=0.6, mode="ir_se"), name, root,
                        device, random_init)
