"""insightface's ONNX recognition models (512-d), run with onnxruntime.

The identity adapters were trained on these embeddings: IP-Adapter-FaceID on buffalo_l's
``w600k_r50.onnx`` (its ``normed_embedding``), InstantID on antelopev2's ``glintr100.onnx`` (its
raw ``embedding``). Both take a (N, 3, 112, 112) float32 batch of ArcFace-aligned RGB faces
normalised as (x - 127.5) / 127.5 and return (N, 512) raw embeddings, so the identity stage feeds
them exactly as it feeds IR-SE50 (same template, same normalisation) and records the raw norm.

There is no torch architecture for these graphs here, so ``random_init`` is refused: tests use
a tiny ONNX graph with the same signature through ``OnnxEmbedder.from_path``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.models import registry
from stages.models.registry import WeightsSpec

INPUT_SIZE = 112
DIM = 512
_COMMON = {
    "dim": DIM,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    # insightface's usual verification working point for these models; not measured here
    # (weights unavailable offline). Re-measure with real weights.
    "same_identity_cosine": 0.28,
    "threshold_measured": False,
}
# Hugging Face mirror of insightface's v0.7 model packs, pinned to one revision; the files are
# byte-identical to those inside buffalo_l.zip / antelopev2.zip of the GitHub release.
_HF = "https://huggingface.co/public-data/insightface/resolve/33c1063c49c785b7652d3fd529f86fa4f149392b/models"


def _pack_model(name: str, pack: str, filename: str, sha256: str, mirror: str, trained_on: str, used_by: str,
                size: int = 0) -> None:
    """One recognition model of an insightface v0.7 pack: the pinned mirror first, then ``mirror``."""
    registry.register(WeightsSpec(
        name=name, family="insightface", filename=filename, sha256=sha256, size=size,
        urls=(f"{_HF}/{pack}/{filename}", mirror),
        license="insightface model zoo: non-commercial research use only",
        input="112x112 ArcFace-aligned RGB, (x - 127.5) / 127.5, NCHW float32",
        extra={**_COMMON, "pack": pack, "trained_on": trained_on, "used_by": used_by},
    ))


_pack_model("insightface_w600k_r50", "buffalo_l", "w600k_r50.onnx",
            "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
            "https://huggingface.co/deepghs/insightface/resolve/main/buffalo_l/w600k_r50.onnx",
            "WebFace600K", "IP-Adapter-FaceID (normed_embedding)", size=174383860)
_pack_model("insightface_glintr100", "antelopev2", "glintr100.onnx",
            "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf",
            "https://huggingface.co/DIAMONIK7777/antelopev2/resolve/main/glintr100.onnx",
            "Glint360K", "InstantID (raw embedding)")


class OnnxEmbedder(nn.Module):
    """A face-recognition ONNX graph behind the torch interface the identity stage calls."""

    def __init__(self, session, dim: int = DIM):
        super().__init__()
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError(f"expected one input and an embedding output, got {len(inputs)} / {len(outputs)}")
        shape = inputs[0].shape
        if len(shape) != 4 or list(shape[1:]) != [3, INPUT_SIZE, INPUT_SIZE]:
            raise ValueError(f"expected input (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {shape}")
        if outputs[0].shape[-1] != dim:
            raise ValueError(f"expected a {dim}-d output, got {outputs[0].shape}")
        self.input_name, self.output_name, self.dim = inputs[0].name, outputs[0].name, dim

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                  dim: int = DIM) -> "OnnxEmbedder":
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        return cls(ort.InferenceSession(str(Path(path)), providers=providers), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().float().cpu().numpy(), np.float32)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return torch.from_numpy(np.asarray(out, np.float32).reshape(len(batch), self.dim)).to(x.device)


def load_insightface(name: str = "insightface_w600k_r50", root: str | os.PathLike | None = None,
                     device: str = "cpu", dtype: str = "fp32", random_init: bool = False) -> nn.Module:
    """The verified ONNX graph registered as ``name`` (runs in fp32 whatever ``dtype``)."""
    if random_init:
        raise ValueError(f"'{name}' is an ONNX graph with no random-weights architecture here; "
                         f"use identity.model=arcface_irse50 with weights=random for tests")
    spec = registry.get(name)
    return OnnxEmbedder.from_path(registry.resolve(name, root), device, spec.extra["dim"]).eval()
