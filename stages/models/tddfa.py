"""3DDFA-V2 (Guo et al. 2020): MobileNetV1 x0.5 regressing 62 3DMM parameters from a 120x120 crop.

The 62 outputs are normalised; ``params * std + mean`` gives 12 pose values (a 3x4 scaled
camera matrix, row-major), 40 BFM shape and 10 expression coefficients. ``load_tddfa`` builds
the network with the checkpoint's own module names (``module.`` prefix dropped) and loads
strictly, including the unused 68-landmark head ``fc_lm`` so that no key is ignored. The
mean/std ship as a non-pickle ``.npz`` converted from upstream's ``.pkl`` (same float32 values).

Input: the 3DDFA-V2 ROI (see ``roi_from_box`` / ``roi_from_points``) resized to 120x120, BGR
channel order as upstream reads images with OpenCV, (x - 127.5) / 128.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

WEIGHTS = "tddfa_v2_mb05"
MEAN_STD = "tddfa_v2_param_mean_std_62d"
INPUT_SIZE = 120
N_POSE, N_SHAPE, N_EXP = 12, 40, 10
N_PARAMS = N_POSE + N_SHAPE + N_EXP

registry.register(
    WeightsSpec(
        name=WEIGHTS,
        family="tddfa",
        filename="3ddfa_v2_mb05_120x120.pth",
        sha256="f93ed7f1c4c0382b16d7c18480a5f67473c1917a47475a9823924f38aeb27280",
        size=3752462,
        urls=("https://github.com/cleardusk/3DDFA_V2/raw/master/weights/mb05_120x120.pth",),
        license="MIT (cleardusk/3DDFA_V2; bundled/LICENSE.3ddfa_v2.MIT)",
        input="120x120 BGR face ROI, (x - 127.5) / 128",
        bundled=True,
        extra={"mean_std": MEAN_STD, "checkpoint_keys": "state_dict, prefixed 'module.'"},
    )
)
registry.register(
    WeightsSpec(
        name=MEAN_STD,
        family="tddfa",
        filename="3ddfa_v2_param_mean_std_62d_120x120.npz",
        sha256="0d388ea967886499f2f9c1073c44312ae0b4f73817a17ea83ee353f4ece0c52e",
        size=996,
        urls=("https://github.com/cleardusk/3DDFA_V2/raw/master/configs/param_mean_std_62d_120x120.pkl",),
        license="MIT (cleardusk/3DDFA_V2; bundled/LICENSE.3ddfa_v2.MIT)",
        input="npz arrays mean, std: float32 (62,)",
        bundled=True,
        extra={
            # The upstream file is a pickle; the npz holds the same arrays, loadable without pickle.
            "converted_from": "3ddfa_v2_param_mean_std_62d_120x120.pkl",
            "converted_from_sha256": "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795",
        },
    )
)


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin)
        self.conv_sep = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn_dw(self.conv_dw(x)))
        return self.relu(self.bn_sep(self.conv_sep(x)))


# (block name, output channels at width 1.0, stride); input of each is the previous output.
_BLOCKS = (
    ("dw2_1", 64, 1), ("dw2_2", 128, 2),
    ("dw3_1", 128, 1), ("dw3_2", 256, 2),
    ("dw4_1", 256, 1), ("dw4_2", 512, 2),
    ("dw5_1", 512, 1), ("dw5_2", 512, 1), ("dw5_3", 512, 1),
    ("dw5_4", 512, 1), ("dw5_5", 512, 1), ("dw5_6", 1024, 2),
    ("dw6", 1024, 1),
)


class TDDFAMobileNet(nn.Module):
    """MobileNetV1 trunk with a 62-d parameter head and a 136-d landmark head.

    ``param_mean``/``param_std`` are non-persistent buffers (not in the checkpoint) holding the
    de-normalisation of ``fc_param``'s output.
    """

    def __init__(self, width: float = 0.5, n_params: int = N_PARAMS, n_landmarks: int = 68):
        super().__init__()
        stem = int(32 * width)
        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        cin = stem
        for name, cout, stride in _BLOCKS:
            setattr(self, name, DepthwiseSeparable(cin, int(cout * width), stride))
            cin = int(cout * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_param = nn.Linear(cin, n_params)
        self.fc_lm = nn.Linear(cin, 2 * n_landmarks)
        self.register_buffer("param_mean", torch.zeros(n_params), persistent=False)
        self.register_buffer("param_std", torch.ones(n_params), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name, _, _ in _BLOCKS:
            x = getattr(self, name)(x)
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised 62-d parameters of (N, 3, 120, 120) inputs."""
        return self.fc_param(self.features(x))

    def params(self, x: torch.Tensor) -> torch.Tensor:
        """Real 3DMM parameters (N, 62), de-normalised in fp32 even under autocast (std ~ 5.8e5)."""
        raw = self.forward(x).float()
        return raw * self.param_std + self.param_mean


