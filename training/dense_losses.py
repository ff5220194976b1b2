"""Dense-Face's annotation losses (Eq. 8) and their reduction.

Eq. 8 writes the landmark and depth terms as squared L2 norms per map averaged over maps,
``1/M sum_i ||L_i - L^_i||^2``: a sum over the map's pixels (``reduction: map_sum``). Per-pixel
means (``mean``) shrink both by the map's area (128^2 = 16384): with sigma = 1.5 cells a Gaussian
heatmap's energy is pi * sigma^2 ~ 7 per map, so an all-zero prediction scores ~4e-4 per pixel and
the term's gradient vanishes beside the noise loss. The pseudo-mask term is a per-pixel mean
cross-entropy under both reductions (it is O(1) already). docs/training.md has the measured
magnitudes and gradient norms behind the default.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("map_sum", "mean")


def dense_terms(heat: torch.Tensor, heat_gt: torch.Tensor, mask_logits: torch.Tensor, mask_gt: torch.Tensor,
                depth: torch.Tensor, depth_gt: torch.Tensor, reduction: str = "map_sum") -> dict[str, torch.Tensor]:
    """L^LD, L^PM and L^DE of Eq. 8, unweighted.

    ``heat``: (B, M, S, S) heatmaps; ``mask_logits``: (B, C, S, S) with ``mask_gt`` (B, S, S) class
    indices; ``depth``: (B, 1, S, S) in [0, 1].
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"dense reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = F.cross_entropy(mask_logits.float(), mask_gt)
    if reduction == "mean":
        return {"landmarks": F.mse_loss(heat.float(), heat_gt), "mask": mask,
                "depth": F.mse_loss(depth.float(), depth_gt)}
    landmarks = ((heat.float() - heat_gt) ** 2).sum((-2, -1)).mean()  # 1/M sum_i ||L_i - L^_i||^2
    depth_term = ((depth.float() - depth_gt) ** 2).sum((-2, -1)).mean()  # 1/N sum_i ||D_i - D^_i||^2
    return {"landmarks": landmarks, "mask": mask, "depth": depth_term}
