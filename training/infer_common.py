"""What the inference entry points share: the guided sampling loop, decoded images, and the
command line (common options, config options, the reference photo in, the image out)."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Callable

import cv2
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


def inference_parser(doc: str | None, sd: str, *, reference: bool = False,
                     prompt_help: str = "text with one {} where the person goes") -> argparse.ArgumentParser:
    """The options every inference command takes: --base (the ``sd`` version's diffusers folder),
    --prompt, --out, --device, and --reference when it starts from a photo of the person."""
    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    ap.add_argument("--base", required=True, help=f"SD {sd} diffusers folder or hub id ('tiny' for a smoke run)")
    if reference:
        ap.add_argument("--reference", required=True, help="photo of the person")
    ap.add_argument("--prompt", required=True, help=prompt_help)
    ap.add_argument("--out", required=True, help="image file to write")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def parse_inference(ap: argparse.ArgumentParser, argv: list[str] | None, cls: type,
                    skip: tuple[str, ...] = ()) -> tuple[argparse.Namespace, Any]:
    """Parse ``argv`` with one option per field of the config dataclass ``cls`` added; (args, config)."""
    add_config_options(ap, cls, skip)
    args = ap.parse_args(argv)
    return args, config_from_options(cls, args, skip)


def read_rgb(path: str) -> np.ndarray:
    """The reference photo as HxWx3 RGB; exits with one line when it cannot be read."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"error: cannot read {path} as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"error: cannot write {path} (an image suffix such as .png or .jpg, in a folder that exists)")