def load_mean_std(root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 62-d parameter mean and std (float32), read from the non-pickle npz."""
    path = registry.resolve(MEAN_STD, root)
    with np.load(path, allow_pickle=False) as z:
        mean, std = z["mean"].astype(np.float32), z["std"].astype(np.float32)
    if mean.shape != (N_PARAMS,) or std.shape != (N_PARAMS,):
        raise ValueError(f"{path}: expected (62,) mean/std, got {mean.shape} / {std.shape}")
    return mean, std


def load_tddfa(name: str = WEIGHTS, root: str | Path | None = None, device: str = "cpu",
               dtype: str = "fp32", random_init: bool = False) -> TDDFAMobileNet:
    """The regressor registered as ``name`` (strict load), eval mode on ``device``, mean/std set.

    ``random_init`` builds the real architecture with seeded weights and reads no file
    (mean 0, std 1). Weights stay fp32 whatever ``dtype``: callers use ``common.autocast``.
    """
    model = common.build(TDDFAMobileNet, name, root, device, random_init)
    if not random_init:
        mean, std = load_mean_std(root)
        model.param_mean.copy_(torch.from_numpy(mean))
        model.param_std.copy_(torch.from_numpy(std))
    return model


def preprocess(crops_bgr: np.ndarray) -> torch.Tensor:
    """(N, 120, 120, 3) uint8 BGR -> (N, 3, 120, 120) float32 as 3DDFA-V2 trained: (x-127.5)/128."""
    x = torch.from_numpy(np.ascontiguousarray(crops_bgr)).permute(0, 3, 1, 2).float()
    return (x - 127.5) / 128.0


def camera_to_rotation(param: np.ndarray) -> tuple[np.ndarray, float]:
    """The 3x3 rotation and scale of the 3x4 camera matrix: rows 1-2 normalised, row 3 their cross."""
    p = np.asarray(param[:N_POSE], np.float64).reshape(3, 4)
    r1, r2 = p[0, :3], p[1, :3]
    n1, n2 = np.linalg.norm(r1), np.linalg.norm(r2)
    r1, r2 = r1 / max(n1, 1e-12), r2 / max(n2, 1e-12)
    return np.stack([r1, r2, np.cross(r1, r2)]), float((n1 + n2) / 2)


def pose_angles(params: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of 62 parameters, in the landmarks/pose sign convention."""
    yaw, pitch, roll = rotation_to_angles(camera_to_rotation(params)[0])
    # 3DDFA's pitch is positive looking down and its roll positive counter-clockwise on screen
    return yaw, -pitch, -roll


def rotation_to_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """3DDFA-V2's (yaw, pitch, roll) in degrees, in its own sign convention.

    In 3DDFA's frame x points right, y up and z towards the camera. Its yaw is asin(R[2,0]),
    pitch atan2(R[2,1], R[2,2]) and roll atan2(R[1,0], R[0,0]), with the gimbal-lock branch
    at |R[2,0]| > 0.998 kept as in the original. See ``expression`` for the public convention.
    """
    r20 = float(np.clip(rot[2, 0], -1.0, 1.0))
    if r20 > 0.998:
        yaw, pitch, roll = math.pi / 2, math.atan2(-rot[0, 1], -rot[0, 2]), 0.0
    elif r20 < -0.998:
        yaw, pitch, roll = -math.pi / 2, math.atan2(rot[0, 1], rot[0, 2]), 0.0
    else:
        yaw = math.asin(r20)
        c = math.cos(yaw)
        pitch = math.atan2(rot[2, 1] / c, rot[2, 2] / c)
        roll = math.atan2(rot[1, 0] / c, rot[0, 0] / c)
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


# 3DDFA-V2's ROI from a detector box: side 1.58 x the mean box side, centre moved down 0.14 x it.
BOX_ROI_SCALE, BOX_ROI_SHIFT = 1.58, 0.14
# The same ROI from five points, fitted on lfw10 to RetinaFace boxes (100 photos): side =
# 2.95 x hypot(eye distance, eye-to-mouth distance) (spread 5%), centre 0.64 of the way from
# the eye midpoint to the mouth midpoint (spread 0.08).
POINTS_ROI_SCALE, POINTS_ROI_CENTRE = 2.95, 0.64


def roi_from_box(box) -> tuple[float, float, float]:
    """(cx, cy, side) of the square ROI 3DDFA-V2 crops around an (x1, y1, x2, y2) face box."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    size = (x2 - x1 + y2 - y1) / 2
    return (x1 + x2) / 2, (y1 + y2) / 2 + BOX_ROI_SHIFT * size, BOX_ROI_SCALE * size


def roi_from_points(points) -> tuple[float, float, float]:
    """(cx, cy, side) of the 3DDFA-V2 ROI from five points (eyes, nose, mouth corners)."""
    p = np.asarray(points, np.float64).reshape(5, 2)
    eyes, mouth = (p[0] + p[1]) / 2, (p[3] + p[4]) / 2
    scale = math.hypot(float(np.linalg.norm(p[1] - p[0])), float(np.linalg.norm(mouth - eyes)))
    cx, cy = eyes + POINTS_ROI_CENTRE * (mouth - eyes)
    return float(cx), float(cy), POINTS_ROI_SCALE * scale


def crop_roi(image: np.ndarray, roi: tuple[float, float, float], size: int,
             border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """The square ``roi`` resized to ``size`` x ``size``; outside the image is ``border``.

    Large ROIs are cut at full resolution first and shrunk with area averaging, so a 512 px
    crop does not alias on its way to 120 or 64 px.
    """
    cx, cy, side = roi
    side = max(side, 1.0)
    native = int(round(side))
    work = native if native > size else size
    s = work / side
    m = np.array([[s, 0, work / 2 - s * cx], [0, s, work / 2 - s * cy]], np.float32)
    out = cv2.warpAffine(image, m, (work, work), flags=cv2.INTER_LINEAR, borderMode=border,
                         borderValue=0)
    if work != size:
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out
