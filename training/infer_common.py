"""What the inference entry points share: the guided sampling loop, decoded images and config
options on the command line."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Callable

import numpy as np
import torch


def guided_latents(sched: Any, cfg: Any, channels: int, vae_blocks: int, device: Any,
                   eps: Callable[[torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]],
                   ancestral: bool = False) -> torch.Tensor:
    """Classifier-free guidance from noise seeded by ``cfg.seed``: ``eps(z_in, t)`` gives the
    (unconditional, conditional) noise of the doubled, scaled latents; ``ancestral`` schedulers
    draw their step noise from the same generator. ``cfg`` has steps, resolution, seed and
    guidance_scale; ``vae_blocks`` (len of the VAE's block_out_channels) sets the latent side."""
    sched.set_timesteps(cfg.steps, device=device)
    side = cfg.resolution // 2 ** (vae_blocks - 1)
    gen = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn((1, channels, side, side), generator=gen).to(device) * sched.init_noise_sigma
    step = {"generator": gen} if ancestral else {}
    for t in sched.timesteps:
        eps_u, eps_c = eps(sched.scale_model_input(torch.cat([z, z]), t), t)
        z = sched.step(eps_u + cfg.guidance_scale * (eps_c - eps_u), t, z, **step).prev_sample
    return z


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """HxWx3 uint8 RGB of the first image of a decoded batch in [-1, 1] (N, 3, H, W)."""
    return ((images[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def add_config_options(ap: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, typed and defaulted from it."""
    defaults = cls()
    for f in fields(cls):
        if f.name not in skip:
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                            default=getattr(defaults, f.name))


def config_from_options(cls: type, args: argparse.Namespace, skip: tuple[str, ...] = ()) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name not in skip})
