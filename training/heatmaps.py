"""Dense-annotation targets: Gaussian landmark heatmaps, and masks/depth resized to the head's size.

Landmarks follow ``schemas.landmarks``: continuous pixel coordinates, pixel (i, j) covering
[i, i+1) x [j, j+1), so a map cell's centre sits at index + 0.5.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from schemas import pseudo_mask

N_MESH = 468


def landmark_subset(spec: str, n_points: int = N_MESH) -> np.ndarray:
    """Indices of the landmarks to supervise.

    ``all``: every point; ``mask_loops``: the points outlining the pseudo-mask parts (face oval,
    brows, eyes, nose, lips; about 150); ``stride:N``: every N-th point.
    """
    if spec == "all":
        return np.arange(n_points)
    if spec == "mask_loops":
        return np.array(sorted({i for _, _, loop in pseudo_mask.CLASSES for i in loop}))
    if spec.startswith("stride:"):
        step = int(spec.split(":", 1)[1])
        if step < 1:
            raise ValueError(f"landmark stride must be >= 1, got {step}")
        return np.arange(0, n_points, step)
    raise ValueError(f"unknown landmark subset {spec!r}: all | mask_loops | stride:N")


def render_heatmaps(points: torch.Tensor, image_size: int, size: int, sigma: float) -> torch.Tensor:
    """Gaussian heatmaps (B, M, size, size) peaking at 1 for points (B, M, 2) in image pixels."""
    scale = size / image_size
    xy = points.float() * scale
    grid = torch.arange(size, device=points.device, dtype=torch.float32) + 0.5
    dx = (grid.view(1, 1, 1, size) - xy[..., 0, None, None]) ** 2
    dy = (grid.view(1, 1, size, 1) - xy[..., 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2.0 * sigma * sigma))


def resize_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) integer label map -> (B, size, size) by nearest neighbour."""
    out = F.interpolate(labels[:, None].float(), size=(size, size), mode="nearest")
    return out[:, 0].long()


def resize_depth(depth: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) depth in [0, 1] -> (B, 1, size, size), area-averaged."""
    if depth.shape[-1] == size and depth.shape[-2] == size:
        return depth.float()
    return F.interpolate(depth.float(), size=(size, size), mode="area")


def dense_targets(landmarks: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor, image_size: int,
                  size: int, subset: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground truth of Eq. 8 at the head's resolution: heatmaps, mask labels, depth."""
    heat = render_heatmaps(landmarks[:, subset, :2], image_size, size, sigma)
    return heat, resize_labels(mask, size), resize_depth(depth, size)
