"""Face parsing into the 19 CelebAMask-HQ classes: facexlib's BiSeNet and ParseNet.

Both architectures come from the ``facexlib`` package and load strictly from plain state dicts
(facexlib's release files). BiSeNet (zllrunning/face-parsing.PyTorch, ResNet18 context path)
takes a 512x512 RGB image normalised with ImageNet mean/std; ParseNet (PSFRGAN/GPEN, the parser
of CodeFormer's pipeline) takes 512x512 RGB in [-1, 1] and labels in the dataset's own class
order, which ``schemas.parsing`` maps to BiSeNet's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from schemas.parsing import CLASSES, PARSENET_CLASSES
from stages.models import common, registry
from stages.models.registry import WeightsSpec

BISENET = "parsing_bisenet"
PARSENET = "parsing_parsenet"
INPUT_SIZE = 512
NUM_CLASSES = 19

registry.register(WeightsSpec(
    name=BISENET,
    family="parsing",
    filename="parsing_bisenet.pth",
    sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
    size=53289463,
    urls=("https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",),
    license="MIT (xinntao/facexlib; zllrunning/face-parsing.PyTorch)",
    input="512x512 RGB, x / 255 then ImageNet mean/std",
    extra={"arch": "bisenet", "mean": (0.485, 0.456, 0.406),
           "std": (0.229, 0.224, 0.225), "checkpoint_keys": "plain state dict"},
))
registry.register(WeightsSpec(
    name=PARSENET,
    family="parsing",
    filename="parsing_parsenet.pth",
    sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
    size=85331193,
    urls=("https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
          "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/parsing_parsenet.pth"),
    license="MIT (xinntao/facexlib); model from chaofengc/PSFRGAN",
    input="512x512 RGB, (x / 255 - 0.5) / 0.5",
    extra={"arch": "parsenet", "mean": (0.5, 0.5, 0.5),
           "std": (0.5, 0.5, 0.5), "checkpoint_keys": "plain state dict",
           "sha256_source": "published for the CodeFormer v0.1.0 copy (same size as facexlib's)"},
))


class FaceParser(nn.Module):
    """A parsing net with its input normalisation; labels always in ``schemas.parsing.CLASSES``.

    ``forward`` takes (N, 3, 512, 512) RGB in [0, 1] and returns (N, 19, 512, 512) class scores.
    ParseNet's channels are reordered from the dataset's class order to BiSeNet's.
    """

    def __init__(self, net: nn.Module, arch: str, mean: tuple[float, ...], std: tuple[float, ...],
                 classes: tuple[str, ...]):
        super().__init__()
        self.net, self.arch = net, arch
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        order = [classes.index(name) for name in CLASSES]
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # both nets return a tuple whose first element is the full-resolution class map
        logits = self.net((x - self.mean) / self.std)[0]
        return logits.index_select(1, self.order)


def label_maps(scores: torch.Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray | None]:
    """uint8 label maps of (N, 19, H, W) class scores, each resized to its (h, w) before the argmax
    (so labels match the frame pixel for pixel); None where the scores are not finite."""
    out: list[np.ndarray | None] = []
    with torch.inference_mode():
        for s, (h, w) in zip(scores.float(), sizes):
            if not torch.isfinite(s).all():
                out.append(None)
                continue
            if s.shape[1:] != (h, w):
                s = F.interpolate(s[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            out.append(s.argmax(dim=0).to(torch.uint8).cpu().numpy())
    return out


def build(arch: str) -> nn.Module:
    """A fresh ``bisenet`` or ``parsenet`` with random weights."""
    if arch == "bisenet":
        return common.facexlib("facexlib.parsing.bisenet", "BiSeNet")(num_class=NUM_CLASSES)
    if arch == "parsenet":
        return common.facexlib("facexlib.parsing.parsenet", "ParseNet")(in_size=INPUT_SIZE, out_size=INPUT_SIZE, parsing_ch=NUM_CLASSES)
    raise ValueError(f"unknown parsing arch '{arch}' (bisenet | parsenet)")


def load_parsing(name: str = BISENET, root: str | Path | None = None, device: str = "cpu",
                 dtype: str = "fp32", random_init: bool = False) -> FaceParser:
    """The parser registered as ``name`` in eval mode on ``device`` (weights fp32; use autocast)."""
    spec = registry.get(name)
    arch = spec.extra["arch"]
    net = common.build(lambda: build(arch), name, root, "cpu", random_init)
    classes = PARSENET_CLASSES if arch == "parsenet" else CLASSES
    model = FaceParser(net, arch, tuple(spec.extra["mean"]), tuple(spec.extra["std"]), classes)
    return common.prepare(model, device)
