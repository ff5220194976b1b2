"""CodeFormer (Zhou et al. 2022): blind face restoration with a codebook lookup transformer.

The architecture comes from the ``codeformer-pip`` package. ``full`` is the released model
(``codeformer.pth`` from the v0.1.0 GitHub release: weights under ``params_ema``, 512-d
embedding, 1024 codes, 8 heads, 9 layers, fusion at 32/64/128/256 px). ``tiny`` keeps the same
modules with narrow convolutions, a one-layer transformer and fusion at 32/64 px only, for tests
and smoke runs: it has no pretrained weights and must be built with ``random_init``.

Input: (N, 3, 512, 512) RGB in [-1, 1]; output the restored image in the same range.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.models import common, registry
from stages.models.registry import WeightsSpec

WEIGHTS = "codeformer"
INPUT_SIZE = 512
FULL_ARGS = {"dim_embd": 512, "codebook_size": 1024, "n_head": 8, "n_layers": 9,
             "connect_list": ["32", "64", "128", "256"]}
TINY_ARGS = {"dim_embd": 64, "codebook_size": 64, "n_head": 2, "n_layers": 1, "connect_list": ["32", "64"]}
# Conv width of ``tiny``: the smallest the VQGAN's GroupNorm(32) allows.
TINY_NF = 32

registry.register(WeightsSpec(
    name=WEIGHTS,
    family="codeformer",
    filename="codeformer.pth",
    sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
    size=376637898,
    urls=("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",),
    license="NTU S-Lab License 1.0 (sczhou/CodeFormer; non-commercial use only)",
    input="512x512 aligned RGB face crop, (x / 255 - 0.5) / 0.5",
    extra={"arch": "full", "checkpoint_keys": "{'params_ema': state dict}"},
))


def _classes() -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    """CodeFormer, VQAutoEncoder and Fuse_sft_block, imported on first use (slow import)."""
    from codeformer.basicsr.archs.codeformer_arch import CodeFormer, Fuse_sft_block
    from codeformer.basicsr.archs.vqgan_arch import VQAutoEncoder

    return CodeFormer, VQAutoEncoder, Fuse_sft_block


def build(arch: str = "full") -> nn.Module:
    """A fresh CodeFormer of ``arch`` (``full`` or ``tiny``) with random weights."""
    former, vqgan, fuse = _classes()
    if arch == "full":
        return former(**FULL_ARGS)
    if arch != "tiny":
        raise ValueError(f"unknown CodeFormer arch '{arch}' (full | tiny)")
    net = former(**TINY_ARGS)
    # CodeFormer fixes the VQGAN width at 64; swap in a narrow VQGAN with the same block layout
    # so the block indices its forward() fuses at stay valid.
    narrow = vqgan(INPUT_SIZE, TINY_NF, [1, 2, 2, 4, 4, 8], "nearest", 2, [16],
                   TINY_ARGS["codebook_size"])
    net.encoder, net.generator, net.quantize = narrow.encoder, narrow.generator, narrow.quantize
    width = {"32": 4 * TINY_NF, "64": 4 * TINY_NF}
    net.fuse_convs_dict = nn.ModuleDict({s: fuse(width[s], width[s]) for s in TINY_ARGS["connect_list"]})
    return net


def unwrap(state: dict) -> dict:
    """The model state dict inside a CodeFormer checkpoint (``params_ema``, else ``params``)."""
    for key in ("params_ema", "params"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def load_codeformer(name: str = WEIGHTS, root: str | Path | None = None, device: str = "cpu",
                    dtype: str = "fp32", random_init: bool = False, arch: str = "full") -> nn.Module:
    """CodeFormer in eval mode on ``device``: the registered checkpoint, or seeded random weights.

    Weights stay fp32 whatever ``dtype``; callers run the model under autocast.
    """
    if arch != "full" and not random_init:
        raise ValueError(f"CodeFormer arch '{arch}' has no pretrained weights; use random weights")
    if random_init:
        return common.build(lambda: build(arch), name, root, device, random_init=True)
    net = build(registry.get(name).extra.get("arch", "full"))
    common.load_into(net, unwrap(registry.load_state_dict(name, root)), strict=True)
    return common.prepare(net, device)


def to_images(y: torch.Tensor) -> list[np.ndarray | None]:
    """HxWx3 uint8 RGB arrays of ``restore``'s output, None where it is not finite (e.g. fp16 overflow)."""
    y = y.float()
    finite = torch.isfinite(y).flatten(1).all(dim=1).tolist()
    y = ((y.nan_to_num(0.0) + 1.0) * 127.5).round().clamp_(0, 255).to(torch.uint8)
    arrays = y.permute(0, 2, 3, 1).cpu().numpy()
    return [np.ascontiguousarray(a) if ok else None for a, ok in zip(arrays, finite)]


def restore(net: nn.Module, x: torch.Tensor, w: float) -> torch.Tensor:
    """Restored (N, 3, 512, 512) in [-1, 1] for input in [-1, 1]; ``w`` is the fidelity weight.

    AdaIN re-colours the looked-up features with the input's statistics, as upstream inference
    does, so the restored face keeps the input's colours.
    """
    out = net(x, w=w, adain=True)[0]
    return out.clamp(-1.0, 1.0)
