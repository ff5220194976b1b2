"""The RetinaFace network (Deng et al. 2020) in the layout of biubug6/Pytorch_Retinaface, whose
checkpoints facexlib redistributes: a MobileNetV1-0.25 or ResNet50 trunk, a three-level feature
pyramid, SSH context modules and per-level 1x1 heads with two anchors per cell.

Written here, parameter names matching those checkpoints (they load strictly), so a worker that
detects faces imports neither facexlib nor torchvision (~2 s per process on a 2-core VM;
``tests/test_detect.py`` compares the outputs with facexlib's class). In eval mode ``forward``
returns (box regressions (N, P, 4), class probabilities (N, P, 2), landmark regressions (N, P, 10)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.resnet import ResNet50Trunk

ANCHORS = 2
"""Anchors per feature-map cell (two sizes per pyramid level)."""


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, leaky: float | None = 0.0) -> nn.Sequential:
    """conv (no bias) + batch norm, then a leaky ReLU unless ``leaky`` is None."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if leaky is not None:
        layers.append(nn.LeakyReLU(leaky, inplace=True))
    return nn.Sequential(*layers)


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with batch norm and a 0.1 leaky ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class MobileTrunk(nn.Module):
    """MobileNetV1 at width 0.25 up to its last stride-32 block (``stage1``-``stage3``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 3, 2, leaky=0.1), _separable(8, 16, 1), _separable(16, 32, 2),
                                    _separable(32, 32, 1), _separable(32, 64, 2), _separable(64, 64, 1))
        self.stage2 = nn.Sequential(_separable(64, 128, 2), *(_separable(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_separable(128, 256, 2), _separable(256, 256, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class Pyramid(nn.Module):
    """Lateral 1x1 convs, then top-down nearest upsampling merged by 3x3 convs (no stride-32 merge)."""

    def __init__(self, widths: tuple[int, int, int], out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.output1, self.output2, self.output3 = (_conv_bn(w, out, 1, leaky=leaky) for w in widths)
        self.merge1 = _conv_bn(out, out, 3, leaky=leaky)
        self.merge2 = _conv_bn(out, out, 3, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p1, p2, p3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[2:], mode="nearest"))
        return [p1, p2, p3]


class Context(nn.Module):
    """SSH context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s) concatenated, ReLU."""

    def __init__(self, cin: int, out: int):
        super().__init__()
        leaky = 0.1 if out <= 64 else 0.0
        self.conv3X3 = _conv_bn(cin, out // 2, 3, leaky=None)
        self.conv5X5_1 = _conv_bn(cin, out // 4, 3, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3, leaky=None)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3, leaky=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.conv5X5_1(x)
        wide = self.conv7x7_3(self.conv7X7_2(mid))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), wide], dim=1))


class Head(nn.Module):
    """A 1x1 conv giving ``per_anchor`` numbers per anchor, flattened to (N, cells x anchors, per_anchor)."""

    def __init__(self, cin: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, ANCHORS * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFaceNet(nn.Module):
    """``network``: ``mobile0.25`` (64-channel pyramid) or ``resnet50`` (256 channels)."""

    def __init__(self, network: str = "mobile0.25"):
        super().__init__()
        if network == "mobile0.25":
            self.body: nn.Module = MobileTrunk()
            widths, out = (64, 128, 256), 64
        elif network == "resnet50":
            self.body = ResNet50Trunk()
            widths, out = (512, 1024, 2048), 256
        else:
            raise ValueError(f"network must be mobile0.25 or resnet50, got {network!r}")
        self.fpn = Pyramid(widths, out)
        self.ssh1, self.ssh2, self.ssh3 = (Context(out, out) for _ in range(3))
        self.ClassHead = nn.ModuleList(Head(out, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(out, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(out, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.fpn(self.body.features(x))
        feats = [ssh(p) for ssh, p in zip((self.ssh1, self.ssh2, self.ssh3), levels)]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, conf if self.training else F.softmax(conf, dim=-1), landm
