"""Learned face image quality (FIQA) models: registry slots and their architectures.

* ``cr_fiqa_s`` / ``cr_fiqa_l``: CR-FIQA (Boutros et al., CVPR 2023), an iResNet-50/100 face
  recogniser trained with an extra regression head ``qs`` that predicts the sample's
  certainty ratio; the score is that head's output. The architecture here follows the
  insightface ``arcface_torch`` iResNet layout (``conv1, bn1, prelu, layer1-4, bn2, dropout,
  fc, features``) plus ``qs``; it is checked on random weights only (the released files are
  not available here), so a key or shape mismatch with a real file fails loudly in
  ``common.load_into``.
* ``ediffiqa_t``: eDifFIQA(T) (Babnik et al., TBIOM 2024), a MobileFaceNet with a quality head,
  published as ONNX in the OpenCV model zoo; run by ``cv2.dnn`` (no torch architecture).

All take a 112x112 ArcFace-aligned RGB face scaled to [-1, 1]; higher is better. No sha256 is
pinned: ``registry.resolve`` refuses the files until someone pins them (or allows unverified).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

CR_FIQA_S, CR_FIQA_L, EDIFFIQA_T = "cr_fiqa_s", "cr_fiqa_l", "ediffiqa_t"
INPUT = "112x112 ArcFace-aligned RGB, (x/255 - 0.5) / 0.5"
LAYERS = {"iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3), "iresnet_tiny": (1, 1, 1, 1)}

for _name, _arch, _file in ((CR_FIQA_S, "iresnet50", "cr_fiqa_s_backbone.pth"),
                            (CR_FIQA_L, "iresnet100", "cr_fiqa_l_backbone.pth")):
    registry.register(WeightsSpec(
        name=_name, family="fiqa", filename=_file, sha256="",
        urls=("https://github.com/fdbtrs/CR-FIQA#pretrained-model (README links the checkpoints)",),
        license="CC BY-NC 4.0 (fdbtrs/CR-FIQA; non-commercial)", input=INPUT,
        extra={"arch": _arch, "status": "architecture checked on random weights only"},
    ))
registry.register(WeightsSpec(
    name=EDIFFIQA_T, family="fiqa", filename="ediffiqa_tiny_jun2024.onnx", sha256="",
    urls=("https://github.com/opencv/opencv_zoo/raw/main/models/face_image_quality_assessment_ediffiqa/"
          "ediffiqa_tiny_jun2024.onnx",),
    license="CC BY 4.0 (opencv/opencv_zoo, from LSIbabnikz/eDifFIQA)", input=INPUT,
    extra={"arch": "onnx", "status": "run with cv2.dnn; untested without the file"},
))


class IBlock(nn.Module):
    """iResNet basic block: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class QualityIResNet(nn.Module):
    """iResNet face embedder with a scalar quality head; ``forward`` returns the quality."""

    def __init__(self, layers: tuple[int, ...], dim: int = 512):
        super().__init__()
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (n, w) in enumerate(zip(layers, widths), 1):
            blocks = [IBlock(cin, w, 2)] + [IBlock(w, w, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(512 * 7 * 7, dim)
        self.features = nn.BatchNorm1d(dim, eps=1e-5)
        self.qs = nn.Linear(dim, 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qs(self.embed(x)).squeeze(1)


class OnnxQuality:
    """An ONNX quality model under ``cv2.dnn``: same call as the torch models (NCHW in, (N,) out)."""

    def __init__(self, path: str):
        import cv2

        self.net = cv2.dnn.readNetFromONNX(path)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.net.setInput(x.detach().float().cpu().numpy())
        return torch.from_numpy(np.asarray(self.net.forward(), dtype=np.float32).reshape(len(x)))


def load_fiqa(name: str = CR_FIQA_L, root: str | os.PathLike | None = None, device: Any = "cpu",
              dtype: str = "fp32", random_init: bool = False) -> Any:
    """The FIQA model registered as ``name`` (eval, on device); ONNX models run on the CPU."""
    common.torch_dtype(dtype)
    arch = registry.get(name).extra["arch"]
    if arch == "onnx":
        if random_init:
            raise ValueError(f"{name} is an ONNX file: random weights are not available")
        return OnnxQuality(str(registry.resolve(name, root)))
    return common.build(lambda: QualityIResNet(LAYERS[arch]), name, root, device, random_init)


def preprocess(faces: np.ndarray) -> torch.Tensor:
    """(N, 112, 112, 3) uint8 RGB -> (N, 3, 112, 112) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0
