"""MobileFaceNet face embedder (128-d), written to match the bundled checkpoint's key layout.

The checkpoint (foamliu/MobileFaceNet, trained on MS1M with an ArcFace loss) has a stem conv,
a depthwise-separable conv, fifteen MobileNetV2-style inverted residual blocks, a 1x1 conv to
512 channels, a 7x7 global depthwise conv and a linear 1x1 conv + BatchNorm to 128-d. It has no
PReLU parameters, so the activations are parameter-free (ReLU).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

registry.register(WeightsSpec(
    name="mobilefacenet", family="mobilefacenet", filename="mobilefacenet.pt",
    sha256="90a00ba1d8b0b688af3deb731ed53dca582e6106805d1bc3cfdef55f570493f4", size=4135271,
    urls=(),  # shipped in the package; upstream publishes no stable file URL
    license="Apache-2.0 (foamliu/MobileFaceNet)",
    input="112x112 ArcFace-aligned RGB, x/255 then ImageNet mean/std",
    bundled=True,
    extra={
        "dim": 128,
        "source": "https://github.com/foamliu/MobileFaceNet",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        # Measured on faces/lfw10 (10 ids x 10 photos, detect -> identity, all 4950 pairs):
        # the threshold maximising same/different accuracy; see tests/test_identity.py.
        "same_identity_cosine": 0.32,
    },
))

# (expansion, output channels, repeats, first stride) per stage
_SETTING = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SeparableConv(nn.Module):
    """Depthwise 3x3 then pointwise 1x1, each followed by BatchNorm and ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.depthwise(x)))
        return self.act(self.bn2(self.pointwise(x)))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.skip = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            _conv_bn_act(cin, hidden, kernel=1),
            _conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class GlobalDepthwise(nn.Module):
    """7x7 depthwise conv over the whole final feature map, then BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class MobileFaceNet(nn.Module):
    """112x112 RGB -> (B, 128) un-normalised embedding."""

    def __init__(self, dim: int = 128):
        super().__init__()
        self.conv1 = _conv_bn_act(3, 64, stride=2)
        self.dw_conv = SeparableConv(64)
        blocks, cin = [], 64
        for expansion, cout, repeats, stride in _SETTING:
            for i in range(repeats):
                blocks.append(Bottleneck(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.conv2 = _conv_bn_act(cin, 512, kernel=1)
        self.gdconv = GlobalDepthwise(512)
        self.conv3 = nn.Conv2d(512, dim, 1)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.gdconv(self.conv2(x))
        return self.bn(self.conv3(x)).flatten(1)


def load_mobilefacenet(name: str = "mobilefacenet", root: str | os.PathLike | None = None,
                       device: str = "cpu", dtype: str = "fp32", random_init: bool = False) -> nn.Module:
    """The MobileFaceNet registered as ``name``, eval mode on device (weights stay fp32)."""
    common.torch_dtype(dtype)
    dim = registry.get(name).extra.get("dim", 128)
    return common.build(lambda: MobileFaceNet(dim), name, root, device, random_init)
