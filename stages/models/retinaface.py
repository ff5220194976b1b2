"""RetinaFace face detector: loader and batched inference.

The network (``retinaface_net.py``, the layout of facexlib's checkpoints) is built directly and
loaded strictly from a verified file, so nothing is downloaded and neither facexlib nor
torchvision is imported. Inference is our own: a batch of RGB images of any sizes is padded into
one tensor, priors are generated vectorised and cached per input size, and boxes, scores and
five landmarks are decoded per image in source pixels.
"""
from __future__ import annotations

import math
import os
import sys
from functools import lru_cache

import cv2
import numpy as np
import torch

from stages.models import common, registry
from stages.models.registry import WeightsSpec
from stages.models.retinaface_net import RetinaFaceNet

_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download/v0.1.0"
_INPUT = "any size BGR image minus mean (104, 117, 123), no scaling"
_LICENSE = "MIT (biubug6/Pytorch_Retinaface), redistributed in facexlib's Apache-2.0 releases"

registry.register(WeightsSpec(
    name="retinaface_resnet50", family="retinaface", filename="detection_Resnet50_Final.pth",
    sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", size=109497761,
    urls=(f"{_FACEXLIB}/detection_Resnet50_Final.pth",), license=_LICENSE, input=_INPUT,
    extra={"network": "resnet50"},
))
registry.register(WeightsSpec(
    name="retinaface_mobile0.25", family="retinaface", filename="detection_mobilenet0.25_Final.pth",
    sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220", size=1789735,
    urls=(f"{_FACEXLIB}/detection_mobilenet0.25_Final.pth",), license=_LICENSE, input=_INPUT,
    bundled=True, extra={"network": "mobile0.25"},
))

MEAN_BGR = (104.0, 117.0, 123.0)
_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
_STEPS = (8, 16, 32)
_VARIANCE = (0.1, 0.2)


def load_retinaface(name: str, root: str | os.PathLike | None = None, device: str = "cpu",
                    dtype: str = "fp32", random_init: bool = False) -> torch.nn.Module:
    """RetinaFace ``name`` (retinaface_resnet50 / retinaface_mobile0.25), eval mode on device.

    ``dtype`` is applied at inference (``detect``'s autocast); the weights stay fp32.
    """
    common.torch_dtype(dtype)
    network = registry.get(name).extra["network"]
    return common.build(lambda: RetinaFaceNet(network), name, root, device, random_init)


@lru_cache(maxsize=16)
def _priors(height: int, width: int) -> torch.Tensor:
    """Anchor boxes (cx, cy, w, h), normalised, in the order the heads emit them."""
    out = []
    for step, sizes in zip(_STEPS, _MIN_SIZES):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid((torch.arange(fh) + 0.5) * step / height,
                                (torch.arange(fw) + 0.5) * step / width, indexing="ij")
        per_size = [torch.stack([cx, cy, torch.full_like(cx, s / width), torch.full_like(cy, s / height)], -1)
                    for s in sizes]
        out.append(torch.stack(per_size, 2).reshape(-1, 4))  # (fh, fw, anchors, 4) row-major
    return torch.cat(out)


def _decode(loc: torch.Tensor, landm: torch.Tensor,
            priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression outputs -> corner boxes (B, P, 4) and landmarks (B, P, 10), normalised."""
    centre, size = priors[..., :2], priors[..., 2:]
    c = centre + loc[..., :2] * _VARIANCE[0] * size
    wh = size * torch.exp(loc[..., 2:] * _VARIANCE[1])
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    pts = centre.unsqueeze(-2) + landm.reshape(*landm.shape[:-1], 5, 2) * _VARIANCE[0] * size.unsqueeze(-2)
    return boxes, pts.flatten(-2)


def _to_input(images: list[np.ndarray], max_side: int) -> tuple[torch.Tensor, list[float]]:
    """Pad the batch (mean colour, bottom/right) to one size divisible by 32; per-image scale."""
    resized, scales = [], []
    for image in images:
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w)) if max_side else 1.0
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                               interpolation=cv2.INTER_AREA)
        resized.append(image)
        scales.append(scale)
    height = 32 * math.ceil(max(im.shape[0] for im in resized) / 32)
    width = 32 * math.ceil(max(im.shape[1] for im in resized) / 32)
    batch = np.zeros((len(resized), height, width, 3), np.float32)
    for i, image in enumerate(resized):
        # RGB -> BGR minus mean; zero padding is then the mean colour the net was trained around
        batch[i, : image.shape[0], : image.shape[1]] = image[..., ::-1].astype(np.float32) - MEAN_BGR
    return torch.from_numpy(batch).permute(0, 3, 1, 2), scales


@torch.inference_mode()
def detect(model: torch.nn.Module, images: list[np.ndarray], device: str | torch.device = "cpu",
           dtype: str = "fp32", score_floor: float = 0.1, nms_iou: float = 0.4,
           max_side: int = 0, top_k: int = 100) -> list[np.ndarray]:
    """Detect faces in RGB uint8 images; per image an (N, 15) float32 array sorted by score.

    Columns: x1, y1, x2, y2, score, then five (x, y) landmarks, in source pixels. Images whose
    longer side exceeds ``max_side`` (0: never) are detected downscaled.
    """
    if not images:
        return []
    dev, dt = common.torch_device(device), common.torch_dtype(dtype)
    x, scales = _to_input(images, max_side)
    height, width = x.shape[2:]
    x = common.on_device(x, dev)
    with common.autocast(dev, dt):
        loc, conf, landm = model(x)
    priors = _priors(height, width).to(dev)
    boxes, points = _decode(loc.float(), landm.float(), priors)
    boxes = boxes * torch.tensor([width, height] * 2, device=dev, dtype=torch.float32)
    points = points * torch.tensor([width, height] * 5, device=dev, dtype=torch.float32)
    scores = conf.float()[..., 1]
    results = []
    for i, scale in enumerate(scales):
        keep = scores[i] > score_floor
        b, s, p = boxes[i][keep], scores[i][keep], points[i][keep]
        order = nms(b, s, nms_iou)[:top_k]
        out = torch.cat([b[order] / scale, s[order, None], p[order] / scale], 1)
        results.append(out.cpu().numpy().astype(np.float32))
    return results



def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as torchvision.ops.nms: indices by descending score, a box
    dropped when its IoU with a kept one exceeds ``iou``. Our own so the CPU path needs no
    torchvision import (its ops pull in torch._dynamo: ~1.5 s per process); torchvision's kernel
    when something already imported it (facexlib's backbone does, at set-up)."""
    tv = sys.modules.get("torchvision")
    if tv is not None:
        return tv.ops.nms(boxes, scores, iou)
    order = torch.argsort(scores, descending=True, stable=True)
    x1, y1, x2, y2 = boxes[order].detach().float().cpu().numpy().T
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(len(area), dtype=bool)
    keep = []
    for i in range(len(area)):
        if not alive[i]:
            continue
        keep.append(i)
        w = (np.minimum(x2[i + 1:], x2[i]) - np.maximum(x1[i + 1:], x1[i])).clip(min=0)
        h = (np.minimum(y2[i + 1:], y2[i]) - np.maximum(y1[i + 1:], y1[i])).clip(min=0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            alive[i + 1:] &= ~(inter / (area[i] + area[i + 1:] - inter) > iou)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]
